//! Which scope (container) the calling socket belongs to.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie};
use netbpf_common::MAX_CGROUP_DEPTH;

use crate::maps::{CGROUP_SCOPES, NETNS_SCOPES};

/// The scope of the current task and `ctx`'s network namespace: the deepest
/// registered cgroup among the task's cgroup ancestors (processes of a
/// container may sit in its sub-cgroups), else the namespace's scope.
#[inline(always)]
pub fn current(ctx: *mut c_void) -> Option<u32> {
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: a helper without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the value is a plain u32, copied out at once.
        if let Some(scope) = unsafe { CGROUP_SCOPES.get(id) } {
            found = Some(*scope);
        }
    }
    if found.is_some() {
        return found;
    }
    // SAFETY: `ctx` is the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_netns_cookie(ctx) };
    // SAFETY: as above.
    unsafe { NETNS_SCOPES.get(cookie) }.copied()
}
