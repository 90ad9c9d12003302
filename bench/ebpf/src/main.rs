//! Designs of what a connect hook keeps so that `getpeername()` and
//! replies can show the address a socket dialed, each the one thing a
//! program of its own does. The bench attaches one design at a time to a
//! cgroup of its own and times it with the kernel's run-time statistics,
//! beside an empty program at the same hook: what each design adds to a
//! connect, and what it holds per live socket. netbpf's connect4 keeps
//! what it rewrote the first way, but for a TCP connect whose rule tells
//! what it dialed. The parts of finding a socket's scope, each alone,
//! say what every program that needs the scope pays for it.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
#![expect(
    clippy::inline_always,
    reason = "the verifier checks each program with the context's fields it reads"
)]

use core::{
    ffi::c_void,
    ptr::{self, addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, generated::bpf_sk_storage_get,
    },
    macros::{btf_map, cgroup_sock, cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockContext},
};
use netbpf_common::{
    AF_INET, CgroupForward, CgroupPort, DIALED_PER_SOCKET, Dialed, DialedBySocket,
    MAX_FORWARD_PORTS, MAX_SCOPES, PROTO_UDP, SockAddr,
};

/// Verdict of a cgroup socket program that lets the syscall go on.
const ALLOW: i32 = 1;

/// Verdict that fails the syscall: never reached, the parts' maps are
/// empty.
const REFUSE: i32 = 0;

/// How many sockets the tables keyed by socket hold: more than the most
/// live sockets the bench opens.
const SOCKETS: u32 = 1 << 18;

/// Per socket, in its own storage: what it dialed (netbpf's design).
/// Made on its first connect, freed by the kernel with the socket.
#[btf_map]
static IN_STORAGE: SkStorage<DialedBySocket> = SkStorage::new();

/// Socket cookie -> what it dialed: a hash preallocated at capacity, its
/// entry deleted when the socket is released.
#[map]
static BY_COOKIE: HashMap<u64, Dialed> = HashMap::with_max_entries(SOCKETS, 0);

/// (socket cookie, destination) -> the destination dialed: an LRU, the
/// least recently used entry evicted when full, as Cilium's
/// `cilium_lb4_reverse_sk`.
#[map]
static BY_FLOW: LruHashMap<Flow, SockAddr> = LruHashMap::with_max_entries(SOCKETS, 0);

/// Key of [`BY_FLOW`]: a socket and where it connected.
#[repr(C)]
#[derive(Clone, Copy)]
struct Flow {
    cookie: u64,
    to: SockAddr,
    /// Zero: a key's bytes are all hashed, padding included.
    _pad: u32,
}

/// Keeps what the socket dialed in its storage, made if it has none.
#[cgroup_sock_addr(connect4)]
pub fn remember_in_storage(ctx: SockAddrContext) -> i32 {
    let dialed = dialed(&ctx);
    // SAFETY: the storage of the context's socket, made if it has none; a
    // pointer the kernel keeps valid for this program run.
    if let Some(by_socket) = unsafe { IN_STORAGE.get_or_insert_ptr_mut(&ctx, None).as_mut() } {
        let slot = by_socket.next as usize % DIALED_PER_SOCKET;
        by_socket.entries[slot] = dialed;
        by_socket.next = by_socket.next.wrapping_add(1);
    }
    ALLOW
}

/// Keeps what the socket dialed under its cookie.
#[cgroup_sock_addr(connect4)]
pub fn remember_by_cookie(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // A full table refuses: the design would count it.
    let _ = BY_COOKIE.insert(cookie, dialed(&ctx), 0);
    ALLOW
}

/// Deletes a released socket's entry of [`BY_COOKIE`].
#[cgroup_sock(sock_release)]
pub fn forget_by_cookie(ctx: SockContext) -> i32 {
    // SAFETY: the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // Most sockets dialed nothing: their entry is missing.
    let _ = BY_COOKIE.remove(cookie);
    ALLOW
}

/// Keeps the destination dialed under the socket's cookie and where it
/// connected.
#[cgroup_sock_addr(connect4)]
pub fn remember_by_flow(ctx: SockAddrContext) -> i32 {
    let dialed = dialed(&ctx);
    // SAFETY: the program's context, as the helper requires.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let flow = Flow {
        cookie,
        to: dialed.to,
        _pad: 0,
    };
    // An LRU makes room by evicting: the insert does not fail.
    let _ = BY_FLOW.insert(flow, dialed.dialed, 0);
    ALLOW
}

/// Cgroup id -> nothing: a hash the size of netbpf's scope map, empty,
/// for the parts of finding a scope.
#[map]
static SCOPES: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SCOPES, BPF_F_NO_PREALLOC);

/// The cgroup depth the parts look at: the bench's cgroup is at least
/// this deep.
const LEVEL: i32 = 1;

/// A part of finding a scope: the helper that names the task's cgroup at
/// one depth, as netbpf's scope lookup calls it.
#[cgroup_sock_addr(connect4)]
pub fn find_cgroup(_ctx: SockAddrContext) -> i32 {
    // SAFETY: a helper without pointer arguments.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(LEVEL) };
    // Used, so that the call stays.
    if id == u64::MAX { REFUSE } else { ALLOW }
}

/// A part of finding a scope: a lookup that misses in the scope-sized
/// hash, keyed by what the context holds (no helper).
#[cgroup_sock_addr(connect4)]
pub fn miss_in_hash(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's context; connect4 may read the field.
    let port = unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_port)) };
    // SAFETY: only tested for presence.
    if unsafe { SCOPES.get(u64::from(port)) }.is_some() {
        REFUSE
    } else {
        ALLOW
    }
}

/// Finding no scope: the cgroup helper, then a lookup that misses, as a
/// socket of no scope meets netbpf's scope lookup.
#[cgroup_sock_addr(connect4)]
pub fn find_no_scope(_ctx: SockAddrContext) -> i32 {
    // SAFETY: a helper without pointer arguments.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(LEVEL) };
    // SAFETY: only tested for presence.
    if unsafe { SCOPES.get(id) }.is_some() {
        REFUSE
    } else {
        ALLOW
    }
}

/// (cgroup, port, protocol) -> its forward: a hash the size of netbpf's
/// forwards by cgroup, holding the one forward of the bench's cgroup.
#[map]
static FORWARDS_BY_CGROUP: HashMap<CgroupPort, CgroupForward> =
    HashMap::with_max_entries(MAX_FORWARD_PORTS, BPF_F_NO_PREALLOC);

/// A rewritten connect at its floor: the task's cgroup, the lookup that
/// finds its forward by cgroup and port, and the destination rewritten;
/// what netbpf's connect4 does at least, for a connect that keeps nothing.
#[cgroup_sock_addr(connect4)]
pub fn rewrite_at_floor(ctx: SockAddrContext) -> i32 {
    let context = ctx.sock_addr;
    // SAFETY: a helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(LEVEL) };
    // SAFETY: the program's context; connect4 may read the field.
    let port = unsafe { read_volatile(addr_of!((*context).user_port)) };
    let port = u16::from_be(u16::try_from(port).unwrap_or_default());
    // SAFETY: the value is copied out at once.
    let Some(forward) =
        (unsafe { FORWARDS_BY_CGROUP.get(CgroupPort::new(cgroup, port, PROTO_UDP)) }).copied()
    else {
        // Never: the bench wrote the forward of its cgroup's port.
        return REFUSE;
    };
    let to = port.wrapping_add(forward.target.port_delta);
    // SAFETY: the program's context; connect4 may write these fields.
    unsafe {
        (*context).user_ip4 = forward.target.addr[0];
        (*context).user_port = u32::from(to.to_be());
    }
    ALLOW
}

/// Per socket: never anything, so that every lookup misses.
#[btf_map]
static NEVER_STORED: SkStorage<u64> = SkStorage::new();

/// The part every socket of no scope meets at the hooks that answer from
/// a socket's storage (release, recvmsg, getpeername): a lookup of its
/// storage, which it has none of.
#[cgroup_sock_addr(connect4)]
pub fn miss_in_storage(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context's socket, looked up without making storage.
    if unsafe { NEVER_STORED.get_ptr_mut(&ctx) }.is_null() {
        ALLOW
    } else {
        REFUSE
    }
}

/// [`miss_in_storage`] at the release hook, where netbpf's release looks
/// for a counted bind: a socket closed long after its connect may have
/// gone cold meanwhile.
#[cgroup_sock(sock_release)]
pub fn miss_in_storage_at_release(ctx: SockContext) -> i32 {
    let map: *mut c_void = ptr::from_ref(&NEVER_STORED).cast_mut().cast();
    // SAFETY: the context's socket, looked up without making storage;
    // this hook may use socket storage.
    let found = unsafe { bpf_sk_storage_get(map, ctx.sock.cast(), ptr::null_mut(), 0) };
    if found.is_null() { ALLOW } else { REFUSE }
}

/// What the socket of `ctx` dials, as netbpf keeps a rewritten one: here
/// nothing is rewritten, so where it goes is what it dialed.
#[inline(always)]
fn dialed(ctx: &SockAddrContext) -> Dialed {
    let context = ctx.sock_addr;
    // SAFETY: the program's context; connect4 may read these fields.
    let (ip, port) = unsafe {
        (
            read_volatile(addr_of!((*context).user_ip4)),
            read_volatile(addr_of!((*context).user_port)),
        )
    };
    let to = SockAddr {
        addr: [ip, 0, 0, 0],
        port: u16::try_from(port).unwrap_or_default(),
        family: AF_INET,
    };
    Dialed {
        to,
        dialed: to,
        rule: 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
