//! The plan: what matches the policy on this node, and the entries of the
//! kernel maps that give each match its rules. Pure: the agent gathers
//! what the host says (containers, network facts) and applies the result.
//!
//! 1. [`assign`] gives each workload (cgroup or container) the first scope
//!    whose `match` selects it: one scope instance per match.
//! 2. The agent resolves each instance's rules
//!    ([`crate::policy::ScopeDef::instantiate`]) with the host's facts.
//! 3. [`compile`] turns the instances into map entries. An instance that
//!    conflicts with an earlier one (older instances first) or does not
//!    fit the maps fails alone, with its reason; the others are applied.

mod capacity;
mod ids;
mod moves;
mod port_set;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use netbpf_common::{
    AF_INET, AF_INET6, AliasKey, AliasedAddr, BindTarget, CgroupForward, CgroupPort, DerivedPeer,
    DerivedPeerKey, FORWARD_DERIVES_PEER, FORWARD_KEY_PORT_OFFSET_BITS, FORWARD_RESETS_TCP_ON_MOVE,
    ForwardKey, ForwardTarget, GrantKey, GrantPath, INSTANCE_NETNS, LOOKUP_ALIASES,
    LOOKUP_HOST_SERVICES, LOOKUP_NETNS_SCOPES, Lookups, PROTO_TCP, SCOPE_PORT_RANGES, ScopeEntry,
    ScopeGrant, ScopePort, ServiceKey, SockAddr,
};

pub use self::{
    capacity::{Capacity, full_map},
    ids::{RuleSlots, ScopeIds},
    moves::Moved,
    port_set::PortSet,
};
use crate::{
    containers::{Container, Workload},
    policy::{self, Alias, Candidate, Captures, ContainerView, Grant, OnMove, Policy, Scope},
};

/// What the kernel programs know a scope by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopeKey {
    /// A cgroup v2 id: sockets of processes in the cgroup or below it.
    Cgroup(u64),
    /// A network namespace cookie: sockets of the namespace.
    Netns(u64),
}

impl ScopeKey {
    /// This instance in the keys of the derived peers.
    #[must_use]
    pub const fn instance(self) -> u64 {
        match self {
            ScopeKey::Cgroup(id) => id,
            ScopeKey::Netns(cookie) => cookie | INSTANCE_NETNS,
        }
    }
}

/// A scope's match of one workload (or pod, or network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Index of the scope in the policy.
    pub scope: usize,
    pub key: ScopeKey,
    /// The instance's name: the container's, the pod's or the cgroup's.
    pub instance: String,
    /// Where the instance is: its cgroup path, or the namespace's path.
    pub place: PathBuf,
    /// How deep its cgroup is below the cgroup root (the level the
    /// kernel numbers cgroup ancestors by); 0 for a network namespace.
    pub level: u16,
    pub captures: Captures,
    /// The container it is, when it is one (not a pod, a cgroup, a
    /// namespace).
    pub container: Option<Container>,
    /// Its netbpf labels (`io.netbpf.*`): its container's, or for a pod
    /// those of its containers (a pod's annotations, the same on each).
    pub labels: BTreeMap<String, String>,
}

impl Assignment {
    /// `SCOPE/INSTANCE`: how logs, the status and claims name it.
    #[must_use]
    pub fn name(&self, policy: &Policy) -> String {
        format!("{}/{}", policy.scopes[self.scope].name, self.instance)
    }
}

/// Gives each workload the first scope (in policy order) that selects it.
/// Workloads of one pod share one instance, on the pod's cgroup. `mount`
/// is the cgroup v2 mount, its directory `mount_level` deep in the
/// hierarchy.
#[must_use]
pub fn assign(
    policy: &Policy,
    workloads: &[Workload],
    mount: &Path,
    mount_level: u16,
) -> Vec<Assignment> {
    let by_path: HashMap<&Path, &Workload> = workloads
        .iter()
        .map(|workload| (workload.cgroup.as_path(), workload))
        .collect();
    let mut assignments: BTreeMap<ScopeKey, Assignment> = BTreeMap::new();
    for workload in workloads {
        let container = workload.container.as_ref().map(|container| ContainerView {
            id: &container.id,
            name: container.name.as_deref(),
            labels: &container.labels,
            pod: container.pod.as_deref(),
        });
        let candidate = Candidate {
            cgroup: &workload.cgroup,
            mount,
            container,
        };
        let Some((scope, captures, per_pod)) = policy.first_selecting(&candidate) else {
            continue;
        };
        let (key, instance, place, described) = if per_pod {
            let Some(pod) = workload
                .cgroup
                .parent()
                .and_then(|parent| by_path.get(parent))
            else {
                continue;
            };
            let name = container
                .and_then(|container| container.pod)
                .unwrap_or_default();
            (pod.cgroup_id, name.to_owned(), pod.cgroup.clone(), None)
        } else {
            (
                workload.cgroup_id,
                workload.instance_name(),
                workload.cgroup.clone(),
                workload.container.clone(),
            )
        };
        assignments
            .entry(ScopeKey::Cgroup(key))
            .or_insert(Assignment {
                scope,
                key: ScopeKey::Cgroup(key),
                instance,
                level: mount_level.saturating_add(cgroup_level(mount, &place)),
                place,
                captures,
                container: described,
                labels: workload
                    .container
                    .as_ref()
                    .map(|container| policy::netbpf_labels(&container.labels))
                    .unwrap_or_default(),
            });
    }
    assignments.into_values().collect()
}

/// Whether the programs can find a cgroup scope `level` deep beside
/// scopes at `levels` (one bit per depth): no deeper than they look, and
/// at one of the depths they look at.
fn check_level(levels: u64, key: ScopeKey, level: u16) -> Result<(), String> {
    use netbpf_common::{MAX_CGROUP_DEPTH, MAX_SCOPE_LEVELS};
    if let ScopeKey::Netns(_) = key {
        return Ok(());
    }
    if u32::from(level) >= MAX_CGROUP_DEPTH {
        return Err(format!(
            "its cgroup is {level} levels deep; netbpf looks {} deep at most",
            MAX_CGROUP_DEPTH - 1
        ));
    }
    if levels & (1 << level) == 0 && levels.count_ones() >= MAX_SCOPE_LEVELS {
        return Err(format!(
            "its cgroup is {level} levels deep, and scopes sit at {MAX_SCOPE_LEVELS} other depths already, as many as netbpf looks at"
        ));
    }
    Ok(())
}

/// How deep the cgroup at `path` (below `mount`, or relative to it) is:
/// one level per directory.
fn cgroup_level(mount: &Path, path: &Path) -> u16 {
    let below = path.strip_prefix(mount).unwrap_or(path);
    let depth = below
        .components()
        .filter(|component| matches!(component, std::path::Component::Normal(_)))
        .count();
    u16::try_from(depth).unwrap_or(u16::MAX)
}

/// A scope instance with its rules resolved, or why they could not be.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub assignment: Assignment,
    /// Its rules, or why the policy gives it none (located in the policy).
    pub rules: Result<Scope, String>,
    /// The network namespace its sockets bind in (its inode), where its
    /// bind remaps claim ports; None: the node's.
    pub network: Option<u64>,
}

/// What became of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub assignment: Assignment,
    /// Its scope id and its rules (rule ids are counter slots), when
    /// applied; else why not.
    pub applied: Result<(u32, Scope), String>,
}

/// Everything the kernel maps hold, keyed as the maps are, so that two
/// plans can be compared entry by entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// cgroup id -> its scope.
    pub cgroup_scopes: BTreeMap<u64, ScopeEntry>,
    /// netns cookie -> its scope.
    pub netns_scopes: BTreeMap<u64, ScopeEntry>,
    /// (scope, exact port, protocol) -> a forward of that one port, or the
    /// own service a localhost bind remap moved there.
    pub forward_ports: BTreeMap<ScopePort, ForwardTarget>,
    /// The same forwards of cgroup scopes, by (cgroup, port, protocol):
    /// a connect's one lookup.
    pub cgroup_forwards: BTreeMap<CgroupPort, CgroupForward>,
    /// (prefix length in bits, key) -> target, for the trie of forwards of
    /// port ranges.
    pub forwards: BTreeMap<(u32, ForwardKey), ForwardTarget>,
    /// Exact addresses dialed in a scope -> where they go instead.
    pub aliases: BTreeMap<AliasKey, ForwardTarget>,
    /// Every address and port some alias names.
    pub aliased_addrs: BTreeSet<AliasedAddr>,
    /// Where connections for a host service arrive -> the service's index;
    /// (address, port 0) -> a service reached at that address.
    pub services: BTreeMap<ServiceKey, u32>,
    /// The container addresses granted each service -> where their packets
    /// arrive on the node.
    pub grants: BTreeMap<GrantKey, GrantPath>,
    /// The scopes granted each service: only their sockets may connect.
    pub scope_grants: BTreeSet<ScopeGrant>,
    /// How many forwarded ports one scope's sockets may hold in the
    /// local-binds table.
    pub local_binds_per_scope: u32,
    /// Bind remaps: (scope, port, protocol) -> the port given instead.
    pub binds: BTreeMap<ScopePort, BindTarget>,
    /// (scope instance, TCP peer) -> the localhost port dialed, for each
    /// forward that alone reaches its target in its scope.
    pub derived_peers: BTreeMap<DerivedPeerKey, DerivedPeer>,
    /// Every localhost port some scope forwards or remaps, exactly or in
    /// a range: the programs look no further for a port outside it.
    pub localhost_ports: PortSet,
}

/// What the instances compiled so far claim, to find conflicts.
#[derive(Default)]
struct Claims {
    /// (network namespace, protocol, port a bind is remapped to) -> the
    /// instance that has it: instances of different namespaces never
    /// collide.
    remapped_ports: HashMap<(Option<u64>, u8, u16), String>,
    /// Where a grant's connections arrive -> the service handed them.
    service_addresses: HashMap<SocketAddr, usize>,
}

/// The map entries of `resolved`, oldest instances first. Scope ids come
/// from `ids` and counter slots from `slots`, both kept across plans.
#[must_use]
pub fn compile(
    policy: &Policy,
    mut resolved: Vec<Resolved>,
    ids: &mut ScopeIds,
    slots: &mut RuleSlots,
    capacity: &Capacity,
) -> (Plan, Vec<Outcome>) {
    ids.retain(resolved.iter().map(|instance| instance.assignment.key));
    resolved.sort_by_key(|instance| ids.get(instance.assignment.key).unwrap_or(u32::MAX));
    let mut growing = Growing {
        plan: Plan {
            local_binds_per_scope: capacity.local_binds_per_scope,
            ..Plan::default()
        },
        levels: 0,
        reserved: 0,
    };
    let mut claims = Claims::default();
    let mut used_slots = BTreeSet::new();
    let mut outcomes = Vec::with_capacity(resolved.len());
    for Resolved {
        assignment,
        rules,
        network,
    } in resolved
    {
        let applied = rules.and_then(|scope| {
            let id = ids.get_or_assign(assignment.key, capacity.scopes)?;
            claims.check(&scope, network, policy)?;
            let level = assignment.level;
            check_level(growing.levels, assignment.key, level)?;
            let mut entries = Plan::default();
            entries.add_scope(assignment.key, id, level, &scope);
            capacity.check(&growing.plan, growing.reserved, &entries)?;
            let scope = slots.assign(id, scope, &mut used_slots, capacity.rules)?;
            let mut entries = Plan::default();
            entries.add_scope(assignment.key, id, level, &scope);
            claims.take(|| assignment.name(policy), &scope, network);
            growing.add(entries, capacity.local_binds_per_scope);
            Ok((id, scope))
        });
        outcomes.push(Outcome {
            assignment,
            applied,
        });
    }
    slots.release_all_but(&used_slots);
    (growing.plan, outcomes)
}

/// A plan being compiled, with what its checks need kept up to date as
/// instances are added: checking one costs what it adds, not what the
/// plan holds (a node of 10,000 containers compiles in linear time).
struct Growing {
    plan: Plan,
    /// The cgroup levels its scopes sit at, one bit each.
    levels: u64,
    /// How many local-binds entries its scopes reserve.
    reserved: usize,
}

impl Growing {
    /// Adds an instance's `entries`.
    fn add(&mut self, entries: Plan, per_scope: u32) {
        self.levels |= entries.cgroup_levels();
        self.reserved += entries.local_binds_reserved(per_scope);
        self.plan.merge(entries);
    }
}

impl Claims {
    /// Whether `scope` (of instance `name`) can have what it asks for.
    fn check(&self, scope: &Scope, network: Option<u64>, policy: &Policy) -> Result<(), String> {
        for bind in &scope.binds {
            for &protocol in bind.protocols.numbers() {
                if let Some(other) = self.remapped_ports.get(&(network, protocol, bind.to)) {
                    return Err(format!(
                        "bind remap of port {} onto {}: {other} has that port already (two instances cannot get the same port)",
                        bind.port, bind.to
                    ));
                }
            }
        }
        for grant in &scope.grants {
            let arrival = SocketAddr::new(grant.gateway, grant.dial.port());
            if let Some(&other) = self.service_addresses.get(&arrival)
                && other != grant.service
            {
                return Err(format!(
                    "{arrival} already leads to host service {:?}: one port of a gateway serves one service",
                    policy.host_services[other].name
                ));
            }
        }
        Ok(())
    }

    /// Records what `scope`, named `SCOPE/INSTANCE` by `name` (asked only
    /// if it remaps binds), claims.
    fn take(&mut self, name: impl FnOnce() -> String, scope: &Scope, network: Option<u64>) {
        if !scope.binds.is_empty() {
            let name = name();
            for bind in &scope.binds {
                for &protocol in bind.protocols.numbers() {
                    self.remapped_ports
                        .insert((network, protocol, bind.to), name.clone());
                }
            }
        }
        for grant in &scope.grants {
            self.service_addresses.insert(
                SocketAddr::new(grant.gateway, grant.dial.port()),
                grant.service,
            );
        }
    }
}

impl Plan {
    /// The entries of one scope instance, whose cgroup (if it is one) is
    /// `level` deep below the root.
    fn add_scope(&mut self, key: ScopeKey, scope_id: u32, level: u16, scope: &Scope) {
        for grant in &scope.grants {
            self.add_grant(scope_id, grant);
        }
        for alias in &scope.aliases {
            self.add_alias(scope_id, alias);
        }
        let has_ranges = scope.forwards.iter().any(|forward| {
            let ports = forward.from.range();
            ports.start() != ports.end()
        });
        let derived_rules = if has_ranges {
            BTreeSet::new()
        } else {
            self.add_derived_peers(key, scope)
        };
        for forward in &scope.forwards {
            let (addr, family) = target_words(forward.to.addr);
            let target = ForwardTarget {
                addr,
                family,
                port_delta: forward.port_delta(),
                rule: forward.rule,
                flags: on_move_flag(forward.on_move)
                    | if derived_rules.contains(&forward.rule) {
                        FORWARD_DERIVES_PEER
                    } else {
                        0
                    },
            };
            let ports = forward.from.range();
            self.localhost_ports.insert(ports.clone());
            for &protocol in forward.protocols.numbers() {
                if ports.start() == ports.end() {
                    self.forward_ports
                        .insert(ScopePort::new(scope_id, *ports.start(), protocol), target);
                    continue;
                }
                for (port, port_bits) in forward.from.prefixes() {
                    let key = ForwardKey::new(scope_id, protocol, port);
                    self.forwards
                        .insert((FORWARD_KEY_PORT_OFFSET_BITS + port_bits, key), target);
                }
            }
        }
        for bind in &scope.binds {
            let (addr, family) = bind.address.map_or(([0; 4], 0), target_words);
            let target = BindTarget {
                addr,
                family,
                port: bind.to,
                rule: bind.rule,
            };
            // Dialing the port on localhost reaches the scope's own
            // service where the remap moved it, before any forward.
            let own =
                (family == 0 || bind.address.is_some_and(|addr| addr.is_loopback())).then(|| {
                    ForwardTarget {
                        addr: [0; 4],
                        family: 0,
                        port_delta: bind.to.wrapping_sub(bind.port),
                        rule: bind.rule,
                        flags: 0,
                    }
                });
            for &protocol in bind.protocols.numbers() {
                let key = ScopePort::new(scope_id, bind.port, protocol);
                self.binds.insert(key, target);
                if let Some(own) = own {
                    self.forward_ports.insert(key, own);
                    self.localhost_ports.insert(bind.port..=bind.port);
                }
            }
        }
        let entry = ScopeEntry {
            id: scope_id,
            flags: if has_ranges { SCOPE_PORT_RANGES } else { 0 },
            level,
        };
        if let ScopeKey::Cgroup(cgroup) = key {
            let by_cgroup: Vec<_> = self
                .forward_ports
                .range(ScopePort::new(scope_id, 0, 0)..=ScopePort::new(scope_id, u16::MAX, u8::MAX))
                .map(|(port, &target)| {
                    (
                        CgroupPort::new(cgroup, port.port, port.protocol),
                        CgroupForward {
                            target,
                            scope: scope_id,
                        },
                    )
                })
                .collect();
            self.cgroup_forwards.extend(by_cgroup);
        }
        match key {
            ScopeKey::Cgroup(id) => self.cgroup_scopes.insert(id, entry),
            ScopeKey::Netns(cookie) => self.netns_scopes.insert(cookie, entry),
        };
    }

    /// The derived peers of an instance (`key`) of a scope without port
    /// ranges: the target of each TCP forward of one port that no other
    /// forward of the scope reaches. A TCP socket of the instance whose
    /// peer is such a target dialed that forward's port on loopback, or
    /// kept its storage. Returns the counter slots of those forwards.
    fn add_derived_peers(&mut self, key: ScopeKey, scope: &Scope) -> BTreeSet<u32> {
        let instance = key.instance();
        let mut derived_rules = BTreeSet::new();
        let mut by_target: BTreeMap<DerivedPeerKey, Vec<DerivedPeer>> = BTreeMap::new();
        for forward in &scope.forwards {
            let ports = forward.from.range();
            if ports.start() != ports.end() || !forward.protocols.numbers().contains(&PROTO_TCP) {
                continue;
            }
            let dialed = *ports.start();
            let (addr, family) = target_words(forward.to.addr);
            let peer = SockAddr {
                addr,
                port: dialed.wrapping_add(forward.port_delta()).to_be(),
                family,
            };
            by_target
                .entry(DerivedPeerKey::new(instance, peer))
                .or_default()
                .push(DerivedPeer::new(dialed.to_be(), forward.rule));
        }
        for (key, peers) in by_target {
            if let [peer] = peers[..] {
                self.derived_peers.insert(key, peer);
                derived_rules.insert(peer.rule);
            }
        }
        derived_rules
    }

    /// Which lookups the programs need for this plan.
    #[must_use]
    pub fn lookups(&self) -> Lookups {
        let levels = self.cgroup_levels();
        let mut flags = 0;
        if !self.netns_scopes.is_empty() {
            flags |= LOOKUP_NETNS_SCOPES;
        }
        if !self.aliased_addrs.is_empty() {
            flags |= LOOKUP_ALIASES;
        }
        if !self.services.is_empty() {
            flags |= LOOKUP_HOST_SERVICES;
        }
        let lookups = self.services.keys().filter(|key| key.port != 0).fold(
            Lookups::new(levels, flags, self.local_binds_per_scope),
            |lookups, key| lookups.with_service_port(key.port),
        );
        let lookups = self
            .rewrites()
            .filter(|(target, _)| !target.is_own_service())
            .fold(lookups, |lookups, (target, ports)| {
                lookups.with_rewrites_to(target, ports)
            });
        // Derived peers kept for live sockets from an earlier plan, too.
        self.derived_peers.keys().fold(lookups, |lookups, key| {
            lookups.with_rewritten_peer(&key.peer.addr, key.peer.port)
        })
    }

    /// The cgroup levels its scopes sit at, one bit each.
    fn cgroup_levels(&self) -> u64 {
        self.cgroup_scopes.values().fold(0, |levels, scope| {
            levels | 1u64.checked_shl(scope.level.into()).unwrap_or(0)
        })
    }

    /// Every rewrite of the plan: its target and the dialed ports (host
    /// order) it takes. An own service's target is the dialed localhost
    /// address itself.
    fn rewrites(&self) -> impl Iterator<Item = (&ForwardTarget, RangeInclusive<u16>)> {
        let exact = self
            .forward_ports
            .iter()
            .map(|(key, target)| (target, key.port..=key.port));
        let ranges = self.forwards.iter().map(|(&(prefix_len, prefix), target)| {
            let first = u16::from_be_bytes(prefix.port);
            let last = first | u16::MAX.checked_shr(port_bits(prefix_len)).unwrap_or(0);
            (target, first..=last)
        });
        let aliases = self.aliases.iter().map(|(key, target)| match key.port {
            0 => (target, 0..=u16::MAX),
            port => (target, port..=port),
        });
        exact.chain(ranges).chain(aliases)
    }

    /// Whether `key` (a scope's localhost port) is forwarded: the ports
    /// whose binds inside the scope the local-binds table records.
    #[must_use]
    pub fn forwards_port(&self, key: ScopePort) -> bool {
        if let Some(target) = self.forward_ports.get(&key) {
            return !target.is_own_service();
        }
        self.forwards.keys().any(|&(prefix_len, prefix)| {
            let port_bits = port_bits(prefix_len);
            // The port bits the prefix does not fix are shifted out.
            let differing = (u16::from_be_bytes(prefix.port) ^ key.port)
                .checked_shr(16 - port_bits)
                .unwrap_or(0);
            u32::from_be_bytes(prefix.scope) == key.scope
                && prefix.protocol == key.protocol
                && differing == 0
        })
    }

    /// Keeps the derived peers of `old` that live sockets may still ask
    /// for: a socket that kept nothing at connect derives its peer for as
    /// long as it lives, so an entry of a scope instance still here keeps
    /// its port, and a forward of this plan that would change it keeps
    /// storage instead. Entries go with their instance, and kept ones
    /// only while the map has room (`capacity`): returns how many were
    /// not kept.
    pub fn keep_derived_peers(&mut self, old: &Self, capacity: u32) -> usize {
        let cgroups = self.cgroup_scopes.keys().map(|&id| ScopeKey::Cgroup(id));
        let namespaces = self
            .netns_scopes
            .keys()
            .map(|&cookie| ScopeKey::Netns(cookie));
        let live: BTreeSet<u64> = cgroups.chain(namespaces).map(ScopeKey::instance).collect();
        let mut not_kept = 0;
        for (key, peer) in &old.derived_peers {
            if !live.contains(&key.instance) {
                continue;
            }
            match self.derived_peers.get(key) {
                Some(new) if new.port == peer.port => {}
                Some(new) => {
                    self.stop_deriving(new.rule);
                    self.derived_peers.insert(*key, *peer);
                }
                None if self.derived_peers.len() < capacity as usize => {
                    self.derived_peers.insert(*key, *peer);
                }
                None => not_kept += 1,
            }
        }
        not_kept
    }

    /// Makes the forwards of counter slot `rule` keep storage at connect:
    /// their target's derived peer stays another forward's.
    fn stop_deriving(&mut self, rule: u32) {
        let by_cgroup = self
            .cgroup_forwards
            .values_mut()
            .map(|forward| &mut forward.target);
        for target in self.forward_ports.values_mut().chain(by_cgroup) {
            if target.rule == rule {
                target.flags &= !FORWARD_DERIVES_PEER;
            }
        }
    }

    /// The scopes that forward a port here they did not in `old`: binds
    /// made before are to be recorded.
    #[must_use]
    pub fn scopes_forwarding_more_than(&self, old: &Self) -> BTreeSet<u32> {
        let exact = self
            .forward_ports
            .iter()
            .filter(|(key, target)| {
                !target.is_own_service() && !old.forward_ports.contains_key(key)
            })
            .map(|(key, _)| key.scope);
        let ranges = self
            .forwards
            .keys()
            .filter(|entry| !old.forwards.contains_key(entry))
            .map(|(_, prefix)| u32::from_be_bytes(prefix.scope));
        exact.chain(ranges).collect()
    }

    /// How many entries the local-binds table may have to hold for this
    /// plan: each scope's forwarded ports, up to `per_scope` each.
    #[must_use]
    pub fn local_binds_reserved(&self, per_scope: u32) -> usize {
        let mut forwarded: BTreeMap<u32, usize> = BTreeMap::new();
        for (key, target) in &self.forward_ports {
            if !target.is_own_service() {
                *forwarded.entry(key.scope).or_default() += 1;
            }
        }
        for &(prefix_len, prefix) in self.forwards.keys() {
            let port_bits = port_bits(prefix_len);
            *forwarded
                .entry(u32::from_be_bytes(prefix.scope))
                .or_default() += 1usize << (16 - port_bits);
        }
        let per_scope = usize::try_from(per_scope).unwrap_or(usize::MAX);
        forwarded.values().map(|&ports| ports.min(per_scope)).sum()
    }

    /// Adds `other`'s entries to this plan.
    fn merge(&mut self, other: Self) {
        self.cgroup_scopes.extend(other.cgroup_scopes);
        self.netns_scopes.extend(other.netns_scopes);
        self.forward_ports.extend(other.forward_ports);
        self.cgroup_forwards.extend(other.cgroup_forwards);
        self.forwards.extend(other.forwards);
        self.aliases.extend(other.aliases);
        self.aliased_addrs.extend(other.aliased_addrs);
        self.services.extend(other.services);
        self.grants.extend(other.grants);
        self.scope_grants.extend(other.scope_grants);
        self.binds.extend(other.binds);
        self.derived_peers.extend(other.derived_peers);
        self.localhost_ports.extend(&other.localhost_ports);
    }

    /// An alias: the exact address (port 0: every port) -> its target.
    fn add_alias(&mut self, scope: u32, alias: &Alias) {
        let (from, family) = target_words(alias.from.ip());
        let (to, _) = target_words(alias.to.ip());
        let port = alias.from.port();
        let target = ForwardTarget {
            addr: to,
            family,
            port_delta: if port == 0 {
                0
            } else {
                alias.to.port().wrapping_sub(port)
            },
            rule: alias.rule,
            flags: on_move_flag(alias.on_move),
        };
        for &protocol in alias.protocols.numbers() {
            self.aliases
                .insert(AliasKey::new(scope, from, family, port, protocol), target);
        }
        self.aliased_addrs.insert(AliasedAddr {
            addr: from,
            port,
            family,
        });
    }

    /// A grant: an alias from the dialed address to the gateway (unless
    /// the container dials its gateway itself), the service where
    /// connections arrive there, the scope allowed to connect, and the
    /// container's addresses allowed with where their packets arrive.
    fn add_grant(&mut self, scope: u32, grant: &Grant) {
        let (gateway, family) = target_words(grant.gateway);
        let (dial, _) = target_words(grant.dial.ip());
        let port = grant.dial.port();
        if grant.dial.ip() != grant.gateway {
            let target = ForwardTarget {
                addr: gateway,
                family,
                port_delta: 0,
                rule: grant.rule,
                flags: 0,
            };
            self.aliases
                .insert(AliasKey::new(scope, dial, family, port, PROTO_TCP), target);
            self.aliased_addrs.insert(AliasedAddr {
                addr: dial,
                port,
                family,
            });
        }
        let service = u32::try_from(grant.service).expect("services are few");
        for port in [port, 0] {
            self.services.insert(
                ServiceKey {
                    addr: gateway,
                    port,
                    family,
                },
                service,
            );
        }
        self.scope_grants.insert(ScopeGrant { scope, service });
        let path = GrantPath {
            port: grant.via.unwrap_or(0),
            ingress: grant.ingress.unwrap_or(0),
        };
        for source in &grant.sources {
            let (addr, family) = target_words(*source);
            self.grants
                .insert(GrantKey::new(service, addr, family), path);
        }
    }
}

/// The flag of a rule's `on_move`.
fn on_move_flag(on_move: OnMove) -> u32 {
    match on_move {
        OnMove::Keep => 0,
        OnMove::Reset => FORWARD_RESETS_TCP_ON_MOVE,
    }
}

/// How many bits of the port a forward trie prefix of `prefix_len` bits
/// fixes.
fn port_bits(prefix_len: u32) -> u32 {
    prefix_len
        .saturating_sub(FORWARD_KEY_PORT_OFFSET_BITS)
        .min(16)
}

/// An address as the kernel programs store it: network-order words, IPv4
/// in the first.
fn target_words(addr: IpAddr) -> ([u32; 4], u16) {
    match addr {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            let word = |at: usize| {
                u32::from_ne_bytes([octets[at], octets[at + 1], octets[at + 2], octets[at + 3]])
            };
            ([word(0), word(4), word(8), word(12)], AF_INET6)
        }
    }
}

/// An address as the kernel programs store it, back: [`target_words`]
/// undone, canonical (IPv4-mapped IPv6 as IPv4).
#[must_use]
pub fn ip_of(addr: [u32; 4], family: u16) -> IpAddr {
    if family == AF_INET {
        return Ipv4Addr::from(addr[0].to_ne_bytes()).into();
    }
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets).to_canonical()
}

#[cfg(test)]
mod tests;
