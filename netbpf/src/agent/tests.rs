//! Unit tests of the agent's logic, unprivileged: the reconcile through
//! the fake datapath (`datapath::fake`, whose doc names the privileged test
//! proving each behaviour it models), host facts from a table, and the
//! inventory of what runs.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    rc::Rc,
};

use super::{
    existing_binds::ScopePlace,
    facts::BindsIn,
    inventory::Inventory,
    metrics::Events,
    reconcile::{InstanceProbe, Probe, Reconciler},
};
use crate::{
    containers::{Container, Runtime, Workload, engine::EngineEvent},
    datapath::{
        DatapathError,
        fake::{FakeMaps, Operation},
    },
    host::{Node, scope_net::ScopeNetwork},
    plan::{Capacity, Plan, ScopeKey},
    policy::{self, Policy},
};

/// The node of every test: nothing of it is read.
fn node() -> Node {
    Node {
        mount: PathBuf::from("/sys/fs/cgroup"),
        mount_level: 0,
        cgroup_root: PathBuf::from("/sys/fs/cgroup/test"),
        netns: PathBuf::from("/proc/1/ns/net"),
        other_netns: None,
    }
}

fn policy(text: &str) -> Policy {
    policy::parse(Path::new("policy.toml"), text).unwrap()
}

/// A cgroup below the mount, a container named `name` if any.
fn workload(path: &str, id: u64, name: Option<&str>) -> Workload {
    Workload {
        cgroup: PathBuf::from(path),
        cgroup_id: id,
        container: name.map(|name| Container {
            runtime: Some(Runtime::Docker),
            id: format!("{id:064x}"),
            name: Some(name.to_owned()),
            labels: BTreeMap::new(),
            pod: None,
        }),
    }
}

/// One forward for every cgroup below `test/`.
const FORWARDS: &str = "version = 1\n[[scope]]\nname = \"apps\"\nmatch = { cgroup = \"test/*\" }\n\
    forward = [{ from = \"localhost:8082\", to = \"10.0.0.1:8082\" }]\n";

/// What the host says, as a test sets it: each instance's network, the
/// node's addresses, the network namespaces that exist.
#[derive(Default)]
struct Table {
    networks: HashMap<ScopeKey, ScopeNetwork>,
    binds_in: HashMap<ScopeKey, BindsIn>,
    node_addresses: Vec<IpAddr>,
    namespaces: HashMap<PathBuf, u64>,
}

/// A [`Probe`] reading a [`Table`] the test keeps changing.
struct TableProbe(Rc<RefCell<Table>>);

/// One instance's facts, copied from the table.
struct TableFacts {
    network: Option<ScopeNetwork>,
    binds_in: Option<BindsIn>,
    node_addresses: Vec<IpAddr>,
}

impl policy::Facts for TableFacts {
    fn network(&self) -> Result<ScopeNetwork, String> {
        self.network
            .clone()
            .ok_or_else(|| "no process of the instance runs yet".to_owned())
    }

    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        Ok(self.node_addresses.clone())
    }

    fn bound_ports(&self) -> Result<Vec<(u8, u16)>, String> {
        Ok(Vec::new())
    }
}

impl InstanceProbe for TableFacts {
    fn binds_in(&self) -> Option<BindsIn> {
        self.binds_in
    }
}

impl Probe for TableProbe {
    fn instance<'a>(
        &'a self,
        key: ScopeKey,
        _place: &'a Path,
        _node: &'a Node,
    ) -> Box<dyn InstanceProbe + 'a> {
        let table = self.0.borrow();
        Box::new(TableFacts {
            network: table.networks.get(&key).cloned(),
            binds_in: table.binds_in.get(&key).copied(),
            node_addresses: table.node_addresses.clone(),
        })
    }

    fn netns_cookie(&self, path: &Path) -> Option<u64> {
        self.0.borrow().namespaces.get(path).copied()
    }
}

/// A reconciler on fake maps, with its host facts from a table.
struct Rig {
    core: Reconciler,
    maps: FakeMaps,
    table: Rc<RefCell<Table>>,
    events: Events,
}

impl Rig {
    fn new(text: &str) -> Self {
        Self::with_capacity(text, Capacity::default())
    }

    fn with_capacity(text: &str, capacity: Capacity) -> Self {
        let maps = FakeMaps::new(capacity);
        Self::adopting(text, capacity, maps)
    }

    /// An agent starting on maps an earlier one filled.
    fn adopting(text: &str, capacity: Capacity, maps: FakeMaps) -> Self {
        let table = Rc::new(RefCell::new(Table::default()));
        let probe = Box::new(TableProbe(Rc::clone(&table)));
        let core = Reconciler::adopt(&maps, policy(text), capacity, probe).unwrap();
        Self {
            core,
            maps,
            table,
            events: Events::default(),
        }
    }

    fn reconcile(&mut self, workloads: &[Workload]) -> Result<Vec<ScopePlace>, DatapathError> {
        self.core
            .reconcile(&mut self.maps, workloads, &node(), &mut self.events)
    }

    /// The cgroups the maps give a scope, with their scope ids.
    fn scoped(&self) -> Vec<(u64, u32)> {
        self.maps
            .held
            .cgroup_scopes
            .iter()
            .map(|(&cgroup, scope)| (cgroup, scope.id))
            .collect()
    }

    /// Each instance's name and whether it is applied.
    fn outcomes(&self) -> Vec<(String, bool)> {
        self.core
            .outcomes
            .iter()
            .map(|outcome| (self.core.name_of(outcome), outcome.applied.is_ok()))
            .collect()
    }

    /// The first refusal among the outcomes.
    fn refusal(&self) -> String {
        self.core
            .outcomes
            .iter()
            .find_map(|outcome| outcome.applied.as_ref().err().cloned())
            .expect("an instance refused")
    }
}

/// Whether every map of `plan` is empty.
fn holds_nothing(plan: &Plan) -> bool {
    Capacity::default()
        .fill(plan)
        .iter()
        .all(|&(_, entries, _)| entries == 0)
}

/// A container's network, as the host would say it: its address, its
/// gateway (the node's) and the host side of its veth on a bridge.
fn container_network(address: &str, veth: u32, bridge: u32) -> ScopeNetwork {
    ScopeNetwork {
        node: false,
        gateways: vec!["10.210.1.1".parse().unwrap()],
        addresses: vec![address.parse().unwrap()],
        route_addresses: vec![address.parse().unwrap()],
        host_interface: Some(veth),
        ingress_interface: Some(bridge),
    }
}

/// A host service granted to every cgroup below `test/`.
const GRANTED: &str = "version = 1\n\
    [[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\n\
    [[scope]]\nname = \"apps\"\nmatch = { cgroup = \"test/*\" }\n\
    host_services = [{ service = \"gpu\", dial = \"172.17.0.1:18188\" }]\n";

// The reconcile: what the maps hold.

#[test]
fn a_matching_cgroup_gets_its_scope_and_its_forward_in_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
    assert_eq!(rig.outcomes(), [("apps/a".to_owned(), true)]);
}

#[test]
fn a_cgroup_no_scope_matches_leaves_the_maps_empty() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("other/a", 11, None)]).unwrap();
    assert!(holds_nothing(&rig.maps.held), "{:?}", rig.maps.held);
    assert!(rig.core.outcomes.is_empty());
}

#[test]
fn a_cgroup_that_goes_leaves_nothing_in_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.scoped(), [(12, 1)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
    assert!(
        rig.maps.held.forward_ports.keys().all(|key| key.scope == 1),
        "only b's forward is left"
    );
}

#[test]
fn a_scope_keeps_its_id_while_others_come_and_go() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    rig.reconcile(&[workload("test/b", 12, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(
        rig.scoped(),
        [(12, 1), (13, 2)],
        "ids are never reused at once"
    );
}

#[test]
fn the_same_plan_twice_is_one_update_each_and_nothing_new_to_count() {
    let mut rig = Rig::new(FORWARDS);
    let first = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let second = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(
        first.len(),
        1,
        "a new instance: its bound sockets are counted"
    );
    assert!(second.is_empty(), "nothing new the second time");
    assert_eq!(rig.maps.updates, 2);
}

#[test]
fn the_places_of_new_instances_are_returned_for_their_bound_sockets() {
    let mut rig = Rig::new(FORWARDS);
    let places = rig
        .reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let paths: Vec<&Path> = places.iter().map(|place| place.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            Path::new("/sys/fs/cgroup/test/a"),
            Path::new("/sys/fs/cgroup/test/b")
        ]
    );
}

#[test]
fn an_instance_forwarding_more_ports_after_a_reload_is_returned_again() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.core.replace_policy(policy(&FORWARDS.replace(
        "forward = [",
        "forward = [{ from = \"localhost:9000\", to = \"10.0.0.1:9000\" }, ",
    )));
    let places = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(places.len(), 1);
    assert_eq!(rig.maps.held.forward_ports.len(), 2);
}

#[test]
fn new_rules_get_their_counters_zeroed_once() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    assert_eq!(rig.maps.zeroed, [0, 1], "one slot per new rule, once each");
}

#[test]
fn the_rule_slots_are_kept_for_the_next_agent() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let slots: Vec<u32> = rig.maps.slots.values().copied().collect();
    assert_eq!(slots, [0, 1]);
}

// Restart: adoption of what an earlier agent left.

#[test]
fn a_restarted_agent_keeps_the_scope_ids_and_counter_slots() {
    let mut first = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None), workload("test/b", 12, None)];
    first.reconcile(&workloads[1..]).unwrap();
    first.reconcile(&workloads).unwrap();
    let (held, slots) = (first.maps.held.clone(), first.maps.slots.clone());

    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    let places = second.reconcile(&workloads).unwrap();
    assert_eq!(second.maps.held, held, "the same entries, the same ids");
    assert_eq!(second.maps.slots, slots);
    assert!(second.maps.zeroed.len() == 2, "no counter zeroed again");
    assert!(places.is_empty(), "no instance is new to the maps");
}

#[test]
fn a_restarted_agent_drops_what_went_while_no_agent_ran() {
    let mut first = Rig::new(FORWARDS);
    first
        .reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    second.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(second.scoped(), [(12, 1)]);
}

#[test]
fn a_restarted_agent_numbers_new_scopes_after_the_adopted_ones() {
    let mut first = Rig::new(FORWARDS);
    first.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    second
        .reconcile(&[workload("test/a", 11, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(second.scoped(), [(11, 0), (13, 1)]);
}

// Failures, and their undoing.

#[test]
fn a_failed_update_is_undone_and_the_plan_stays_the_old_one() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let before = rig.maps.held.clone();
    rig.maps.fail_next(Operation::Update);
    let failed = rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)]);
    assert!(failed.is_err());
    assert_eq!(rig.maps.held, before, "the half-written update was undone");
    assert_eq!(rig.core.plan, before);
    assert_eq!(rig.outcomes(), [("apps/a".to_owned(), true)]);
}

#[test]
fn an_update_whose_undo_fails_too_starts_again_from_what_the_maps_hold() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.maps.fail_next(Operation::Update);
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&[workload("test/b", 12, None)]).is_err());
    assert_eq!(
        rig.core.plan, rig.maps.held,
        "the agent's view is what the maps hold, read back"
    );
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.scoped(), [(12, 1)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
}

#[test]
fn after_a_failed_update_the_next_reconcile_applies_it() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&[workload("test/a", 11, None)]).is_err());
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
}

#[test]
fn a_failed_reset_of_counters_touches_no_map() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::ResetRuleStats);
    assert!(rig.reconcile(&[workload("test/a", 11, None)]).is_err());
    assert_eq!(rig.maps.updates, 0);
    assert!(rig.core.outcomes.is_empty());
}

#[test]
fn rule_slots_not_kept_leave_the_plan_applied() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::WriteRuleSlots);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert!(rig.maps.slots.is_empty());
}

// Full maps.

#[test]
fn a_full_map_refuses_the_instances_beyond_it_naming_map_and_setting() {
    let capacity = Capacity {
        scopes: 1,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert_eq!(
        rig.outcomes(),
        [("apps/a".to_owned(), true), ("apps/b".to_owned(), false)]
    );
    let refusal = rig.refusal();
    assert!(
        refusal.contains("CGROUP_SCOPES") && refusal.contains("capacity.scopes"),
        "{refusal}"
    );
    assert!(rig.core.waiting(), "a refused instance is tried again");
}

#[test]
fn a_full_map_takes_a_replacement_in_one_update() {
    let capacity = Capacity {
        scopes: 2,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(rig.scoped(), [(12, 1), (13, 2)]);
    assert!(rig.outcomes().iter().all(|(_, applied)| *applied));
}

#[test]
fn an_instance_refused_for_a_full_map_gets_in_once_another_goes() {
    let capacity = Capacity {
        scopes: 1,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.outcomes(), [("apps/b".to_owned(), true)]);
    assert!(!rig.core.waiting());
}

// Reloads.

#[test]
fn a_reload_replaces_the_rules_of_every_instance() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    rig.core
        .replace_policy(policy(&FORWARDS.replace("10.0.0.1:8082", "10.0.0.2:8082")));
    rig.reconcile(&workloads).unwrap();
    let target = rig.maps.held.forward_ports.values().next().unwrap();
    assert_eq!(target.addr[0], u32::from_ne_bytes([10, 0, 0, 2]));
}

#[test]
fn a_reload_that_cannot_be_applied_puts_the_running_policy_back() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    let before = rig.maps.held.clone();
    let replaced = rig
        .core
        .replace_policy(policy(&FORWARDS.replace("10.0.0.1:8082", "10.0.0.2:8082")));
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&workloads).is_err());
    rig.core.put_back(replaced);
    rig.reconcile(&workloads).unwrap();
    assert_eq!(rig.maps.held, before);
}

#[test]
fn a_reload_to_a_policy_matching_nothing_empties_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    rig.core.replace_policy(policy("version = 1\n"));
    rig.reconcile(&workloads).unwrap();
    assert!(holds_nothing(&rig.maps.held), "{:?}", rig.maps.held);
}

// Network namespaces, and instances that wait.

#[test]
fn a_netns_scope_applies_once_its_namespace_exists() {
    let text = "version = 1\n[[scope]]\nname = \"desk\"\nmatch = { netns = \"/run/netns/desk\" }\n\
                forward = [{ from = \"localhost:8082\", to = \"10.0.0.1:8082\" }]\n";
    let mut rig = Rig::new(text);
    rig.reconcile(&[]).unwrap();
    assert!(rig.maps.held.netns_scopes.is_empty());
    assert!(rig.core.waiting(), "a netns scope with no instance waits");
    rig.table
        .borrow_mut()
        .namespaces
        .insert(PathBuf::from("/run/netns/desk"), 4096);
    rig.reconcile(&[]).unwrap();
    assert_eq!(
        rig.maps
            .held
            .netns_scopes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [4096]
    );
    assert!(!rig.core.waiting());
}

#[test]
fn a_failing_instance_is_listed_with_its_reason_until_it_applies() {
    let mut rig = Rig::new(GRANTED);
    rig.table.borrow_mut().node_addresses = vec!["10.210.1.1".parse().unwrap()];
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    let failing = rig.core.failing();
    assert!(
        failing[0].contains("Cgroup(11)") && failing[0].contains("no process"),
        "{failing:?}"
    );
    assert!(rig.core.waiting());
    // Its process runs now: the facts are there, the cached failure is
    // forgotten on the retry.
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.210.1.2", 7, 3));
    rig.core.forget_failed();
    rig.reconcile(&workloads).unwrap();
    assert!(!rig.core.waiting(), "{:?}", rig.core.failing());
    assert_eq!(rig.maps.held.grants.len(), 1);
}

// Grants, and the network changing under them.

/// A rig with one granted container, its veth 7 on bridge 3.
fn granted_rig() -> (Rig, [Workload; 1]) {
    let mut rig = Rig::new(GRANTED);
    {
        let mut table = rig.table.borrow_mut();
        table.node_addresses = vec!["10.210.1.1".parse().unwrap()];
        table
            .networks
            .insert(ScopeKey::Cgroup(11), container_network("10.210.1.2", 7, 3));
    }
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    (rig, workloads)
}

#[test]
fn a_grant_admits_the_containers_address_through_its_bridge() {
    let (rig, _) = granted_rig();
    let paths: Vec<(u32, u32)> = rig
        .maps
        .held
        .grants
        .values()
        .map(|path| (path.port, path.ingress))
        .collect();
    assert_eq!(paths, [(7, 3)]);
    assert_eq!(rig.maps.held.scope_grants.len(), 1);
}

#[test]
fn a_grant_through_an_interface_that_went_is_resolved_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.214.0.2", 9, 5));
    assert!(!rig.core.withdraw_grants_through(42), "no grant through 42");
    rig.reconcile(&workloads).unwrap();
    let stale: Vec<u32> = rig
        .maps
        .held
        .grants
        .values()
        .map(|path| path.port)
        .collect();
    assert_eq!(stale, [7], "cached until its interface changes");
    assert!(rig.core.withdraw_grants_through(7));
    rig.reconcile(&workloads).unwrap();
    let moved: Vec<(u32, u32)> = rig
        .maps
        .held
        .grants
        .values()
        .map(|path| (path.port, path.ingress))
        .collect();
    assert_eq!(moved, [(9, 5)], "the new veth and bridge");
}

#[test]
fn lost_interface_events_resolve_every_grant_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.210.1.9", 8, 3));
    rig.core.withdraw_grants();
    rig.reconcile(&workloads).unwrap();
    assert_eq!(
        rig.maps
            .held
            .grants
            .values()
            .map(|path| path.port)
            .collect::<Vec<_>>(),
        [8]
    );
}

#[test]
fn a_container_whose_networks_changed_is_resolved_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .remove(&ScopeKey::Cgroup(11));
    rig.core.forget_cgroups(&HashSet::from([11]));
    rig.reconcile(&workloads).unwrap();
    assert!(rig.maps.held.grants.is_empty(), "no network, no grant");
    assert!(rig.core.waiting());
}

// Bind remaps: where they claim ports.

#[test]
fn two_instances_in_one_network_cannot_remap_to_the_same_port() {
    let text = "version = 1\n[[scope]]\nname = \"web\"\nmatch = { cgroup = \"test/*\" }\n\
                bind = [{ port = 3000, to = 7000 }]\n";
    let mut rig = Rig::new(text);
    {
        let mut table = rig.table.borrow_mut();
        table.binds_in.insert(ScopeKey::Cgroup(11), BindsIn::Node);
        table.binds_in.insert(ScopeKey::Cgroup(12), BindsIn::Node);
        table
            .binds_in
            .insert(ScopeKey::Cgroup(13), BindsIn::Namespace(99));
    }
    rig.reconcile(&[
        workload("test/a", 11, None),
        workload("test/b", 12, None),
        workload("test/c", 13, None),
    ])
    .unwrap();
    assert_eq!(
        rig.outcomes(),
        [
            ("web/a".to_owned(), true),
            ("web/b".to_owned(), false),
            ("web/c".to_owned(), true)
        ],
        "b would take a's port; c binds in a network of its own"
    );
}

// What a runtime's hook registers: the outcome it is answered with.

#[test]
fn the_deepest_instance_among_a_hooks_cgroups_answers_the_hook() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let keys = [
        ScopeKey::Cgroup(99),
        ScopeKey::Cgroup(11),
        ScopeKey::Cgroup(1),
    ];
    let outcome = rig.core.outcome_of(&keys).unwrap();
    assert_eq!(rig.core.name_of(outcome), "apps/a");
    assert!(rig.core.outcome_of(&[ScopeKey::Cgroup(99)]).is_none());
}

#[test]
fn a_hooked_container_is_in_the_maps_after_one_reconcile() {
    let text = "version = 1\n[[scope]]\nname = \"named\"\nmatch = { container = \"web-*\" }\n\
                forward = [{ from = \"localhost:8082\", to = \"10.0.0.1:8082\" }]\n";
    let mut rig = Rig::new(text);
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    let id = "ab".repeat(32);
    let path = format!("test/docker-{id}.scope");
    inventory.add_workload(PathBuf::from(&path), 21);
    rig.reconcile(&inventory.workloads()).unwrap();
    assert!(rig.maps.held.cgroup_scopes.is_empty(), "no name, no match");
    inventory.hooked(docker_container(&id, "web-1"), true);
    rig.reconcile(&inventory.workloads()).unwrap();
    assert_eq!(rig.scoped(), [(21, 0)]);
}

// The inventory.

fn docker_container(id: &str, name: &str) -> Container {
    Container {
        runtime: Some(Runtime::Docker),
        id: id.to_owned(),
        name: Some(name.to_owned()),
        labels: BTreeMap::new(),
        pod: None,
    }
}

/// A Docker container's cgroup, and its id.
fn docker_cgroup(n: u8) -> (PathBuf, String) {
    let id = format!("{n:02x}").repeat(32);
    (PathBuf::from(format!("test/docker-{id}.scope")), id)
}

#[test]
fn a_runtimes_cgroup_is_known_as_its_container() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    let (path, id) = docker_cgroup(1);
    inventory.add_workload(path, 5);
    inventory.add_workload(PathBuf::from("test/plain"), 6);
    let workloads = inventory.workloads();
    assert_eq!(workloads.len(), 2);
    let container = workloads[0].container.as_ref().unwrap();
    assert_eq!(
        (container.runtime, container.id.as_str()),
        (Some(Runtime::Docker), id.as_str())
    );
    assert!(workloads[1].container.is_none());
}

#[test]
fn what_a_runtime_says_names_its_containers_until_they_go() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    let (path, id) = docker_cgroup(2);
    inventory.add_workload(path, 5);
    inventory.follow_runtime(EngineEvent::Known(docker_container(&id, "web-1")));
    let name = |inventory: &Inventory| {
        inventory.workloads()[0]
            .container
            .as_ref()
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(name(&inventory).as_deref(), Some("web-1"));
    inventory.follow_runtime(EngineEvent::Gone(id));
    assert_eq!(name(&inventory), None);
}

#[test]
fn a_runtimes_list_replaces_its_descriptions_but_keeps_the_hooks() {
    let (path_a, id_a) = docker_cgroup(3);
    let (path_b, id_b) = docker_cgroup(4);
    let mut inventory = Inventory::new(vec![docker_container(&id_a, "old")], PathBuf::new(), None);
    inventory.add_workload(path_a, 5);
    inventory.add_workload(path_b, 6);
    inventory.hooked(docker_container(&id_b, "hooked"), true);
    inventory.follow_runtime(EngineEvent::All(Runtime::Docker, Vec::new()));
    let names: Vec<Option<String>> = inventory
        .workloads()
        .into_iter()
        .map(|workload| workload.container.unwrap().name)
        .collect();
    assert_eq!(names, [None, Some("hooked".to_owned())]);
}

#[test]
fn a_container_whose_networks_changed_names_its_cgroups() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    let (path, id) = docker_cgroup(5);
    inventory.add_workload(path, 5);
    let rewired = inventory.follow_runtime(EngineEvent::Rewired(id.clone()));
    assert_eq!(rewired.as_deref(), Some(id.as_str()));
    assert_eq!(inventory.cgroups_of(&id), HashSet::from([5]));
}

#[test]
fn a_cgroup_that_goes_takes_its_subtree_along() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    inventory.add_workload(PathBuf::from("test/a"), 1);
    inventory.add_workload(PathBuf::from("test/a/inner"), 2);
    inventory.add_workload(PathBuf::from("test/ab"), 3);
    inventory.remove_below(Path::new("test/a"));
    assert!(!inventory.knows(Path::new("test/a/inner")));
    assert!(
        inventory.knows(Path::new("test/ab")),
        "a sibling, not a child"
    );
    assert_eq!(inventory.cgroups(), 1);
}

#[test]
fn a_resync_knows_exactly_the_cgroups_listed() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    inventory.add_workload(PathBuf::from("test/gone"), 1);
    inventory.resync(vec![(PathBuf::from("test/new"), 2)]);
    assert!(!inventory.knows(Path::new("test/gone")));
    assert!(inventory.knows(Path::new("test/new")));
}

#[test]
fn hooked_containers_are_kept_for_the_next_agent_until_their_cgroup_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("described.json");
    let (path, id) = docker_cgroup(6);
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), Some(file.clone()));
    inventory.add_workload(path.clone(), 5);
    inventory.hooked(docker_container(&id, "web-1"), true);

    let mut next = Inventory::new(Vec::new(), PathBuf::new(), Some(file.clone()));
    next.add_workload(path.clone(), 5);
    let named = next.workloads()[0].container.clone().unwrap().name;
    assert_eq!(named.as_deref(), Some("web-1"), "the next agent knows it");

    next.remove_below(&path);
    let kept: Vec<Container> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(kept.is_empty(), "forgotten with its cgroup");
}

#[test]
fn a_hook_for_a_cgroup_its_layout_does_not_name_is_not_kept() {
    let mut inventory = Inventory::new(Vec::new(), PathBuf::new(), None);
    inventory.add_workload(PathBuf::from("test/plain"), 5);
    inventory.hooked(docker_container("cd".repeat(32).as_str(), "web-1"), false);
    assert!(inventory.workloads()[0].container.is_none());
}
