//! Where netbpf acts on this host: the cgroup its socket programs attach
//! to and the node's network namespace. Shared by `run` and `agent`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::host::{Node, cgroup};

#[derive(Debug, Default, clap::Args)]
pub struct NodeArgs {
    /// cgroup v2 directory to attach the socket programs to; they act on
    /// the sockets of every process below it, and containers are followed
    /// below it. Default: the root of the cgroup v2 hierarchy.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// The node's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`):
    /// where host services listen and the MSS clamps find interfaces.
    /// Default: netbpf's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

impl NodeArgs {
    /// The node these arguments (or, where absent, `cgroup_root` and
    /// `netns` of the configuration) name.
    pub fn node(
        &self,
        cgroup_root: Option<&PathBuf>,
        netns: Option<&PathBuf>,
    ) -> anyhow::Result<Node> {
        let cgroup2 = cgroup::cgroup2_mount().context("finding the cgroup v2 mount")?;
        if !cgroup2.above_namespace && cgroup::in_own_cgroup_namespace().unwrap_or(false) {
            tracing::warn!(
                "netbpf runs in a cgroup namespace of its own with cgroup2 mounted from inside it: the cgroup depths it computes may fall short of the kernel's, and containers' scopes be missed (bind the host's /sys/fs/cgroup in, or run in the host's cgroup namespace)"
            );
        }
        let mount = cgroup2.point.canonicalize()?;
        let cgroup_root = match self.cgroup_root.as_ref().or(cgroup_root) {
            Some(root) => root
                .canonicalize()
                .with_context(|| format!("cgroup root {}", root.display()))?,
            None => mount.clone(),
        };
        cgroup::cgroup_id(&cgroup_root).with_context(|| {
            format!(
                "cgroup root {} is not a cgroup v2 directory",
                cgroup_root.display()
            )
        })?;
        let other_netns = self.netns.as_ref().or(netns).cloned();
        Ok(Node {
            mount,
            mount_level: cgroup2.root_level,
            cgroup_root,
            netns: other_netns
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net")),
            other_netns,
        })
    }
}
