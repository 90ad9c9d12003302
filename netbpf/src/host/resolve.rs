//! Resolves the scopes a policy names against this host: cgroup paths to
//! cgroup ids, network namespace paths to netns cookies.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    host::{cgroup, netns, scope_net, sock_diag},
    policy::{Resolver, ScopeNetwork, Selector},
};

/// Resolves policy paths on this host, for programs attached at
/// `attach_root`.
pub struct HostResolver {
    /// Where the cgroup v2 hierarchy is mounted: relative cgroup paths in a
    /// policy start here.
    mount: PathBuf,
    /// The cgroup netbpf's programs attach to: a scope's cgroup must be in
    /// it, or its sockets never reach the programs.
    attach_root: PathBuf,
    /// The node's network namespace: where a scope without processes yet
    /// (host networking) will bind.
    node_netns: PathBuf,
}

impl HostResolver {
    pub fn new(attach_root: &Path, node_netns: &Path) -> io::Result<Self> {
        let mount = cgroup::cgroup2_mount()?.canonicalize()?;
        let attach_root = attach_root.canonicalize()?;
        cgroup::cgroup_id(&attach_root)?;
        Ok(Self {
            mount,
            attach_root,
            node_netns: node_netns.to_owned(),
        })
    }
}

impl Resolver for HostResolver {
    fn cgroup(&self, path: &str) -> Result<(PathBuf, u64), String> {
        let full = self.mount.join(path);
        let full = full
            .canonicalize()
            .map_err(|error| format!("cgroup {} does not exist: {error}", full.display()))?;
        if !full.starts_with(&self.attach_root) {
            return Err(format!(
                "cgroup {} is not under the cgroup root netbpf attaches to ({}): its sockets would \
                 never reach netbpf",
                full.display(),
                self.attach_root.display()
            ));
        }
        let id = cgroup::cgroup_id(&full).map_err(|error| error.to_string())?;
        Ok((full, id))
    }

    fn cgroup_glob(&self, pattern: &str) -> Result<Vec<(PathBuf, u64)>, String> {
        let full = self.mount.join(pattern);
        let paths = glob::glob(&full.to_string_lossy())
            .map_err(|error| format!("{pattern:?} is not a valid glob: {error}"))?;
        paths
            .filter_map(Result::ok)
            .filter(|path| path.is_dir())
            .map(|path| self.cgroup(&path.to_string_lossy()))
            .collect()
    }

    fn network(&self, selector: &Selector) -> Result<ScopeNetwork, String> {
        let namespaces = match selector {
            Selector::Netns { path, .. } => vec![path.clone()],
            Selector::Cgroup { path, .. } => {
                scope_net::process_namespaces(path).map_err(|error| error.to_string())?
            }
        };
        if namespaces.is_empty() {
            return Err("no process of the scope runs yet: its network is unknown".to_owned());
        }
        let mut network = scope_net::of_namespaces(&namespaces)
            .map_err(|error| format!("finding the scope's addresses and gateway: {error}"))?;
        network.node = namespaces
            .iter()
            .any(|namespace| scope_net::same_namespace(namespace, &self.node_netns));
        Ok(network)
    }

    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        scope_net::of_netns(&self.node_netns)
            .map(|network| network.addresses)
            .map_err(|error| format!("listing the node's addresses: {error}"))
    }

    fn bound_ports(&self, selector: &Selector) -> Result<Vec<(u8, u16)>, String> {
        // Every socket of a netns scope's namespace is the scope's own.
        let Selector::Cgroup { path, .. } = selector else {
            return Ok(Vec::new());
        };
        let own_cgroups = cgroup::subtree_ids(path).map_err(|error| error.to_string())?;
        let namespaces = scope_net::process_namespaces(path).map_err(|error| error.to_string())?;
        let namespaces = if namespaces.is_empty() {
            vec![self.node_netns.clone()]
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

    fn netns(&self, path: &str) -> Result<(PathBuf, u64), String> {
        let cookie = netns::netns_cookie(Path::new(path))
            .map_err(|error| format!("network namespace {path}: {error}"))?;
        Ok((PathBuf::from(path), cookie))
    }
}
