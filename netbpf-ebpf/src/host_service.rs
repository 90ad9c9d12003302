//! The `sk_lookup` program of the host's network namespace: hands a
//! connection that a granted container made to the host side of its
//! network over to a service listening only on the host's loopback.

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use netbpf_common::{AF_INET, GrantKey, PROTO_TCP, ServiceKey};

use crate::{
    addr,
    maps::{GRANTS, HOST_SERVICES, SERVICE_SOCKETS, SERVICE_STATS},
};

/// Steers granted connections to a host service's listener; everything
/// else goes on to the kernel's own lookup.
#[sk_lookup]
pub fn netbpf_hostsvc(ctx: SkLookupContext) -> u32 {
    steer(&ctx);
    SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkLookupContext) {
    let lookup = ctx.lookup;
    // SAFETY: `lookup` is the program's context; these fields are readable.
    let (family, protocol, local_port) =
        unsafe { ((*lookup).family, (*lookup).protocol, (*lookup).local_port) };
    let (Ok(family), Ok(local_port)) = (u16::try_from(family), u16::try_from(local_port)) else {
        return;
    };
    if protocol != u32::from(PROTO_TCP) {
        return;
    }
    // SAFETY: as above; the address fields of the lookup's family.
    let (local, remote) = unsafe {
        if family == AF_INET {
            (
                [(*lookup).local_ip4, 0, 0, 0],
                [(*lookup).remote_ip4, 0, 0, 0],
            )
        } else {
            (
                addr::read_ip6(core::ptr::addr_of!((*lookup).local_ip6).cast()),
                addr::read_ip6(core::ptr::addr_of!((*lookup).remote_ip6).cast()),
            )
        }
    };
    let key = ServiceKey {
        addr: local,
        port: local_port,
        family,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { HOST_SERVICES.get(key) }).copied() else {
        return;
    };
    let Some(stats) = SERVICE_STATS.get_ptr_mut(service) else {
        return;
    };
    // SAFETY: this CPU's slot of a valid array element.
    let stats = unsafe { &mut *stats };
    // SAFETY: the value is only tested for presence.
    if unsafe { GRANTS.get(GrantKey::new(service, remote, family)) }.is_none() {
        stats.refused += 1;
        return;
    }
    if SERVICE_SOCKETS.redirect_sk_lookup(ctx, service, 0).is_ok() {
        stats.steered += 1;
    } else {
        stats.down += 1;
    }
}
