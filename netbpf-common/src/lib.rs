//! Map keys and values shared by netbpf's kernel programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, made of fields of explicit width with
//! explicit padding, and its size is asserted at compile time, so the kernel
//! side and the userspace side can never disagree on a layout. With the
//! `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod addr;
pub mod mss;
pub mod names;

use core::mem::size_of;
use core::ops::RangeInclusive;

/// `AF_INET`, as the kernel reports a socket's family.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the kernel reports a socket's family.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Version of the layout of every map: bump it whenever a map's key,
/// value, type or meaning changes. Pinned maps live in a directory named
/// after it (`maps-vN`), so an agent never uses maps of another layout.
pub const MAP_LAYOUT: u32 = if cfg!(feature = "next-layout") { 10 } else { 9 };

/// Capacity of the cgroup and netns scope maps, each.
pub const MAX_SCOPES: u32 = 4096;
/// Capacity of the per-rule statistics array: rule ids are `0..MAX_RULES`.
pub const MAX_RULES: u32 = 4096;
/// How many forwarded ports a scope's own sockets may hold in the
/// local-binds table, by default: what it reserves there.
pub const LOCAL_BINDS_PER_SCOPE: u32 = 16;
/// Capacity of the forward trie, in prefixes (a port range takes up to 30).
pub const MAX_FORWARD_PREFIXES: u32 = 65_536;
/// Capacity of the table of localhost ports bound inside scopes.
pub const MAX_LOCAL_BINDS: u32 = 65_536;
/// How many rewritten destinations a socket remembers: a UDP socket may
/// send to several; the oldest is forgotten first.
pub const DIALED_PER_SOCKET: usize = 4;
/// How many cgroup levels below the root the programs look at to find a
/// scope: a scope's cgroup must be less deep than this (one bit of
/// [`Lookups::cgroup_levels`] each).
pub const MAX_CGROUP_DEPTH: u32 = 64;
/// At how many distinct cgroup depths scopes may sit: the programs look
/// at each (runtimes put their containers at one to three).
pub const MAX_SCOPE_LEVELS: u32 = 8;
/// Capacity of the table of exact localhost ports forwarded or remapped
/// in scopes.
pub const MAX_FORWARD_PORTS: u32 = 65_536;
/// Words of the set of localhost ports some scope forwards or remaps: a
/// bit per port, 64 to a word.
pub const PORT_SET_WORDS: u32 = 1 << 10;

/// The word and the bit of localhost port `port` (host order) in the set
/// of ports some scope forwards or remaps.
#[inline]
#[must_use]
pub const fn port_set_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1 << (port % 64))
}

/// Capacity of the MSS clamp configuration and statistics, in interfaces.
pub const MAX_MSS_INTERFACES: u32 = 1024;
/// [`MssConfig::mss`] that asks for the path MTU minus headers.
pub const MSS_PATH_MTU: u16 = 0;
/// Header bytes the path-MTU mode takes off an IPv4 MTU (IP + TCP).
pub const MSS_V4_OVERHEAD: u16 = 40;
/// Header bytes the path-MTU mode takes off an IPv6 MTU (IPv6 + TCP).
pub const MSS_V6_OVERHEAD: u16 = 60;
/// The largest MSS an inserted option carries on IPv4 (RFC 1122's
/// default send MSS), as iptables' TCPMSS inserts it.
pub const MSS_V4_DEFAULT: u16 = 536;
/// The largest MSS an inserted option carries on IPv6 (1280 - 60).
pub const MSS_V6_DEFAULT: u16 = 1220;

/// Capacity of the bind remap table.
pub const MAX_BIND_REMAPS: u32 = 16_384;
/// Capacity of the alias table (exact address:port rewrites).
pub const MAX_ALIASES: u32 = 16_384;
/// Capacity of the derived peers: (scope, target) of forwards whose peer
/// `getpeername()` derives.
pub const MAX_DERIVED_PEERS: u32 = 65_536;
/// Capacity of the host service tables, in services.
pub const MAX_HOST_SERVICES: u32 = 256;
/// Capacity of the table of where host services are reached, in
/// (gateway, port) pairs: one per network a service is granted on.
pub const MAX_SERVICE_ADDRESSES: u32 = 4096;
/// Capacity of the table of container addresses granted a host service.
pub const MAX_GRANTS: u32 = 16_384;
/// Capacity of the table of scopes granted a host service.
pub const MAX_SCOPE_GRANTS: u32 = 16_384;

/// [`Lookups::flags`]: some scope is keyed by a network namespace.
pub const LOOKUP_NETNS_SCOPES: u16 = 1;
/// [`Lookups::flags`]: some scope has aliases of exact addresses.
pub const LOOKUP_ALIASES: u16 = 2;
/// [`Lookups::flags`]: some host service is granted: TCP connects to its
/// addresses are checked against the connecting socket's scope.
pub const LOOKUP_HOST_SERVICES: u16 = 4;

/// Which lookups the programs need at all, from the policy applied now,
/// and the limits it sets: the value of the one-entry `LOOKUPS` array. A
/// node without network namespace scopes or aliases never pays for those
/// lookups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    /// One bit per cgroup level (below the root) where some cgroup scope
    /// is: the only levels looked up, deepest first.
    pub cgroup_levels: u64,
    /// [`LOOKUP_NETNS_SCOPES`], [`LOOKUP_ALIASES`], [`LOOKUP_HOST_SERVICES`].
    pub flags: u16,
    /// The deepest of `cgroup_levels`, worked out here once: the programs
    /// have no instruction that finds a highest bit, and its emulation is
    /// some 40 instructions on every connect.
    deepest_level: u16,
    /// How many forwarded ports one scope's sockets may hold in the
    /// local-binds table: binds beyond it are not recorded (and counted),
    /// so no scope fills the table for the others.
    pub local_binds_per_scope: u32,
    /// One bit per port modulo 256, set for the ports host services are
    /// reached at: a connect to any other port is ruled out without a
    /// lookup, in the cache line this value is read from anyway.
    pub service_ports: [u64; 4],
    /// One bit per (address, port) folded to 7 bits ([`peer_bit`]), set
    /// for every peer a rewrite may have given a socket: the targets of
    /// forwards and aliases, derived peers (`DERIVED_PEERS`) among them,
    /// kept for as long as the maps live (sockets keep what they dialed).
    /// An own service's target, the localhost address dialed, is not: the
    /// programs look up every localhost peer. The `getpeername()` of a
    /// socket whose peer is none of them (most of the node's connections)
    /// needs neither its storage nor a derived lookup, and neither does
    /// its TCP connect, in the same cache line.
    pub rewritten_peers: [u64; 2],
}

impl Lookups {
    #[must_use]
    pub const fn new(cgroup_levels: u64, flags: u16, local_binds_per_scope: u32) -> Self {
        let deepest_level = match cgroup_levels.checked_ilog2() {
            // Below MAX_CGROUP_DEPTH (64): it fits.
            #[expect(clippy::cast_possible_truncation, reason = "below 64")]
            Some(level) => level as u16,
            None => 0,
        };
        Self {
            cgroup_levels,
            flags,
            deepest_level,
            local_binds_per_scope,
            service_ports: [0; 4],
            rewritten_peers: [0; 2],
        }
    }

    /// The deepest level where some cgroup scope is, if any is.
    #[must_use]
    pub const fn deepest_level(&self) -> Option<u16> {
        if self.cgroup_levels == 0 {
            None
        } else {
            Some(self.deepest_level)
        }
    }

    /// With `port` among the service ports.
    #[must_use]
    pub const fn with_service_port(mut self, port: u16) -> Self {
        let bit = (port % 256) as usize;
        self.service_ports[bit / 64] |= 1 << (bit % 64);
        self
    }

    /// Whether `port` may be a port some host service is reached at.
    #[must_use]
    pub const fn may_be_service_port(&self, port: u16) -> bool {
        let bit = (port % 256) as usize;
        self.service_ports[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// With the peer at `addr` (in its own family, network order) and
    /// `port` (network order) among the rewritten peers.
    #[must_use]
    pub const fn with_rewritten_peer(mut self, addr: &[u32; 4], port: u16) -> Self {
        let bit = peer_bit(addr, port);
        self.rewritten_peers[bit / 64] |= 1 << (bit % 64);
        self
    }

    /// With every peer a rewrite to `target` may give a socket that dialed
    /// one of `ports` (host order) among the rewritten peers. A wide range
    /// fills the filter before its end.
    #[must_use]
    pub fn with_rewrites_to(mut self, target: &ForwardTarget, ports: RangeInclusive<u16>) -> Self {
        for port in ports {
            if self.rewritten_peers == [u64::MAX; 2] {
                break;
            }
            let to = port.wrapping_add(target.port_delta).to_be();
            self = self.with_rewritten_peer(&target.addr, to);
        }
        self
    }

    /// With the rewritten peers of `other` too.
    #[must_use]
    pub const fn with_rewritten_peers_of(mut self, other: &Self) -> Self {
        self.rewritten_peers[0] |= other.rewritten_peers[0];
        self.rewritten_peers[1] |= other.rewritten_peers[1];
        self
    }

    /// Whether a peer at `addr` (network order, IPv4-mapped or not; not
    /// localhost) and `port` (network order) may be one a rewrite gave:
    /// what a socket's storage may hold, or a derived peer.
    #[must_use]
    pub const fn may_be_rewritten_peer(&self, addr: &[u32; 4], port: u16) -> bool {
        let bit = peer_bit(addr, port);
        self.rewritten_peers[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// What either `self` or `other` needs, within the larger limit.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        let per_scope = if self.local_binds_per_scope > other.local_binds_per_scope {
            self.local_binds_per_scope
        } else {
            other.local_binds_per_scope
        };
        let mut union = Self::new(
            self.cgroup_levels | other.cgroup_levels,
            self.flags | other.flags,
            per_scope,
        );
        let mut word = 0;
        while word < 4 {
            union.service_ports[word] = self.service_ports[word] | other.service_ports[word];
            word += 1;
        }
        union
            .with_rewritten_peers_of(&self)
            .with_rewritten_peers_of(&other)
    }
}

/// The bit of [`Lookups::rewritten_peers`] of a peer: its address words and
/// port folded together, so that peers differing in either mostly fall on
/// different bits. The third word is left out: an IPv4 address (in the
/// first) and its IPv4-mapped form (in the last, past the marker in the
/// third) fall on the same bit, so the programs test a peer as its socket
/// sees it, unmapped or not.
#[inline]
#[must_use]
pub const fn peer_bit(addr: &[u32; 4], port: u16) -> usize {
    let folded = addr[0] ^ addr[1] ^ addr[3] ^ port as u32;
    let folded = folded ^ (folded >> 16);
    ((folded ^ (folded >> 7) ^ (folded >> 14)) % 128) as usize
}

/// [`ScopeEntry::flags`]: the scope has forwards of port ranges, which
/// only the forward trie holds.
pub const SCOPE_PORT_RANGES: u16 = 1;

/// What the programs know of a scope: the value of the cgroup and network
/// namespace scope maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeEntry {
    /// The scope's id, in the keys of every map of rules.
    pub id: u32,
    /// [`SCOPE_PORT_RANGES`], or 0.
    pub flags: u16,
    /// Depth of a cgroup scope's directory below the cgroup root (the
    /// level `bpf_get_current_ancestor_cgroup_id` takes); 0 for a network
    /// namespace. The programs look only at levels where scopes are.
    pub level: u16,
}

/// Bits of a [`ForwardKey`] before the port: scope (32) and protocol (8).
pub const FORWARD_KEY_PORT_OFFSET_BITS: u32 = 40;
/// Bits of a [`ForwardKey`] that a full (single port) match compares.
pub const FORWARD_KEY_BITS: u32 = FORWARD_KEY_PORT_OFFSET_BITS + 16;

/// Key of the localhost-forward LPM trie. Its bytes are in network order so
/// that a prefix of it selects a scope, then a protocol, then a block of
/// ports: a port range is stored as the few prefixes that cover it, and
/// "every port" as the 40-bit prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardKey {
    /// Scope id, big endian.
    pub scope: [u8; 4],
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// Destination port, big endian.
    pub port: [u8; 2],
    /// Never matched: no prefix is longer than [`FORWARD_KEY_BITS`].
    _pad: u8,
}

impl ForwardKey {
    /// The key of `scope`, `protocol` and a port in host byte order.
    #[must_use]
    pub const fn new(scope: u32, protocol: u8, port: u16) -> Self {
        Self {
            scope: scope.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
            _pad: 0,
        }
    }
}

/// Where a localhost destination goes: the value of the forward trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardTarget {
    /// Target address in network order; IPv4 in `addr[0]`, the rest zero.
    pub addr: [u32; 4],
    /// `AF_INET` or `AF_INET6`: the family of `addr`.
    pub family: u16,
    /// Added (wrapping, host order) to the dialed port to give the target
    /// port: 0 keeps the port, as "every port" rules do.
    pub port_delta: u16,
    /// Index of the rule in the statistics array.
    pub rule: u32,
    /// [`FORWARD_DERIVES_PEER`], or 0.
    pub flags: u32,
}

/// [`ForwardTarget::flags`]: the forward alone sends its scope's TCP
/// sockets to its target, so `getpeername()` derives what they dialed
/// from the target (`DERIVED_PEERS`) and the connect hook keeps nothing
/// for them. In the target itself, which the connect has read already.
pub const FORWARD_DERIVES_PEER: u32 = 1;

/// [`ForwardTarget::flags`]: when the rule's target moves, the TCP
/// connections it made are reset (`on_move = "reset"`). Read by the agent
/// only: the kernel programs ignore it.
pub const FORWARD_RESETS_TCP_ON_MOVE: u32 = 2;

impl ForwardTarget {
    /// Whether this is a bind remap's own service, not a forward: the
    /// dialed localhost address stays (`family` is 0), only the port moves.
    #[must_use]
    pub const fn is_own_service(&self) -> bool {
        self.family == 0
    }

    /// Whether `getpeername()` derives what this forward's TCP sockets
    /// dialed.
    #[must_use]
    pub const fn derives_peer(&self) -> bool {
        self.flags & FORWARD_DERIVES_PEER != 0
    }

    /// Whether the TCP connections of this rule are reset when its target
    /// moves.
    #[must_use]
    pub const fn resets_tcp_on_move(&self) -> bool {
        self.flags & FORWARD_RESETS_TCP_ON_MOVE != 0
    }
}

/// An address and port as the kernel's socket hooks see them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    /// Address in network order; IPv4 in `addr[0]`, the rest zero.
    pub addr: [u32; 4],
    /// Port in network byte order, as in `bpf_sock_addr.user_port`.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family of the socket.
    pub family: u16,
}

/// One destination a socket dialed and where netbpf sent it instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialed {
    /// The destination after the rewrite: the peer replies come from.
    pub to: SockAddr,
    /// The destination the application dialed.
    pub dialed: SockAddr,
    /// The rule that rewrote it: its counters count a reverse path lost.
    pub rule: u32,
}

/// What one socket dialed: the value of its per-socket storage, freed by
/// the kernel with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialedBySocket {
    pub entries: [Dialed; DIALED_PER_SOCKET],
    /// Where the next new destination goes (wrapping).
    pub next: u32,
    _pad: u32,
}

/// Key of the alias table: a scope dialing an exact address and port.
/// Addresses are canonical: an IPv4-mapped IPv6 address is stored as IPv4,
/// so dual-stack sockets match IPv4 aliases.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasKey {
    pub scope: u32,
    /// The dialed address, network order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// The dialed port, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family of `addr`.
    pub family: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    // Padding in whole fields, as in [`CgroupPort`].
    _pad: u8,
    _pad_half: u16,
}

impl AliasKey {
    #[must_use]
    pub const fn new(scope: u32, addr: [u32; 4], family: u16, port: u16, protocol: u8) -> Self {
        Self {
            scope,
            addr,
            port,
            family,
            protocol,
            _pad: 0,
            _pad_half: 0,
        }
    }
}

/// An address and port that some alias names, in any scope: a cheap first
/// test before the scope of a socket is looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasedAddr {
    /// Network order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// Bit of a derived peer's instance ([`DerivedPeerKey::new`]) that says it
/// is a network namespace's cookie, not a cgroup id: neither comes near it
/// (a cgroup id is a 32-bit inode number and its generation, a cookie a
/// count from 1).
pub const INSTANCE_NETNS: u64 = 1 << 63;

/// Key of the derived peers: a TCP peer (the target of a forward, in its
/// own family) of the sockets of one scope instance. Keyed by instance,
/// not scope: a task in the cgroup of an instance finds its entry in one
/// lookup, before (and instead of) its scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DerivedPeerKey {
    /// A cgroup id, or a network namespace cookie with [`INSTANCE_NETNS`]
    /// set.
    pub instance: u64,
    /// The peer, in its own family.
    pub peer: SockAddr,
    _pad: u32,
}

impl DerivedPeerKey {
    /// The key of `peer` of `instance`.
    #[must_use]
    pub const fn new(instance: u64, peer: SockAddr) -> Self {
        Self {
            instance,
            peer,
            _pad: 0,
        }
    }
}

/// What a scope instance's TCP socket whose peer is a [`DerivedPeerKey`]
/// dialed: the loopback address of the peer's family, at this port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DerivedPeer {
    /// The localhost port dialed, network order.
    pub port: u16,
    _pad: u16,
    /// The forward's counter slot: a socket of the scope that reaches the
    /// target directly and cannot say so is counted there as lost.
    pub rule: u32,
}

impl DerivedPeer {
    /// Localhost `port` (network order), dialed through counter slot `rule`.
    #[must_use]
    pub const fn new(port: u16, rule: u32) -> Self {
        Self {
            port,
            _pad: 0,
            rule,
        }
    }
}

/// Key of a host service as `sk_lookup` sees a connection to it: the local
/// (destination) address and port, on the host side of a container's
/// network. Port 0 (which no connection has) keys the address alone: some
/// service is reached there, so the grant guard drops what it cannot parse
/// toward it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Network order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// Key of the grants: a service and a container address allowed to reach
/// it. The value, a [`GrantPath`], says where that container's packets
/// arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// Index of the service (its slot in the socket map).
    pub service: u32,
    /// The container's address, network order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    pub family: u16,
    _pad: u16,
}

impl GrantKey {
    #[must_use]
    pub const fn new(service: u32, addr: [u32; 4], family: u16) -> Self {
        Self {
            service,
            addr,
            family,
            _pad: 0,
        }
    }
}

/// Where a granted container's packets arrive on the node: what the
/// packet-level checks compare a granted source address with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantPath {
    /// The host-side interface of the container (its veth peer), which the
    /// grant guard on bridge ports checks; 0: not known, not checked.
    pub port: u32,
    /// The interface the kernel receives its packets on (the bridge that
    /// port is on, or the port itself), which `sk_lookup` checks against
    /// the connection's ingress interface; 0: not known, not checked.
    pub ingress: u32,
}

/// Key of the socket-level grants: a scope that holds a grant of a
/// service. Only sockets of that scope may connect to the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeGrant {
    pub scope: u32,
    /// Index of the service.
    pub service: u32,
}

/// Counters of one host service, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connections handed to the service's listener.
    pub steered: u64,
    /// Connections from addresses without a grant, left to the kernel
    /// (which refuses them: nothing else listens there).
    pub refused: u64,
    /// Granted connections while the service had no listener.
    pub down: u64,
    /// Packets from a granted address that arrived through another
    /// container's interface, or connections that arrived on another
    /// interface than the granted container's (a forged source address),
    /// dropped.
    pub forged: u64,
    /// `connect()` calls to the service from a socket whose scope holds no
    /// grant of it (a process sharing a granted container's network
    /// namespace, an unscoped process), refused with `EPERM`.
    pub borrowed: u64,
    /// Packets toward the service's address that the grant guard could not
    /// parse (more IPv6 extension headers than it walks, ESP), dropped.
    pub unparsed: u64,
}

/// What a bind becomes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindTarget {
    /// Only binds to this address are remapped (network order, IPv4 in
    /// `addr[0]`), unless `family` is 0: binds to any address.
    pub addr: [u32; 4],
    /// `AF_INET`, `AF_INET6`, or 0 for any address.
    pub family: u16,
    /// The port the socket gets, host byte order.
    pub port: u16,
    /// Index of the rule in the statistics array.
    pub rule: u32,
}

/// A port of a scope, for one protocol: the key of the bind remaps (a
/// port the scope binds) and of the local binds (a port bound inside the
/// scope on a localhost or wildcard address, which belongs to the scope's
/// own service and is never forwarded).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopePort {
    pub scope: u32,
    /// Port in host byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    _pad: u8,
}

impl ScopePort {
    /// The key of `port` (host byte order) of `protocol` in `scope`.
    #[must_use]
    pub const fn new(scope: u32, port: u16, protocol: u8) -> Self {
        Self {
            scope,
            port,
            protocol,
            _pad: 0,
        }
    }
}

/// Key of the forwards by cgroup: an exact localhost port of the scope
/// whose instance is the cgroup `cgroup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupPort {
    pub cgroup: u64,
    /// Port in host byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    // Padding in whole fields: LLVM zeroes an odd-sized array with a call
    // to `memset`, a function call on every connect.
    _pad: u8,
    _pad_word: u32,
}

impl CgroupPort {
    /// The key of `port` (host byte order) of `protocol` in the scope of
    /// cgroup `cgroup`.
    #[must_use]
    pub const fn new(cgroup: u64, port: u16, protocol: u8) -> Self {
        Self {
            cgroup,
            port,
            protocol,
            _pad: 0,
            _pad_word: 0,
        }
    }
}

/// A forward found by cgroup: its target and the scope it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupForward {
    pub target: ForwardTarget,
    /// The scope id of the cgroup's instance.
    pub scope: u32,
}

/// Counters of one rule, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// `connect()` calls rewritten (TCP and connected UDP).
    pub connects: u64,
    /// Datagrams whose destination `sendmsg()` rewrote.
    pub datagrams: u64,
    /// Connections and datagrams left alone because the port is bound by a
    /// socket inside the scope.
    pub local_skips: u64,
    /// `bind()` calls whose port was remapped.
    pub binds: u64,
    /// Rewrites whose reverse path could not be kept: the socket's storage
    /// could not be made, or the socket had dialed more rewritten
    /// destinations than it remembers and the oldest was forgotten (its
    /// replies and `getpeername()` then show the address it reached).
    pub unremembered: u64,
    /// Binds of a forwarded port inside the scope that the local-binds
    /// table could not record (full): connections to that port may be
    /// forwarded away from the scope's own service.
    pub unrecorded_binds: u64,
}

/// How the tc program clamps MSS on one interface: the value of the
/// per-interface configuration map, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MssConfig {
    /// The MSS to clamp to, or [`MSS_PATH_MTU`].
    pub mss: u16,
    /// Bytes before the IP header: 14 on Ethernet, 0 on L3 devices
    /// (WireGuard, tun).
    pub l3_offset: u16,
    /// Index of the interface's slot in the statistics array.
    pub slot: u32,
}

/// Counters of the MSS clamp on one interface, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct MssStats {
    /// TCP segments with SYN set (SYN and SYN-ACK) the program looked at.
    pub seen: u64,
    /// Segments whose MSS option was lowered.
    pub clamped: u64,
    /// Segments without an MSS option that got one.
    pub inserted: u64,
    /// Segments whose MSS was already at or below the clamp.
    pub already_small: u64,
    /// Segments without an MSS option left so: they carry data or their
    /// header is full (as TCPMSS leaves them), or they are a fragment.
    pub without_option: u64,
    /// Segments with option lengths that do not add up; walked as the
    /// kernel's TCPMSS walks them, never beyond the header.
    pub malformed: u64,
    /// Segments passed untouched because they could not be parsed (IPv6
    /// extension headers beyond the walk, ESP, truncated headers) or no
    /// path MTU was found.
    pub unparsed: u64,
}

/// Key of the agent's own table of counter slots (userspace only): which
/// slot a rule of a scope has, so that counters continue when the agent
/// restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSlotKey {
    pub scope: u32,
    _pad: u32,
    /// A stable hash of what the rule is.
    pub rule: u64,
}

impl RuleSlotKey {
    #[must_use]
    pub const fn new(scope: u32, rule: u64) -> Self {
        Self {
            scope,
            _pad: 0,
            rule,
        }
    }
}

const _: () = assert!(size_of::<ForwardKey>() == 8);
const _: () = assert!(size_of::<RuleSlotKey>() == 16);
const _: () = assert!(size_of::<ForwardTarget>() == 28);
const _: () = assert!(size_of::<CgroupPort>() == 16);
const _: () = assert!(size_of::<CgroupForward>() == 32);
const _: () = assert!(size_of::<SockAddr>() == 20);
const _: () = assert!(size_of::<Dialed>() == 44);
const _: () = assert!(size_of::<DialedBySocket>() == 184);
const _: () = assert!(size_of::<ScopePort>() == 8);
const _: () = assert!(size_of::<RuleStats>() == 48);
const _: () = assert!(size_of::<ScopeEntry>() == 8);
const _: () = assert!(size_of::<Lookups>() == 64);
const _: () = assert!(size_of::<DerivedPeerKey>() == 32);
const _: () = assert!(size_of::<DerivedPeer>() == 8);
const _: () = assert!(size_of::<MssConfig>() == 8);
const _: () = assert!(size_of::<AliasKey>() == 28);
const _: () = assert!(size_of::<BindTarget>() == 24);
const _: () = assert!(size_of::<AliasedAddr>() == 20);
const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<GrantKey>() == 24);
const _: () = assert!(size_of::<GrantPath>() == 8);
const _: () = assert!(size_of::<ScopeGrant>() == 8);
const _: () = assert!(size_of::<ServiceStats>() == 48);
const _: () = assert!(size_of::<MssStats>() == 56);

/// Counters add up field by field: userspace sums each CPU's copy.
macro_rules! counters_add {
    ($($counters:ident { $($field:ident),+ $(,)? })+) => {$(
        impl core::ops::Add for $counters {
            type Output = Self;

            fn add(self, other: Self) -> Self {
                Self { $($field: self.$field + other.$field),+ }
            }
        }
    )+};
}

counters_add! {
    RuleStats { connects, datagrams, local_skips, binds, unremembered, unrecorded_binds }
    ServiceStats { steered, refused, down, forged, borrowed, unparsed }
    MssStats { seen, clamped, inserted, already_small, without_option, malformed, unparsed }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `repr(C)`, `Copy`, made of integers only and has
    // no implicit padding (the sizes are asserted above).
    unsafe impl aya::Pod for super::ForwardKey {}
    unsafe impl aya::Pod for super::ForwardTarget {}
    unsafe impl aya::Pod for super::CgroupPort {}
    unsafe impl aya::Pod for super::CgroupForward {}
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::DialedBySocket {}
    unsafe impl aya::Pod for super::ScopePort {}
    unsafe impl aya::Pod for super::RuleStats {}
    unsafe impl aya::Pod for super::ScopeEntry {}
    unsafe impl aya::Pod for super::Lookups {}
    unsafe impl aya::Pod for super::MssConfig {}
    unsafe impl aya::Pod for super::MssStats {}
    unsafe impl aya::Pod for super::AliasKey {}
    unsafe impl aya::Pod for super::BindTarget {}
    unsafe impl aya::Pod for super::AliasedAddr {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::GrantPath {}
    unsafe impl aya::Pod for super::ScopeGrant {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::RuleSlotKey {}
    unsafe impl aya::Pod for super::DerivedPeerKey {}
    unsafe impl aya::Pod for super::DerivedPeer {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn forward_key_bytes_are_in_prefix_order() {
        let key = ForwardKey::new(0x0102_0304, PROTO_UDP, 0x1f92);
        // SAFETY: ForwardKey is repr(C) with no padding: 8 initialised bytes.
        let bytes: [u8; 8] = unsafe { core::mem::transmute(key) };
        assert_eq!(bytes, [1, 2, 3, 4, 17, 0x1f, 0x92, 0]);
    }

    #[test]
    fn the_rewritten_peer_filter_rules_out_other_addresses_and_ports() {
        let target = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        let port = 5432u16.to_be();
        let lookups = Lookups::new(0, 0, 0).with_rewritten_peer(&target, port);
        assert!(lookups.may_be_rewritten_peer(&target, port));
        assert!(!lookups.may_be_rewritten_peer(&target, 5433u16.to_be()));
        let other = [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0];
        assert!(!lookups.may_be_rewritten_peer(&other, port));
        assert!(!Lookups::new(0, 0, 0).may_be_rewritten_peer(&target, port));
        let mapped = [
            0,
            0,
            u32::from_be_bytes([0, 0, 0xff, 0xff]).to_be(),
            target[0],
        ];
        assert!(lookups.may_be_rewritten_peer(&mapped, port), "IPv4-mapped");
        let both = lookups.union(Lookups::new(0, 0, 0).with_rewritten_peer(&other, 80u16.to_be()));
        assert!(
            both.may_be_rewritten_peer(&target, port)
                && both.may_be_rewritten_peer(&other, 80u16.to_be())
        );
    }

    #[test]
    fn rewrites_of_a_port_range_cover_every_target_port_and_a_wide_one_fills_the_filter() {
        let target = ForwardTarget {
            addr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            family: AF_INET,
            port_delta: 1000,
            rule: 0,
            flags: 0,
        };
        let lookups = Lookups::default().with_rewrites_to(&target, 8000..=8009);
        for port in 9000..=9009u16 {
            assert!(lookups.may_be_rewritten_peer(&target.addr, port.to_be()));
        }
        assert!(!lookups.may_be_rewritten_peer(&target.addr, 8000u16.to_be()));
        let every = Lookups::default().with_rewrites_to(&target, 0..=u16::MAX);
        assert_eq!(every.rewritten_peers, [u64::MAX; 2]);
    }

    #[test]
    fn every_port_has_a_bit_of_its_own_in_the_port_set() {
        let mut seen = [0u64; PORT_SET_WORDS as usize];
        for port in 0..=u16::MAX {
            let (word, bit) = port_set_bit(port);
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(seen[word as usize] & bit, 0, "port {port} shares its bit");
            seen[word as usize] |= bit;
        }
        assert!(seen.iter().all(|&word| word == u64::MAX));
    }

    #[test]
    fn the_service_port_filter_rules_out_every_other_port_modulo_256() {
        let lookups = Lookups::default().with_service_port(18188);
        assert!(lookups.may_be_service_port(18188));
        assert!(
            lookups.may_be_service_port(18188 + 256),
            "a collision, looked up"
        );
        assert!(!lookups.may_be_service_port(8082));
        let both = lookups.union(Lookups::default().with_service_port(443));
        assert!(both.may_be_service_port(443) && both.may_be_service_port(18188));
    }

    #[test]
    fn field_offsets_match_the_kernel_side() {
        assert_eq!(offset_of!(ForwardTarget, family), 16);
        assert_eq!(offset_of!(ForwardTarget, port_delta), 18);
        assert_eq!(offset_of!(ForwardTarget, rule), 20);
        assert_eq!(offset_of!(SockAddr, port), 16);
        assert_eq!(offset_of!(SockAddr, family), 18);
        assert_eq!(offset_of!(Dialed, rule), 40);
        assert_eq!(offset_of!(DialedBySocket, next), 176);
        assert_eq!(offset_of!(ScopePort, port), 4);
        assert_eq!(offset_of!(ScopePort, protocol), 6);
        assert_eq!(offset_of!(RuleStats, local_skips), 16);
        assert_eq!(offset_of!(RuleStats, binds), 24);
        assert_eq!(offset_of!(BindTarget, port), 18);
        assert_eq!(offset_of!(MssConfig, l3_offset), 2);
        assert_eq!(offset_of!(AliasKey, addr), 4);
        assert_eq!(offset_of!(AliasKey, port), 20);
        assert_eq!(offset_of!(AliasKey, protocol), 24);
        assert_eq!(offset_of!(ServiceKey, port), 16);
        assert_eq!(offset_of!(GrantKey, addr), 4);
        assert_eq!(offset_of!(GrantKey, family), 20);
        assert_eq!(offset_of!(GrantPath, ingress), 4);
        assert_eq!(offset_of!(ScopeGrant, service), 4);
        assert_eq!(offset_of!(ServiceStats, unparsed), 40);
        assert_eq!(offset_of!(MssConfig, slot), 4);
        assert_eq!(offset_of!(MssStats, unparsed), 48);
    }
}
