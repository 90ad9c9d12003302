//! Loads netbpf's kernel programs, fills their maps from a plan, attaches
//! them to a cgroup through bpf links and reads their counters. Dropping a
//! [`Datapath`] detaches and unloads everything it loaded.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, LpmTrie, MapError, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, Program, ProgramError},
};
use netbpf_common::{ForwardKey, ForwardTarget, LocalBindKey, RuleStats};

use crate::{existing_binds::BoundSocket, plan::Plan};

/// The kernel programs, built by `build.rs` for `bpfel-unknown-none`.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbpf"));

/// `BPF_NOEXIST`: a map update that only creates, never replaces.
const BPF_NOEXIST: u64 = 1;

/// Prefix of every program netbpf loads, so its attachments can be told
/// from anybody else's (`bpftool cgroup tree`).
pub const PROGRAM_PREFIX: &str = "netbpf_";

/// The programs that track binds inside scopes, attached first: the
/// release hook before the bind hooks, so no counted bind outlives its
/// socket. Binds made before they attach are then found and counted.
const TRACKING_PROGRAMS: &[&str] = &["netbpf_release", "netbpf_bound4", "netbpf_bound6"];

/// The programs that rewrite addresses, attached once every local bind is
/// counted: the reverse paths before connect and sendmsg, so no rewritten
/// socket misses the translation of its replies.
const REWRITING_PROGRAMS: &[&str] = &[
    "netbpf_recvmsg4",
    "netbpf_recvmsg6",
    "netbpf_getpeer4",
    "netbpf_getpeer6",
    "netbpf_connect4",
    "netbpf_connect6",
    "netbpf_sendmsg4",
    "netbpf_sendmsg6",
];

/// Why the datapath could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading netbpf's eBPF object")]
    Object(#[source] Box<EbpfError>),
    #[error("loading program {name} into the kernel")]
    Load {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching program {name} to cgroup {}", cgroup.display())]
    Attach {
        name: String,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("opening cgroup {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("netbpf's eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("netbpf's eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {0} of netbpf's eBPF object has no place in the attach order")]
    UnorderedProgram(String),
}

/// A program of the datapath, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedProgram {
    pub name: String,
    /// The kernel's id of the program (`bpftool prog show id ID`).
    pub id: u32,
}

/// netbpf's programs and maps, loaded into the kernel.
pub struct Datapath {
    ebpf: Ebpf,
    programs: Vec<LoadedProgram>,
}

impl Datapath {
    /// Loads every program into the kernel (the verifier runs here), with
    /// empty maps and nothing attached.
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf =
            Ebpf::load(PROGRAMS_OBJECT).map_err(|error| DatapathError::Object(Box::new(error)))?;
        let mut programs = Vec::new();
        for (name, program) in ebpf.programs_mut() {
            if !TRACKING_PROGRAMS.contains(&name) && !REWRITING_PROGRAMS.contains(&name) {
                return Err(DatapathError::UnorderedProgram(name.to_owned()));
            }
            let load = |error| DatapathError::Load {
                name: name.to_owned(),
                source: Box::new(error),
            };
            match program {
                Program::CgroupSockAddr(program) => program.load(),
                Program::CgroupSock(program) => program.load(),
                other => unreachable!("netbpf has no {:?} program", other.prog_type()),
            }
            .map_err(load)?;
            let id = program.info().map_err(load)?.id();
            programs.push(LoadedProgram {
                name: name.to_owned(),
                id,
            });
        }
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { ebpf, programs })
    }

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
        let mut bound: HashMap<_, u64, LocalBindKey> = self.map_mut("BOUND_SOCKETS")?;
        let mut new = Vec::new();
        for socket in sockets {
            match bound.insert(socket.cookie, socket.key, BPF_NOEXIST) {
                Ok(()) => new.push(socket.key),
                Err(MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(error) => return Err(map_error("BOUND_SOCKETS")(error)),
            }
        }
        let mut counts: HashMap<_, LocalBindKey, u32> = self.map_mut("LOCAL_BINDS")?;
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

    /// The loaded programs, by name.
    #[must_use]
    pub fn programs(&self) -> &[LoadedProgram] {
        &self.programs
    }

    /// The counters of rule `rule`, summed over CPUs.
    pub fn rule_stats(&self, rule: u32) -> Result<RuleStats, DatapathError> {
        const NAME: &str = "RULE_STATS";
        let map = self.ebpf.map(NAME).ok_or(DatapathError::MissingMap(NAME))?;
        let stats: PerCpuArray<_, RuleStats> =
            PerCpuArray::try_from(map).map_err(map_error(NAME))?;
        let per_cpu = stats.get(&rule, 0).map_err(map_error(NAME))?;
        Ok(per_cpu
            .iter()
            .fold(RuleStats::default(), |sum, cpu| RuleStats {
                connects: sum.connects + cpu.connects,
                datagrams: sum.datagrams + cpu.datagrams,
                local_skips: sum.local_skips + cpu.local_skips,
            }))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        T::try_from(map).map_err(map_error(name))
    }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}
