//! The agent: one process per node. It follows the containers (cgroups
//! appearing and going), matches them against the policy, keeps the
//! datapath's maps equal to the plan, follows interfaces for the MSS
//! clamps, answers the control socket, reloads its policy on SIGHUP, and
//! stops on SIGINT or SIGTERM.

pub mod config;
pub mod control;
pub mod existing_binds;
mod facts;
mod grant_guard;
pub mod host_services;
mod metrics;
pub mod mss_clamp;
mod policy_watch;
mod report;
mod retry;
mod signals;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

pub use self::signals::Signals;
use self::{
    existing_binds::ScopePlace,
    facts::{BindsIn, InstanceFacts},
    grant_guard::GrantGuard,
    host_services::HostServices,
    mss_clamp::{ClampError, MssClamper},
    policy_watch::PolicyWatch,
    retry::Retry,
    signals::Asked,
};
use crate::{
    api::control::{Registered, Reloaded, Request},
    containers::Runtimes,
    containers::{
        Container, Runtime, Workload,
        cgroup_watch::{CgroupEvent, CgroupWatcher},
        containerd,
        engine::{self, EngineEvent},
        layout,
        oci::State,
    },
    datapath::{
        BoundSocket, Datapath, DatapathError, Optional, Pins,
        features::{self, SK_LOOKUP, Unavailable},
    },
    host::Node,
    host::{
        links::{self, Interface, LinkEvent, LinkWatcher},
        netns,
    },
    plan::{self, Assignment, Capacity, Outcome, Plan, Resolved, RuleSlots, ScopeIds, ScopeKey},
    policy::{self, Instance, Policy, PolicyError, Selector},
};

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// One file (`netbpf run --policy FILE`).
    File(PathBuf),
    /// Every `*.toml` file of a directory, merged.
    Dir(PathBuf),
}

impl PolicySource {
    /// Reads and validates the policy.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        match self {
            Self::File(file) => policy::load(file),
            Self::Dir(dir) => policy::load_dir(dir),
        }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Self::File(path) | Self::Dir(path) => path,
        }
    }
}

/// The outcome of the last reload, for `netbpf status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub at: std::time::SystemTime,
    /// Why the policy was not reloaded; None when it was.
    pub error: Option<String>,
}

/// Everything a running agent holds.
pub struct Agent {
    pub datapath: Datapath,
    pub policy: Policy,
    pub source: PolicySource,
    pub node: Node,
    capacity: Capacity,
    /// The kernel features probed missing at start.
    unavailable: Vec<Unavailable>,
    /// Every cgroup below the cgroup root, by path below the mount.
    workloads: BTreeMap<PathBuf, Workload>,
    ids: ScopeIds,
    slots: RuleSlots,
    /// The rules each instance resolved to, until the policy changes or
    /// the instance does (its name, what its match captured).
    resolved: HashMap<(usize, ScopeKey, String, policy::Captures), Result<policy::Scope, String>>,
    /// The network namespace each instance with bind remaps binds in,
    /// known once one of its processes runs: it stays while the cgroup
    /// does.
    namespaces: HashMap<ScopeKey, BindsIn>,
    /// What the maps hold.
    pub plan: Plan,
    /// What became of each scope instance.
    pub outcomes: Vec<Outcome>,
    pub clamper: MssClamper,
    pub host_services: HostServices,
    /// Whether the host service program is attached to the node.
    host_services_attached: bool,
    /// Interface changes, where the policy clamps MSS or has host services.
    links: Option<LinkWatcher>,
    /// The node's interfaces, while `links` follows them.
    interfaces: BTreeMap<u32, Interface>,
    /// The grant guard on granted containers' bridges.
    guard: GrantGuard,
    cgroups: CgroupWatcher,
    /// Changes of the policy directory (a policy of one file is reloaded
    /// by SIGHUP and `netbpf reload` only).
    policy_watch: Option<PolicyWatch>,
    /// What the runtimes' APIs and hooks say of their containers, by id.
    described: HashMap<String, Container>,
    /// The ids described by an OCI hook or a containerd bundle only:
    /// forgotten with their cgroup (described again for a new one), where
    /// an API says when a container goes.
    hooked: HashSet<String>,
    /// containerd's state directory, where its tasks' bundles are; empty:
    /// not looked at.
    containerd_state: PathBuf,
    /// Where the containers only hooks and bundles describe are kept, for
    /// the next agent.
    described_file: Option<PathBuf>,
    runtime_events: tokio::sync::mpsc::Receiver<EngineEvent>,
    pub last_reload: Option<LastReload>,
    /// How long after a cgroup appeared its policy was in the maps.
    pub delays: Delays,
    /// What the metrics count as things happen.
    events: metrics::Events,
}

/// The delays from a cgroup's appearing (its inotify event) to its scope
/// being in the maps, the last ones kept.
#[derive(Debug, Default, Clone)]
pub struct Delays(std::collections::VecDeque<Duration>);

impl Delays {
    const KEPT: usize = 1024;

    fn record(&mut self, delay: Duration) {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(delay);
    }

    /// The `percent` percentile of the delays kept, if any.
    #[must_use]
    pub fn percentile(&self, percent: usize) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        sorted.get((last * percent).div_ceil(100)).copied()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Agent {
    /// Reads the policy, loads the datapath, fills its maps for what runs
    /// now and attaches it. Nothing is loaded when the policy is invalid.
    ///
    /// With `pins`, the datapath pinned there is adopted (same maps, its
    /// links' programs replaced atomically) or made and pinned there.
    ///
    /// `described` is what the runtimes' APIs list now; the containers that
    /// only hooks and bundles describe are kept in `described_file` across
    /// restarts. Both are known before the first update of the maps, so a
    /// restart drops no container's scope.
    pub fn start(
        node: Node,
        source: PolicySource,
        runtimes: &Runtimes,
        capacity: Capacity,
        pins: Option<&Pins>,
        described: Vec<Container>,
        described_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let unavailable = probe_kernel()?;
        let policy = source.load()?;
        refuse_unavailable(&policy, &unavailable)?;
        let datapath = Datapath::load(Optional::for_policy(&policy), &capacity, pins)?;
        // What the maps hold now (nothing, unless adopted): the starting
        // point of the first update, with its scope ids and counter slots.
        let plan = datapath.read_plan()?;
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
        let slots = RuleSlots::adopt(datapath.read_rule_slots()?);
        let (cgroups, present) =
            CgroupWatcher::start(&node.mount, &node.cgroup_root).map_err(|error| {
                anyhow::anyhow!(
                    "watching the cgroups below {}: {error}",
                    node.cgroup_root.display()
                )
            })?;
        let host_services =
            HostServices::new(policy.host_services.clone(), node.other_netns.as_deref());
        let clamper = MssClamper::new(policy.mss_clamps.clone(), node.other_netns.as_deref());
        let guard = GrantGuard::new(node.other_netns.as_deref());
        let policy_watch = match &source {
            PolicySource::Dir(dir) => Some(PolicyWatch::start(dir).map_err(|error| {
                anyhow::anyhow!("watching the policy directory {}: {error}", dir.display())
            })?),
            PolicySource::File(_) => None,
        };
        let (sender, runtime_events) = tokio::sync::mpsc::channel(1024);
        for (runtime, socket) in runtimes.sockets() {
            tokio::spawn(engine::follow(runtime, socket, sender.clone()));
        }
        let mut agent = Self {
            datapath,
            policy,
            source,
            node,
            capacity,
            unavailable,
            workloads: BTreeMap::new(),
            ids,
            slots,
            resolved: HashMap::new(),
            namespaces: HashMap::new(),
            plan,
            outcomes: Vec::new(),
            clamper,
            host_services,
            host_services_attached: false,
            links: None,
            interfaces: BTreeMap::new(),
            guard,
            cgroups,
            policy_watch,
            described: described
                .into_iter()
                .map(|container| (container.id.clone(), container))
                .collect(),
            hooked: HashSet::new(),
            described_file,
            containerd_state: runtimes.containerd.clone(),
            runtime_events,
            last_reload: None,
            delays: Delays::default(),
            events: metrics::Events::default(),
        };
        agent.restore_hooked();
        for (path, id) in present {
            agent.add_workload(path, id);
        }
        agent.forget_hooked_gone();
        // Listener slots an agent of a longer list of services left: the
        // others are taken or emptied by the first look for listeners.
        agent
            .datapath
            .clear_unused_service_sockets(agent.policy.host_services.len())?;
        // The maps are filled before the programs attach, so they act on
        // the whole plan from their first run.
        agent.reconcile()?;
        let scopes = agent.scope_places();
        let cgroup_root = agent.node.cgroup_root.clone();
        let plan = &agent.plan;
        agent.datapath.attach(&cgroup_root, || {
            forwarded_binds(plan, existing_binds::find(&scopes))
        })?;
        agent.datapath.prune_links("cgroup-");
        agent.apply_host_features(true)?;
        agent.datapath.finish_migration();
        Ok(agent)
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn serve(
        &mut self,
        listener: UnixListener,
        metrics: Option<tokio::net::TcpListener>,
        signals: &mut Signals,
    ) -> anyhow::Result<()> {
        // Host services are looked for every second: a restarted service
        // (autossh reconnecting) is handed connections again within it.
        let mut look_for_listeners = tokio::time::interval(Duration::from_secs(1));
        // Instances whose facts were not there yet (a container without a
        // process) are tried again, less often while nothing changes.
        let mut retry = Retry::new(self.failing());
        // A change of the policy directory, reloaded once it settles.
        let mut policy_changed: Option<tokio::time::Instant> = None;
        // Control clients' requests, each with where its answer goes.
        let (asking, mut requests) = tokio::sync::mpsc::channel::<ControlRequest>(16);
        // Metrics scrapes, answered by the loop like control requests.
        let (scraping, mut scrapes) = tokio::sync::mpsc::channel(16);
        if let Some(listener) = metrics {
            tokio::spawn(metrics::serve(listener, scraping));
        }
        loop {
            let settled = policy_changed.unwrap_or_else(tokio::time::Instant::now);
            let waiting = self.waiting();
            let retry_at = retry.next(self.failing());
            tokio::select! {
                changed = next_policy_change(self.policy_watch.as_mut()) => match changed {
                    Ok(()) => policy_changed = Some(tokio::time::Instant::now() + policy_watch::SETTLE),
                    Err(error) => {
                        tracing::warn!(%error, "watching the policy directory failed: SIGHUP and `netbpf reload` still reload it");
                        self.policy_watch = None;
                    }
                },
                () = tokio::time::sleep_until(settled), if policy_changed.is_some() => {
                    policy_changed = None;
                    let _ = self.reload();
                }
                asked = signals.received() => match asked {
                    Asked::Stop => return Ok(()),
                    Asked::Reload => {
                        let _ = self.reload();
                    }
                },
                events = self.cgroups.next() => self.follow_cgroups(events),
                Some(event) = self.runtime_events.recv() => self.follow_runtime(event),
                _ = look_for_listeners.tick(), if !self.host_services.is_empty() => {
                    self.refresh_host_services();
                }
                () = tokio::time::sleep_until(retry_at), if waiting => {
                    self.resolved.retain(|_, rules| rules.is_ok());
                    self.reconcile_logged();
                    retry.tried(self.failing());
                }
                events = next_link_events(self.links.as_mut()) => self.follow_links(events),
                Some((request, reply)) = requests.recv() => {
                    let _ = reply.send(self.answer(request));
                }
                Some(reply) = scrapes.recv() => {
                    let _ = reply.send(self.metrics_text());
                }
                accepted = listener.accept() => match accepted {
                    // Read and written in a task of its own: a slow client
                    // never holds up the loop.
                    Ok((stream, _)) => {
                        tokio::spawn(serve_client(stream, asking.clone()));
                    }
                    // Out of descriptors, or a client that gave up: the
                    // datapath runs on, and so does the socket.
                    Err(error) => {
                        tracing::warn!(%error, "accepting a status request failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// What waits, as the retry compares it: each instance that failed
    /// with its reason, and the network namespace scopes with no instance.
    fn failing(&self) -> Vec<String> {
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
    fn waiting(&self) -> bool {
        let netns_scopes = self
            .policy
            .scopes
            .iter()
            .filter(|def| matches!(def.selector, Selector::Netns(_)))
            .count();
        self.netns_instances() < netns_scopes
            || self.outcomes.iter().any(|outcome| outcome.applied.is_err())
    }

    /// How many cgroups the agent follows.
    #[must_use]
    pub fn workloads_known(&self) -> usize {
        self.workloads.len()
    }

    /// Detaches what the agent attached outside the cgroup (MSS clamps),
    /// unless its datapath is pinned: then it stays in force.
    pub fn release(&mut self) {
        if self.datapath.pins().is_none() {
            self.clamper.release_all(&mut self.datapath);
            self.guard.release_all(&mut self.datapath);
        }
    }

    /// Applies cgroups appearing and going.
    fn follow_cgroups(&mut self, events: io::Result<Vec<CgroupEvent>>) {
        let seen = Instant::now();
        let events = match events {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "reading cgroup events failed");
                return;
            }
        };
        let mut added = false;
        for event in events {
            match event {
                CgroupEvent::Added(path, id) => {
                    added = true;
                    self.add_workload(path, id);
                }
                // A cgroup made again at the same path since (a restarted
                // container) is not gone.
                CgroupEvent::Removed(path) if self.node.mount.join(&path).exists() => {}
                CgroupEvent::Removed(path) => {
                    let (gone, kept) = std::mem::take(&mut self.workloads)
                        .into_iter()
                        .partition(|(known, _)| known.starts_with(&path));
                    self.workloads = kept;
                    let mut forgot = false;
                    for workload in gone.into_values() {
                        if let Some(container) = workload.container
                            && self.hooked.remove(&container.id)
                        {
                            self.described.remove(&container.id);
                            forgot = true;
                        }
                    }
                    if forgot {
                        self.save_hooked();
                    }
                }
                CgroupEvent::Resynced(present) => {
                    tracing::warn!("cgroup events were lost: listing the cgroups again");
                    self.workloads.clear();
                    for (path, id) in present {
                        self.add_workload(path, id);
                    }
                    // Those whose cgroup went while events were lost.
                    self.forget_hooked_gone();
                }
            }
        }
        self.reconcile_logged();
        if added {
            self.delays.record(seen.elapsed());
            self.events.discovered(seen.elapsed());
        }
    }

    /// Takes in what the last agent knew of the containers only hooks and
    /// bundles describe.
    fn restore_hooked(&mut self) {
        let Some(file) = &self.described_file else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            return;
        };
        match serde_json::from_str::<Vec<Container>>(&text) {
            Ok(containers) => {
                for container in containers {
                    if !self.described.contains_key(&container.id) {
                        self.hooked.insert(container.id.clone());
                        self.described.insert(container.id.clone(), container);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, file = %file.display(), "ignoring the containers the last agent kept");
            }
        }
    }

    /// Forgets hook-described containers whose cgroup is gone, and keeps
    /// the rest for the next agent.
    fn forget_hooked_gone(&mut self) {
        let present: HashSet<&str> = self
            .workloads
            .values()
            .filter_map(|workload| Some(workload.container.as_ref()?.id.as_str()))
            .collect();
        let gone: Vec<String> = self
            .hooked
            .iter()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.hooked.remove(&id);
            self.described.remove(&id);
        }
        self.save_hooked();
    }

    /// Writes the hook-described containers for the next agent.
    fn save_hooked(&self) {
        let Some(file) = &self.described_file else {
            return;
        };
        let hooked: Vec<&Container> = self
            .hooked
            .iter()
            .filter_map(|id| self.described.get(id))
            .collect();
        let written = serde_json::to_vec(&hooked)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let temporary = file.with_extension("tmp");
                std::fs::write(&temporary, json)?;
                std::fs::rename(&temporary, file)
            });
        if let Err(error) = written {
            tracing::warn!(%error, file = %file.display(), "keeping the hook-described containers");
        }
    }

    /// Applies what a runtime said of its containers.
    fn follow_runtime(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Known(container) => {
                tracing::info!(
                    runtime = %runtime_name(container.runtime),
                    id = %container.id,
                    name = container.name.as_deref().unwrap_or(""),
                    "container described"
                );
                self.described.insert(container.id.clone(), container);
            }
            EngineEvent::Gone(id) => {
                if let Some(container) = self.described.remove(&id) {
                    tracing::info!(
                        runtime = %runtime_name(container.runtime),
                        %id,
                        name = container.name.as_deref().unwrap_or(""),
                        "container gone"
                    );
                }
            }
            EngineEvent::Rewired(id) => {
                tracing::info!(%id, "container joined or left a network: resolving its rules again");
                self.forget_resolved(&id);
            }
            EngineEvent::All(runtime, containers) => {
                // What the hook said stays: the hook may have run before
                // the runtime listed its containers.
                self.described
                    .retain(|id, known| known.runtime != Some(runtime) || self.hooked.contains(id));
                self.described.extend(
                    containers
                        .into_iter()
                        .map(|container| (container.id.clone(), container)),
                );
            }
        }
        self.reconcile_logged();
    }

    /// Forgets the rules resolved for the container `id` from what the host
    /// said of it (its addresses, its gateway), to be resolved again.
    fn forget_resolved(&mut self, id: &str) {
        let cgroups: HashSet<u64> = self
            .workloads
            .values()
            .filter(|workload| workload.container.as_ref().is_some_and(|c| c.id == id))
            .map(|workload| workload.cgroup_id)
            .collect();
        self.resolved.retain(|(_, key, _, _), _| {
            !matches!(key, ScopeKey::Cgroup(cgroup) if cgroups.contains(cgroup))
        });
    }

    /// The workloads, each container with what its runtime said of it.
    fn described_workloads(&self) -> Vec<Workload> {
        self.workloads
            .values()
            .map(|workload| {
                let mut workload = workload.clone();
                if let Some(container) = &mut workload.container
                    && let Some(described) = self.described.get(&container.id)
                {
                    *container = described.clone();
                }
                workload
            })
            .collect()
    }

    /// Knows the cgroup at `path` (below the mount), and the container in
    /// it if its layout says it is one.
    fn add_workload(&mut self, path: PathBuf, cgroup_id: u64) {
        let container = layout::recognise(&path).map(|found| Container {
            runtime: found.runtime,
            id: found.id,
            name: None,
            labels: BTreeMap::new(),
            pod: None,
        });
        if let Some(container) = &container {
            tracing::info!(
                runtime = %runtime_name(container.runtime),
                id = %container.id,
                name = self.described.get(&container.id).and_then(|known| known.name.as_deref()).unwrap_or(""),
                cgroup = %path.display(),
                "container found"
            );
            // containerd wrote the container's bundle before its cgroup:
            // its names and labels are there.
            let by_containerd = matches!(
                container.runtime,
                None | Some(Runtime::Containerd | Runtime::CriO)
            );
            if by_containerd
                && !self.described.contains_key(&container.id)
                && !self.containerd_state.as_os_str().is_empty()
                && let Some(described) = containerd::describe(&self.containerd_state, &container.id)
            {
                self.hooked.insert(described.id.clone());
                self.described.insert(described.id.clone(), described);
            }
        }
        self.workloads.insert(
            path.clone(),
            Workload {
                cgroup: path,
                cgroup_id,
                container,
            },
        );
    }

    /// Applies interface and address changes to the MSS clamps, to the
    /// grants whose packets come through those interfaces, and to the
    /// grant guard. A change that cannot be applied is logged: the rest of
    /// the datapath runs on.
    fn follow_links(&mut self, events: io::Result<Vec<LinkEvent>>) {
        // Whether containers' networks may have changed under their grants.
        let mut rewired = false;
        match events {
            Ok(events) => {
                for event in &events {
                    match event {
                        LinkEvent::Present(interface) => {
                            let known = self.interfaces.insert(interface.index, interface.clone());
                            // A port moved to another bridge: what arrives
                            // through it arrives elsewhere now.
                            if known.is_some_and(|known| known.master != interface.master) {
                                rewired |= self.withdraw_grants_through(interface.index);
                            }
                        }
                        LinkEvent::Gone(index) => {
                            self.interfaces.remove(index);
                            rewired |= self.withdraw_grants_through(*index);
                        }
                        // The gateway a grant's connections go to may be
                        // an address of it no more.
                        LinkEvent::Readdressed(index) => {
                            rewired |= self.withdraw_grants_through(*index);
                        }
                    }
                    if let Err(error) = self.clamper.handle(&mut self.datapath, event) {
                        tracing::warn!(error = format!("{error:#}"), "MSS clamp not applied");
                    }
                }
            }
            // The kernel dropped events (ENOBUFS): look at everything again.
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("interface events were lost: listing the interfaces again");
                self.relist_interfaces();
                self.resolved
                    .retain(|_, rules| rules.as_ref().is_ok_and(|scope| scope.grants.is_empty()));
                rewired = true;
                if let Err(error) = self.clamper.resync(&mut self.datapath) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "MSS clamps not resynchronised"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "reading interface changes failed"),
        }
        if rewired {
            // Applies the guard too.
            self.reconcile_logged();
        } else {
            self.apply_guard();
        }
    }

    /// Forgets the resolved rules of every instance with a grant through
    /// interface `index` (its veth or its bridge), which is gone or moved:
    /// resolved again at once, they never keep an address the container
    /// lost. Whether any had.
    fn withdraw_grants_through(&mut self, index: u32) -> bool {
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

    /// Lists the node's interfaces again, whatever events are still queued.
    fn relist_interfaces(&mut self) {
        match netns::in_netns_or_here(self.node.other_netns.as_deref(), links::list)
            .and_then(|listed| listed)
        {
            Ok(listed) => {
                self.interfaces = listed
                    .into_iter()
                    .map(|interface| (interface.index, interface))
                    .collect();
            }
            Err(error) => tracing::warn!(%error, "listing the interfaces failed"),
        }
    }

    /// Keeps the grant guard on what the grants of the plan call for.
    fn apply_guard(&mut self) {
        if self.links.is_none() {
            return;
        }
        let vias: std::collections::BTreeSet<u32> = self
            .plan
            .grants
            .values()
            .map(|path| path.port)
            .filter(|port| *port != 0)
            .collect();
        self.guard
            .apply(&mut self.datapath, &vias, &self.interfaces);
    }

    /// Follows the host services of the policy in force, none of their
    /// listeners taken yet.
    fn restart_host_services(&mut self) {
        self.host_services = HostServices::new(
            self.policy.host_services.clone(),
            self.node.other_netns.as_deref(),
        );
    }

    /// Hands the host services' listeners to the datapath, logging trouble.
    fn refresh_host_services(&mut self) {
        if let Err(error) = self.host_services.refresh(&mut self.datapath) {
            tracing::warn!(
                error = format!("{error:#}"),
                "looking for the host services' listeners"
            );
        }
    }

    /// Starts what the policy's host services and MSS clamps need: the
    /// listeners of the services, the interface watch of the clamps.
    fn apply_host_features(&mut self, starting: bool) -> anyhow::Result<()> {
        // The MSS clamp takes the verifier about a second: its programs
        // are loaded when a policy first asks for them.
        self.datapath
            .load_programs(Optional::for_policy(&self.policy))?;
        if self.host_services.is_empty() {
            if self.host_services_attached {
                self.datapath.detach_host_services();
                self.host_services_attached = false;
            }
            self.datapath.prune_links("hostsvc-");
        } else {
            // Attached only where a host service is: it runs for every
            // connection the node accepts.
            if !self.host_services_attached {
                self.datapath.attach_host_services(&self.node.netns)?;
                self.host_services_attached = true;
            }
            self.refresh_host_services();
            self.host_services.warn_missing();
        }
        let wants_interfaces = !self.clamper.is_empty() || !self.host_services.is_empty();
        if !wants_interfaces || self.links.is_some() {
            if !self.clamper.is_empty() {
                self.clamper.resync(&mut self.datapath)?;
            }
            self.clamper.prune(&mut self.datapath)?;
            self.apply_guard();
            self.datapath.prune_links("guard-");
            return Ok(());
        }
        let (socket, interfaces) =
            netns::in_netns_or_here(self.node.other_netns.as_deref(), links::subscribe_and_list)
                .and_then(|listed| listed)
                .map_err(|error| anyhow::anyhow!("listing the network interfaces: {error}"))?;
        self.links = Some(LinkWatcher::new(socket)?);
        self.interfaces = interfaces
            .iter()
            .map(|interface| (interface.index, interface.clone()))
            .collect();
        for interface in interfaces {
            match self
                .clamper
                .handle(&mut self.datapath, &LinkEvent::Present(interface))
            {
                Err(error @ ClampError::TooManyInterfaces) if starting => return Err(error.into()),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "not clamping MSS"),
                Ok(()) => {}
            }
        }
        self.clamper.prune(&mut self.datapath)?;
        self.apply_guard();
        self.datapath.prune_links("guard-");
        Ok(())
    }

    /// Where each applied instance is, for finding its sockets.
    fn scope_places(&self) -> Vec<ScopePlace> {
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

    /// Every scope instance matched now, with its rules.
    fn resolve(&mut self) -> Vec<Resolved> {
        let workloads = self.described_workloads();
        let mut assignments = plan::assign(
            &self.policy,
            &workloads,
            &self.node.mount,
            self.node.mount_level,
        );
        for (index, def) in self.policy.scopes.iter().enumerate() {
            let Selector::Netns(path) = &def.selector else {
                continue;
            };
            // A namespace that does not exist (yet) has no instance.
            if let Ok(cookie) = netns::netns_cookie(path) {
                assignments.push(Assignment {
                    scope: index,
                    key: ScopeKey::Netns(cookie),
                    instance: path.display().to_string(),
                    place: path.clone(),
                    level: 0,
                    captures: policy::Captures::new(),
                    container: None,
                });
            }
        }
        // What matches now; the rest (a container gone) leaves the caches.
        let mut current = HashSet::new();
        let mut current_keys = HashSet::new();
        let resolved = assignments
            .into_iter()
            .map(|mut assignment| {
                if let ScopeKey::Cgroup(_) = assignment.key {
                    assignment.place = self.node.mount.join(&assignment.place);
                }
                let def = &self.policy.scopes[assignment.scope];
                let cache_key = (
                    assignment.scope,
                    assignment.key,
                    assignment.instance.clone(),
                    assignment.captures.clone(),
                );
                current.insert(cache_key.clone());
                current_keys.insert(assignment.key);
                let facts = InstanceFacts {
                    key: assignment.key,
                    place: &assignment.place,
                    node_netns: &self.node.netns,
                };
                // Where its bind remaps claim ports (only they need it).
                let network = if def.has_binds() {
                    let cached = self.namespaces.get(&assignment.key).copied();
                    let known = cached.or_else(|| facts.network_namespace());
                    if let Some(network) = known {
                        self.namespaces.insert(assignment.key, network);
                    }
                    known.and_then(BindsIn::own)
                } else {
                    None
                };
                let rules = self
                    .resolved
                    .entry(cache_key)
                    .or_insert_with(|| {
                        let instance = Instance {
                            name: &assignment.instance,
                            captures: &assignment.captures,
                        };
                        def.instantiate(&self.policy.host_services, instance, &facts)
                            .map_err(|error| error.to_string())
                    })
                    .clone();
                Resolved {
                    assignment,
                    rules,
                    network,
                }
            })
            .collect::<Vec<_>>();
        self.resolved.retain(|key, _| current.contains(key));
        self.namespaces.retain(|key, _| current_keys.contains(key));
        resolved
    }

    /// Makes the maps hold the plan of what matches now, logging failures.
    fn reconcile_logged(&mut self) {
        if let Err(error) = self.reconcile() {
            tracing::warn!(error = format!("{error:#}"), "the maps were not updated");
        }
        // Grants come and go with their containers: so does the guard.
        self.apply_guard();
    }

    /// Makes the maps hold the plan of what matches now. New and changed
    /// entries first, dropped ones last; a failed update is undone, and
    /// only a failed update is an error.
    fn reconcile(&mut self) -> Result<(), DatapathError> {
        let resolved = self.resolve();
        let mut ids = self.ids.clone();
        let mut slots = self.slots.clone();
        let (plan, outcomes) =
            plan::compile(&self.policy, resolved, &mut ids, &mut slots, &self.capacity);
        self.datapath.reset_rule_stats(slots.take_fresh())?;
        if let Err(error) = self.datapath.update(&self.plan, &plan) {
            if let Err(undo) = self.datapath.update(&plan, &self.plan) {
                // Neither plan is what the maps hold: the next update
                // starts from what they do hold.
                tracing::warn!(error = %undo, "undoing a failed update: reading the maps back");
                match self.datapath.read_plan() {
                    Ok(held) => self.plan = held,
                    Err(error) => tracing::warn!(%error, "reading the maps back"),
                }
            }
            return Err(error);
        }
        // The maps hold the new plan: from here on nothing undoes it, and
        // the agent's view follows it whatever else fails.
        if let Err(error) = self
            .datapath
            .write_rule_slots(self.slots.entries(), slots.entries())
        {
            tracing::warn!(%error, "the rule slots were not pinned: a restarted agent renumbers counters");
        }
        let known: Vec<u32> = self
            .plan
            .cgroup_scopes
            .values()
            .chain(self.plan.netns_scopes.values())
            .map(|scope| scope.id)
            .collect();
        for outcome in &outcomes {
            let name = format!(
                "{}/{}",
                self.policy.scopes[outcome.assignment.scope].name, outcome.assignment.instance
            );
            let container = outcome.assignment.container.as_ref();
            let container_name = container.and_then(|c| c.name.as_deref()).unwrap_or("");
            let container_id = container.map_or("", |c| c.id.as_str());
            match &outcome.applied {
                Ok((id, _)) if !known.contains(id) => {
                    tracing::info!(scope = %name, id, container = container_name, container_id, "scope instance applied");
                }
                Err(error)
                    if !self.outcomes.iter().any(|old| {
                        old.assignment == outcome.assignment && old.applied.is_err()
                    }) =>
                {
                    if let Some(map) = plan::full_map(error) {
                        self.events.refused_for_full_map(map);
                    }
                    tracing::warn!(scope = %name, container = container_name, container_id, %error, "scope instance not applied");
                }
                _ => {}
            }
        }
        self.ids = ids;
        self.slots = slots;
        let previous = std::mem::replace(&mut self.plan, plan);
        self.outcomes = outcomes;
        // Instances new to the maps, and those that forward ports they did
        // not, may have services listening there already.
        let grown = self.plan.scopes_forwarding_more_than(&previous);
        let places: Vec<ScopePlace> = self
            .scope_places()
            .into_iter()
            .filter(|scope| !known.contains(&scope.id) || grown.contains(&scope.id))
            .collect();
        if !places.is_empty() {
            self.record_existing_binds(&places);
        }
        Ok(())
    }

    /// Counts the sockets bound inside `scopes` on ports they forward,
    /// before their bind hooks could.
    fn record_existing_binds(&mut self, scopes: &[ScopePlace]) {
        let existing = forwarded_binds(&self.plan, existing_binds::find(scopes));
        if let Err(error) = self.datapath.record_binds(&existing) {
            tracing::warn!(%error, "the sockets bound before their scope was applied are not counted");
        }
    }

    /// The answer to a control client's request.
    fn answer(&mut self, request: Request) -> Vec<u8> {
        match request {
            Request::Status => self.document(),
            Request::Register(state) => {
                serde_json::to_vec(&self.register(&state)).expect("an answer serializes")
            }
            Request::Reload => {
                let error = self.reload().err().map(|error| format!("{error:#}"));
                serde_json::to_vec(&Reloaded { error }).expect("an answer serializes")
            }
        }
    }

    /// Applies the policy to a container about to run, as an OCI hook
    /// tells it; says which scope instance it got once that is in the maps.
    fn register(&mut self, state: &State) -> Registered {
        let failed = |error: String| Registered {
            scope: None,
            error: Some(error),
        };
        let full = match state.cgroup() {
            Ok(path) => self.node.mount.join(path),
            Err(error) => return failed(format!("finding the container's cgroup: {error}")),
        };
        if !full.starts_with(&self.node.cgroup_root) {
            // Below another cgroup root: not this agent's.
            return Registered {
                scope: None,
                error: None,
            };
        }
        let container = state.container();
        tracing::info!(id = %container.id, name = ?container.name, cgroup = %full.display(), "container registered by its runtime's hook");
        // Kept only where the cgroup layout says which container a cgroup
        // is: elsewhere nothing would match it, nor forget it.
        let recognised = full.ancestors().any(|dir| {
            dir.strip_prefix(&self.node.mount)
                .ok()
                .and_then(layout::recognise)
                .is_some_and(|found| found.id == container.id)
        });
        if recognised && !self.described.contains_key(&container.id) {
            self.hooked.insert(container.id.clone());
            self.described.insert(container.id.clone(), container);
            self.save_hooked();
        }
        // The process may sit in a sub-cgroup of the container's (crun's
        // `container`): every cgroup from the root down is known before the
        // maps are updated, whatever inotify said so far.
        let mut keys = Vec::new();
        let (root, mount) = (self.node.cgroup_root.clone(), self.node.mount.clone());
        for dir in full.ancestors().take_while(|dir| dir.starts_with(&root)) {
            let cgroup_id = match std::fs::metadata(dir) {
                Ok(metadata) => std::os::unix::fs::MetadataExt::ino(&metadata),
                Err(error) => return failed(format!("reading {}: {error}", dir.display())),
            };
            keys.push(ScopeKey::Cgroup(cgroup_id));
            if let Ok(relative) = dir.strip_prefix(&mount)
                && !self.workloads.contains_key(relative)
            {
                self.add_workload(relative.to_owned(), cgroup_id);
            }
        }
        if let Err(error) = self.reconcile() {
            return failed(format!("updating the maps: {error:#}"));
        }
        // The container's bridge port may be newer than the last interface
        // event read: guarded before it runs.
        if self.links.is_some() {
            self.relist_interfaces();
        }
        self.apply_guard();
        // The deepest scope instance the container's sockets meet.
        let outcome = keys.iter().find_map(|key| {
            self.outcomes
                .iter()
                .find(|outcome| outcome.assignment.key == *key)
        });
        match outcome {
            None => Registered {
                scope: None,
                error: None,
            },
            Some(outcome) => {
                let name = format!(
                    "{}/{}",
                    self.policy.scopes[outcome.assignment.scope].name, outcome.assignment.instance
                );
                Registered {
                    scope: Some(name),
                    error: outcome.applied.as_ref().err().cloned(),
                }
            }
        }
    }

    /// Reloads the policy (SIGHUP, `netbpf reload`). A policy that does
    /// not validate leaves the running one as it is.
    fn reload(&mut self) -> anyhow::Result<()> {
        let reloaded = self.try_reload();
        match &reloaded {
            Ok(()) => tracing::info!(policy = %self.source.path().display(), "policy reloaded"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "policy not reloaded: the running one stays"
            ),
        }
        self.events.reloaded(reloaded.is_err());
        self.last_reload = Some(LastReload {
            at: std::time::SystemTime::now(),
            error: reloaded.as_ref().err().map(|error| format!("{error:#}")),
        });
        reloaded
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let policy = self.source.load()?;
        refuse_unavailable(&policy, &self.unavailable)?;
        let services_move = policy.host_services != self.policy.host_services;
        if services_move {
            // The services' listener slots are their places in the policy:
            // emptied before the maps point at the new places, taken again
            // (by whichever policy is in force) at the next look.
            self.datapath.reset_service_slots()?;
        }
        let old = std::mem::replace(&mut self.policy, policy);
        let old_resolved = std::mem::take(&mut self.resolved);
        if let Err(error) = self.reconcile() {
            self.policy = old;
            self.resolved = old_resolved;
            if services_move {
                self.restart_host_services();
                self.refresh_host_services();
            }
            return Err(
                anyhow::Error::from(error).context("updating the maps; the running policy stays")
            );
        }
        if services_move {
            self.restart_host_services();
        }
        if self.policy.mss_clamps != old.mss_clamps {
            self.clamper.release_all(&mut self.datapath);
            self.clamper = MssClamper::new(
                self.policy.mss_clamps.clone(),
                self.node.other_netns.as_deref(),
            );
        }
        self.apply_host_features(false).map_err(|error| {
            error.context("the new policy is applied to the containers, but not all of its host services and MSS clamps")
        })
    }

    fn document(&self) -> Vec<u8> {
        match self.status() {
            Ok(status) => serde_json::to_vec(&status).expect("a status serializes"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the counters failed");
                Vec::new()
            }
        }
    }
}

/// The sockets of `found` bound on ports their scope forwards: those the
/// local-binds table records. A failed listing records none: those
/// services are forwarded until they bind again, as if they had started
/// after netbpf.
fn forwarded_binds(plan: &Plan, found: io::Result<Vec<BoundSocket>>) -> Vec<BoundSocket> {
    match found {
        Ok(mut sockets) => {
            sockets.retain(|socket| plan.forwards_port(socket.key));
            sockets
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list the sockets already bound inside scopes");
            Vec::new()
        }
    }
}

/// A control request, and where its answer goes.
type ControlRequest = (Request, tokio::sync::oneshot::Sender<Vec<u8>>);

/// Reads one request from a control client, has the loop answer it
/// through `asking`, and writes the answer back.
async fn serve_client(stream: UnixStream, asking: tokio::sync::mpsc::Sender<ControlRequest>) {
    let served = async {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(reader.take(Request::MAX_LINE));
        tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await??;
        let request = Request::parse(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request {line:?}"),
            )
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        asking
            .send((request, reply))
            .await
            .map_err(|_| io::Error::other("the agent is stopping"))?;
        let answer = answer
            .await
            .map_err(|_| io::Error::other("the agent is stopping"))?;
        tokio::time::timeout(Duration::from_secs(2), writer.write_all(&answer)).await?
    };
    if let Err(error) = served.await {
        tracing::warn!(%error, "a control client went away");
    }
}

/// The next change of the policy directory, or never when it is not
/// watched.
async fn next_policy_change(watch: Option<&mut PolicyWatch>) -> io::Result<()> {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// The next interface changes, or never when nothing is watched.
async fn next_link_events(links: Option<&mut LinkWatcher>) -> io::Result<Vec<LinkEvent>> {
    match links {
        Some(links) => links.next().await,
        None => std::future::pending().await,
    }
}

/// A runtime's name in log lines; `unknown` until one claims the container.
fn runtime_name(runtime: Option<Runtime>) -> String {
    runtime.map_or_else(|| "unknown".to_owned(), |runtime| runtime.to_string())
}

/// Probes the kernel's features, and logs those missing.
fn probe_kernel() -> Result<Vec<Unavailable>, features::FeatureError> {
    let unavailable = features::probe_all()?;
    for missing in &unavailable {
        tracing::warn!(
            feature = missing.feature,
            error = missing.error,
            "kernel feature unavailable: {}",
            missing.lost
        );
    }
    Ok(unavailable)
}

/// Refuses a policy that asks for what this kernel lacks, naming both: a
/// `[[host_service]]` without `sk_lookup`.
fn refuse_unavailable(policy: &Policy, unavailable: &[Unavailable]) -> anyhow::Result<()> {
    let sk_lookup = unavailable
        .iter()
        .find(|missing| missing.feature == SK_LOOKUP);
    if let (Some(service), Some(missing)) = (policy.host_services.first(), sk_lookup) {
        anyhow::bail!(
            "[[host_service]] {} needs {SK_LOOKUP} (Linux 5.17), which this kernel lacks ({}): remove the policy's host services, and the rest runs",
            service.name,
            missing.error
        );
    }
    Ok(())
}
