//! The `sk_lookup` program of the host's network namespace: hands a
//! connection that a granted container made to the host side of its
//! network over to a service listening only on the host's loopback. And
//! the grant guard, on the host side of containers' interfaces: a packet
//! for a host service from a granted address must come through that
//! container's own interface, which another container cannot forge.

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    macros::sk_lookup,
    programs::{SkLookupContext, TcContext},
};
use netbpf_common::{AF_INET, GrantKey, PROTO_TCP, ServiceKey};

use crate::{
    addr,
    ip::{self, Parsed},
    maps::{GRANTS, HOST_SERVICES, SERVICE_SOCKETS, SERVICE_STATS},
};

/// Steers granted connections to a host service's listener; everything
/// else goes on to the kernel's own lookup. (Hook: Linux 5.9.)
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

/// Whether `ctx`'s packet, arriving on a container's host-side interface,
/// carries a granted address it may not: its grant names another
/// interface. Counted as forged.
#[inline(always)]
pub fn forged(ctx: &TcContext) -> bool {
    let Parsed::Tcp(segment) = ip::parse(ctx, ETHERNET_HEADER) else {
        return false;
    };
    let Ok(port) = ctx.load::<u16>(segment.l4 + 2) else {
        return false;
    };
    let family = u16::from(segment.family);
    let key = ServiceKey {
        addr: segment.dst,
        port: u16::from_be(port),
        family,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { HOST_SERVICES.get(key) }).copied() else {
        return false;
    };
    // SAFETY: as above.
    let Some(allowed) =
        (unsafe { GRANTS.get(GrantKey::new(service, segment.src, family)) }).copied()
    else {
        return false;
    };
    // SAFETY: `skb` is the program's context.
    let arrived = unsafe { (*ctx.skb.skb).ifindex };
    if allowed == 0 || allowed == arrived {
        return false;
    }
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: this CPU's slot of a valid array element.
        unsafe { (*stats).forged += 1 };
    }
    true
}

/// The Ethernet header before the IP header of a container's packets.
const ETHERNET_HEADER: usize = 14;
