//! Whose the sockets of a network namespace are: the scope instances the
//! datapath has, each cgroup of their subtrees, and the namespaces their
//! processes' sockets live in.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::{host::sock_diag::DiagSocket, plan::ScopeKey};

/// A scope instance the datapath has: its id, its key and where it is
/// (its cgroup directory, or its network namespace's path).
#[derive(Debug, Clone)]
pub struct ScopePlace {
    pub id: u32,
    pub key: ScopeKey,
    pub path: PathBuf,
}

/// Which scope owns a socket, and which namespaces to look in.
pub struct Owners {
    /// cgroup id -> scope id, for every cgroup in a cgroup scope's subtree
    /// (a sub-cgroup that is a scope of its own belongs to that scope).
    cgroups: HashMap<u64, u32>,
    /// netns cookie -> scope id.
    netns: HashMap<u64, u32>,
    /// One path per network namespace that may hold scoped sockets.
    pub namespaces: Vec<PathBuf>,
}

impl Owners {
    /// Where the sockets of `scopes` are, and how to tell whose they are.
    pub fn of(scopes: &[ScopePlace]) -> Self {
        let scope_roots: HashMap<u64, u32> = scopes
            .iter()
            .filter_map(|scope| match scope.key {
                ScopeKey::Cgroup(id) => Some((id, scope.id)),
                ScopeKey::Netns(_) => None,
            })
            .collect();
        let mut owners = Self {
            cgroups: HashMap::new(),
            netns: HashMap::new(),
            namespaces: Vec::new(),
        };
        let mut seen_namespaces = HashSet::new();
        for ScopePlace {
            id: scope,
            key,
            path,
        } in scopes
        {
            match key {
                ScopeKey::Cgroup(_) => {
                    let mut pids = Vec::new();
                    // A cgroup removed while we look holds no socket.
                    if walk_cgroup(path, *scope, &scope_roots, &mut owners.cgroups, &mut pids)
                        .is_err()
                    {
                        continue;
                    }
                    for pid in pids {
                        // A process may exit while we look: skip it.
                        let namespace = PathBuf::from(format!("/proc/{pid}/ns/net"));
                        if let Ok(meta) = fs::metadata(&namespace)
                            && seen_namespaces.insert((meta.dev(), meta.ino()))
                        {
                            owners.namespaces.push(namespace);
                        }
                    }
                }
                ScopeKey::Netns(cookie) => {
                    owners.netns.insert(*cookie, *scope);
                    let Ok(meta) = fs::metadata(path) else {
                        continue;
                    };
                    if seen_namespaces.insert((meta.dev(), meta.ino())) {
                        owners.namespaces.push(path.clone());
                    }
                }
            }
        }
        owners
    }

    /// The scope of a socket found in the namespace with `netns_cookie`:
    /// its cgroup's scope first, as the kernel programs decide.
    pub fn scope_of(&self, socket: &DiagSocket, netns_cookie: u64) -> Option<u32> {
        socket
            .cgroup_id
            .and_then(|id| self.cgroups.get(&id))
            .or_else(|| self.netns.get(&netns_cookie))
            .copied()
    }
}

/// Records every cgroup below `dir` as `scope`'s, down to cgroups that are
/// scopes of their own, and collects the processes found there.
fn walk_cgroup(
    dir: &Path,
    scope: u32,
    scope_roots: &HashMap<u64, u32>,
    cgroups: &mut HashMap<u64, u32>,
    pids: &mut Vec<u32>,
) -> io::Result<()> {
    cgroups.insert(fs::metadata(dir)?.ino(), scope);
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    pids.extend(
        procs
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok()),
    );
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let child = entry.path();
        if scope_roots.contains_key(&fs::metadata(&child)?.ino()) {
            continue;
        }
        walk_cgroup(&child, scope, scope_roots, cgroups, pids)?;
    }
    Ok(())
}
