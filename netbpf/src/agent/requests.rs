//! What the agent answers its control clients: its status, a reload of
//! its policy, and a runtime hook's registration of a container about to
//! run.

use super::{Agent, LastReload, refuse_unavailable};
use crate::{
    api::control::{Registered, Reloaded, Request},
    containers::{layout, oci::State},
    plan::ScopeKey,
};

impl Agent {
    /// The answer to a control client's request.
    pub(super) fn answer(&mut self, request: Request) -> Vec<u8> {
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
        let recognised = full.ancestors().any(|dir| {
            dir.strip_prefix(&self.node.mount)
                .ok()
                .and_then(layout::recognise)
                .is_some_and(|found| found.id == container.id)
        });
        self.inventory.hooked(container, recognised);
        // The process may sit in a sub-cgroup of the container's (crun's
        // `container`): every cgroup from the root down is known before the
        // maps are updated, whatever inotify said so far.
        let mut keys = Vec::new();
        for dir in full
            .ancestors()
            .take_while(|dir| dir.starts_with(&self.node.cgroup_root))
        {
            let cgroup_id = match std::fs::metadata(dir) {
                Ok(metadata) => std::os::unix::fs::MetadataExt::ino(&metadata),
                Err(error) => return failed(format!("reading {}: {error}", dir.display())),
            };
            keys.push(ScopeKey::Cgroup(cgroup_id));
            if let Ok(relative) = dir.strip_prefix(&self.node.mount)
                && !self.inventory.knows(relative)
            {
                self.inventory.add_workload(relative.to_owned(), cgroup_id);
            }
        }
        if let Err(error) = self.reconcile() {
            return failed(format!("updating the maps: {error:#}"));
        }
        // The container's bridge port may be newer than the last interface
        // event read: guarded before it runs.
        if self.network.follows_interfaces() {
            self.network.relist_interfaces();
        }
        self.network
            .apply_guard(&mut self.datapath, &self.core.plan);
        // The deepest scope instance the container's sockets meet.
        match self.core.outcome_of(&keys) {
            None => Registered {
                scope: None,
                error: None,
            },
            Some(outcome) => Registered {
                scope: Some(self.core.name_of(outcome)),
                error: outcome.applied.as_ref().err().cloned(),
            },
        }
    }

    /// Reloads the policy (SIGHUP, `netbpf reload`). A policy that does
    /// not validate leaves the running one as it is.
    pub(super) fn reload(&mut self) -> anyhow::Result<()> {
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
        let services_move = policy.host_services != self.core.policy.host_services;
        if services_move {
            // The services' listener slots are their places in the policy:
            // emptied before the maps point at the new places, taken again
            // (by whichever policy is in force) at the next look.
            self.datapath.reset_service_slots()?;
        }
        let replaced = self.core.replace_policy(policy);
        if let Err(error) = self.reconcile() {
            self.core.put_back(replaced);
            if services_move {
                self.network.restart_host_services(&self.core.policy);
                self.network.refresh_host_services(&mut self.datapath);
            }
            return Err(
                anyhow::Error::from(error).context("updating the maps; the running policy stays")
            );
        }
        if services_move {
            self.network.restart_host_services(&self.core.policy);
        }
        self.network
            .replace_clamps(&mut self.datapath, replaced.policy(), &self.core.policy);
        self.network
            .apply(&mut self.datapath, &self.core.policy, &self.core.plan, false)
            .map_err(|error| {
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
