//! Bind remapping: a scope's bind to one port becomes a bind to its own
//! port, so that instances of one image can share a network namespace
//! (host networking) without colliding.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
use netbpf_common::{PROTO_TCP, PROTO_UDP, ScopePort};

use crate::{addr, forward::rule_stats, maps::BIND_REMAPS, scope};

/// Gives a bind of the caller's scope the port its remap names. The
/// kernel then checks the new port as if the application had asked for
/// it: an unprivileged process still cannot get a port below 1024.
#[inline(always)]
pub fn remap(ctx: *mut bpf_sock_addr, family: u16) {
    // SAFETY: `ctx` is the program's context.
    let Ok(protocol) = u8::try_from(unsafe { (*ctx).protocol }) else {
        return;
    };
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return;
    }
    let bound = addr::read_user(ctx, family);
    let port = u16::from_be(bound.port);
    if port == 0 {
        return;
    }
    let Some(scope) = scope::lookups().and_then(|lookups| scope::current(ctx.cast(), lookups))
    else {
        return;
    };
    // SAFETY: the value is copied out at once.
    let Some(target) =
        (unsafe { BIND_REMAPS.get(ScopePort::new(scope.id, port, protocol)) }).copied()
    else {
        return;
    };
    if target.family != 0 && addr::canonical(&bound.addr, family) != (target.addr, target.family) {
        return;
    }
    // SAFETY: `user_port` is writable in the bind hooks.
    unsafe {
        write_volatile(
            addr_of_mut!((*ctx).user_port),
            u32::from(target.port.to_be()),
        );
    }
    if let Some(stats) = rule_stats(target.rule) {
        stats.binds += 1;
    }
}
