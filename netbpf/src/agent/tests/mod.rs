//! Unit tests of the agent's logic, unprivileged: the reconcile through
//! the fake datapath (`datapath::fake`, whose doc names the privileged test
//! proving each behaviour it models), host facts from a table, and the
//! inventory of what runs.

mod inventory;
mod network;
mod reconcile;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    rc::Rc,
};

use super::{
    facts::BindsIn,
    inventory::Inventory,
    metrics::Events,
    reconcile::{InstanceProbe, Probe, Reconciler},
    scope_sockets::ScopePlace,
};
use crate::{
    containers::{Container, Runtime, StateDirs, Workload, engine::EngineEvent},
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
            .ok_or_else(|| policy::NO_PROCESS_YET.to_owned())
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
            .map(|reconciled| reconciled.new_places)
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

    /// The grants in the maps: (veth, bridge) each arrives through.
    fn grant_paths(&self) -> Vec<(u32, u32)> {
        self.maps
            .held
            .grants
            .values()
            .map(|path| (path.port, path.ingress))
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

/// A Docker container described by its runtime.
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
