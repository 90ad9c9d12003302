//! Containers: what runs on the node, as the agent knows it. Each cgroup
//! below the agent's cgroup root is a [`Workload`]; the cgroup layouts of
//! the runtimes ([`layout`]) and the runtimes' own APIs tell which of them
//! are containers, with their names, labels and pods.

pub mod cgroup_watch;
pub mod containerd;
pub mod docker_state;
pub mod engine;
pub mod layout;
pub mod oci;
mod runtimes;

pub use self::runtimes::{Runtimes, StateDirs};

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Who runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Podman,
    /// containerd, for Kubernetes (CRI) or by itself (`ctr`, nerdctl).
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    /// A systemd service unit (Quadlet units among them).
    Systemd,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Systemd => "systemd",
        })
    }
}

/// A container, as its runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Its runtime; None until one claims a container its layout does not
    /// name (a bare id under a `--cgroup-parent`).
    pub runtime: Option<Runtime>,
    /// The runtime's id (64 hexadecimal digits), or the unit's name.
    pub id: String,
    /// The name users give it; None until the runtime said it.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `NAMESPACE/NAME` of its Kubernetes pod.
    pub pod: Option<String>,
}

/// A cgroup below the agent's cgroup root, and the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its path below the cgroup v2 mount, without a leading `/`.
    pub cgroup: PathBuf,
    /// Its cgroup v2 id: the key the kernel programs look up.
    pub cgroup_id: u64,
    pub container: Option<Container>,
}

impl Workload {
    /// The name a scope instance takes from it: the container's name, else
    /// its short id, else the cgroup's directory name.
    #[must_use]
    pub fn instance_name(&self) -> String {
        match &self.container {
            Some(Container {
                name: Some(name), ..
            }) => name.clone(),
            Some(container) if container.runtime != Some(Runtime::Systemd) => {
                container.id.chars().take(12).collect()
            }
            _ => self
                .cgroup
                .file_name()
                .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
        }
    }
}
