//! The one rewrite path of connect and sendmsg (localhost forwards and
//! aliases of exact addresses), and the reverse path of recvmsg and
//! getpeername.

use core::ffi::c_void;

use aya_ebpf::{bindings::bpf_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};
use netbpf_common::{
    AF_INET, AF_INET6, AliasKey, AliasedAddr, CgroupForward, CgroupPort, DIALED_PER_SOCKET,
    DerivedPeer, DerivedPeerKey, Dialed, FORWARD_KEY_BITS, ForwardKey, ForwardTarget,
    LOOKUP_ALIASES, PROTO_TCP, PROTO_UDP, RuleStats, SCOPE_PORT_RANGES, ScopeEntry, ScopePort,
    SockAddr, port_set_bit,
};

use crate::{
    addr,
    maps::{
        ALIASED_ADDRS, ALIASES, CGROUP_FORWARDS, DERIVED_PEERS, FORWARD_PORTS, FORWARDS,
        LOCAL_BINDS, LOCALHOST_PORTS, REVERSE, RULE_STATS, SCOPE_LOCAL_BINDS,
    },
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

/// Rewrites a localhost destination (a wildcard one included) of a scoped
/// socket to its rule's target, and remembers what the socket dialed for
/// the reverse path.
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
    let mut dialed = addr::read_user(ctx, family);
    // Linux connects a wildcard destination to loopback: it is localhost,
    // and the application sees the loopback address as its peer.
    if addr::is_wildcard(&dialed.addr, family) {
        dialed.addr = addr::loopback_for_wildcard(&dialed.addr, family);
    }
    let port = u16::from_be(dialed.port);
    // Most destinations are none a rule may rewrite: a localhost port no
    // scope forwards, or another address on a node without aliases. They
    // stop at one bit, and never call the rewrite.
    let localhost = addr::is_localhost(&dialed.addr, family);
    let candidate = if localhost {
        forwarded_somewhere(port)
    } else {
        scope::lookups().is_some_and(|lookups| lookups.flags & LOOKUP_ALIASES != 0)
    };
    if candidate && rewrite(ctx, &dialed, family, localhost, protocol, syscall) {
        return;
    }
    let seen = as_socket_sees(ctx, dialed, family);
    // A TCP socket connects once: only UDP sockets reach, unrewritten,
    // a destination they also reached through a rewrite. A TCP socket
    // may reach a peer that getpeername() would derive otherwise.
    // (sendmsg sees UDP only: the branch folds away there.)
    if protocol == PROTO_UDP {
        reached_directly(ctx, seen, syscall);
    } else if matches!(syscall, Syscall::Connect)
        && scope::lookups()
            .is_some_and(|lookups| lookups.may_be_rewritten_peer(&seen.addr, seen.port))
    {
        reached_derived_peer(ctx, seen, family);
    }
}

/// [`rewrite_to_target`] made for the program's family and for whether
/// `dialed` is `localhost`. Both are constants there: the verifier walks
/// each kind's rewrite only for its own destinations, and LLVM, given the
/// family as a parameter, wrote the user address through a pointer the
/// verifier refuses.
#[inline(always)]
fn rewrite(
    ctx: *mut bpf_sock_addr,
    dialed: &SockAddr,
    family: u16,
    localhost: bool,
    protocol: u8,
    syscall: Syscall,
) -> bool {
    match (family == AF_INET, localhost) {
        (true, true) => rewrite_to_target::<AF_INET, true>(ctx, dialed, protocol, syscall),
        (true, false) => rewrite_to_target::<AF_INET, false>(ctx, dialed, protocol, syscall),
        (false, true) => rewrite_to_target::<AF_INET6, true>(ctx, dialed, protocol, syscall),
        (false, false) => rewrite_to_target::<AF_INET6, false>(ctx, dialed, protocol, syscall),
    }
}

/// Rewrites `dialed` (a localhost port some scope forwards, or an address
/// on a node with aliases) to the target of the caller's rule, if it has
/// one, and remembers what the socket dialed; false when no rule of the
/// caller's scope matches. A function of its own (a BPF-to-BPF call,
/// with a machine image of its own): inlined, the rewrite spread the path
/// of the connects it rules out over most of a 6 KB image.
#[inline(never)]
fn rewrite_to_target<const FAMILY: u16, const LOCALHOST: bool>(
    ctx: *mut bpf_sock_addr,
    dialed: &SockAddr,
    protocol: u8,
    syscall: Syscall,
) -> bool {
    let family = FAMILY;
    let port = u16::from_be(dialed.port);
    let target = if LOCALHOST {
        localhost_target(ctx, dialed, port, protocol)
    } else {
        alias_target(ctx, dialed, family, port, protocol)
    };
    let Some((target, stats)) = target else {
        return false;
    };
    // A datagram of an IPv6 socket is left alone for an IPv4 target: it
    // reaches one only through a connected socket.
    let datagram = matches!(syscall, Syscall::SendMsg);
    let Some(to) = addr::forwarded(&target, port, family, datagram) else {
        return true;
    };
    let to_seen = as_socket_sees(ctx, to, family);
    let dialed_seen = as_socket_sees(ctx, *dialed, family);
    // A TCP connect that getpeername() derives exactly keeps nothing: no
    // storage to make, the most a connect could cost.
    let derived = matches!(syscall, Syscall::Connect)
        && protocol == PROTO_TCP
        && target.derives_peer()
        && addr::derived_dialed(&to_seen, dialed_seen.port) == dialed_seen;
    if !derived
        && !remember(
            ctx,
            Dialed {
                to: to_seen,
                dialed: dialed_seen,
                rule: target.rule,
            },
        )
    {
        stats.unremembered += 1;
    }
    addr::write_user(ctx, family, &to);
    match syscall {
        Syscall::Connect => stats.connects += 1,
        Syscall::SendMsg => stats.datagrams += 1,
    }
    true
}

/// Where a localhost `port` of the caller's scope leads: its own service
/// on the port its bind was remapped to; else its forward, unless a
/// socket of the scope is bound there (counted as a local skip). The
/// caller has ruled out the ports no scope forwards
/// ([`forwarded_somewhere`]).
#[inline(always)]
fn localhost_target(
    ctx: *mut bpf_sock_addr,
    dialed: &SockAddr,
    port: u16,
    protocol: u8,
) -> Option<(ForwardTarget, &'static mut RuleStats)> {
    let (scope, target) = port_of_scope(ctx.cast(), port, protocol)?;
    let this_port = ScopePort::new(scope, port, protocol);
    if target.is_own_service() {
        let own = ForwardTarget {
            addr: dialed.addr,
            family: dialed.family,
            ..target
        };
        return Some((own, rule_stats(own.rule)?));
    }
    let stats = rule_stats(target.rule)?;
    // A scope none of whose sockets is bound on a forwarded port (most)
    // has nothing in LOCAL_BINDS: its count, an array element, says so.
    // SAFETY: the value is only tested for presence.
    if has_local_binds(scope) && unsafe { LOCAL_BINDS.get(this_port) }.is_some() {
        stats.local_skips += 1;
        return None;
    }
    Some((target, stats))
}

/// The caller's scope (its id) and the forward of its localhost `port`,
/// or the own service a bind remap moved there: one lookup by the task's
/// cgroup when that is a scope instance's, else the scope, then its port.
/// Callers first rule out the ports no scope forwards
/// ([`forwarded_somewhere`]).
#[inline(always)]
pub fn port_of_scope(ctx: *mut c_void, port: u16, protocol: u8) -> Option<(u32, ForwardTarget)> {
    let lookups = scope::lookups()?;
    let deepest = scope::deepest(lookups);
    if let Some(found) = deepest.and_then(|at| forward_by_cgroup(at, port, protocol)) {
        return Some((found.scope, found.target));
    }
    let scope = scope::of(ctx, lookups, deepest)?;
    let target = forward_of(&scope, ScopePort::new(scope.id, port, protocol))?;
    Some((scope.id, target))
}

/// Whether some scope forwards or remaps localhost `port`: most binds,
/// and connects to a port no scope forwards, stop at this bit, before the
/// cgroup helper and the lookups by cgroup (an array lookup the verifier
/// inlines).
#[inline(always)]
pub fn forwarded_somewhere(port: u16) -> bool {
    let (word, bit) = port_set_bit(port);
    LOCALHOST_PORTS
        .get(word)
        .is_none_or(|&bits| bits & bit != 0)
}

/// Whether `LOCAL_BINDS` may hold ports of scope `scope`: the count of
/// its ports there goes up before an entry is added and down after one is
/// removed, so a count of zero is exact.
#[inline(always)]
fn has_local_binds(scope: u32) -> bool {
    SCOPE_LOCAL_BINDS.get(scope).is_none_or(|&ports| ports != 0)
}

/// The exact-port forward of the scope whose instance is the task's
/// cgroup at the deepest level (`at`), if it is one: one lookup finds
/// the scope and its forward. Only cgroups of scope instances are keys,
/// and no scope is deeper, so a hit is what the scope lookup would find.
#[inline(always)]
fn forward_by_cgroup(at: scope::Deepest, port: u16, protocol: u8) -> Option<CgroupForward> {
    if at.id == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { CGROUP_FORWARDS.get(CgroupPort::new(at.id, port, protocol)) }.copied()
}

/// The forward of localhost port `key` of `scope`, or the own service a
/// bind remap moved there. Exact ports are one hash lookup; the trie of
/// port ranges is looked up only in scopes that have ranges.
#[inline(always)]
fn forward_of(scope: &ScopeEntry, key: ScopePort) -> Option<ForwardTarget> {
    // SAFETY: the value is copied out at once.
    if let Some(target) = unsafe { FORWARD_PORTS.get(key) }.copied() {
        return Some(target);
    }
    if scope.flags & SCOPE_PORT_RANGES == 0 {
        return None;
    }
    let trie_key = Key::new(
        FORWARD_KEY_BITS,
        ForwardKey::new(scope.id, key.protocol, key.port),
    );
    FORWARDS.get(&trie_key).copied()
}

/// The alias of the exact address and port `dialed` in the caller's
/// scope. Most connections dial no alias: on a node without aliases the
/// caller looks up none, and a lookup by address alone rules the others
/// out before the scope is looked up.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied anew, its middle zeroed by `memset`"
)]
fn alias_target(
    ctx: *mut bpf_sock_addr,
    dialed: &SockAddr,
    family: u16,
    port: u16,
    protocol: u8,
) -> Option<(ForwardTarget, &'static mut RuleStats)> {
    let lookups = scope::lookups()?;
    let (addr, addr_family) = addr::canonical(&dialed.addr, family);
    // Each key is written once, and only its port changes between its two
    // lookups; both are passed by reference.
    let mut aliased = AliasedAddr {
        addr,
        port,
        family: addr_family,
    };
    // An alias of one port, or of every port of the address (port 0). The
    // tests stay sequential: LLVM would otherwise OR the two map pointers,
    // which the verifier refuses.
    // SAFETY (of both): the value is only tested for presence.
    if unsafe { ALIASED_ADDRS.get(&aliased) }.is_none() {
        aliased.port = 0;
        unsafe { ALIASED_ADDRS.get(&aliased) }?;
    }
    let scope = scope::current(ctx.cast(), lookups)?;
    let mut key = AliasKey::new(scope.id, addr, addr_family, aliased.port, protocol);
    // SAFETY (of both): the value is copied out at once.
    let target = match unsafe { ALIASES.get(&key) }.copied() {
        Some(target) => target,
        None if key.port != 0 => {
            key.port = 0;
            unsafe { ALIASES.get(&key) }.copied()?
        }
        None => return None,
    };
    Some((target, rule_stats(target.rule)?))
}

/// This CPU's counters of rule `rule`.
#[inline(always)]
pub fn rule_stats(rule: u32) -> Option<&'static mut RuleStats> {
    // SAFETY: the pointer is to this CPU's slot of a valid array element,
    // used within this program run only.
    RULE_STATS
        .get_ptr_mut(rule)
        .map(|stats| unsafe { &mut *stats })
}

/// `addr`, seen by a hook of `family`, as the socket of `ctx` sees it in
/// its replies and `getpeername()`: a dual-stack IPv6 socket that dials an
/// IPv4 address goes through the IPv4 hooks, but its replies go through
/// the IPv6 ones, which see IPv4-mapped addresses.
#[inline(always)]
fn as_socket_sees(ctx: *mut bpf_sock_addr, addr: SockAddr, family: u16) -> SockAddr {
    // SAFETY: `ctx` is the program's context.
    if family == AF_INET && unsafe { (*ctx).family } == u32::from(AF_INET6) {
        addr::mapped(&addr)
    } else {
        addr
    }
}

/// The socket of `ctx` reached `peer` without a rewrite. Where it also
/// reached `peer` through one, replies from `peer` cannot be told apart:
/// a connect makes `peer` its only peer, so that reverse path goes (exact);
/// a datagram leaves it ambiguous, counted as a reverse path lost on the
/// rule that rewrote it.
#[inline(always)]
fn reached_directly(ctx: *mut bpf_sock_addr, peer: SockAddr, syscall: Syscall) {
    let context = SockAddrContext { sock_addr: ctx };
    // SAFETY: as in `remember`; most sockets have no storage.
    let Some(by_socket) = (unsafe { REVERSE.get_ptr_mut(&context).as_mut() }) else {
        return;
    };
    for index in 0..DIALED_PER_SOCKET {
        let entry = &mut by_socket.entries[index];
        if entry.to != peer {
            continue;
        }
        match syscall {
            Syscall::Connect => entry.to.family = 0,
            Syscall::SendMsg => {
                if let Some(stats) = rule_stats(entry.rule) {
                    stats.unremembered += 1;
                }
            }
        }
    }
}

/// How the peer in a socket's user address may have come from a rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PeerOrigin {
    /// Neither: no rewrite gives that peer, and the socket's storage is
    /// not looked at. Most peers.
    Dialed,
    /// A localhost address: an own service's target, kept in storage.
    Localhost,
    /// A target in the lookups' filter: kept in storage, or a derived
    /// peer.
    Target,
}

/// How the peer in the user address of `ctx` (of a hook of `family`) may
/// have come from a rewrite. The address is read here, apart from the
/// caller's copy: what the tests teach the verifier of these registers
/// would otherwise split its walk of the caller's lookups three ways.
#[inline(always)]
fn peer_origin(ctx: *mut bpf_sock_addr, family: u16) -> PeerOrigin {
    let Some(lookups) = scope::lookups() else {
        return PeerOrigin::Dialed;
    };
    let peer = addr::read_user(ctx, family);
    if lookups.may_be_rewritten_peer(&peer.addr, peer.port) {
        PeerOrigin::Target
    } else if addr::is_localhost(&peer.addr, family) {
        PeerOrigin::Localhost
    } else {
        PeerOrigin::Dialed
    }
}

/// The derived peer of `peer` (as the socket of `ctx` sees it) for the
/// caller's scope instance, if `peer` is one: one lookup by the task's
/// cgroup when that is the instance's, as for a forward by cgroup. The
/// caller has found `peer` in the lookups' filter of rewritten peers,
/// which rules out most peers.
#[inline(always)]
fn derived_peer(ctx: *mut bpf_sock_addr, peer: &SockAddr, family: u16) -> Option<DerivedPeer> {
    let lookups = scope::lookups()?;
    let (addr, family) = addr::canonical(&peer.addr, family);
    let peer = SockAddr {
        addr,
        port: peer.port,
        family,
    };
    scope::by_instance(ctx.cast(), lookups, |instance| {
        // SAFETY: the value is copied out at once.
        unsafe { DERIVED_PEERS.get(DerivedPeerKey::new(instance, peer)) }.copied()
    })
}

/// A TCP socket of `ctx` connects, unrewritten, to `peer` (as it sees it):
/// where `getpeername()` would derive a dialed address for that peer, its
/// storage says the peer is itself. Lost (no storage) it is counted on
/// the forward whose peer it is. A function of its own (a BPF-to-BPF
/// call, made only for a peer the filter lets through): the verifier
/// walks it apart from the rewrite path.
#[inline(never)]
fn reached_derived_peer(ctx: *mut bpf_sock_addr, peer: SockAddr, family: u16) {
    let Some(derived) = derived_peer(ctx, &peer, family) else {
        return;
    };
    let itself = Dialed {
        to: peer,
        dialed: peer,
        rule: derived.rule,
    };
    if !remember(ctx, itself)
        && let Some(stats) = rule_stats(derived.rule)
    {
        stats.unremembered += 1;
    }
}

/// Records what the socket of `ctx` dialed and where it went instead, in
/// the socket's own storage. False when something was lost: the storage
/// could not be made, or a destination the socket dialed before was
/// forgotten to make room.
#[inline(always)]
fn remember(ctx: *mut bpf_sock_addr, dialed: Dialed) -> bool {
    let context = SockAddrContext { sock_addr: ctx };
    // SAFETY: the storage of the context's socket, made if it has none; a
    // pointer the kernel keeps valid for this program run.
    let Some(by_socket) = (unsafe { REVERSE.get_or_insert_ptr_mut(&context, None).as_mut() })
    else {
        return false;
    };
    for index in 0..DIALED_PER_SOCKET {
        if by_socket.entries[index].to == dialed.to {
            by_socket.entries[index] = dialed;
            return true;
        }
    }
    let slot = by_socket.next as usize % DIALED_PER_SOCKET;
    // A slot of family 0 is free (never used, or its peer was reached
    // directly since).
    let forgotten = by_socket.entries[slot].to.family != 0;
    by_socket.entries[slot] = dialed;
    by_socket.next = by_socket.next.wrapping_add(1);
    !forgotten
}

/// Which address of a socket's peer the reverse path shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reverse {
    /// The source of a UDP reply (`recvmsg()`): only UDP sockets reach
    /// that hook, and their rewrites all keep storage.
    Reply,
    /// The result of `getpeername()`, of a TCP socket too, whose dialed
    /// address may be derived.
    PeerName,
}

/// Makes a peer address that netbpf rewrote look like the address the
/// application dialed.
#[inline(always)]
pub fn restore_peer(ctx: *mut bpf_sock_addr, family: u16, reverse: Reverse) {
    // Only `getpeername()` tests the filter first: a socket without
    // storage goes on there to its protocol and a derived lookup. A UDP
    // reply's path ends at the storage, whose miss costs what the filter
    // does (measured by the bench), and whose reply mostly comes from a
    // target, which the filter lets through anyway.
    let origin = (reverse == Reverse::PeerName).then(|| peer_origin(ctx, family));
    if origin == Some(PeerOrigin::Dialed) {
        return;
    }
    let context = SockAddrContext { sock_addr: ctx };
    let peer = addr::read_user(ctx, family);
    // SAFETY: as in `remember`.
    let Some(by_socket) = (unsafe { REVERSE.get_ptr_mut(&context).as_ref() }) else {
        // A socket without storage dialed nothing netbpf rewrote, but for
        // a TCP connect whose dialed address its peer gives back.
        // SAFETY: `ctx` is the program's context.
        if origin == Some(PeerOrigin::Target)
            && unsafe { (*ctx).protocol } == u32::from(PROTO_TCP)
            && let Some(derived) = derived_peer(ctx, &peer, family)
        {
            addr::write_user(ctx, family, &addr::derived_dialed(&peer, derived.port));
        }
        return;
    };
    for index in 0..DIALED_PER_SOCKET {
        let entry = by_socket.entries[index];
        if entry.to == peer {
            addr::write_user(ctx, family, &entry.dialed);
            return;
        }
    }
}
