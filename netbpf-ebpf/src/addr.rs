//! Addresses as the socket hooks see them: reading and writing the user
//! address of a `bpf_sock_addr`, and classifying addresses.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
use netbpf_common::{AF_INET, AF_INET6, SockAddr};

/// `::ffff:0:0/96` marker word of an IPv4-mapped IPv6 address.
const V4_MAPPED_MARKER: u32 = 0x0000_ffff_u32.to_be();

/// The user address of `ctx` (the destination of connect and sendmsg, the
/// source of recvmsg, the peer of getpeername), for a socket of `family`.
///
/// Each field is read with its own 4-byte load, the only size the verifier
/// accepts for every field of the context.
#[inline(always)]
pub fn read_user(ctx: *const bpf_sock_addr, family: u16) -> SockAddr {
    // SAFETY: `ctx` is the program's context; the fields are in bounds.
    unsafe {
        let mut addr = [0u32; 4];
        if family == AF_INET {
            addr[0] = read_volatile(addr_of!((*ctx).user_ip4));
        } else {
            addr = read_ip6(addr_of!((*ctx).user_ip6).cast());
        }
        SockAddr {
            addr,
            port: read_port(ctx),
            family,
        }
    }
}

/// The port of the user address of `ctx`, network order.
#[inline(always)]
pub fn read_port(ctx: *const bpf_sock_addr) -> u16 {
    // SAFETY: `ctx` is the program's context; the field is in bounds.
    let port = unsafe { read_volatile(addr_of!((*ctx).user_port)) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits"
    )]
    let port = port as u16;
    port
}

/// An IPv6 address field of a context, read as four 4-byte loads: the
/// verifier rejects wider loads of these fields.
///
/// # Safety
/// `ip6` points at a 16-byte address field of the program's context.
#[inline(always)]
pub unsafe fn read_ip6(ip6: *const u32) -> [u32; 4] {
    // SAFETY: the caller's promise.
    unsafe {
        [
            read_volatile(ip6),
            read_volatile(ip6.add(1)),
            read_volatile(ip6.add(2)),
            read_volatile(ip6.add(3)),
        ]
    }
}

/// Replaces the user address of `ctx`, a context of a socket of `family`,
/// with `to`. `family` must be a constant of the calling program: the
/// verifier rejects even an untaken store to the other family's field.
#[inline(always)]
pub fn write_user(ctx: *mut bpf_sock_addr, family: u16, to: &SockAddr) {
    // SAFETY: `ctx` is the program's context; these fields are writable in
    // every hook netbpf attaches to `bpf_sock_addr`.
    unsafe {
        if family == AF_INET {
            write_volatile(addr_of_mut!((*ctx).user_ip4), to.addr[0]);
        } else {
            let ip6 = addr_of_mut!((*ctx).user_ip6).cast::<u32>();
            write_volatile(ip6, to.addr[0]);
            write_volatile(ip6.add(1), to.addr[1]);
            write_volatile(ip6.add(2), to.addr[2]);
            write_volatile(ip6.add(3), to.addr[3]);
        }
        write_volatile(addr_of_mut!((*ctx).user_port), u32::from(to.port));
    }
}

/// Whether an IPv4 address (network order) is in 127.0.0.0/8.
#[inline(always)]
fn is_loopback4(addr: u32) -> bool {
    u32::from_be(addr) >> 24 == 127
}

/// Whether `addr` of `family` is localhost: 127.0.0.0/8, `::1` or
/// `::ffff:127.0.0.0/104`.
#[inline(always)]
pub fn is_localhost(addr: &[u32; 4], family: u16) -> bool {
    if family == AF_INET {
        return is_loopback4(addr[0]);
    }
    if addr[0] != 0 || addr[1] != 0 {
        return false;
    }
    (addr[2] == 0 && addr[3] == 1u32.to_be())
        || (addr[2] == V4_MAPPED_MARKER && is_loopback4(addr[3]))
}

/// Whether `addr` of `family` is a wildcard: `0.0.0.0`, `::` or
/// `::ffff:0.0.0.0`.
#[inline(always)]
pub fn is_wildcard(addr: &[u32; 4], family: u16) -> bool {
    if family == AF_INET {
        return addr[0] == 0;
    }
    addr[0] == 0 && addr[1] == 0 && (addr[2] == 0 || addr[2] == V4_MAPPED_MARKER) && addr[3] == 0
}

/// The loopback address Linux connects to in place of the wildcard `addr`
/// of `family`: `0.0.0.0` is `127.0.0.1`, `::` is `::1`, and
/// `::ffff:0.0.0.0` is `::ffff:127.0.0.1`.
#[inline(always)]
pub fn loopback_for_wildcard(addr: &[u32; 4], family: u16) -> [u32; 4] {
    let loopback4 = 0x7f00_0001_u32.to_be();
    if family == AF_INET {
        [loopback4, 0, 0, 0]
    } else if addr[2] == V4_MAPPED_MARKER {
        [0, 0, V4_MAPPED_MARKER, loopback4]
    } else {
        [0, 0, 0, 1u32.to_be()]
    }
}

/// `addr` of a socket of `family` in its own family: an IPv4-mapped IPv6
/// address is IPv4.
#[inline(always)]
pub fn canonical(addr: &[u32; 4], family: u16) -> ([u32; 4], u16) {
    if family == AF_INET6 && addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_MARKER {
        ([addr[3], 0, 0, 0], AF_INET)
    } else {
        (*addr, family)
    }
}

/// `addr`, seen by an IPv4 hook, as an IPv6 socket sees it: IPv4-mapped.
#[inline(always)]
pub fn mapped(addr: &SockAddr) -> SockAddr {
    SockAddr {
        addr: [0, 0, V4_MAPPED_MARKER, addr.addr[0]],
        port: addr.port,
        family: AF_INET6,
    }
}

/// `target` (of `target_family`) as an address of a socket of
/// `socket_family`: IPv4 targets of IPv6 sockets become IPv4-mapped; an
/// IPv6 target cannot be reached from an IPv4 socket.
#[inline(always)]
pub fn for_socket(target: &[u32; 4], target_family: u16, socket_family: u16) -> Option<[u32; 4]> {
    match (target_family, socket_family) {
        (AF_INET, AF_INET6) => Some([0, 0, V4_MAPPED_MARKER, target[0]]),
        (a, b) if a == b => Some(*target),
        _ => None,
    }
}
