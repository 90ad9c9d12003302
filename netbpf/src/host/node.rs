//! The node an agent acts on: its cgroup v2 mount and root, its network
//! namespace.

use std::path::PathBuf;

/// Where netbpf acts on this host.
#[derive(Debug, Clone)]
pub struct Node {
    /// The cgroup v2 mount.
    pub mount: PathBuf,
    /// How deep in the cgroup hierarchy the mounted directory is.
    pub mount_level: u16,
    /// The cgroup the socket programs attach to, and below which
    /// containers are followed.
    pub cgroup_root: PathBuf,
    /// The node's network namespace, as a path `setns` takes.
    pub netns: PathBuf,
    /// The node's network namespace when it is not the agent's own.
    pub other_netns: Option<PathBuf>,
}
