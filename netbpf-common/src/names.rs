//! The names of the kernel object's maps and programs, as userspace finds
//! them in it, each map with the sizes of its key and value. The kernel
//! side names them by its statics and functions (aya's macros take no
//! constant); a unit test of `netbpf` reads the object and checks both
//! lists against it, names and sizes.

use core::mem::size_of;

use crate::{
    AliasKey, AliasedAddr, BindTarget, CgroupForward, CgroupPort, DerivedPeer, DerivedPeerKey,
    DialedBySocket, ForwardKey, ForwardTarget, GrantKey, GrantPath, Lookups, MssConfig, MssStats,
    RuleStats, ScopeEntry, ScopeGrant, ScopePort, ServiceKey, ServiceStats,
};

/// A map of the object: its name, and the sizes of its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapName {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
}

impl MapName {
    /// A map keyed by `K`, holding `V`.
    const fn of<K, V>(name: &'static str) -> Self {
        Self {
            name,
            key_size: size_of::<K>(),
            value_size: size_of::<V>(),
        }
    }

    /// A longest-prefix-match trie keyed by `K` (behind its prefix length).
    const fn trie<K, V>(name: &'static str) -> Self {
        Self {
            name,
            key_size: size_of::<u32>() + size_of::<K>(),
            value_size: size_of::<V>(),
        }
    }
}

/// cgroup v2 id of a container's cgroup -> its scope.
pub const CGROUP_SCOPES: MapName = MapName::of::<u64, ScopeEntry>("CGROUP_SCOPES");
/// Network namespace cookie -> its scope.
pub const NETNS_SCOPES: MapName = MapName::of::<u64, ScopeEntry>("NETNS_SCOPES");
/// Which lookups the programs need (one entry).
pub const LOOKUPS: MapName = MapName::of::<u32, Lookups>("LOOKUPS");
/// (cgroup of a scope instance, exact port, protocol) -> its forward and
/// scope: a rewritten connect's one lookup.
pub const CGROUP_FORWARDS: MapName = MapName::of::<CgroupPort, CgroupForward>("CGROUP_FORWARDS");
/// (scope, exact port, protocol) -> its forward.
pub const FORWARD_PORTS: MapName = MapName::of::<ScopePort, ForwardTarget>("FORWARD_PORTS");
/// (scope, protocol, port prefix) -> the forward of a port range.
pub const FORWARDS: MapName = MapName::trie::<ForwardKey, ForwardTarget>("FORWARDS");
/// Per-CPU counters of every rule, by counter slot.
pub const RULE_STATS: MapName = MapName::of::<u32, RuleStats>("RULE_STATS");
/// (scope, protocol, port) bound inside the scope -> sockets bound there.
pub const LOCAL_BINDS: MapName = MapName::of::<ScopePort, u32>("LOCAL_BINDS");
/// Scope id -> how many ports of the scope `LOCAL_BINDS` holds.
pub const SCOPE_LOCAL_BINDS: MapName = MapName::of::<u32, u32>("SCOPE_LOCAL_BINDS");
/// Per socket counted in `LOCAL_BINDS`: its key there.
pub const BOUND_SOCKETS: MapName = MapName::of::<i32, ScopePort>("BOUND_SOCKETS");
/// Per socket: the destinations it dialed that netbpf rewrote.
pub const REVERSE: MapName = MapName::of::<i32, DialedBySocket>("REVERSE");
/// ifindex -> how the MSS clamp works on that interface.
pub const MSS_INTERFACES: MapName = MapName::of::<u32, MssConfig>("MSS_INTERFACES");
/// Per-CPU MSS clamp counters, by the interface's slot.
pub const MSS_STATS: MapName = MapName::of::<u32, MssStats>("MSS_STATS");
/// Per-CPU scratch of the MSS option walk (one entry).
pub const MSS_WALK: MapName = MapName::of::<u32, u32>("MSS_WALK");
/// (scope, protocol, address, port) dialed -> where it goes instead.
pub const ALIASES: MapName = MapName::of::<AliasKey, ForwardTarget>("ALIASES");
/// Every (address, port) some scope has an alias for.
pub const ALIASED_ADDRS: MapName = MapName::of::<AliasedAddr, u8>("ALIASED_ADDRS");
/// (address, port) dialed -> the host service there.
pub const HOST_SERVICES: MapName = MapName::of::<ServiceKey, u32>("HOST_SERVICES");
/// (service, container address) granted -> where its packets arrive.
pub const GRANTS: MapName = MapName::of::<GrantKey, GrantPath>("GRANTS");
/// (scope, service) -> present when the scope holds a grant of it.
pub const SCOPE_GRANTS: MapName = MapName::of::<ScopeGrant, u8>("SCOPE_GRANTS");
/// Service index -> its listening socket.
pub const SERVICE_SOCKETS: MapName = MapName::of::<u32, u32>("SERVICE_SOCKETS");
/// Per-CPU counters of each host service, by index.
pub const SERVICE_STATS: MapName = MapName::of::<u32, ServiceStats>("SERVICE_STATS");
/// (scope, port bound, protocol) -> the port the socket gets instead.
pub const BIND_REMAPS: MapName = MapName::of::<ScopePort, BindTarget>("BIND_REMAPS");
/// (scope, TCP peer) -> the localhost port its sockets dialed to reach it.
pub const DERIVED_PEERS: MapName = MapName::of::<DerivedPeerKey, DerivedPeer>("DERIVED_PEERS");
/// Word of the set of forwarded localhost ports -> its 64 bits.
pub const LOCALHOST_PORTS: MapName = MapName::of::<u32, u64>("LOCALHOST_PORTS");

/// Every map of the object.
pub const MAPS: [MapName; 24] = [
    CGROUP_SCOPES,
    NETNS_SCOPES,
    LOOKUPS,
    FORWARD_PORTS,
    FORWARDS,
    RULE_STATS,
    LOCAL_BINDS,
    SCOPE_LOCAL_BINDS,
    BOUND_SOCKETS,
    REVERSE,
    MSS_INTERFACES,
    MSS_STATS,
    MSS_WALK,
    ALIASES,
    ALIASED_ADDRS,
    HOST_SERVICES,
    GRANTS,
    SCOPE_GRANTS,
    SERVICE_SOCKETS,
    SERVICE_STATS,
    BIND_REMAPS,
    DERIVED_PEERS,
    CGROUP_FORWARDS,
    LOCALHOST_PORTS,
];

/// A per-CPU counter array of the object, and the plain array the agent
/// pins beside it: what the counters counted under older map layouts,
/// summed over CPUs. The agent alone writes it, so carrying counts over
/// never races a program counting (a write of a per-CPU value sets every
/// CPU's at once). A counter reads as the two added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub live: MapName,
    pub carried: &'static str,
}

/// Every rule's counters.
pub const RULE_COUNTERS: Counters = Counters {
    live: RULE_STATS,
    carried: "RULE_STATS_CARRIED",
};
/// The MSS clamp's counters.
pub const MSS_COUNTERS: Counters = Counters {
    live: MSS_STATS,
    carried: "MSS_STATS_CARRIED",
};
/// Each host service's counters.
pub const SERVICE_COUNTERS: Counters = Counters {
    live: SERVICE_STATS,
    carried: "SERVICE_STATS_CARRIED",
};

/// Every counter array of the object.
pub const COUNTERS: [Counters; 3] = [RULE_COUNTERS, MSS_COUNTERS, SERVICE_COUNTERS];

/// The programs of the object.
pub mod program {
    pub const CONNECT4: &str = "netbpf_connect4";
    pub const CONNECT6: &str = "netbpf_connect6";
    pub const SENDMSG4: &str = "netbpf_sendmsg4";
    pub const SENDMSG6: &str = "netbpf_sendmsg6";
    pub const RECVMSG4: &str = "netbpf_recvmsg4";
    pub const RECVMSG6: &str = "netbpf_recvmsg6";
    pub const GETPEER4: &str = "netbpf_getpeer4";
    pub const GETPEER6: &str = "netbpf_getpeer6";
    pub const BIND4: &str = "netbpf_bind4";
    pub const BIND6: &str = "netbpf_bind6";
    pub const BOUND4: &str = "netbpf_bound4";
    pub const BOUND6: &str = "netbpf_bound6";
    pub const RELEASE: &str = "netbpf_release";
    pub const HOST_SERVICE: &str = "netbpf_hostsvc";
    pub const GRANT_GUARD: &str = "netbpf_grant_guard";
    pub const MSS_OUT: &str = "netbpf_mss_out";
    pub const MSS_IN: &str = "netbpf_mss_in";

    /// Every program of the object.
    pub const ALL: [&str; 17] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEER4,
        GETPEER6,
        BIND4,
        BIND6,
        BOUND4,
        BOUND6,
        RELEASE,
        HOST_SERVICE,
        GRANT_GUARD,
        MSS_OUT,
        MSS_IN,
    ];
}
