//! Localhost forwarding: the one rewrite path of connect and sendmsg, and
//! the reverse path of recvmsg and getpeername.

use core::ffi::c_void;

use aya_ebpf::{bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, maps::lpm_trie::Key};
use netbpf_common::{
    AF_INET, AF_INET6, FORWARD_KEY_BITS, ForwardKey, LocalBindKey, PROTO_TCP, PROTO_UDP,
    ReverseKey, RuleStats, SockAddr,
};

use crate::{
    addr,
    maps::{FORWARDS, LOCAL_BINDS, REVERSE, RULE_STATS},
    scope,
};

/// Which counter a rewrite adds to.
#[derive(Clone, Copy)]
pub enum Syscall {
    /// `connect()`: a TCP connection or a connected UDP socket.
    Connect,
    /// `sendmsg()` with a destination: one UDP datagram.
    SendMsg,
}

/// Rewrites a localhost destination of a scoped socket to its rule's
/// target, and remembers what the socket dialed for the reverse path.
#[inline(always)]
pub fn rewrite_destination(ctx: *mut bpf_sock_addr, family: u16, syscall: Syscall) {
    // SAFETY: `ctx` is the program's context.
    let protocol = unsafe { (*ctx).protocol };
    let Ok(protocol) = u8::try_from(protocol) else {
        return;
    };
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return;
    }
    let dialed = addr::read_user(ctx, family);
    if !addr::is_localhost(&dialed.addr, family) {
        return;
    }
    let Some(scope) = scope::current(ctx.cast()) else {
        return;
    };
    let port = u16::from_be(dialed.port);
    let key = Key::new(FORWARD_KEY_BITS, ForwardKey::new(scope, protocol, port));
    let Some(target) = FORWARDS.get(&key) else {
        return;
    };
    let Some(stats) = RULE_STATS.get_ptr_mut(target.rule) else {
        return;
    };
    // SAFETY: `stats` points at this CPU's slot of a valid array element.
    let stats: &mut RuleStats = unsafe { &mut *stats };
    let bound = LocalBindKey::new(scope, port, protocol);
    // SAFETY: the value is only tested for presence.
    if unsafe { LOCAL_BINDS.get(bound) }.is_some() {
        stats.local_skips += 1;
        return;
    }
    // udpv6_sendmsg() refuses a destination that a program rewrote to an
    // IPv4-mapped address (ENOTSUPP): such datagrams are left alone, and
    // reach an IPv4 target only through a connected socket.
    if matches!(syscall, Syscall::SendMsg) && family == AF_INET6 && target.family == AF_INET {
        return;
    }
    let Some(to_addr) = addr::for_socket(&target.addr, target.family, family) else {
        return;
    };
    let to = SockAddr {
        addr: to_addr,
        port: port.wrapping_add(target.port_delta).to_be(),
        family,
    };
    // A dual-stack IPv6 socket that dials an IPv4 address goes through the
    // IPv4 hooks, but its replies and getpeername() go through the IPv6
    // ones, which see IPv4-mapped addresses: remember it the way they ask.
    // SAFETY: `ctx` is the program's context.
    if family == AF_INET && unsafe { (*ctx).family } == u32::from(AF_INET6) {
        remember(ctx.cast(), addr::mapped(&to), addr::mapped(&dialed));
    } else {
        remember(ctx.cast(), to, dialed);
    }
    addr::write_user(ctx, family, &to);
    match syscall {
        Syscall::Connect => stats.connects += 1,
        Syscall::SendMsg => stats.datagrams += 1,
    }
}

/// Records that the socket of `ctx` talks to `to` in place of `dialed`.
#[inline(always)]
fn remember(ctx: *mut c_void, to: SockAddr, dialed: SockAddr) {
    let key = reverse_key(ctx, to);
    // SAFETY: the value is copied out at once.
    if unsafe { REVERSE.get(key) } == Some(&dialed) {
        return;
    }
    // A full table evicts its least recently used entry: a failure here
    // only means replies show the target's address.
    let _ = REVERSE.insert(key, dialed, 0);
}

/// Makes a peer address that netbpf rewrote look like the address the
/// application dialed (the source of a UDP reply, the result of
/// getpeername).
#[inline(always)]
pub fn restore_peer(ctx: *mut bpf_sock_addr, family: u16) {
    let key = reverse_key(ctx.cast(), addr::read_user(ctx, family));
    // SAFETY: the value is copied out at once.
    if let Some(dialed) = unsafe { REVERSE.get(key) }.copied() {
        addr::write_user(ctx, family, &dialed);
    }
}

#[inline(always)]
fn reverse_key(ctx: *mut c_void, peer: SockAddr) -> ReverseKey {
    // SAFETY: `ctx` is the program's context, as the helper requires.
    ReverseKey::new(unsafe { bpf_get_socket_cookie(ctx) }, peer)
}
