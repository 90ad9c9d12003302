//! What doctor reasons about: the node's interfaces, routes and listeners,
//! and its containers (each with its cgroup, network namespace and
//! network), named as their runtimes name them.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::{Scene, snippet};
use crate::{
    containers::{Container, Runtime, containerd, engine, layout},
    host::{
        addressing::{self, InterfaceAddress},
        links::{self, Interface},
        netns,
        scope_net::{self, ScopeNetwork},
        sock_diag::{self, DiagSocket},
        socket_fds,
    },
};

/// A container, or the cgroup of a process doctor was asked about.
#[derive(Debug, Clone)]
pub struct Subject {
    /// How people name it: its name, else its short id, else its cgroup.
    pub label: String,
    /// A policy `match` that selects it (the inside of `{ }`).
    pub selector: String,
    pub runtime: Option<Runtime>,
    /// Its runtime's id, for a container.
    pub id: Option<String>,
    /// Its cgroup directory.
    pub cgroup: PathBuf,
    /// `/proc/PID/ns/net` of one of its processes; None without any.
    pub netns: Option<PathBuf>,
    pub pid: Option<u32>,
    pub network: ScopeNetwork,
    /// Whether it shares the node's network namespace.
    pub host_network: bool,
}

/// The node and its containers, read once.
pub struct Inventory {
    pub node_netns: PathBuf,
    /// Every container below the cgroup root.
    pub containers: Vec<Subject>,
    /// The node's listening TCP and bound UDP sockets.
    pub node_sockets: Vec<DiagSocket>,
    pub node_interfaces: Vec<Interface>,
    pub node_addresses: Vec<InterfaceAddress>,
    /// The node's interfaces its routes leave through.
    pub node_routes: BTreeSet<u32>,
    mount: PathBuf,
    cgroup_root: PathBuf,
    described: HashMap<String, Container>,
}

impl Inventory {
    pub fn take(scene: &Scene<'_>) -> anyhow::Result<Self> {
        let node_netns = scene.node.netns.clone();
        let (node_sockets, node_interfaces, node_addresses, node_routes) =
            netns::in_netns(&node_netns, || -> std::io::Result<_> {
                Ok((
                    sock_diag::bound_sockets()?,
                    links::list()?,
                    addressing::addresses()?,
                    addressing::route_interfaces()?,
                ))
            })
            .and_then(|read| read)
            .with_context(|| {
                format!(
                    "reading the node's network namespace {}",
                    node_netns.display()
                )
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let described = runtime
            .block_on(engine::list_all(
                &scene.runtimes.sockets(),
                Duration::from_secs(3),
            ))
            .into_iter()
            .map(|container| (container.id.clone(), container))
            .collect();
        let mut inventory = Self {
            node_netns,
            containers: Vec::new(),
            node_sockets,
            node_interfaces,
            node_addresses,
            node_routes,
            mount: scene.node.mount.clone(),
            cgroup_root: scene.node.cgroup_root.clone(),
            described,
        };
        let mut found = Vec::new();
        inventory.walk(
            &scene.node.cgroup_root,
            &scene.runtimes.containerd,
            &mut found,
        );
        inventory.containers = found
            .into_iter()
            .map(|(dir, container)| inventory.subject(dir, Some(container), None))
            .collect();
        Ok(inventory)
    }

    /// Collects the containers of the cgroup tree at `dir`.
    fn walk(&self, dir: &Path, containerd_state: &Path, found: &mut Vec<(PathBuf, Container)>) {
        if let Some(container) = self.container_at(dir, containerd_state) {
            found.push((dir.to_owned(), container));
        }
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                self.walk(&entry.path(), containerd_state, found);
            }
        }
    }

    /// The container whose cgroup is `dir`, as its runtime describes it.
    fn container_at(&self, dir: &Path, containerd_state: &Path) -> Option<Container> {
        let recognised = layout::recognise(dir.strip_prefix(&self.mount).ok()?)?;
        if let Some(described) = self.described.get(&recognised.id) {
            return Some(described.clone());
        }
        let by_containerd = matches!(
            recognised.runtime,
            None | Some(Runtime::Containerd | Runtime::CriO)
        );
        by_containerd
            .then(|| containerd::describe(containerd_state, &recognised.id))
            .flatten()
            .or(Some(Container {
                runtime: recognised.runtime,
                id: recognised.id,
                name: None,
                labels: std::collections::BTreeMap::new(),
                pod: None,
            }))
    }

    /// The subject of the cgroup `dir`, seen through `pid` or any of its
    /// processes.
    fn subject(&self, dir: PathBuf, container: Option<Container>, pid: Option<u32>) -> Subject {
        let netns = pid
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
            .or_else(|| {
                scope_net::process_namespaces(&dir)
                    .ok()
                    .and_then(|namespaces| namespaces.into_iter().next())
            });
        let pid = pid.or_else(|| {
            netns
                .as_ref()
                .and_then(|path| path.iter().nth(2)?.to_str()?.parse().ok())
        });
        let network = netns
            .as_ref()
            .and_then(|path| scope_net::of_netns(path).ok())
            .unwrap_or_default();
        let host_network = netns
            .as_ref()
            .is_some_and(|path| scope_net::same_namespace(path, &self.node_netns));
        let relative = dir
            .strip_prefix(&self.mount)
            .unwrap_or(&dir)
            .display()
            .to_string();
        // Kubernetes names containers once per pod: the id is what is
        // unique there.
        let (label, selector) = match &container {
            Some(Container {
                name: Some(name),
                pod: None,
                ..
            }) => (
                name.clone(),
                format!("container = {}", snippet::quoted(name)),
            ),
            Some(container) => {
                let short: String = container.id.chars().take(12).collect();
                let label = container.name.clone().unwrap_or_else(|| short.clone());
                (label, format!("id = {}", snippet::quoted(&short)))
            }
            None => (
                relative.clone(),
                format!("cgroup = {}", snippet::quoted(&relative)),
            ),
        };
        Subject {
            label,
            selector,
            runtime: container.as_ref().and_then(|container| container.runtime),
            id: container.map(|container| container.id),
            cgroup: dir,
            netns,
            pid,
            network,
            host_network,
        }
    }

    /// The container named `wanted`, or whose id starts with it, or the
    /// cgroup (container or not) of the process `wanted`.
    pub fn find(&self, wanted: &str) -> anyhow::Result<Subject> {
        if let Ok(pid) = wanted.parse::<u32>() {
            return self.of_process(pid);
        }
        if let Some(subject) = self
            .containers
            .iter()
            .find(|subject| subject.label == wanted)
        {
            return Ok(subject.clone());
        }
        let by_id: Vec<&Subject> = self
            .containers
            .iter()
            .filter(|subject| {
                wanted.len() >= 4 && subject.id.as_ref().is_some_and(|id| id.starts_with(wanted))
            })
            .collect();
        match by_id.as_slice() {
            [subject] => Ok((*subject).clone()),
            [] => {
                let known: Vec<&str> = self
                    .containers
                    .iter()
                    .map(|subject| subject.label.as_str())
                    .collect();
                anyhow::bail!(
                    "no container named {wanted:?}, or with an id that starts with it, below {}; the containers there: {}",
                    self.cgroup_root.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            }
            _ => anyhow::bail!("{wanted:?} starts the ids of several containers: give more of it"),
        }
    }

    /// The container of process `pid`, or its cgroup.
    fn of_process(&self, pid: u32) -> anyhow::Result<Subject> {
        let file = format!("/proc/{pid}/cgroup");
        let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        let path = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .with_context(|| format!("{file} names no cgroup v2 directory"))?;
        let dir = self.mount.join(path.trim_start_matches('/'));
        anyhow::ensure!(
            dir.starts_with(&self.cgroup_root),
            "process {pid} is in the cgroup {}, not below netbpf's cgroup root {}: netbpf does not act on its sockets",
            dir.display(),
            self.cgroup_root.display()
        );
        let container = dir
            .ancestors()
            .take_while(|ancestor| ancestor.starts_with(&self.cgroup_root))
            .find_map(|ancestor| {
                self.containers
                    .iter()
                    .find(|subject| subject.cgroup == ancestor)
            });
        Ok(match container {
            Some(container) => Subject {
                pid: Some(pid),
                netns: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                ..container.clone()
            },
            None => self.subject(dir, None, Some(pid)),
        })
    }

    /// The listening and bound sockets of `subject`'s network namespace.
    pub fn sockets_of(&self, subject: &Subject) -> Vec<DiagSocket> {
        match &subject.netns {
            Some(_) if subject.host_network => self.node_sockets.clone(),
            Some(path) => netns::in_netns(path, sock_diag::bound_sockets)
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Who holds each socket of `sockets`: `pid N (COMMAND)`, by inode.
    pub fn holders(sockets: &[&DiagSocket]) -> HashMap<u32, String> {
        let inodes: Vec<u32> = sockets.iter().map(|socket| socket.inode).collect();
        socket_fds::owners(&inodes)
            .into_iter()
            .map(|(inode, (pid, _))| {
                let command = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                (inode, format!("pid {pid} ({})", command.trim()))
            })
            .collect()
    }

    /// The node's interface with index `index`.
    pub fn node_interface(&self, index: u32) -> Option<&Interface> {
        self.node_interfaces
            .iter()
            .find(|interface| interface.index == index)
    }
}
