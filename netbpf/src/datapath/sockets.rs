//! The socket programs on a cgroup: the scope maps and forward trie from a
//! plan, attaching in an order that leaves no socket half-handled, the
//! binds made before netbpf started, and the per-rule counters.

use std::{fs::File, path::Path};

use aya::{
    maps::{HashMap, LpmTrie, MapError, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, Program},
};
use netbpf_common::{
    AliasKey, AliasedAddr, BindTarget, ForwardKey, ForwardTarget, RuleStats, ScopePort,
};

use super::{Datapath, DatapathError, map_error};
use crate::{existing_binds::BoundSocket, plan::Plan};

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
    /// Writes a plan into the empty maps. Call before [`Self::attach`], so
    /// that the programs act on the whole plan from their first run.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        let mut cgroups: HashMap<_, u64, u32> = self.map_mut("CGROUP_SCOPES")?;
        for (id, scope) in &plan.cgroup_scopes {
            cgroups
                .insert(id, scope, 0)
                .map_err(map_error("CGROUP_SCOPES"))?;
        }
        let mut namespaces: HashMap<_, u64, u32> = self.map_mut("NETNS_SCOPES")?;
        for (cookie, scope) in &plan.netns_scopes {
            namespaces
                .insert(cookie, scope, 0)
                .map_err(map_error("NETNS_SCOPES"))?;
        }
        let mut aliases: HashMap<_, AliasKey, ForwardTarget> = self.map_mut("ALIASES")?;
        for (key, target) in &plan.aliases {
            aliases
                .insert(key, target, 0)
                .map_err(map_error("ALIASES"))?;
        }
        let mut quick_test: HashMap<_, AliasedAddr, u8> = self.map_mut("ALIASED_ADDRS")?;
        for addr in &plan.aliased_addrs {
            quick_test
                .insert(addr, 1, 0)
                .map_err(map_error("ALIASED_ADDRS"))?;
        }
        let mut binds: HashMap<_, ScopePort, BindTarget> = self.map_mut("BIND_REMAPS")?;
        for (key, target) in &plan.binds {
            binds
                .insert(key, target, 0)
                .map_err(map_error("BIND_REMAPS"))?;
        }
        let mut forwards: LpmTrie<_, ForwardKey, ForwardTarget> = self.map_mut("FORWARDS")?;
        for (prefix_len, key, target) in &plan.forwards {
            forwards
                .insert(&Key::new(*prefix_len, *key), target, 0)
                .map_err(map_error("FORWARDS"))?;
        }
        Ok(())
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
        for name in names {
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?;
            // On the kernels netbpf runs on (5.8+, for netns cookies in
            // socket programs) aya attaches through a bpf link, which is
            // always multi-attach and takes no mode flags.
            let mode = CgroupAttachMode::Single;
            match program {
                Program::CgroupSockAddr(program) => program.attach(cgroup, mode).map(drop),
                Program::CgroupSock(program) => program.attach(cgroup, mode).map(drop),
                other => unreachable!("netbpf has no {:?} program", other.prog_type()),
            }
            .map_err(|source| DatapathError::Attach {
                name: (*name).to_owned(),
                cgroup: path.to_owned(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Counts `sockets` as bound inside their scopes, as the bind hooks
    /// would have. A socket the hooks counted already (by cookie) is
    /// skipped, so racing with them counts nobody twice.
    fn record_binds(&mut self, sockets: &[BoundSocket]) -> Result<(), DatapathError> {
        let mut bound: HashMap<_, u64, ScopePort> = self.map_mut("BOUND_SOCKETS")?;
        let mut new = Vec::new();
        for socket in sockets {
            match bound.insert(socket.cookie, socket.key, BPF_NOEXIST) {
                Ok(()) => new.push(socket.key),
                Err(MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(error) => return Err(map_error("BOUND_SOCKETS")(error)),
            }
        }
        let mut counts: HashMap<_, ScopePort, u32> = self.map_mut("LOCAL_BINDS")?;
        for key in new {
            // Userspace cannot add atomically; this runs before any socket
            // of a scope can be rewritten, while binds are rare.
            let count = counts.get(&key, 0).unwrap_or(0);
            counts
                .insert(key, count + 1, 0)
                .map_err(map_error("LOCAL_BINDS"))?;
        }
        Ok(())
    }

    /// The counters of rule `rule`, summed over CPUs.
    pub fn rule_stats(&self, rule: u32) -> Result<RuleStats, DatapathError> {
        let stats: PerCpuArray<_, RuleStats> = self.map("RULE_STATS")?;
        let per_cpu = stats.get(&rule, 0).map_err(map_error("RULE_STATS"))?;
        Ok(per_cpu
            .iter()
            .fold(RuleStats::default(), |sum, cpu| RuleStats {
                connects: sum.connects + cpu.connects,
                datagrams: sum.datagrams + cpu.datagrams,
                local_skips: sum.local_skips + cpu.local_skips,
                binds: sum.binds + cpu.binds,
            }))
    }
}
