//! The socket programs on a cgroup: the scope maps and forward trie from a
//! plan, attaching in an order that leaves no socket half-handled, the
//! binds made before netbpf started, and the per-rule counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::Path,
};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, MapError, SkStorage, lpm_trie::Key},
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use netbpf_common::{ForwardKey, ForwardTarget, Lookups, RuleStats, ScopePort};

use super::{Datapath, DatapathError, map_error};
use crate::{host::socket_fds, plan::Plan};

/// A socket bound inside a scope, and its key in the local-binds table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundSocket {
    pub cookie: u64,
    /// Its `socket:[INODE]`, to find a descriptor of it.
    pub inode: u32,
    pub key: ScopePort,
}

/// A set as the map of its members to 1.
fn present<K: Copy + Ord>(set: &BTreeSet<K>) -> BTreeMap<K, u8> {
    set.iter().map(|key| (*key, 1)).collect()
}

/// A removal of an entry that is already gone is no failure.
fn forgiving(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Writes the `changed` entries of map `name`, then removes the `dropped`
/// keys: no lookup meets a rule half replaced. A map too full for that
/// order (its capacity held by entries on their way out, as when a
/// container restarts with a new cgroup id) has the dropped keys removed
/// first, and the write goes on.
fn replace<M, K, V: Copy>(
    name: &'static str,
    map: &mut M,
    changed: impl Iterator<Item = (K, V)>,
    dropped: &[K],
    insert: impl Fn(&mut M, &K, V) -> Result<(), MapError>,
    remove: impl Fn(&mut M, &K) -> Result<(), MapError>,
) -> Result<(), DatapathError> {
    let remove_dropped = |map: &mut M| -> Result<(), DatapathError> {
        for key in dropped {
            forgiving(remove(map, key)).map_err(map_error(name))?;
        }
        Ok(())
    };
    let mut removed = false;
    for (key, value) in changed {
        match insert(map, &key, value) {
            Err(MapError::SyscallError(error))
                if !removed
                    && matches!(
                        error.io_error.raw_os_error(),
                        Some(libc::E2BIG | libc::ENOSPC)
                    ) =>
            {
                remove_dropped(map)?;
                removed = true;
                insert(map, &key, value).map_err(map_error(name))?;
            }
            result => result.map_err(map_error(name))?,
        }
    }
    if !removed {
        remove_dropped(map)?;
    }
    Ok(())
}

/// `BPF_NOEXIST`: a map update that only creates, never replaces.
const BPF_NOEXIST: u64 = 1;

/// The programs that track binds inside scopes, attached first: the
/// release hook before the bind hooks, so no counted bind outlives its
/// socket. Binds made before they attach are then found and counted.
pub(super) const TRACKING_PROGRAMS: &[&str] = &["netbpf_release", "netbpf_bound4", "netbpf_bound6"];

/// The programs that rewrite addresses, attached once every local bind is
/// counted: the reverse paths before connect and sendmsg, so no rewritten
/// socket misses the translation of its replies.
pub(super) const REWRITING_PROGRAMS: &[&str] = &[
    "netbpf_bind4",
    "netbpf_bind6",
    "netbpf_recvmsg4",
    "netbpf_recvmsg6",
    "netbpf_getpeer4",
    "netbpf_getpeer6",
    "netbpf_connect4",
    "netbpf_connect6",
    "netbpf_sendmsg4",
    "netbpf_sendmsg6",
];

impl Datapath {
    /// Turns the maps from `old`'s entries into `new`'s: new and changed
    /// entries first, then the ones `new` drops, so that no lookup meets a
    /// half-written policy (the dropped ones first in a map too full for
    /// that). At start `old` is the empty plan; call before
    /// [`Self::attach`], so the programs act on the whole plan from their
    /// first run.
    pub fn update(&mut self, old: &Plan, new: &Plan) -> Result<(), DatapathError> {
        // What new entries need is looked up before they are there, and
        // what old ones need until they are gone.
        self.set_lookups(old.lookups().union(new.lookups()))?;
        self.sync("CGROUP_SCOPES", &old.cgroup_scopes, &new.cgroup_scopes)?;
        self.sync("NETNS_SCOPES", &old.netns_scopes, &new.netns_scopes)?;
        self.sync("FORWARD_PORTS", &old.forward_ports, &new.forward_ports)?;
        self.sync("ALIASES", &old.aliases, &new.aliases)?;
        self.sync(
            "ALIASED_ADDRS",
            &present(&old.aliased_addrs),
            &present(&new.aliased_addrs),
        )?;
        self.sync("BIND_REMAPS", &old.binds, &new.binds)?;
        self.sync("HOST_SERVICES", &old.services, &new.services)?;
        self.sync("GRANTS", &old.grants, &new.grants)?;
        let mut forwards: LpmTrie<_, ForwardKey, ForwardTarget> = self.map_mut("FORWARDS")?;
        let dropped: Vec<_> = old
            .forwards
            .keys()
            .filter(|entry| !new.forwards.contains_key(entry))
            .map(|&(prefix_len, key)| Key::new(prefix_len, key))
            .collect();
        let changed = new
            .forwards
            .iter()
            .filter(|(entry, target)| old.forwards.get(entry) != Some(target))
            .map(|(&(prefix_len, key), target)| (Key::new(prefix_len, key), *target));
        replace(
            "FORWARDS",
            &mut forwards,
            changed,
            &dropped,
            |map, key, target| map.insert(key, target, 0),
            LpmTrie::remove,
        )?;
        self.set_lookups(new.lookups())
    }

    /// Tells the programs which lookups they need.
    fn set_lookups(&mut self, lookups: Lookups) -> Result<(), DatapathError> {
        let mut map: Array<_, Lookups> = self.map_mut("LOOKUPS")?;
        map.set(0, lookups, 0).map_err(map_error("LOOKUPS"))
    }

    /// Makes the hash map `name` go from `old`'s entries to `new`'s.
    fn sync<K, V>(
        &mut self,
        name: &'static str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
    ) -> Result<(), DatapathError>
    where
        K: Pod + Ord,
        V: Pod + PartialEq,
    {
        let mut map: HashMap<_, K, V> = self.map_mut(name)?;
        let dropped: Vec<K> = old
            .keys()
            .filter(|key| !new.contains_key(key))
            .copied()
            .collect();
        let changed = new
            .iter()
            .filter(|(key, value)| old.get(key) != Some(value))
            .map(|(key, value)| (*key, *value));
        replace(
            name,
            &mut map,
            changed,
            &dropped,
            |map, key, value| map.insert(key, value, 0),
            HashMap::remove,
        )
    }

    /// Sets the counters in `slots` to zero: slots new rules were given.
    pub fn reset_rule_stats(&mut self, slots: Vec<u32>) -> Result<(), DatapathError> {
        self.reset_counters::<RuleStats>("RULE_STATS", slots)
    }

    /// Attaches every program to the cgroup at `cgroup_root` through bpf
    /// links: they see the sockets of every process below it, and coexist
    /// with the programs other tools attached there. Between the tracking
    /// and the rewriting programs, the sockets `existing_binds` lists (bound
    /// before the tracking programs attached) are counted as theirs.
    pub fn attach(
        &mut self,
        cgroup_root: &Path,
        existing_binds: impl FnOnce() -> Vec<BoundSocket>,
    ) -> Result<(), DatapathError> {
        let cgroup = File::open(cgroup_root).map_err(|source| DatapathError::Cgroup {
            path: cgroup_root.to_owned(),
            source,
        })?;
        self.attach_programs(TRACKING_PROGRAMS, &cgroup, cgroup_root)?;
        self.record_binds(&existing_binds())?;
        self.attach_programs(REWRITING_PROGRAMS, &cgroup, cgroup_root)
    }

    fn attach_programs(
        &mut self,
        names: &[&'static str],
        cgroup: &File,
        path: &Path,
    ) -> Result<(), DatapathError> {
        let cgroup_id =
            crate::host::cgroup::cgroup_id(path).map_err(|source| DatapathError::Cgroup {
                path: path.to_owned(),
                source,
            })?;
        for name in names {
            let attach_error = |source| DatapathError::Attach {
                name: (*name).to_owned(),
                cgroup: path.to_owned(),
                source: Box::new(source),
            };
            // On the kernels netbpf runs on (5.8+, for netns cookies in
            // socket programs) aya attaches through a bpf link, which is
            // always multi-attach and takes no mode flags.
            let mode = CgroupAttachMode::Single;
            let link_error = |error: aya::programs::links::LinkError| DatapathError::Link {
                name: (*name).to_owned(),
                source: std::io::Error::other(error.to_string()),
            };
            self.attach_linked(
                name,
                format!("cgroup-{cgroup_id}-{name}"),
                |program| match program {
                    Program::CgroupSockAddr(program) => {
                        let id = program.attach(cgroup, mode).map_err(attach_error)?;
                        let link = program.take_link(id).map_err(attach_error)?;
                        FdLink::try_from(link).map_err(link_error)
                    }
                    Program::CgroupSock(program) => {
                        let id = program.attach(cgroup, mode).map_err(attach_error)?;
                        let link = program.take_link(id).map_err(attach_error)?;
                        FdLink::try_from(link).map_err(link_error)
                    }
                    other => unreachable!("netbpf has no {:?} program", other.prog_type()),
                },
            )?;
        }
        Ok(())
    }

    /// Counts `sockets` as bound inside their scopes, as the bind hooks
    /// would have, and returns how many it counted. Each is marked in its
    /// own storage through a duplicate of its descriptor; one the hooks
    /// counted already is skipped. The duplicates close after the count:
    /// a socket its process closed meanwhile is then released, and its
    /// release hook uncounts it.
    pub fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<usize, DatapathError> {
        let inodes: Vec<u32> = sockets.iter().map(|socket| socket.inode).collect();
        let owners = socket_fds::owners(&inodes);
        let mut storage: SkStorage<_, ScopePort> = self.map_mut("BOUND_SOCKETS")?;
        let mut held = Vec::new();
        let mut counted = Vec::new();
        for socket in sockets {
            let Some(duplicate) = owners
                .get(&socket.inode)
                .and_then(|&(pid, fd)| socket_fds::duplicate(pid, fd).ok())
                .filter(|duplicate| socket_fds::cookie_of(duplicate) == Some(socket.cookie))
            else {
                // Closed since it was listed.
                continue;
            };
            match storage.insert(&duplicate, socket.key, BPF_NOEXIST) {
                Ok(()) => counted.push(socket.key),
                Err(MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(error) => return Err(map_error("BOUND_SOCKETS")(error)),
            }
            held.push(duplicate);
        }
        self.count_local_binds(counted.iter().copied(), 1)?;
        drop(held);
        Ok(counted.len())
    }

    /// Adds `delta` to the local-binds count of each of `keys`; a count
    /// that reaches zero leaves the map. Userspace cannot add atomically: a
    /// bind of the same scope and port in between is lost (binds are rare,
    /// ports per scope few).
    fn count_local_binds(
        &mut self,
        keys: impl IntoIterator<Item = ScopePort>,
        delta: i64,
    ) -> Result<(), DatapathError> {
        let mut counts: HashMap<_, ScopePort, u32> = self.map_mut("LOCAL_BINDS")?;
        for key in keys {
            let count = i64::from(counts.get(&key, 0).unwrap_or(0)) + delta;
            match u32::try_from(count) {
                Ok(count) if count > 0 => counts
                    .insert(key, count, 0)
                    .map_err(map_error("LOCAL_BINDS"))?,
                _ => forgiving(counts.remove(&key)).map_err(map_error("LOCAL_BINDS"))?,
            }
        }
        Ok(())
    }

    /// The counters of rule `rule`, summed over CPUs.
    pub fn rule_stats(&self, rule: u32) -> Result<RuleStats, DatapathError> {
        self.summed_counters("RULE_STATS", rule)
    }
}
