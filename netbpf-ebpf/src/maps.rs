//! Every map of netbpf's datapath, each with what it holds.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, SockMap},
};
use netbpf_common::{
    AliasKey, AliasedAddr, BindTarget, CgroupForward, CgroupPort, DerivedPeer, DerivedPeerKey,
    DialedBySocket, ForwardKey, ForwardTarget, GrantKey, GrantPath, Lookups, MAX_ALIASES,
    MAX_BIND_REMAPS, MAX_DERIVED_PEERS, MAX_FORWARD_PORTS, MAX_FORWARD_PREFIXES, MAX_GRANTS,
    MAX_HOST_SERVICES, MAX_LOCAL_BINDS, MAX_MSS_INTERFACES, MAX_RULES, MAX_SCOPE_GRANTS,
    MAX_SCOPES, MAX_SERVICE_ADDRESSES, MssConfig, MssStats, PORT_SET_WORDS, RuleStats, ScopeEntry,
    ScopeGrant, ScopePort, ServiceKey, ServiceStats,
};

/// Flags of every hash map here: entries are allocated as they are added
/// instead of reserved at capacity, so a map's memory follows what it
/// holds. (The counter arrays are arrays, reserved at capacity.)
const ON_DEMAND: u32 = BPF_F_NO_PREALLOC;

/// cgroup v2 id of a container's cgroup directory -> its scope.
#[map]
pub static CGROUP_SCOPES: HashMap<u64, ScopeEntry> =
    HashMap::with_max_entries(MAX_SCOPES, ON_DEMAND);

/// Network namespace cookie -> its scope.
#[map]
pub static NETNS_SCOPES: HashMap<u64, ScopeEntry> =
    HashMap::with_max_entries(MAX_SCOPES, ON_DEMAND);

/// Which lookups the programs need at all (one entry): the cgroup levels
/// where scopes are, whether any scope is a network namespace's, whether
/// any has aliases.
#[map]
pub static LOOKUPS: Array<Lookups> = Array::with_max_entries(1, 0);

/// (scope instance, TCP peer) -> the localhost port its sockets dialed,
/// for the forwards whose peer nothing else of the scope reaches through a
/// forward: `getpeername()` derives what they dialed from it.
#[map]
pub static DERIVED_PEERS: HashMap<DerivedPeerKey, DerivedPeer> =
    HashMap::with_max_entries(MAX_DERIVED_PEERS, ON_DEMAND);

/// Bit per localhost port (64 to a word) that some scope forwards or
/// remaps, exactly or in a range, TCP or UDP: a bind or a connect to a
/// port without its bit leads nowhere, known before any scope is found.
#[map]
pub static LOCALHOST_PORTS: Array<u64> = Array::with_max_entries(PORT_SET_WORDS, 0);

/// (cgroup of a scope instance, exact localhost port, protocol) -> its
/// forward (or own service) and scope: the one lookup of a rewritten
/// connect of a task in that cgroup, before the scope is looked up.
#[map]
pub static CGROUP_FORWARDS: HashMap<CgroupPort, CgroupForward> =
    HashMap::with_max_entries(MAX_FORWARD_PORTS, ON_DEMAND);

/// (scope, exact localhost port, protocol) -> its forward, or the own
/// service a bind remap moved there: the binds' lookup, and the connects'
/// when the cgroup's was not the scope's.
#[map]
pub static FORWARD_PORTS: HashMap<ScopePort, ForwardTarget> =
    HashMap::with_max_entries(MAX_FORWARD_PORTS, ON_DEMAND);

/// (scope, protocol, localhost port prefix) -> where that destination
/// goes, for forwards of port ranges (looked up after `FORWARD_PORTS`, in
/// scopes that have ranges).
#[map]
pub static FORWARDS: LpmTrie<ForwardKey, ForwardTarget> =
    LpmTrie::with_max_entries(MAX_FORWARD_PREFIXES, 0);

/// Per-CPU counters of every rule (forward, grant, bind remap, alias),
/// indexed by the rule's counter slot.
#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// (scope, protocol, port) bound on localhost or a wildcard address inside
/// the scope -> number of sockets bound there.
#[map]
pub static LOCAL_BINDS: HashMap<ScopePort, u32> =
    HashMap::with_max_entries(MAX_LOCAL_BINDS, ON_DEMAND);

/// Scope id -> how many ports of the scope `LOCAL_BINDS` holds: checked
/// against the policy's per-scope limit.
#[map]
pub static SCOPE_LOCAL_BINDS: Array<u32> = Array::with_max_entries(MAX_SCOPES, 0);

/// Per socket counted in `LOCAL_BINDS`: its key there. Freed by the kernel
/// with the socket; other sockets have none.
#[btf_map]
pub static BOUND_SOCKETS: SkStorage<ScopePort> = SkStorage::new();

/// Per socket: the destinations it dialed that netbpf rewrote, to answer
/// recvmsg and getpeername with them, but for TCP connects whose peer
/// `DERIVED_PEERS` gives back. Freed by the kernel with the socket:
/// nothing to evict, nothing left behind.
#[btf_map]
pub static REVERSE: SkStorage<DialedBySocket> = SkStorage::new();

/// ifindex -> how the tc program clamps MSS on that interface.
#[map]
pub static MSS_INTERFACES: HashMap<u32, MssConfig> =
    HashMap::with_max_entries(MAX_MSS_INTERFACES, ON_DEMAND);

/// Per-CPU MSS clamp counters, indexed by the interface's slot.
#[map]
pub static MSS_STATS: PerCpuArray<MssStats> = PerCpuArray::with_max_entries(MAX_MSS_INTERFACES, 0);

/// Per-CPU scratch of the MSS clamp's option walk (one entry): the offset
/// of the next option. Read back from a map at each step, it is a number
/// the verifier does not know, so it checks each step of the walk once
/// instead of once per way the options could be laid out.
#[map]
pub static MSS_WALK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// (scope, protocol, exact address, port) dialed -> where it goes instead.
#[map]
pub static ALIASES: HashMap<AliasKey, ForwardTarget> =
    HashMap::with_max_entries(MAX_ALIASES, ON_DEMAND);

/// Every (address, port) some scope has an alias for: the quick test.
#[map]
pub static ALIASED_ADDRS: HashMap<AliasedAddr, u8> =
    HashMap::with_max_entries(MAX_ALIASES, ON_DEMAND);

/// (host-side address, port) a container dials -> the host service there;
/// (address, port 0) -> a service reached at that address.
#[map]
pub static HOST_SERVICES: HashMap<ServiceKey, u32> =
    HashMap::with_max_entries(MAX_SERVICE_ADDRESSES, ON_DEMAND);

/// (service, container address) allowed to reach the service -> where
/// that container's packets arrive on the node.
#[map]
pub static GRANTS: HashMap<GrantKey, GrantPath> = HashMap::with_max_entries(MAX_GRANTS, ON_DEMAND);

/// (scope, service) -> present when the scope holds a grant of the
/// service: only its sockets may connect to the service.
#[map]
pub static SCOPE_GRANTS: HashMap<ScopeGrant, u8> =
    HashMap::with_max_entries(MAX_SCOPE_GRANTS, ON_DEMAND);

/// Service index -> its listening socket on the host's loopback.
#[map]
pub static SERVICE_SOCKETS: SockMap = SockMap::with_max_entries(MAX_HOST_SERVICES, 0);

/// Per-CPU counters of each host service, by index.
#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_HOST_SERVICES, 0);

/// (scope, port bound, protocol) -> the port the socket gets instead.
#[map]
pub static BIND_REMAPS: HashMap<ScopePort, BindTarget> =
    HashMap::with_max_entries(MAX_BIND_REMAPS, ON_DEMAND);
