//! What the maps must hold, and how they come to hold it: the policy in
//! force, the rules each scope instance resolved to, the scope ids and
//! counter slots given out, and the plan the maps hold. A reconcile
//! compiles what matches now into a plan and moves the maps to it through
//! [`PlanMaps`], undoing a failed update.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    path::{Path, PathBuf},
};

use super::{
    facts::{BindsIn, InstanceFacts},
    metrics::Events,
    scope_sockets::ScopePlace,
};
use crate::{
    containers::Workload,
    datapath::{DatapathError, PlanMaps},
    host::{Node, netns},
    plan::{
        self, Assignment, Capacity, Moved, Outcome, Plan, Resolved, RuleSlots, ScopeIds, ScopeKey,
    },
    policy::{self, Instance, Policy, Selector},
};

/// What the host says of one scope instance: its network and the ports
/// bound near it, and the network namespace its sockets bind in.
pub trait InstanceProbe: policy::Facts {
    /// Where its sockets bind; unknown (None) while it has no process.
    fn binds_in(&self) -> Option<BindsIn>;
}

/// Where the facts of scope instances come from: the host ([`HostProbe`]),
/// or a unit test's table.
pub trait Probe {
    /// The facts of the instance keyed `key`, at `place`, on `node`.
    fn instance<'a>(
        &'a self,
        key: ScopeKey,
        place: &'a Path,
        node: &'a Node,
    ) -> Box<dyn InstanceProbe + 'a>;
    /// The cookie of the network namespace at `path`, if it exists.
    fn netns_cookie(&self, path: &Path) -> Option<u64>;
}

/// The facts of this host.
pub struct HostProbe;

impl Probe for HostProbe {
    fn instance<'a>(
        &'a self,
        key: ScopeKey,
        place: &'a Path,
        node: &'a Node,
    ) -> Box<dyn InstanceProbe + 'a> {
        Box::new(InstanceFacts {
            key,
            place,
            node_netns: &node.netns,
        })
    }

    fn netns_cookie(&self, path: &Path) -> Option<u64> {
        netns::netns_cookie(path).ok()
    }
}

impl InstanceProbe for InstanceFacts<'_> {
    fn binds_in(&self) -> Option<BindsIn> {
        self.network_namespace()
    }
}

/// An instance's rules are cached under what they were resolved from: its
/// scope, its key, its name, what its match captured and (a digest of)
/// its netbpf labels.
type CacheKey = (usize, ScopeKey, String, policy::Captures, u64);

/// The caches of the reconcile before, while a reconcile moves what it
/// still needs out of them.
struct Cached {
    resolved: HashMap<CacheKey, Result<policy::Scope, String>>,
    namespaces: HashMap<ScopeKey, BindsIn>,
}

/// The policy in force and what the maps hold of it.
pub struct Reconciler {
    pub policy: Policy,
    capacity: Capacity,
    /// Where instances' facts come from.
    probe: Box<dyn Probe>,
    ids: ScopeIds,
    slots: RuleSlots,
    /// The rules each instance resolved to, until the policy changes or
    /// the instance does.
    resolved: HashMap<CacheKey, Result<policy::Scope, String>>,
    /// The network namespace each instance with bind remaps binds in,
    /// known once one of its processes runs: it stays while the cgroup
    /// does.
    namespaces: HashMap<ScopeKey, BindsIn>,
    /// What the maps hold.
    pub plan: Plan,
    /// What became of each scope instance.
    pub outcomes: Vec<Outcome>,
}

/// What an update of the maps changed that sockets already made feel.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Where the instances new to the maps (or forwarding more ports)
    /// are: services may listen there already, bound before the hooks saw
    /// them.
    pub new_places: Vec<ScopePlace>,
    /// The rules whose target moved: their connected sockets still reach
    /// the old one.
    pub moved: Vec<Moved>,
}

/// What a reload replaced, to put back if the new policy cannot be
/// applied.
pub struct Replaced {
    policy: Policy,
    resolved: HashMap<CacheKey, Result<policy::Scope, String>>,
}

impl Reconciler {
    /// Starts from what `maps` hold (nothing, unless adopted), with the
    /// scope ids and counter slots found there, so that a restart keeps
    /// them.
    pub fn adopt(
        maps: &impl PlanMaps,
        policy: Policy,
        capacity: Capacity,
        probe: Box<dyn Probe>,
    ) -> Result<Self, DatapathError> {
        let plan = maps.read_plan()?;
        let ids = ScopeIds::adopt(
            plan.cgroup_scopes
                .iter()
                .map(|(&id, scope)| (ScopeKey::Cgroup(id), scope.id))
                .chain(
                    plan.netns_scopes
                        .iter()
                        .map(|(&cookie, scope)| (ScopeKey::Netns(cookie), scope.id)),
                )
                .collect(),
        );
        Ok(Self {
            policy,
            capacity,
            probe,
            ids,
            slots: RuleSlots::adopt(maps.read_rule_slots()?),
            resolved: HashMap::new(),
            namespaces: HashMap::new(),
            plan,
            outcomes: Vec::new(),
        })
    }

    /// The capacity of the maps.
    #[must_use]
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Makes the maps hold the plan of what matches now among `workloads`.
    /// New and changed entries first, dropped ones last; a failed update
    /// is undone, and only a failed update is an error.
    pub fn reconcile(
        &mut self,
        maps: &mut impl PlanMaps,
        workloads: &[Workload],
        node: &Node,
        events: &mut Events,
    ) -> Result<Reconciled, DatapathError> {
        let resolved = self.resolve(workloads, node);
        let mut ids = self.ids.clone();
        let mut slots = self.slots.clone();
        let (mut plan, outcomes) =
            plan::compile(&self.policy, resolved, &mut ids, &mut slots, &self.capacity);
        let not_kept = plan.keep_derived_peers(&self.plan, self.capacity.forward_ports);
        if not_kept > 0 {
            tracing::warn!(
                not_kept,
                "derived peers of live scopes not kept, the map being full: getpeername() of their TCP sockets shows the target"
            );
        }
        maps.reset_rule_stats(slots.take_fresh())?;
        if let Err(error) = maps.update(&self.plan, &plan) {
            if let Err(undo) = maps.update(&plan, &self.plan) {
                // Neither plan is what the maps hold: the next update
                // starts from what they do hold.
                tracing::warn!(error = %undo, "undoing a failed update: reading the maps back");
                match maps.read_plan() {
                    Ok(held) => self.plan = held,
                    Err(error) => tracing::warn!(%error, "reading the maps back"),
                }
            }
            return Err(error);
        }
        // The maps hold the new plan: from here on nothing undoes it, and
        // the agent's view follows it whatever else fails.
        if let Err(error) = maps.write_rule_slots(self.slots.entries(), slots.entries()) {
            tracing::warn!(%error, "the rule slots were not pinned: a restarted agent renumbers counters");
        }
        let known: HashSet<u32> = self
            .plan
            .cgroup_scopes
            .values()
            .chain(self.plan.netns_scopes.values())
            .map(|scope| scope.id)
            .collect();
        self.log_outcomes(&outcomes, &known, events);
        self.ids = ids;
        self.slots = slots;
        let previous = std::mem::replace(&mut self.plan, plan);
        self.outcomes = outcomes;
        let grown = self.plan.scopes_forwarding_more_than(&previous);
        Ok(Reconciled {
            new_places: self
                .scope_places()
                .into_iter()
                .filter(|scope| !known.contains(&scope.id) || grown.contains(&scope.id))
                .collect(),
            moved: self.plan.moved_since(&previous),
        })
    }

    /// Logs the instances newly applied (their ids not in `known`) and
    /// those newly refused, counting a refusal for a full map.
    fn log_outcomes(&self, outcomes: &[Outcome], known: &HashSet<u32>, events: &mut Events) {
        let failed_before: HashMap<ScopeKey, &Assignment> = self
            .outcomes
            .iter()
            .filter(|old| old.applied.is_err())
            .map(|old| (old.assignment.key, &old.assignment))
            .collect();
        for outcome in outcomes {
            let name = || self.name_of(outcome);
            let container = outcome.assignment.container.as_ref();
            let container_name = container.and_then(|c| c.name.as_deref()).unwrap_or("");
            let container_id = container.map_or("", |c| c.id.as_str());
            match &outcome.applied {
                Ok((id, _)) if !known.contains(id) => {
                    tracing::info!(scope = %name(), id, container = container_name, container_id, "scope instance applied");
                }
                Err(error)
                    if failed_before.get(&outcome.assignment.key) != Some(&&outcome.assignment) =>
                {
                    if let Some(map) = plan::full_map(error) {
                        events.refused_for_full_map(map);
                    }
                    if policy::waits_for_a_process(error) {
                        tracing::info!(scope = %name(), container = container_name, container_id, "scope instance waits for its first process");
                    } else {
                        tracing::warn!(scope = %name(), container = container_name, container_id, %error, "scope instance not applied");
                    }
                }
                _ => {}
            }
        }
    }

    /// Every scope instance matched now among `workloads`, with its rules.
    fn resolve(&mut self, workloads: &[Workload], node: &Node) -> Vec<Resolved> {
        let mut assignments = plan::assign(&self.policy, workloads, &node.mount, node.mount_level);
        assignments.extend(self.netns_assignments());
        // What matches now moves from the caches to new ones; the rest (a
        // container gone) stays behind.
        let mut cached = Cached {
            resolved: std::mem::take(&mut self.resolved),
            namespaces: std::mem::take(&mut self.namespaces),
        };
        self.resolved.reserve(assignments.len());
        assignments
            .into_iter()
            .map(|mut assignment| {
                if let ScopeKey::Cgroup(_) = assignment.key {
                    assignment.place = node.mount.join(&assignment.place);
                }
                self.resolve_one(assignment, &mut cached, node)
            })
            .collect()
    }

    /// An instance of each network namespace scope whose namespace exists.
    fn netns_assignments(&self) -> Vec<Assignment> {
        self.policy
            .scopes
            .iter()
            .enumerate()
            .filter_map(|(index, def)| {
                let Selector::Netns(path) = &def.selector else {
                    return None;
                };
                let cookie = self.probe.netns_cookie(path)?;
                Some(Assignment {
                    scope: index,
                    key: ScopeKey::Netns(cookie),
                    instance: path.display().to_string(),
                    place: path.clone(),
                    level: 0,
                    captures: policy::Captures::new(),
                    container: None,
                    labels: std::collections::BTreeMap::new(),
                })
            })
            .collect()
    }

    /// The rules of one instance: cached (this reconcile or the one
    /// before), or resolved from the host's facts of it.
    fn resolve_one(
        &mut self,
        assignment: Assignment,
        cached: &mut Cached,
        node: &Node,
    ) -> Resolved {
        let def = &self.policy.scopes[assignment.scope];
        let facts = self.probe.instance(assignment.key, &assignment.place, node);
        // Where its bind remaps claim ports (only they need it).
        let network = if def.has_binds() {
            let known = self
                .namespaces
                .get(&assignment.key)
                .copied()
                .or_else(|| cached.namespaces.remove(&assignment.key))
                .or_else(|| facts.binds_in());
            if let Some(network) = known {
                self.namespaces.insert(assignment.key, network);
            }
            known.and_then(BindsIn::own)
        } else {
            None
        };
        let cache_key = (
            assignment.scope,
            assignment.key,
            assignment.instance.clone(),
            assignment.captures.clone(),
            policy::label_digest(&assignment.labels),
        );
        let rules = match self.resolved.entry(cache_key) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                let rules = cached.resolved.remove(entry.key()).unwrap_or_else(|| {
                    let instance = Instance {
                        name: &assignment.instance,
                        captures: &assignment.captures,
                        labels: &assignment.labels,
                    };
                    def.instantiate(&self.policy.host_services, instance, facts.as_ref())
                        .map_err(|error| error.to_string())
                });
                entry.insert(rules).clone()
            }
        };
        drop(facts);
        Resolved {
            assignment,
            rules,
            network,
        }
    }

    /// `SCOPE/INSTANCE` of an outcome.
    #[must_use]
    pub fn name_of(&self, outcome: &Outcome) -> String {
        outcome.assignment.name(&self.policy)
    }

    /// The outcome of the deepest of `keys` that is an instance.
    #[must_use]
    pub fn outcome_of(&self, keys: &[ScopeKey]) -> Option<&Outcome> {
        keys.iter().find_map(|key| {
            self.outcomes
                .iter()
                .find(|outcome| outcome.assignment.key == *key)
        })
    }

    /// Where each applied instance is, for finding its sockets.
    #[must_use]
    pub fn scope_places(&self) -> Vec<ScopePlace> {
        self.outcomes
            .iter()
            .filter_map(|outcome| {
                let (id, _) = outcome.applied.as_ref().ok()?;
                Some(ScopePlace {
                    id: *id,
                    key: outcome.assignment.key,
                    path: outcome.assignment.place.clone(),
                })
            })
            .collect()
    }

    /// What waits, as the retry compares it: each instance that failed
    /// with its reason, and the network namespace scopes with no instance.
    #[must_use]
    pub fn failing(&self) -> Vec<String> {
        let mut failing: Vec<String> = self
            .outcomes
            .iter()
            .filter_map(|outcome| {
                let error = outcome.applied.as_ref().err()?;
                Some(format!("{:?}: {error}", outcome.assignment.key))
            })
            .collect();
        failing.push(format!(
            "{} network namespace instances",
            self.netns_instances()
        ));
        failing
    }

    /// How many instances are network namespaces.
    fn netns_instances(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| matches!(outcome.assignment.key, ScopeKey::Netns(_)))
            .count()
    }

    /// Whether some instance waits: its rules failed (a container whose
    /// network is not up yet), or its network namespace does not exist yet
    /// (nothing announces one).
    #[must_use]
    pub fn waiting(&self) -> bool {
        let netns_scopes = self
            .policy
            .scopes
            .iter()
            .filter(|def| matches!(def.selector, Selector::Netns(_)))
            .count();
        self.netns_instances() < netns_scopes
            || self.outcomes.iter().any(|outcome| outcome.applied.is_err())
    }

    /// The cgroup directories of the instances that wait for their
    /// network (a container created, its runtime not done setting it up).
    #[must_use]
    pub fn waiting_for_their_network(&self) -> Vec<PathBuf> {
        self.outcomes
            .iter()
            .filter(|outcome| {
                matches!(outcome.assignment.key, ScopeKey::Cgroup(_))
                    && outcome
                        .applied
                        .as_ref()
                        .is_err_and(|error| policy::waits_for_its_network(error))
            })
            .map(|outcome| outcome.assignment.place.clone())
            .collect()
    }

    /// Gives back the memory of instances that went.
    pub fn shrink(&mut self) {
        self.resolved.shrink_to_fit();
        self.namespaces.shrink_to_fit();
    }

    /// Forgets the rules that failed to resolve, to be resolved again.
    pub fn forget_failed(&mut self) {
        self.resolved.retain(|_, rules| rules.is_ok());
    }

    /// Forgets the rules of the instances keyed by `cgroups`, resolved
    /// from what the host said of them (addresses, gateway).
    pub fn forget_cgroups(&mut self, cgroups: &HashSet<u64>) {
        self.resolved.retain(|(_, key, _, _, _), _| {
            !matches!(key, ScopeKey::Cgroup(cgroup) if cgroups.contains(cgroup))
        });
    }

    /// Forgets the resolved rules of every instance with a grant through
    /// interface `index` (its veth or its bridge), which is gone or moved:
    /// resolved again at once, they never keep an address the container
    /// lost. Whether any had.
    pub fn withdraw_grants_through(&mut self, index: u32) -> bool {
        let before = self.resolved.len();
        self.resolved.retain(|_, rules| {
            !rules.as_ref().is_ok_and(|scope| {
                scope
                    .grants
                    .iter()
                    .any(|grant| grant.via == Some(index) || grant.ingress == Some(index))
            })
        });
        self.resolved.len() != before
    }

    /// Forgets the resolved rules of every instance with a grant.
    pub fn withdraw_grants(&mut self) {
        self.resolved
            .retain(|_, rules| rules.as_ref().is_ok_and(|scope| scope.grants.is_empty()));
    }

    /// Puts `policy` in force for the next reconcile; what it replaced
    /// comes back with [`Self::put_back`].
    pub fn replace_policy(&mut self, policy: Policy) -> Replaced {
        Replaced {
            policy: std::mem::replace(&mut self.policy, policy),
            resolved: std::mem::take(&mut self.resolved),
        }
    }

    /// Puts back what [`Self::replace_policy`] replaced.
    pub fn put_back(&mut self, replaced: Replaced) {
        self.policy = replaced.policy;
        self.resolved = replaced.resolved;
    }
}

impl Replaced {
    /// The policy that was in force.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}
