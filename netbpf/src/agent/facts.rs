//! What the host says of one scope instance, for the rules that depend on
//! it: its network (grants) and the ports others hold there (bind remaps).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    host::{cgroup, netns, scope_net, sock_diag},
    plan::ScopeKey,
    policy::{self, Facts, ScopeNetwork},
};

/// The network namespace an instance's sockets bind in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindsIn {
    /// The node's.
    Node,
    /// One of its own, by inode.
    Namespace(u64),
}

impl BindsIn {
    /// Its inode, for a namespace of its own.
    #[must_use]
    pub fn own(self) -> Option<u64> {
        match self {
            Self::Node => None,
            Self::Namespace(inode) => Some(inode),
        }
    }
}

/// The facts of the instance at `place` (its cgroup directory, or its
/// network namespace), looked up when a rule asks.
pub struct InstanceFacts<'a> {
    pub key: ScopeKey,
    pub place: &'a Path,
    /// The node's network namespace.
    pub node_netns: &'a Path,
}

impl InstanceFacts<'_> {
    /// The network namespace the instance's sockets bind in: that of its
    /// first process (or its own, for a netns scope). Unknown (None) while
    /// it has no process.
    #[must_use]
    pub fn network_namespace(&self) -> Option<BindsIn> {
        let first = self.namespaces().ok()?.into_iter().next()?;
        let namespace = std::fs::metadata(first).ok()?;
        let node = std::fs::metadata(self.node_netns).ok()?;
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt as _;
            (a.dev(), a.ino()) == (b.dev(), b.ino())
        };
        Some(if same(&namespace, &node) {
            BindsIn::Node
        } else {
            BindsIn::Namespace(std::os::unix::fs::MetadataExt::ino(&namespace))
        })
    }

    /// One path per network namespace the instance's sockets live in.
    fn namespaces(&self) -> Result<Vec<PathBuf>, String> {
        match self.key {
            ScopeKey::Netns(_) => Ok(vec![self.place.to_owned()]),
            ScopeKey::Cgroup(_) => {
                scope_net::process_namespaces(self.place).map_err(|error| error.to_string())
            }
        }
    }
}

impl InstanceFacts<'_> {
    /// The instance's own network namespace: a netns scope's, or that of
    /// its cgroup's oldest process.
    fn own_namespace(&self) -> Result<Option<PathBuf>, String> {
        match self.key {
            ScopeKey::Netns(_) => Ok(Some(self.place.to_owned())),
            ScopeKey::Cgroup(_) => {
                scope_net::own_namespace(self.place).map_err(|error| error.to_string())
            }
        }
    }
}

impl Facts for InstanceFacts<'_> {
    /// The network of the instance's own namespace only: addresses its
    /// processes add in namespaces they make are never granted.
    fn network(&self) -> Result<ScopeNetwork, String> {
        let Some(namespace) = self.own_namespace()? else {
            return Err(policy::NO_PROCESS_YET.to_owned());
        };
        let mut network = scope_net::of_netns(&namespace)
            .map_err(|error| format!("finding the instance's addresses and gateway: {error}"))?;
        network.node = scope_net::same_namespace(&namespace, self.node_netns);
        if let Some(port) = network.host_interface {
            network.ingress_interface =
                netns::in_netns(self.node_netns, || scope_net::receiving_interface(port))
                    .and_then(|found| found)
                    .map_err(|error| format!("finding the bridge of interface {port}: {error}"))?;
        }
        Ok(network)
    }

    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        scope_net::of_netns(self.node_netns)
            .map(|network| network.addresses)
            .map_err(|error| format!("listing the node's addresses: {error}"))
    }

    fn bound_ports(&self) -> Result<Vec<(u8, u16)>, String> {
        // Every socket of a netns scope's namespace is the scope's own.
        if let ScopeKey::Netns(_) = self.key {
            return Ok(Vec::new());
        }
        let own_cgroups = cgroup::subtree_ids(self.place).map_err(|error| error.to_string())?;
        let namespaces = self.namespaces()?;
        let namespaces = if namespaces.is_empty() {
            vec![self.node_netns.to_owned()]
        } else {
            namespaces
        };
        let mut ports = Vec::new();
        for namespace in namespaces {
            let sockets = netns::in_netns(&namespace, sock_diag::bound_sockets)
                .and_then(|listed| listed)
                .map_err(|error| {
                    format!(
                        "listing the ports bound in {}: {error}",
                        namespace.display()
                    )
                })?;
            ports.extend(
                sockets
                    .iter()
                    .filter(|socket| !socket.cgroup_id.is_some_and(|id| own_cgroups.contains(&id)))
                    .map(|socket| (socket.protocol, socket.local.port())),
            );
        }
        Ok(ports)
    }
}
