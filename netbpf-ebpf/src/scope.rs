//! Which scope (container) the calling socket belongs to, and which
//! lookups the policy applied now needs at all.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie};
use netbpf_common::{INSTANCE_NETNS, LOOKUP_NETNS_SCOPES, Lookups, MAX_SCOPE_LEVELS, ScopeEntry};

use crate::maps::{CGROUP_SCOPES, LOOKUPS, NETNS_SCOPES};

/// Which lookups the programs need, read in place field by field (a
/// copy of the whole value is sixteen more instructions wherever it is
/// read). The array's one element always exists; before the agent has
/// written it, it is zero: nothing to look up.
#[inline(always)]
pub fn lookups() -> Option<&'static Lookups> {
    LOOKUPS.get(0)
}

/// The scope of the current task and `ctx`'s network namespace: the deepest
/// registered cgroup among the task's cgroup ancestors (processes of a
/// container may sit in its sub-cgroups), else the namespace's scope.
/// `lookups` is the caller's, read once per run: each read is another
/// null test whose two ways the verifier walks apart.
#[inline(always)]
pub fn current(ctx: *mut c_void, lookups: &Lookups) -> Option<ScopeEntry> {
    of(ctx, lookups, deepest(lookups))
}

/// The task's cgroup at the deepest of `levels` (one bit per level): the
/// only cgroup there that may be a scope's own, and the levels left.
#[derive(Clone, Copy)]
pub struct Deepest {
    /// Its cgroup id; 0 when the task's cgroup is not that deep.
    pub id: u64,
    /// The shallower levels, to look at when it is no scope.
    shallower: u64,
}

/// The task's cgroup at the deepest level of `lookups`; None when no
/// cgroup scope exists.
#[inline(always)]
pub fn deepest(lookups: &Lookups) -> Option<Deepest> {
    let level = lookups.deepest_level()?;
    // SAFETY: a helper without pointer arguments.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(i32::from(level)) };
    Some(Deepest {
        id,
        shallower: lookups.cgroup_levels & !(1 << level),
    })
}

/// [`current`], with the task's cgroup at the deepest level already known
/// (`deepest`, of `lookups`' levels).
#[inline(always)]
pub fn of(ctx: *mut c_void, lookups: &Lookups, deepest: Option<Deepest>) -> Option<ScopeEntry> {
    if let Some(deepest) = deepest {
        if deepest.id != 0 {
            // SAFETY: the value is copied out at once.
            if let Some(scope) = unsafe { CGROUP_SCOPES.get(deepest.id) } {
                return Some(*scope);
            }
        }
        if deepest.shallower != 0
            && let Some(scope) = by_cgroup(deepest.shallower)
        {
            return Some(scope);
        }
    }
    if lookups.flags & LOOKUP_NETNS_SCOPES == 0 {
        return None;
    }
    // SAFETY: `ctx` is the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_netns_cookie(ctx) };
    // SAFETY: the value is copied out at once.
    unsafe { NETNS_SCOPES.get(cookie) }.copied()
}

/// What `find` gives for the scope instance of the current task and
/// `ctx`'s network namespace, from a map keyed by instance: `find` takes
/// a cgroup id, or a namespace cookie with [`INSTANCE_NETNS`] set. The
/// task's cgroup at the deepest level is tried first, by `find` alone: a
/// task of an instance's cgroup finds its entry in one lookup, before
/// (and instead of) its scope. Only past a miss is the instance looked
/// for as [`current`] looks for the scope.
#[inline(always)]
pub fn by_instance<T>(
    ctx: *mut c_void,
    lookups: &Lookups,
    find: impl Fn(u64) -> Option<T>,
) -> Option<T> {
    let (id, shallower) = deepest(lookups).map_or((0, 0), |at| (at.id, at.shallower));
    if id != 0
        && let Some(found) = find(id)
    {
        return Some(found);
    }
    let netns = lookups.flags & LOOKUP_NETNS_SCOPES != 0;
    // On a node whose scopes are all cgroups at one depth, that cgroup was
    // the only instance the task could be in.
    if shallower == 0 && !netns {
        return None;
    }
    match other_instance(ctx, id, shallower, netns) {
        0 => None,
        instance => find(instance),
    }
}

/// The scope instance of the current task and `ctx`'s namespace when it
/// is not the task's cgroup `deepest` (0 if the task is not that deep),
/// which is no instance or the caller would have found its entry: a
/// registered cgroup at a `shallower` level, else the namespace (if
/// `netns` scopes exist), with [`INSTANCE_NETNS`] set. 0 when there is
/// none, `deepest` being a scope's. A function of its own (a BPF-to-BPF
/// call) returning one number: the verifier walks its ways once, and the
/// caller's rest once after it.
#[inline(never)]
fn other_instance(ctx: *mut c_void, deepest: u64, shallower: u64, netns: bool) -> u64 {
    // SAFETY: the value is only tested for presence.
    if deepest != 0 && unsafe { CGROUP_SCOPES.get(deepest) }.is_some() {
        return 0;
    }
    if shallower != 0
        && let Some(scope) = by_cgroup(shallower)
    {
        // Its cgroup: the task's ancestor at the scope's level. (The call
        // returns the scope alone: returning the id too took the
        // verifier's work on every program that finds a scope to twice.)
        // SAFETY: a helper without pointer arguments.
        return unsafe { bpf_get_current_ancestor_cgroup_id(i32::from(scope.level)) };
    }
    if !netns {
        return 0;
    }
    // SAFETY: `ctx` is the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_netns_cookie(ctx) };
    cookie | INSTANCE_NETNS
}

/// The scope of the deepest registered ancestor of the task's cgroup,
/// looking only at `levels` (one bit per level), deepest first: on a node
/// whose containers all sit at one depth, none is left for it. While the
/// agent moves from one policy to the next, `levels` holds the depths of
/// both, each at most [`MAX_SCOPE_LEVELS`]. A function of its own (a
/// BPF-to-BPF call): the verifier then walks the rest of a program once
/// after it, not once for each level the loop may return at.
#[inline(never)]
fn by_cgroup(mut levels: u64) -> Option<ScopeEntry> {
    for _ in 0..2 * MAX_SCOPE_LEVELS {
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
