//! What the agent knows of what runs on the node: every cgroup below its
//! cgroup root (a workload), and what the runtimes' APIs, their hooks and
//! their state on disk (containerd's bundles, Docker's data root) say of
//! the containers among them. The containers only hooks and bundles
//! describe are kept in a file for the next agent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use crate::containers::{
    Container, Runtime, StateDirs, Workload, containerd, docker_state, engine::EngineEvent, layout,
};

/// The workloads, and the containers described.
pub struct Inventory {
    /// Every cgroup below the cgroup root, by path below the mount.
    workloads: BTreeMap<PathBuf, Workload>,
    /// What the runtimes' APIs and hooks say of their containers, by id.
    described: HashMap<String, Container>,
    /// The ids described by an OCI hook or a runtime's state only:
    /// forgotten with their cgroup (described again for a new one), where
    /// an API says when a container goes.
    hooked: HashSet<String>,
    /// Where the runtimes' state describes their containers.
    state: StateDirs,
    /// Where the containers only hooks and bundles describe are kept, for
    /// the next agent.
    described_file: Option<PathBuf>,
}

impl Inventory {
    /// What the runtimes' APIs list now (`described`), with what the last
    /// agent kept in `described_file`.
    #[must_use]
    pub fn new(
        described: Vec<Container>,
        state: StateDirs,
        described_file: Option<PathBuf>,
    ) -> Self {
        let mut inventory = Self {
            workloads: BTreeMap::new(),
            described: described
                .into_iter()
                .map(|container| (container.id.clone(), container))
                .collect(),
            hooked: HashSet::new(),
            state,
            described_file,
        };
        inventory.restore_hooked();
        inventory
    }

    /// How many cgroups are known.
    #[must_use]
    pub fn cgroups(&self) -> usize {
        self.workloads.len()
    }

    /// Gives back the memory of containers that went.
    pub fn shrink(&mut self) {
        self.described.shrink_to_fit();
        self.hooked.shrink_to_fit();
    }

    /// Whether the cgroup at `path` (below the mount) is known.
    #[must_use]
    pub fn knows(&self, path: &Path) -> bool {
        self.workloads.contains_key(path)
    }

    /// The workloads, each container with what its runtime said of it.
    #[must_use]
    pub fn workloads(&self) -> Vec<Workload> {
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

    /// The cgroups of container `id`.
    #[must_use]
    pub fn cgroups_of(&self, id: &str) -> HashSet<u64> {
        self.workloads
            .values()
            .filter(|workload| workload.container.as_ref().is_some_and(|c| c.id == id))
            .map(|workload| workload.cgroup_id)
            .collect()
    }

    /// Knows the cgroup at `path` (below the mount), and the container in
    /// it if its layout says it is one; containerd's bundle or Docker's
    /// state describes it if no API did yet.
    pub fn add_workload(&mut self, path: PathBuf, cgroup_id: u64) {
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
            if !self.described.contains_key(&container.id)
                && let Some(described) = self.described_by_state(container)
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

    /// What the runtimes' state on disk says of `container`: containerd
    /// wrote its bundle before its cgroup; Docker keeps its name and labels
    /// in its data root, which at boot is there before its API answers.
    fn described_by_state(&self, container: &Container) -> Option<Container> {
        // An empty directory is not looked at.
        let read = |dir: &Path, describe: fn(&Path, &str) -> Option<Container>| {
            (!dir.as_os_str().is_empty())
                .then(|| describe(dir, &container.id))
                .flatten()
        };
        let by_containerd = || read(&self.state.containerd, containerd::describe);
        let by_docker = || read(&self.state.docker, docker_state::describe);
        match container.runtime {
            // A layout any runtime uses (`--cgroup-parent PARENT/ID`).
            None => by_containerd().or_else(by_docker),
            Some(Runtime::Containerd | Runtime::CriO) => by_containerd(),
            Some(Runtime::Docker) => by_docker(),
            Some(_) => None,
        }
    }

    /// Forgets the cgroup at `path` and every one below it, and the
    /// containers there that only their hooks described.
    pub fn remove_below(&mut self, path: &Path) {
        // A cgroup's subtree is one run of the map's keys, from the cgroup
        // on: found in the time of its own size, not the node's.
        let gone: Vec<PathBuf> = self
            .workloads
            .range(path.to_owned()..)
            .map(|(known, _)| known)
            .take_while(|known| known.starts_with(path))
            .cloned()
            .collect();
        let mut forgot = false;
        for workload in gone.iter().filter_map(|known| self.workloads.remove(known)) {
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

    /// Knows exactly the cgroups `present` (listed again after events
    /// were lost), and forgets the hooked containers whose cgroup went.
    pub fn resync(&mut self, present: Vec<(PathBuf, u64)>) {
        self.workloads.clear();
        for (path, id) in present {
            self.add_workload(path, id);
        }
        self.forget_hooked_gone();
    }

    /// Applies what a runtime said of its containers; the id of a
    /// container whose networks changed, its rules to be resolved again.
    pub fn follow_runtime(&mut self, event: EngineEvent) -> Option<String> {
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
                return Some(id);
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
        None
    }

    /// Takes in a container its runtime's hook describes, unless its API
    /// did; `recognised`: its cgroup's layout names it (elsewhere nothing
    /// would match it, nor forget it).
    pub fn hooked(&mut self, container: Container, recognised: bool) {
        if recognised && !self.described.contains_key(&container.id) {
            self.hooked.insert(container.id.clone());
            self.described.insert(container.id.clone(), container);
            self.save_hooked();
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
    pub fn forget_hooked_gone(&mut self) {
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
}

/// A runtime's name in log lines; `unknown` until one claims the container.
pub fn runtime_name(runtime: Option<Runtime>) -> String {
    runtime.map_or_else(|| "unknown".to_owned(), |runtime| runtime.to_string())
}
