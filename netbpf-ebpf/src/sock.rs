//! Programs on the cgroup `bpf_sock` hooks: they track the localhost ports
//! a scope forwards that a socket inside the scope binds, so that its own
//! services are never forwarded. Only forwarded ports are tracked: a
//! scope that binds thousands of other ports fills nothing.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{self, addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::bpf_sk_storage_get,
    macros::cgroup_sock,
    programs::SockContext,
};
use netbpf_common::{AF_INET, AF_INET6, PROTO_TCP, PROTO_UDP, ScopePort};

use crate::{
    ALLOW, addr,
    forward::{forwarded_somewhere, port_of_scope, rule_stats},
    maps::{BOUND_SOCKETS, LOCAL_BINDS, SCOPE_LOCAL_BINDS},
    scope,
};

/// Counts a successful IPv4 bind on localhost or 0.0.0.0 of a port the
/// scope forwards. (Hook: Linux 4.17.)
#[cgroup_sock(post_bind4)]
pub fn netbpf_bound4(ctx: SockContext) -> i32 {
    record_bind(ctx.sock, AF_INET);
    ALLOW
}

/// Counts a successful IPv6 bind on `::1`, `::` or their mapped forms of
/// a port the scope forwards. (Hook: Linux 4.17.)
#[cgroup_sock(post_bind6)]
pub fn netbpf_bound6(ctx: SockContext) -> i32 {
    record_bind(ctx.sock, AF_INET6);
    ALLOW
}

/// Forgets a counted socket when it is released. (Hook: Linux 5.9.)
#[cgroup_sock(sock_release)]
pub fn netbpf_release(ctx: SockContext) -> i32 {
    forget_bind(ctx.sock);
    ALLOW
}

#[inline(always)]
fn record_bind(sk: *mut bpf_sock, family: u16) {
    // SAFETY: `sk` is the program's context; post_bind hooks may read the
    // source port (host byte order) and protocol.
    let (port, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sk).src_port)),
            read_volatile(addr_of!((*sk).protocol)),
        )
    };
    let (Ok(port), Ok(protocol)) = (u16::try_from(port), u8::try_from(protocol)) else {
        return;
    };
    // Most binds are of a port the kernel picks, which no scope forwards:
    // they stop here, before the address is read. (Port 0: a socket bound
    // with IP_BIND_ADDRESS_NO_PORT, which gets its port at connect.)
    if port == 0 || !forwarded_somewhere(port) || (protocol != PROTO_TCP && protocol != PROTO_UDP) {
        return;
    }
    record_forwarded_bind(sk, family, port, protocol);
}

/// [`record_bind`] past its port filter. A function of its own (a
/// BPF-to-BPF call, with a machine image of its own): inlined, it put the
/// program's one exit 2 KB from its start, and every bind, filtered out
/// or not, ran code at both ends of the image.
#[inline(never)]
fn record_forwarded_bind(sk: *mut bpf_sock, family: u16, port: u16, protocol: u8) {
    // SAFETY: `sk` is the program's context; post_bind hooks may read the
    // source address.
    let local = unsafe {
        let mut local = [0u32; 4];
        if family == AF_INET {
            local[0] = read_volatile(addr_of!((*sk).src_ip4));
        } else {
            local = addr::read_ip6(addr_of!((*sk).src_ip6).cast());
        }
        local
    };
    if !addr::is_localhost(&local, family) && !addr::is_wildcard(&local, family) {
        return;
    }
    // A port the scope does not forward is never looked up in LOCAL_BINDS.
    let Some((scope, forward)) = port_of_scope(sk.cast(), port, protocol) else {
        return;
    };
    if forward.is_own_service() {
        return;
    }
    let key = ScopePort::new(scope, port, protocol);
    // SAFETY: `sk` is the program's context.
    let Some(counted) = (unsafe { bound_key(sk, BPF_SK_STORAGE_GET_F_CREATE.into()).as_mut() })
    else {
        return;
    };
    if counted.port != 0 {
        // Counted already (by the agent, which found it bound).
        return;
    }
    // Marked only once counted: the release hook uncounts marked sockets.
    if count_bind(key) {
        *counted = key;
    } else if let Some(stats) = rule_stats(forward.rule) {
        stats.unrecorded_binds += 1;
    }
}

/// Adds one to the local-binds count of `key`; false when the table is
/// full, or the port would be one more than the scope may hold.
#[inline(always)]
fn count_bind(key: ScopePort) -> bool {
    if add_to_count(key) {
        return true;
    }
    // The first socket on the port: one more port of the scope's.
    let limit = scope::lookups().map_or(0, |lookups| lookups.local_binds_per_scope);
    let Some(held) = SCOPE_LOCAL_BINDS.get_ptr_mut(key.scope) else {
        return false;
    };
    // SAFETY (of each block): `held` points at a live, aligned u32 array
    // value. The BPF CPU version rustc targets has no fetching atomics:
    // the sum is read back separately.
    let before = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(held, 1);
        read_volatile(held).wrapping_sub(1)
    };
    if before < limit && LOCAL_BINDS.insert(key, 1, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // SAFETY: as above; adding u32::MAX subtracts one.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(held, u32::MAX) };
    // A sibling on the same port recorded it meanwhile: counted with it.
    add_to_count(key)
}

/// Adds one to the count of `key`, if `LOCAL_BINDS` holds it.
#[inline(always)]
fn add_to_count(key: ScopePort) -> bool {
    let Some(count) = LOCAL_BINDS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: `count` points at a live, aligned u32 map value.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, 1) };
    true
}

#[inline(always)]
fn forget_bind(sk: *mut bpf_sock) {
    // SAFETY: `sk` is the program's context. Most sockets have no storage:
    // one pointer test in the kernel.
    let Some(key) = (unsafe { bound_key(sk, 0).as_ref() }).copied() else {
        return;
    };
    if key.port == 0 {
        return;
    }
    let Some(count) = LOCAL_BINDS.get_ptr_mut(key) else {
        return;
    };
    // Adding u32::MAX subtracts one. The BPF CPU version rustc targets has
    // no fetching atomics, so the result is read back separately.
    // SAFETY: `count` points at a live, aligned u32 map value.
    let left = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, u32::MAX);
        read_volatile(count)
    };
    if left == 0 {
        // A bind racing with this release on the same port can lose its
        // count here; it is counted again at its next bind. Rare enough
        // (SO_REUSEPORT siblings closing and opening at once) to accept.
        if LOCAL_BINDS.remove(key).is_ok()
            && let Some(held) = SCOPE_LOCAL_BINDS.get_ptr_mut(key.scope)
        {
            // SAFETY: `held` points at a live, aligned u32 array value.
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(held, u32::MAX) };
        }
    }
}

/// The `BOUND_SOCKETS` storage of `sk`, made (zeroed) when `flags` asks
/// for it; null when it has none or it could not be made.
///
/// # Safety
/// `sk` is the context of a `bpf_sock` program.
#[inline(always)]
unsafe fn bound_key(sk: *mut bpf_sock, flags: u64) -> *mut ScopePort {
    let map: *mut c_void = ptr::from_ref(&BOUND_SOCKETS).cast_mut().cast();
    // SAFETY: the caller's promise; these hooks may use socket storage.
    unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), flags) }.cast()
}
