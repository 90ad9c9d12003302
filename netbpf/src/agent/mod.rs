//! The agent: one process per node. It follows the containers (cgroups
//! appearing and going, the runtimes' events and hooks), matches them
//! against the policy, keeps the datapath's maps equal to the plan,
//! follows interfaces for the MSS clamps and grants, answers the control
//! socket, reloads its policy on SIGHUP, and stops on SIGINT or SIGTERM.
//!
//! This module is the event loop; each concern has a room of its own:
//! what runs on the node ([`inventory`]), when what it followed is applied
//! ([`pace`]), the policy and the maps ([`reconcile`]), the node's network
//! outside the cgroup ([`network`]).

pub mod config;
pub mod control;
mod delays;
pub mod existing_binds;
mod facts;
mod first_process;
mod grant_guard;
pub mod host_services;
mod inventory;
mod metrics;
mod moved_sockets;
pub mod mss_clamp;
mod network;
mod pace;
pub mod policy_watch;
mod reconcile;
mod report;
mod requests;
mod retry;
mod scope_sockets;
mod signals;
#[cfg(test)]
mod tests;

use std::{io, path::PathBuf, time::Duration, time::Instant};

use tokio::net::UnixListener;

pub use self::{delays::Delays, policy_watch::PolicySource, signals::Signals};
use self::{
    first_process::FirstProcesses,
    inventory::Inventory,
    network::{HostNetwork, Rewired},
    pace::Pace,
    policy_watch::PolicyWatch,
    reconcile::{HostProbe, Reconciler},
    retry::Retry,
    scope_sockets::ScopePlace,
    signals::Asked,
};
use crate::{
    containers::{
        Container, Runtimes,
        cgroup_watch::{CgroupEvent, CgroupWatcher},
        engine::{self, EngineEvent},
    },
    datapath::{
        BoundSocket, Datapath, DatapathError, Optional, Pins,
        features::{self, SK_LOOKUP, Unavailable},
    },
    host::Node,
    plan::{Capacity, Moved, Plan},
    policy::Policy,
};

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
    pub source: PolicySource,
    pub node: Node,
    /// The kernel features probed missing at start.
    unavailable: Vec<Unavailable>,
    /// The policy in force and what the maps hold of it.
    core: Reconciler,
    /// What runs on the node.
    inventory: Inventory,
    /// Clamps, host services and the guard, and the interfaces they follow.
    network: HostNetwork,
    cgroups: CgroupWatcher,
    /// Changes of the policy directory (a policy of one file is reloaded
    /// by SIGHUP and `netbpf reload` only).
    policy_watch: Option<PolicyWatch>,
    runtime_events: tokio::sync::mpsc::Receiver<EngineEvent>,
    pub last_reload: Option<LastReload>,
    /// How long after a cgroup appeared its policy was in the maps.
    pub delays: Delays,
    /// What the metrics count as things happen.
    events: metrics::Events,
    /// The most cgroups followed since memory was last given back.
    cgroups_peak: usize,
    /// When the cgroup and runtime events followed are applied.
    pace: Pace,
    /// The instances that wait for their network, watched closely while
    /// their runtime starts them.
    first_processes: FirstProcesses,
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
        let (cgroups, present) =
            CgroupWatcher::start(&node.mount, &node.cgroup_root).map_err(|error| {
                anyhow::anyhow!(
                    "watching the cgroups below {}: {error}",
                    node.cgroup_root.display()
                )
            })?;
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
        let mut inventory = Inventory::new(described, runtimes.state_dirs(), described_file);
        for (path, id) in present {
            inventory.add_workload(path, id);
        }
        inventory.forget_hooked_gone();
        // What the maps hold now (nothing, unless adopted): the starting
        // point of the first update, with its scope ids and counter slots.
        let core = Reconciler::adopt(&datapath, policy, capacity, Box::new(HostProbe))?;
        let mut agent = Self {
            network: HostNetwork::new(&core.policy, &node),
            datapath,
            source,
            node,
            unavailable,
            core,
            inventory,
            cgroups,
            policy_watch,
            runtime_events,
            last_reload: None,
            delays: Delays::default(),
            events: metrics::Events::default(),
            cgroups_peak: 0,
            pace: Pace::default(),
            first_processes: FirstProcesses::new().map_err(|error| {
                anyhow::anyhow!("watching for containers' first processes: {error}")
            })?,
        };
        // Listener slots an agent of a longer list of services left: the
        // others are taken or emptied by the first look for listeners.
        agent
            .datapath
            .clear_unused_service_sockets(agent.core.policy.host_services.len())?;
        // The maps are filled before the programs attach, so they act on
        // the whole plan from their first run.
        agent.reconcile()?;
        let scopes = agent.core.scope_places();
        let plan = &agent.core.plan;
        agent.datapath.attach(&agent.node.cgroup_root, || {
            forwarded_binds(plan, existing_binds::find(&scopes))
        })?;
        agent.datapath.prune_links("cgroup-");
        agent.network.apply(
            &mut agent.datapath,
            &agent.core.policy,
            &agent.core.plan,
            true,
        )?;
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
        let mut retry = Retry::new(self.core.failing());
        // A change of the policy directory, reloaded once it settles.
        let mut policy_changed: Option<tokio::time::Instant> = None;
        // Control clients' requests, each with where its answer goes.
        let (asking, mut requests) = tokio::sync::mpsc::channel::<control::ControlRequest>(16);
        // Metrics scrapes, answered by the loop like control requests.
        let (scraping, mut scrapes) = tokio::sync::mpsc::channel(16);
        if let Some(listener) = metrics {
            tokio::spawn(metrics::serve(listener, scraping));
        }
        loop {
            let settled = policy_changed.unwrap_or_else(tokio::time::Instant::now);
            let waiting = self.core.waiting();
            let retry_at = retry.next(self.core.failing());
            let due = self.pace.due();
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
                () = sleep_until_due(due), if due.is_some() => self.reconcile_logged(),
                _ = look_for_listeners.tick(), if !self.network.host_services.is_empty() => {
                    self.network.refresh_host_services(&mut self.datapath);
                }
                () = self.first_processes.ready() => {
                    self.core.forget_failed();
                    self.reconcile_logged();
                }
                () = tokio::time::sleep_until(retry_at), if waiting => {
                    self.core.forget_failed();
                    self.reconcile_logged();
                    retry.tried(self.core.failing());
                }
                events = self.network.next_link_events() => self.follow_links(events),
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
                        tokio::spawn(control::serve_client(stream, asking.clone()));
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

    /// How many cgroups the agent follows.
    #[must_use]
    pub fn workloads_known(&self) -> usize {
        self.inventory.cgroups()
    }

    /// Detaches what the agent attached outside the cgroup (MSS clamps,
    /// the guard), unless its datapath is pinned: then it stays in force.
    pub fn release(&mut self) {
        if self.datapath.pins().is_none() {
            self.network.release(&mut self.datapath);
        }
    }

    /// Follows cgroups appearing and going; applied when [`Pace`] says.
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
                    self.inventory.add_workload(path, id);
                }
                // A cgroup made again at the same path since (a restarted
                // container) is not gone.
                CgroupEvent::Removed(path) if self.node.mount.join(&path).exists() => {}
                CgroupEvent::Removed(path) => self.inventory.remove_below(&path),
                CgroupEvent::Resynced(present) => {
                    tracing::warn!("cgroup events were lost: listing the cgroups again");
                    self.events.resynced();
                    self.inventory.resync(present);
                }
            }
        }
        self.pace.wait(seen, added);
        self.reconcile_if_due();
    }

    /// Once half the cgroups followed at the peak are gone (a node drained,
    /// a project taken down), gives their memory back: the caches shrink
    /// and the allocator returns what it holds free to the kernel.
    fn give_back_memory(&mut self) {
        let cgroups = self.inventory.cgroups();
        if cgroups.saturating_mul(2) >= self.cgroups_peak {
            self.cgroups_peak = self.cgroups_peak.max(cgroups);
            return;
        }
        self.cgroups_peak = cgroups;
        self.inventory.shrink();
        self.core.shrink();
        self.cgroups.shrink();
        // SAFETY: malloc_trim only releases free memory of glibc's heap.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Applies what a runtime said of its containers.
    fn follow_runtime(&mut self, event: EngineEvent) {
        if let Some(rewired) = self.inventory.follow_runtime(event) {
            self.core
                .forget_cgroups(&self.inventory.cgroups_of(&rewired));
        }
        self.pace.wait(Instant::now(), false);
        self.reconcile_if_due();
    }

    /// Applies what was followed, if [`Pace`] says it is time.
    fn reconcile_if_due(&mut self) {
        if self.pace.is_due(Instant::now()) {
            self.reconcile_logged();
        }
    }

    /// Applies interface and address changes to the MSS clamps, to the
    /// grants whose packets come through those interfaces, and to the
    /// grant guard.
    fn follow_links(&mut self, events: io::Result<Vec<crate::host::links::LinkEvent>>) {
        let rewired = match self.network.follow_links(&mut self.datapath, events) {
            Rewired::Nothing => false,
            Rewired::Through(indexes) => indexes.into_iter().fold(false, |any, index| {
                self.core.withdraw_grants_through(index) | any
            }),
            Rewired::All => {
                self.core.withdraw_grants();
                true
            }
        };
        if rewired {
            // Applies the guard too.
            self.reconcile_logged();
        } else {
            self.network
                .apply_guard(&mut self.datapath, &self.core.plan);
        }
    }

    /// Makes the maps hold the plan of what matches now, logging failures.
    fn reconcile_logged(&mut self) {
        if let Err(error) = self.reconcile() {
            tracing::warn!(error = format!("{error:#}"), "the maps were not updated");
        }
        // Grants come and go with their containers: so does the guard.
        self.network
            .apply_guard(&mut self.datapath, &self.core.plan);
        self.give_back_memory();
    }

    /// Makes the maps hold the plan of what matches now, and counts the
    /// sockets already bound where new instances forward.
    fn reconcile(&mut self) -> Result<(), DatapathError> {
        let started = Instant::now();
        let reconciled = self.core.reconcile(
            &mut self.datapath,
            &self.inventory.workloads(),
            &self.node,
            &mut self.events,
        );
        // Everything followed so far was applied, or failed with the rest.
        if let Some(appeared) = self.pace.ran(started, Instant::now()) {
            self.delays.record(appeared.elapsed());
            self.events.discovered(appeared.elapsed());
        }
        self.first_processes
            .follow(&self.core.waiting_for_their_network());
        let reconciled = reconciled?;
        if !reconciled.new_places.is_empty() {
            self.record_existing_binds(&reconciled.new_places);
        }
        if !reconciled.moved.is_empty() {
            self.destroy_moved_sockets(&reconciled.moved);
        }
        Ok(())
    }

    /// Destroys the sockets still connected through the rules of `moved`,
    /// so that their applications connect again, to the new targets.
    fn destroy_moved_sockets(&mut self, moved: &[Moved]) {
        let tally = moved_sockets::destroy(moved, &self.core.scope_places(), &self.datapath);
        self.events.destroyed_on_move(tally.udp, tally.tcp);
        if tally.udp + tally.tcp > 0 {
            tracing::info!(
                udp = tally.udp,
                tcp = tally.tcp,
                "sockets connected through moved rules destroyed: their applications connect again, to the new targets"
            );
        }
        for (namespace, error) in &tally.unlisted {
            tracing::warn!(namespace = %namespace.display(), %error, "cannot list the sockets of a scope whose rule moved: they stay with the old target");
        }
        if let Some((_, error)) = tally.left.first() {
            let unsupported = error.raw_os_error() == Some(libc::EOPNOTSUPP);
            tracing::warn!(
                sockets = tally.left.len(),
                %error,
                "sockets connected through moved rules stay with their old target until their applications close them{}",
                if unsupported {
                    ": this kernel cannot destroy sockets (built without CONFIG_INET_DIAG_DESTROY)"
                } else {
                    ""
                }
            );
        }
    }

    /// Counts the sockets bound inside `scopes` on ports they forward,
    /// before their bind hooks could.
    fn record_existing_binds(&mut self, scopes: &[ScopePlace]) {
        let existing = forwarded_binds(&self.core.plan, existing_binds::find(scopes));
        if let Err(error) = self.datapath.record_binds(&existing) {
            tracing::warn!(%error, "the sockets bound before their scope was applied are not counted");
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

/// Sleeps until `due` (a std instant); never without one.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
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
