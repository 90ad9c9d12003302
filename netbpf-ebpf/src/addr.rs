//! Addresses as the socket hooks see them: reading and writing the user
//! address of a `bpf_sock_addr`. How they are classified and rewritten is
//! `netbpf_common::addr`'s, tested on the host.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
// The classes and rewrites of `netbpf_common::addr`, where the hooks
// find them with the context's reads and writes.
pub use netbpf_common::addr::{
    canonical, derived_dialed, forwarded, is_localhost, is_wildcard, loopback_for_wildcard, mapped,
};
use netbpf_common::{AF_INET, SockAddr};

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
