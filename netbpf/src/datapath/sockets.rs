//! The socket programs on a cgroup: the scope maps and forward trie from a
//! plan, attaching in an order that leaves no socket half-handled, the
//! binds made before netbpf started, and the per-rule counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::fd::OwnedFd,
    path::Path,
};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, MapError, SkStorage, lpm_trie::Key},
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use netbpf_common::{
    DialedBySocket, ForwardKey, ForwardTarget, Lookups, RuleStats, ScopeEntry, ScopePort,
    names::{self, program},
};

use super::{Datapath, DatapathError, map_error};
use crate::{
    host::socket_fds,
    plan::{Plan, PortSet},
};

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
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// When the entries a map update drops leave the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// Once the changed entries are written.
    Now,
    /// Only if the map is too full to hold them and the changed entries;
    /// a later update removes them otherwise.
    IfFull,
}

/// Writes the `changed` entries of map `name`, then removes the `dropped`
/// keys as `removal` says: no lookup meets a rule half replaced. A map too
/// full for that order (its capacity held by entries on their way out, as
/// when a container restarts with a new cgroup id) has the dropped keys
/// removed first, and the write goes on.
fn replace<M, K, V: Copy>(
    name: &'static str,
    map: &mut M,
    changed: impl Iterator<Item = (K, V)>,
    dropped: &[K],
    removal: Removal,
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
    if !removed && removal == Removal::Now {
        remove_dropped(map)?;
    }
    Ok(())
}

/// `new`'s scopes, each with the flags `old` gave it too, and `old`'s
/// other scopes: while rules move between maps, every scope has the
/// programs look wherever either plan put its rules.
fn flagged_by_both(
    old: &BTreeMap<u64, ScopeEntry>,
    new: &BTreeMap<u64, ScopeEntry>,
) -> BTreeMap<u64, ScopeEntry> {
    let mut scopes = old.clone();
    for (key, scope) in new {
        let flags = old.get(key).map_or(0, |old| old.flags);
        scopes.insert(
            *key,
            ScopeEntry {
                flags: scope.flags | flags,
                ..*scope
            },
        );
    }
    scopes
}

/// Says why a socket bound before netbpf started could not be counted: a
/// process or descriptor gone meanwhile is no news, a refusal is.
fn warn_uncounted(pid: u32, fd: i32, error: &std::io::Error) {
    if error.raw_os_error() == Some(libc::EPERM) {
        tracing::warn!(
            pid,
            fd,
            %error,
            "cannot take a socket bound before netbpf started to count it (pidfd_getfd needs CAP_SYS_PTRACE): its port may be forwarded although it serves the scope itself"
        );
    } else {
        tracing::debug!(pid, fd, %error, "a socket bound before netbpf started is gone");
    }
}

/// `BPF_NOEXIST`: a map update that only creates, never replaces.
const BPF_NOEXIST: u64 = 1;

/// A socket program and the cgroup hook it runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupHook {
    pub program: &'static str,
    pub attach_type: bpf_attach_type,
}

impl CgroupHook {
    const fn new(program: &'static str, attach_type: bpf_attach_type) -> Self {
        Self {
            program,
            attach_type,
        }
    }

    /// The program type that runs at the hook (`bpf_prog_type`).
    #[must_use]
    pub fn prog_type(self) -> u32 {
        use bpf_attach_type::{
            BPF_CGROUP_INET_SOCK_RELEASE, BPF_CGROUP_INET4_POST_BIND, BPF_CGROUP_INET6_POST_BIND,
        };
        let prog_type = match self.attach_type {
            BPF_CGROUP_INET_SOCK_RELEASE
            | BPF_CGROUP_INET4_POST_BIND
            | BPF_CGROUP_INET6_POST_BIND => bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK,
            _ => bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        };
        prog_type as u32
    }
}

/// The programs that track binds inside scopes, attached first: the
/// release hook before the bind hooks, so no counted bind outlives its
/// socket. Binds made before they attach are then found and counted.
pub const TRACKING_HOOKS: [CgroupHook; 3] = [
    CgroupHook::new(
        program::RELEASE,
        bpf_attach_type::BPF_CGROUP_INET_SOCK_RELEASE,
    ),
    CgroupHook::new(program::BOUND4, bpf_attach_type::BPF_CGROUP_INET4_POST_BIND),
    CgroupHook::new(program::BOUND6, bpf_attach_type::BPF_CGROUP_INET6_POST_BIND),
];

/// The programs that rewrite addresses, attached once every local bind is
/// counted: the reverse paths before connect and sendmsg, so no rewritten
/// socket misses the translation of its replies.
pub const REWRITING_HOOKS: [CgroupHook; 10] = [
    CgroupHook::new(program::BIND4, bpf_attach_type::BPF_CGROUP_INET4_BIND),
    CgroupHook::new(program::BIND6, bpf_attach_type::BPF_CGROUP_INET6_BIND),
    CgroupHook::new(program::RECVMSG4, bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    CgroupHook::new(program::RECVMSG6, bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    CgroupHook::new(
        program::GETPEER4,
        bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
    ),
    CgroupHook::new(
        program::GETPEER6,
        bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME,
    ),
    CgroupHook::new(program::CONNECT4, bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    CgroupHook::new(program::CONNECT6, bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    CgroupHook::new(program::SENDMSG4, bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    CgroupHook::new(program::SENDMSG6, bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
];

/// The name the link of socket `program` on the cgroup `cgroup_id` is
/// pinned under.
#[must_use]
pub fn cgroup_link_name(cgroup_id: u64, program: &str) -> String {
    format!("cgroup-{cgroup_id}-{program}")
}

/// Every socket program with its hook, in the order they attach.
pub fn cgroup_hooks() -> impl Iterator<Item = CgroupHook> {
    TRACKING_HOOKS.into_iter().chain(REWRITING_HOOKS)
}

impl Datapath {
    /// Turns the maps from `old`'s entries into `new`'s so that no lookup
    /// meets a half-written policy: within a map, new and changed entries
    /// first, then the ones `new` drops (the dropped ones first in a map
    /// too full for that). At start `old` is the empty plan; call before
    /// [`Self::attach`], so the programs act on the whole plan from their
    /// first run.
    ///
    /// A forward may move between the exact-port map and the trie of port
    /// ranges, which the programs look up only for scopes flagged so. While
    /// it moves, the programs look everywhere either plan has them look,
    /// and the exact ports of both plans stay until the trie is written.
    pub fn update(&mut self, old: &Plan, new: &Plan) -> Result<(), DatapathError> {
        self.set_lookups(old.lookups().union(new.lookups()))?;
        let mut localhost_ports = old.localhost_ports.clone();
        localhost_ports.extend(&new.localhost_ports);
        self.write_localhost_ports(&old.localhost_ports, &localhost_ports)?;
        let cgroup_scopes = flagged_by_both(&old.cgroup_scopes, &new.cgroup_scopes);
        let netns_scopes = flagged_by_both(&old.netns_scopes, &new.netns_scopes);
        self.sync_keeping(
            names::CGROUP_SCOPES.name,
            &old.cgroup_scopes,
            &cgroup_scopes,
            &new.cgroup_scopes,
        )?;
        self.sync_keeping(
            names::NETNS_SCOPES.name,
            &old.netns_scopes,
            &netns_scopes,
            &new.netns_scopes,
        )?;
        // A forward flagged to keep nothing at connect is written after
        // the derived peer its sockets' getpeername() finds, and that peer
        // goes only after the forward is unflagged or gone.
        let derived_peers = self.add_beside(
            names::DERIVED_PEERS.name,
            &old.derived_peers,
            &new.derived_peers,
        )?;
        let forward_ports = self.add_beside(
            names::FORWARD_PORTS.name,
            &old.forward_ports,
            &new.forward_ports,
        )?;
        let cgroup_forwards = self.add_beside(
            names::CGROUP_FORWARDS.name,
            &old.cgroup_forwards,
            &new.cgroup_forwards,
        )?;
        self.sync_forward_ranges(old, new)?;
        self.sync(
            names::FORWARD_PORTS.name,
            &forward_ports,
            &new.forward_ports,
        )?;
        self.sync(
            names::CGROUP_FORWARDS.name,
            &cgroup_forwards,
            &new.cgroup_forwards,
        )?;
        self.sync(
            names::DERIVED_PEERS.name,
            &derived_peers,
            &new.derived_peers,
        )?;
        self.sync(names::ALIASES.name, &old.aliases, &new.aliases)?;
        self.sync(
            names::ALIASED_ADDRS.name,
            &present(&old.aliased_addrs),
            &present(&new.aliased_addrs),
        )?;
        self.sync(names::BIND_REMAPS.name, &old.binds, &new.binds)?;
        // A service appears once its grants are in place, so that granted
        // scopes are never refused; the service ports of both plans are
        // checked (the lookups' union, above) while services come and go,
        // so that nobody else slips through.
        self.sync(names::GRANTS.name, &old.grants, &new.grants)?;
        self.sync(
            names::SCOPE_GRANTS.name,
            &present(&old.scope_grants),
            &present(&new.scope_grants),
        )?;
        self.sync(names::HOST_SERVICES.name, &old.services, &new.services)?;
        self.sync(
            names::CGROUP_SCOPES.name,
            &cgroup_scopes,
            &new.cgroup_scopes,
        )?;
        self.sync(names::NETNS_SCOPES.name, &netns_scopes, &new.netns_scopes)?;
        self.write_localhost_ports(&localhost_ports, &new.localhost_ports)?;
        self.set_lookups(new.lookups())
    }

    /// Turns `LOCALHOST_PORTS` from holding `from` into holding `to`, word
    /// by word where they differ.
    fn write_localhost_ports(&mut self, from: &PortSet, to: &PortSet) -> Result<(), DatapathError> {
        let mut words: Array<_, u64> = self.map_mut(names::LOCALHOST_PORTS.name)?;
        for (index, bits) in to.changed_since(from) {
            words
                .set(index, bits, 0)
                .map_err(map_error(names::LOCALHOST_PORTS.name))?;
        }
        Ok(())
    }

    /// Makes the trie of port-range forwards go from `old`'s to `new`'s.
    fn sync_forward_ranges(&mut self, old: &Plan, new: &Plan) -> Result<(), DatapathError> {
        let mut forwards: LpmTrie<_, ForwardKey, ForwardTarget> =
            self.map_mut(names::FORWARDS.name)?;
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
            names::FORWARDS.name,
            &mut forwards,
            changed,
            &dropped,
            Removal::Now,
            |map, key, target| map.insert(key, target, 0),
            LpmTrie::remove,
        )
    }

    /// Tells the programs which lookups they need. The rewritten peers of
    /// earlier plans stay: a socket keeps what it dialed for as long as it
    /// lives, and `getpeername()` looks there only for a peer in the
    /// filter.
    fn set_lookups(&mut self, lookups: Lookups) -> Result<(), DatapathError> {
        let mut map: Array<_, Lookups> = self.map_mut(names::LOOKUPS.name)?;
        let before = map.get(&0, 0).map_err(map_error(names::LOOKUPS.name))?;
        map.set(0, lookups.with_rewritten_peers_of(&before), 0)
            .map_err(map_error(names::LOOKUPS.name))
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
        self.replace_in(name, old, new, new, Removal::Now)
    }

    /// Writes `new`'s entries into the hash map `name` beside `old`'s
    /// (dropping those `new` lacks only if the map cannot hold both), and
    /// returns what it holds then: [`Self::sync`] from it drops them.
    fn add_beside<K, V>(
        &mut self,
        name: &'static str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
    ) -> Result<BTreeMap<K, V>, DatapathError>
    where
        K: Pod + Ord,
        V: Pod + PartialEq,
    {
        let mut both = old.clone();
        both.extend(new.iter().map(|(key, value)| (*key, *value)));
        self.sync_keeping(name, old, &both, new)?;
        Ok(both)
    }

    /// Makes the hash map `name` go from `old`'s entries to `kept`'s, a
    /// superset of `old`'s keys: the keys `last` drops are removed only if
    /// the map is too full to hold both.
    fn sync_keeping<K, V>(
        &mut self,
        name: &'static str,
        old: &BTreeMap<K, V>,
        kept: &BTreeMap<K, V>,
        last: &BTreeMap<K, V>,
    ) -> Result<(), DatapathError>
    where
        K: Pod + Ord,
        V: Pod + PartialEq,
    {
        self.replace_in(name, old, kept, last, Removal::IfFull)
    }

    /// Writes the entries of `new` that differ from `old`'s into the hash
    /// map `name`, and removes `old`'s keys that `last` has not as
    /// `removal` says.
    fn replace_in<K, V>(
        &mut self,
        name: &'static str,
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        last: &BTreeMap<K, V>,
        removal: Removal,
    ) -> Result<(), DatapathError>
    where
        K: Pod + Ord,
        V: Pod + PartialEq,
    {
        let dropped: Vec<K> = old
            .keys()
            .filter(|key| !last.contains_key(key))
            .copied()
            .collect();
        let mut map: HashMap<_, K, V> = self.map_mut(name)?;
        let changed = new
            .iter()
            .filter(|(key, value)| old.get(key) != Some(value))
            .map(|(key, value)| (*key, *value));
        replace(
            name,
            &mut map,
            changed,
            &dropped,
            removal,
            |map, key, value| map.insert(key, value, 0),
            HashMap::remove,
        )
    }

    /// Sets the counters in `slots` to zero: slots new rules were given.
    pub fn reset_rule_stats(&mut self, slots: Vec<u32>) -> Result<(), DatapathError> {
        self.reset_counters::<RuleStats>(names::RULE_COUNTERS, slots)
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
        self.attach_programs(&TRACKING_HOOKS, &cgroup, cgroup_root)?;
        self.record_binds(&existing_binds())?;
        self.attach_programs(&REWRITING_HOOKS, &cgroup, cgroup_root)
    }

    fn attach_programs(
        &mut self,
        hooks: &[CgroupHook],
        cgroup: &File,
        path: &Path,
    ) -> Result<(), DatapathError> {
        let cgroup_id =
            crate::host::cgroup::cgroup_id(path).map_err(|source| DatapathError::Cgroup {
                path: path.to_owned(),
                source,
            })?;
        for CgroupHook { program: name, .. } in hooks {
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
                cgroup_link_name(cgroup_id, name),
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
    /// own storage through a duplicate of its descriptor and counted at
    /// once; one the hooks counted already is skipped, and a mark whose
    /// count fails is taken back. The duplicates close after the count: a
    /// socket its process closed meanwhile is then released, and its
    /// release hook uncounts it.
    pub fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<usize, DatapathError> {
        let inodes: Vec<u32> = sockets.iter().map(|socket| socket.inode).collect();
        let owners = socket_fds::owners(&inodes);
        let mut held = Vec::new();
        let mut counted = 0;
        for socket in sockets {
            // Gone, or closed since it was listed and its number taken again.
            let Some(duplicate) = owners.get(&socket.inode).and_then(|&(pid, fd)| {
                socket_fds::take(pid, fd, socket.cookie)
                    .inspect_err(|error| warn_uncounted(pid, fd, error))
                    .ok()
                    .flatten()
            }) else {
                continue;
            };
            if self.mark_bound(&duplicate, socket.key)? {
                match self.count_local_bind(socket.key) {
                    Ok(true) => counted += 1,
                    // Over the scope's limit: left to be forwarded, as the
                    // bind hooks would have.
                    Ok(false) => self.unmark_bound(&duplicate),
                    Err(error) => {
                        self.unmark_bound(&duplicate);
                        return Err(error);
                    }
                }
            }
            held.push(duplicate);
        }
        drop(held);
        Ok(counted)
    }

    /// What `socket` dialed that a rule rewrote, as its storage in
    /// `REVERSE` records it; None when it recorded nothing.
    pub fn dialed_by(&self, socket: &OwnedFd) -> Result<Option<DialedBySocket>, DatapathError> {
        let storage: SkStorage<_, DialedBySocket> = self.map(names::REVERSE.name)?;
        match storage.get(socket, 0) {
            Ok(dialed) => Ok(Some(dialed)),
            // A socket with no storage is absent from the map.
            Err(error) => forgiving(Err(error))
                .map(|()| None)
                .map_err(map_error(names::REVERSE.name)),
        }
    }

    /// Marks `socket` as counted under `key` in its own storage; false when
    /// the bind hooks marked it already.
    fn mark_bound(&mut self, socket: &OwnedFd, key: ScopePort) -> Result<bool, DatapathError> {
        let mut storage: SkStorage<_, ScopePort> = self.map_mut(names::BOUND_SOCKETS.name)?;
        match storage.insert(socket, key, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(error) => Err(map_error(names::BOUND_SOCKETS.name)(error)),
        }
    }

    /// Takes back the mark of a socket whose count failed, so that its
    /// release uncounts nothing.
    fn unmark_bound(&mut self, socket: &OwnedFd) {
        let removed = self
            .map_mut::<SkStorage<_, ScopePort>>(names::BOUND_SOCKETS.name)
            .and_then(|mut storage| {
                storage
                    .remove(socket)
                    .map_err(map_error(names::BOUND_SOCKETS.name))
            });
        if let Err(error) = removed {
            tracing::warn!(%error, "a socket stays marked as counted though its count failed");
        }
    }

    /// Adds one to the local-binds count of `key`, as the bind hooks do:
    /// the first socket on a port takes one of the scope's ports in
    /// `SCOPE_LOCAL_BINDS`, within the per-scope limit (whose release hook
    /// gives it back); false when the scope holds its limit already.
    /// Userspace cannot add atomically: a bind of the same scope and port
    /// in between is lost (binds are rare, ports per scope few).
    fn count_local_bind(&mut self, key: ScopePort) -> Result<bool, DatapathError> {
        let mut counts: HashMap<_, ScopePort, u32> = self.map_mut(names::LOCAL_BINDS.name)?;
        if let Ok(count) = counts.get(&key, 0) {
            counts
                .insert(key, count + 1, 0)
                .map_err(map_error(names::LOCAL_BINDS.name))?;
            return Ok(true);
        }
        let limit = self.lookups()?.local_binds_per_scope;
        let mut held: Array<_, u32> = self.map_mut(names::SCOPE_LOCAL_BINDS.name)?;
        let ports = held
            .get(&key.scope, 0)
            .map_err(map_error(names::SCOPE_LOCAL_BINDS.name))?;
        if ports >= limit {
            return Ok(false);
        }
        held.set(key.scope, ports + 1, 0)
            .map_err(map_error(names::SCOPE_LOCAL_BINDS.name))?;
        let mut counts: HashMap<_, ScopePort, u32> = self.map_mut(names::LOCAL_BINDS.name)?;
        if let Err(error) = counts.insert(key, 1, 0) {
            let mut held: Array<_, u32> = self.map_mut(names::SCOPE_LOCAL_BINDS.name)?;
            let _ = held.set(key.scope, ports, 0);
            return Err(map_error(names::LOCAL_BINDS.name)(error));
        }
        Ok(true)
    }

    /// The counters of rule `rule`, summed over CPUs.
    pub fn rule_stats(&self, rule: u32) -> Result<RuleStats, DatapathError> {
        self.summed_counters(names::RULE_COUNTERS, rule)
    }
}

#[cfg(test)]
mod tests {
    use netbpf_common::SCOPE_PORT_RANGES;

    use super::*;

    #[test]
    fn scopes_keep_the_flags_of_both_plans_while_rules_move() {
        let scope = |id, flags| ScopeEntry {
            id,
            flags,
            level: 2,
        };
        let old = BTreeMap::from([(10, scope(1, SCOPE_PORT_RANGES)), (11, scope(2, 0))]);
        let new = BTreeMap::from([(10, scope(1, 0)), (12, scope(3, SCOPE_PORT_RANGES))]);
        assert_eq!(
            flagged_by_both(&old, &new),
            BTreeMap::from([
                (10, scope(1, SCOPE_PORT_RANGES)),
                (11, scope(2, 0)),
                (12, scope(3, SCOPE_PORT_RANGES)),
            ])
        );
    }
}
