//! Where the agent finds the container runtimes' APIs on this node.

use std::path::PathBuf;

use serde::Deserialize;

use super::Runtime;

/// The API sockets the agent asks for containers' names and labels. A
/// socket that is not there is tried again every second; an empty path
/// turns a runtime off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtimes {
    /// Docker's Engine API. Default `/run/docker.sock`.
    pub docker: PathBuf,
    /// Podman's API service (`podman system service`). Default
    /// `/run/podman/podman.sock`.
    pub podman: PathBuf,
    /// containerd's state directory, where it writes each task's OCI
    /// bundle (CRI names and pods, labels). Default `/run/containerd`.
    pub containerd: PathBuf,
    /// Docker's data root, where it keeps each container's name and
    /// labels: read when a container's cgroup appears before Docker's API
    /// answers (at boot). Default `/var/lib/docker`.
    pub docker_root: PathBuf,
}

/// Where runtimes keep what describes their containers on disk; an empty
/// path is not looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDirs {
    pub containerd: PathBuf,
    pub docker: PathBuf,
}

impl Default for Runtimes {
    fn default() -> Self {
        Self {
            docker: PathBuf::from("/run/docker.sock"),
            podman: PathBuf::from("/run/podman/podman.sock"),
            containerd: PathBuf::from("/run/containerd"),
            docker_root: PathBuf::from("/var/lib/docker"),
        }
    }
}

impl Runtimes {
    /// Where the runtimes' state describes their containers.
    #[must_use]
    pub fn state_dirs(&self) -> StateDirs {
        StateDirs {
            containerd: self.containerd.clone(),
            docker: self.docker_root.clone(),
        }
    }

    /// The runtimes to follow, with their sockets.
    #[must_use]
    pub fn sockets(&self) -> Vec<(Runtime, PathBuf)> {
        [
            (Runtime::Docker, &self.docker),
            (Runtime::Podman, &self.podman),
        ]
        .into_iter()
        .filter(|(_, socket)| !socket.as_os_str().is_empty())
        .map(|(runtime, socket)| (runtime, socket.clone()))
        .collect()
    }
}
