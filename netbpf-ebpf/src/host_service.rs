//! Host services, checked three times. At `connect()`: the socket's scope
//! must hold a grant of the service, which tells apart processes that
//! share a granted container's network namespace. In the `sk_lookup`
//! program of the host's network namespace: the connection's source must
//! be a granted container's address, arriving on that container's
//! interface; then it is handed to the service listening only on the
//! host's loopback. And in the grant guard, on the host side of
//! containers' interfaces: a packet for a host service from a granted
//! address must come through that container's own port of the bridge,
//! and what the guard cannot parse toward a service is dropped.

use aya_ebpf::{
    bindings::{bpf_sock_addr, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::{SkLookupContext, TcContext},
};
use netbpf_common::{
    AF_INET, GrantKey, LOOKUP_HOST_SERVICES, PROTO_TCP, ScopeGrant, ServiceKey, ServiceStats,
};

use crate::{
    addr,
    ip::{self, Parsed},
    maps::{GRANTS, HOST_SERVICES, SCOPE_GRANTS, SERVICE_SOCKETS, SERVICE_STATS},
    scope,
};

/// Whether the socket of `ctx` may connect where its user address now
/// points: anywhere but a host service, and to a host service only from a
/// scope granted it. A refusal is counted as borrowed.
///
/// A connect to no service port reads nothing beyond `LOOKUPS`, whose
/// port filter rules it out: one more cache line on every connect of a
/// busy node costs more than the rest of the check. That filter is inlined
/// here: a BPF-to-BPF call on every connect costs a return, which a CPU
/// whose returns are mitigated (AMD's safe RET, retbleed's return thunk)
/// pays dearly.
#[inline(always)]
pub fn may_connect(ctx: *mut bpf_sock_addr, family: u16) -> bool {
    let Some(lookups) = scope::lookups() else {
        return true;
    };
    if lookups.flags & LOOKUP_HOST_SERVICES == 0 {
        return true;
    }
    let port = u16::from_be(addr::read_port(ctx));
    !lookups.may_be_service_port(port) || may_connect_to_port(ctx, family, port)
}

/// [`may_connect`] past its port filter. A function of its own (a
/// BPF-to-BPF call), checked by the verifier once per way out of the
/// rewrite before it instead of inlined into each: half the instructions
/// it walks for connect4. The verifier walks it with the caller's
/// registers, the family's constant among them, so it reads only the
/// caller's family's fields.
#[inline(never)]
fn may_connect_to_port(ctx: *mut bpf_sock_addr, family: u16, port: u16) -> bool {
    // SAFETY: `ctx` is the program's context.
    if unsafe { (*ctx).protocol } != u32::from(PROTO_TCP) {
        return true;
    }
    let Some(lookups) = scope::lookups() else {
        return true;
    };
    let to = addr::read_user(ctx, family);
    let (addr, family) = addr::canonical(&to.addr, family);
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { HOST_SERVICES.get(ServiceKey { addr, port, family }) }).copied()
    else {
        return true;
    };
    let granted = scope::current(ctx.cast(), lookups).is_some_and(|scope| {
        let key = ScopeGrant {
            scope: scope.id,
            service,
        };
        // SAFETY: the value is only tested for presence.
        unsafe { SCOPE_GRANTS.get(key) }.is_some()
    });
    if !granted {
        count(service, |stats| stats.borrowed += 1);
    }
    granted
}

/// Adds to this CPU's counters of `service`.
#[inline(always)]
fn count(service: u32, add: impl FnOnce(&mut ServiceStats)) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: this CPU's slot of a valid array element.
        add(unsafe { &mut *stats });
    }
}

/// Steers granted connections to a host service's listener; everything
/// else goes on to the kernel's own lookup. (Hook: Linux 5.9; the
/// ingress interface it checks: 5.17.)
#[sk_lookup]
pub fn netbpf_hostsvc(ctx: SkLookupContext) -> u32 {
    steer(&ctx);
    SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkLookupContext) {
    let lookup = ctx.lookup;
    // SAFETY: `lookup` is the program's context; these fields are readable.
    let (family, protocol, local_port, ingress) = unsafe {
        (
            (*lookup).family,
            (*lookup).protocol,
            (*lookup).local_port,
            (*lookup).ingress_ifindex,
        )
    };
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
    // SAFETY: the value is copied out at once.
    let Some(path) = (unsafe { GRANTS.get(GrantKey::new(service, remote, family)) }).copied()
    else {
        stats.refused += 1;
        return;
    };
    // A granted source that came in elsewhere (another bridge, the node's
    // loopback) is forged.
    if path.ingress != 0 && path.ingress != ingress {
        stats.forged += 1;
        return;
    }
    if SERVICE_SOCKETS.redirect_sk_lookup(ctx, service, 0).is_ok() {
        stats.steered += 1;
    } else {
        stats.down += 1;
    }
}

/// Whether `ctx`'s packet, arriving on a container's host-side interface,
/// is to be dropped: it carries a granted address it may not (its grant
/// names another interface; counted as forged), or it goes to an address
/// where a host service is reached and cannot be parsed (counted as
/// unparsed): the guard fails closed.
#[inline(always)]
pub fn refused(ctx: &TcContext) -> bool {
    let segment = match ip::parse(ctx, ETHERNET_HEADER) {
        Parsed::Tcp(segment) => segment,
        Parsed::NotTcp => return false,
        Parsed::Unparsed => return toward_service(ctx),
    };
    let Ok(port) = ctx.load::<u16>(segment.l4 + 2) else {
        return false;
    };
    // Port 0 keys a service's address alone: no connection goes there.
    let port = u16::from_be(port);
    if port == 0 {
        return false;
    }
    let family = u16::from(segment.family);
    let key = ServiceKey {
        addr: segment.dst,
        port,
        family,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { HOST_SERVICES.get(key) }).copied() else {
        return false;
    };
    // SAFETY: as above.
    let Some(path) = (unsafe { GRANTS.get(GrantKey::new(service, segment.src, family)) }).copied()
    else {
        return false;
    };
    // SAFETY: `skb` is the program's context.
    let arrived = unsafe { (*ctx.skb.skb).ifindex };
    if path.port == 0 || path.port == arrived {
        return false;
    }
    count(service, |stats| stats.forged += 1);
    true
}

/// Whether an unparsed packet goes to an address where some host service
/// is reached (counted as unparsed there).
#[inline(always)]
fn toward_service(ctx: &TcContext) -> bool {
    let Some((addr, family)) = ip::destination(ctx, ETHERNET_HEADER) else {
        return false;
    };
    let key = ServiceKey {
        addr,
        port: 0,
        family: u16::from(family),
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { HOST_SERVICES.get(key) }).copied() else {
        return false;
    };
    count(service, |stats| stats.unparsed += 1);
    true
}

/// The Ethernet header before the IP header of a container's packets.
const ETHERNET_HEADER: usize = 14;
