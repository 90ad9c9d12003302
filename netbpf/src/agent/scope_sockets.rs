//! Whose the sockets of a network namespace are: the scope instances the
//! datapath has, each cgroup of their subtrees, and the namespaces their
//! processes' sockets live in.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::{
    host::{netns, sock_diag::DiagSocket},
    plan::ScopeKey,
};

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
    /// Each network namespace that may hold scoped sockets, once.
    pub namespaces: Vec<Namespace>,
}

/// A network namespace, and every path it was found at (each process of
/// a scope has one): a process that exits meanwhile takes its path with
/// it, and the next is tried.
pub struct Namespace {
    /// Its identity: the device and inode of its nsfs file.
    id: (u64, u64),
    /// Every path it was found at, in turn (at least one).
    paths: Vec<PathBuf>,
}

impl Namespace {
    /// The path it was found at first.
    pub fn path(&self) -> &Path {
        &self.paths[0]
    }

    /// Runs `task` inside it; `NotFound` once nothing leads to it any more
    /// (its processes are gone, and their sockets with them).
    pub fn run<T: Send>(&self, task: impl FnOnce() -> T + Send) -> io::Result<T> {
        let (file, path) = self.entry()?;
        netns::in_opened_netns(&file, path, task)
    }

    /// The first of its paths that still leads to it, opened.
    fn entry(&self) -> io::Result<(File, &Path)> {
        for path in &self.paths {
            let file = match File::open(path) {
                Ok(file) => file,
                // Its process exited.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            // A PID used again leads elsewhere.
            let meta = file.metadata()?;
            if (meta.dev(), meta.ino()) == self.id {
                return Ok((file, path));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "nothing leads to {}'s network namespace any more",
                self.path().display()
            ),
        ))
    }
}

/// Files `path` under the namespace it leads to, a new one the first time.
fn file_namespace(
    namespaces: &mut Vec<Namespace>,
    index: &mut HashMap<(u64, u64), usize>,
    path: PathBuf,
) {
    // A process may exit while we look: it leads nowhere.
    let Ok(meta) = fs::metadata(&path) else {
        return;
    };
    let id = (meta.dev(), meta.ino());
    if let Some(&at) = index.get(&id) {
        namespaces[at].paths.push(path);
    } else {
        index.insert(id, namespaces.len());
        namespaces.push(Namespace {
            id,
            paths: vec![path],
        });
    }
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
        let mut namespace_index = HashMap::new();
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
                        file_namespace(
                            &mut owners.namespaces,
                            &mut namespace_index,
                            PathBuf::from(format!("/proc/{pid}/ns/net")),
                        );
                    }
                }
                ScopeKey::Netns(cookie) => {
                    owners.netns.insert(*cookie, *scope);
                    file_namespace(&mut owners.namespaces, &mut namespace_index, path.clone());
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

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
    };

    use super::file_namespace;

    #[test]
    fn a_namespace_is_entered_through_the_first_path_still_leading_to_it() {
        let (mut namespaces, mut index) = (Vec::new(), HashMap::new());
        for path in [
            "/proc/self/ns/net",
            "/proc/thread-self/ns/net",
            "/proc/0/ns/net",
        ] {
            file_namespace(&mut namespaces, &mut index, PathBuf::from(path));
        }
        assert_eq!(namespaces.len(), 1, "one namespace, two paths to it");
        let namespace = &mut namespaces[0];
        assert_eq!(namespace.paths.len(), 2);
        // The process of the first path has exited.
        namespace.paths[0] = PathBuf::from("/proc/0/ns/net");
        let (_, path) = namespace.entry().unwrap();
        assert_eq!(path, Path::new("/proc/thread-self/ns/net"));
        // The last PID used again, by a process of another namespace.
        namespace.paths = vec![PathBuf::from("/proc/self/ns/mnt")];
        let error = namespace.entry().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
    }
}
