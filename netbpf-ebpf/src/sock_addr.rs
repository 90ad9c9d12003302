//! Programs on the cgroup `bpf_sock_addr` hooks: the socket calls whose
//! address netbpf rewrites, or restores for the application.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use netbpf_common::{AF_INET, AF_INET6};

use crate::{
    ALLOW, REFUSE, bind,
    forward::{self, Reverse, Syscall},
    host_service,
};

/// Forwards an IPv4 `connect()` to localhost or an alias, and refuses a
/// connect to a host service from a scope not granted it.
/// (Hook: Linux 4.17.)
#[cgroup_sock_addr(connect4)]
pub fn netbpf_connect4(ctx: SockAddrContext) -> i32 {
    connect(ctx.sock_addr, AF_INET)
}

/// Forwards an IPv6 `connect()` to `::1`, `::ffff:127.0.0.0/104` or an
/// alias, and refuses a connect to a host service from a scope not granted
/// it. (Hook: Linux 4.17.)
#[cgroup_sock_addr(connect6)]
pub fn netbpf_connect6(ctx: SockAddrContext) -> i32 {
    connect(ctx.sock_addr, AF_INET6)
}

#[inline(always)]
fn connect(ctx: *mut aya_ebpf::bindings::bpf_sock_addr, family: u16) -> i32 {
    forward::rewrite_destination(ctx, family, Syscall::Connect);
    if host_service::may_connect(ctx, family) {
        ALLOW
    } else {
        REFUSE
    }
}

/// Forwards an IPv4 UDP datagram sent to localhost. (Hook: Linux 4.18.)
#[cgroup_sock_addr(sendmsg4)]
pub fn netbpf_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward::rewrite_destination(ctx.sock_addr, AF_INET, Syscall::SendMsg);
    ALLOW
}

/// Forwards an IPv6 UDP datagram sent to localhost. (Hook: Linux 4.18.)
#[cgroup_sock_addr(sendmsg6)]
pub fn netbpf_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward::rewrite_destination(ctx.sock_addr, AF_INET6, Syscall::SendMsg);
    ALLOW
}

/// Shows an IPv4 UDP reply as coming from the address the socket dialed.
/// (Hook: Linux 5.2.)
#[cgroup_sock_addr(recvmsg4)]
pub fn netbpf_recvmsg4(ctx: SockAddrContext) -> i32 {
    forward::restore_peer(ctx.sock_addr, AF_INET, Reverse::Reply);
    ALLOW
}

/// Shows an IPv6 UDP reply as coming from the address the socket dialed.
/// (Hook: Linux 5.2.)
#[cgroup_sock_addr(recvmsg6)]
pub fn netbpf_recvmsg6(ctx: SockAddrContext) -> i32 {
    forward::restore_peer(ctx.sock_addr, AF_INET6, Reverse::Reply);
    ALLOW
}

/// Answers IPv4 `getpeername()` with the address the socket dialed.
/// (Hook: Linux 5.8.)
#[cgroup_sock_addr(getpeername4)]
pub fn netbpf_getpeer4(ctx: SockAddrContext) -> i32 {
    forward::restore_peer(ctx.sock_addr, AF_INET, Reverse::PeerName);
    ALLOW
}

/// Answers IPv6 `getpeername()` with the address the socket dialed.
/// (Hook: Linux 5.8.)
#[cgroup_sock_addr(getpeername6)]
pub fn netbpf_getpeer6(ctx: SockAddrContext) -> i32 {
    forward::restore_peer(ctx.sock_addr, AF_INET6, Reverse::PeerName);
    ALLOW
}

/// Remaps the port of an IPv4 `bind()` in a scope. (Hook: Linux 4.17.)
#[cgroup_sock_addr(bind4)]
pub fn netbpf_bind4(ctx: SockAddrContext) -> i32 {
    bind::remap(ctx.sock_addr, AF_INET);
    ALLOW
}

/// Remaps the port of an IPv6 `bind()` in a scope. (Hook: Linux 4.17.)
#[cgroup_sock_addr(bind6)]
pub fn netbpf_bind6(ctx: SockAddrContext) -> i32 {
    bind::remap(ctx.sock_addr, AF_INET6);
    ALLOW
}
