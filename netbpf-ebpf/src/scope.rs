//! Which scope (container) the calling socket belongs to.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie};
use netbpf_common::{MAX_CGROUP_DEPTH, ScopeEntry};

use crate::maps::{CGROUP_SCOPES, NETNS_SCOPES, SCOPE_LEVELS};

/// The scope of the current task and `ctx`'s network namespace: the deepest
/// registered cgroup among the task's cgroup ancestors (processes of a
/// container may sit in its sub-cgroups), else the namespace's scope.
#[inline(always)]
pub fn current(ctx: *mut c_void) -> Option<ScopeEntry> {
    if let Some(scope) = by_cgroup() {
        return Some(scope);
    }
    // SAFETY: `ctx` is the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_netns_cookie(ctx) };
    // SAFETY: the value is copied out at once.
    unsafe { NETNS_SCOPES.get(cookie) }.copied()
}

/// The scope of the deepest registered ancestor of the task's cgroup. Only
/// the levels where scopes are registered are looked at, deepest first: on
/// a node whose containers all sit at one depth, one lookup.
#[inline(always)]
fn by_cgroup() -> Option<ScopeEntry> {
    let mut levels = *SCOPE_LEVELS.get(0)?;
    for _ in 0..MAX_CGROUP_DEPTH {
        let Some(level) = levels.checked_ilog2() else {
            break;
        };
        levels &= !(1 << level);
        // SAFETY: a helper without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level.cast_signed()) };
        if id == 0 {
            // The task's cgroup is not that deep.
            continue;
        }
        // SAFETY: the value is copied out at once.
        if let Some(scope) = unsafe { CGROUP_SCOPES.get(id) } {
            return Some(*scope);
        }
    }
    None
}
