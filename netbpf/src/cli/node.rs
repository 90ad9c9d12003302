//! Where netbpf acts on this host: the cgroup its socket programs attach
//! to and the node's network namespace. Shared by the verbs that resolve a
//! policy.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::host::{cgroup, resolve::HostResolver};

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// cgroup v2 directory to attach the socket programs to; they act on
    /// the sockets of every process below it. Default: the root of the
    /// cgroup v2 hierarchy.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// The node's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`):
    /// where host services listen and the MSS clamps find interfaces.
    /// Default: netbpf's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

/// The node as a policy is resolved against.
pub struct Node {
    pub cgroup_root: PathBuf,
    /// The node's network namespace, as a path `setns` and links take.
    pub netns: PathBuf,
    pub resolver: HostResolver,
}

impl NodeArgs {
    pub fn node(&self) -> anyhow::Result<Node> {
        let cgroup_root = match &self.cgroup_root {
            Some(root) => root.clone(),
            None => cgroup::cgroup2_mount().context("finding the cgroup v2 root")?,
        };
        let netns = self
            .netns
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        let resolver = HostResolver::new(&cgroup_root, &netns).with_context(|| {
            format!(
                "cgroup root {} is not a cgroup v2 directory",
                cgroup_root.display()
            )
        })?;
        Ok(Node {
            cgroup_root,
            netns,
            resolver,
        })
    }
}
