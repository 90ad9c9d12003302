//! What a connect hook's reverse path costs, design by design: each
//! program of `bench/ebpf` alone at connect4 (and the release hook, for
//! the design that deletes) of a cgroup of its own, empty programs
//! beside it, under UDP connects of a process that holds some live
//! sockets. Each design's net ns per run and the memory it holds for the
//! live sockets put netbpf's way (socket storage) beside a preallocated
//! hash and the peer's way (Cilium's LRU).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, Lines, Write as _},
    net::{Ipv4Addr, UdpSocket},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
    process::ChildStdout,
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr},
};
use netbpf_common::{AF_INET, CgroupForward, CgroupPort, ForwardTarget, PROTO_UDP, names::program};
use netbpf_testenv::{Cgroup, Netns, Spawn};
use serde::{Deserialize, Serialize};

use crate::{
    load,
    programs::{self, BpfStats, Cost, EmptyPrograms},
    rounds::{Figure, Symptoms},
    stats::Better,
};

static DESIGNS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/designs"));

/// A way to remember what a socket dialed, or a part of what netbpf's
/// programs pay: finding a socket's scope, finding no storage, a rewrite
/// at its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Design {
    /// The socket's own storage (`bpf_sk_storage_get` with
    /// `BPF_SK_STORAGE_GET_F_CREATE`): netbpf's.
    SocketStorage,
    /// A hash by socket cookie, preallocated, deleted on release.
    CookieHash,
    /// An LRU by (cookie, destination): Cilium's `cilium_lb4_reverse_sk`.
    FlowLru,
    /// A part: the helper naming the task's cgroup.
    CgroupHelper,
    /// A part: a lookup that misses in a hash the size of the scopes'.
    HashMiss,
    /// Both parts: finding no scope.
    NoScope,
    /// A part: a lookup of a socket's storage that finds none, at connect4
    /// and at the release hook.
    StorageMiss,
    /// A rewrite at its floor: the helper, a hash lookup that finds the
    /// forward, the destination rewritten.
    RewriteFloor,
}

impl Design {
    pub const ALL: [Self; 8] = [
        Self::SocketStorage,
        Self::CookieHash,
        Self::FlowLru,
        Self::CgroupHelper,
        Self::HashMiss,
        Self::NoScope,
        Self::StorageMiss,
        Self::RewriteFloor,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::SocketStorage => "socket storage (netbpf's)",
            Self::CookieHash => "hash by socket cookie, preallocated, deleted on release",
            Self::FlowLru => "LRU by (cookie, destination): Cilium's `cilium_lb4_reverse_sk`",
            Self::CgroupHelper => {
                "the task's cgroup at one depth (`bpf_get_current_ancestor_cgroup_id`)"
            }
            Self::HashMiss => "a lookup that misses in a hash the size of the scopes' map",
            Self::NoScope => "finding no scope: both of the above, as netbpf's scope lookup does",
            Self::StorageMiss => {
                "a socket's storage looked up and not found (`bpf_sk_storage_get` without creating)"
            }
            Self::RewriteFloor => {
                "a rewrite at its floor: the task's cgroup, a lookup that finds the forward by cgroup and port, the destination rewritten"
            }
        }
    }

    /// Whether it is a part of what netbpf's programs pay, not a design: measured
    /// with the fewest live sockets only (it keeps nothing per socket).
    pub fn is_part(self) -> bool {
        matches!(
            self,
            Self::CgroupHelper
                | Self::HashMiss
                | Self::NoScope
                | Self::StorageMiss
                | Self::RewriteFloor
        )
    }

    /// Its preallocated table, if it has one.
    fn table(self) -> Option<&'static str> {
        match self {
            Self::CookieHash => Some("BY_COOKIE"),
            Self::FlowLru => Some("BY_FLOW"),
            Self::SocketStorage
            | Self::CgroupHelper
            | Self::HashMiss
            | Self::NoScope
            | Self::StorageMiss
            | Self::RewriteFloor => None,
        }
    }

    /// Its program at connect4, and at the release hook if it has one.
    fn programs(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::SocketStorage => ("remember_in_storage", None),
            Self::CookieHash => ("remember_by_cookie", Some("forget_by_cookie")),
            Self::FlowLru => ("remember_by_flow", None),
            Self::CgroupHelper => ("find_cgroup", None),
            Self::HashMiss => ("miss_in_hash", None),
            Self::NoScope => ("find_no_scope", None),
            Self::StorageMiss => ("miss_in_storage", Some("miss_in_storage_at_release")),
            Self::RewriteFloor => ("rewrite_at_floor", None),
        }
    }
}

/// One measurement of a design with some live sockets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DesignCost {
    /// Its program at connect4.
    pub connect: Cost,
    /// Its program at the release hook, if it has one.
    pub release: Option<Cost>,
    /// What it held with the live sockets: its map's memory and what the
    /// sockets' storage was charged (`SO_MEMINFO`'s option memory).
    pub bytes: u64,
}

impl Symptoms for DesignCost {}

/// Rounds of each design, by design and live sockets.
pub type DesignRounds = BTreeMap<Design, BTreeMap<usize, Vec<DesignCost>>>;

/// Where a stall of a design's runs shows: the time per run of either of
/// its programs, or of the least empty one beside it (a design without a
/// release program shows 0 there, never a stall).
pub const FIGURES: [Figure<DesignCost>; 4] = [
    Figure {
        name: "ns per run at connect4",
        better: Better::Lower,
        of: |cost| cost.connect.ns_per_run,
    },
    Figure {
        name: "ns per run of the least empty program at connect4",
        better: Better::Lower,
        of: |cost| cost.connect.empty_ns_per_run,
    },
    Figure {
        name: "ns per run at release",
        better: Better::Lower,
        of: |cost| cost.release.map_or(0.0, |release| release.ns_per_run),
    },
    Figure {
        name: "ns per run of the least empty program at release",
        better: Better::Lower,
        of: |cost| cost.release.map_or(0.0, |release| release.empty_ns_per_run),
    },
];

/// What the designs are measured in: a network namespace and a cgroup of
/// their own, empty programs beside them, the kernel's statistics on.
pub struct Bench {
    netns: Netns,
    cgroup: Cgroup,
    empty: EmptyPrograms,
    _stats: BpfStats,
    log: tempfile::NamedTempFile,
}

impl Bench {
    pub fn new() -> anyhow::Result<Self> {
        let netns = Netns::new("nbd")?;
        let cgroup =
            Cgroup::new_test_root(&format!("netbpf-bench-designs-{}", std::process::id()))?;
        let empty = EmptyPrograms::attach(cgroup.path())?;
        Ok(Self {
            netns,
            cgroup,
            empty,
            _stats: BpfStats::enable()?,
            log: tempfile::NamedTempFile::new()?,
        })
    }

    /// Round `round` (numbered as in the run) of every design with each of
    /// `live` live sockets (the parts with the fewest only), the designs
    /// taking turns; `connects` timed connects each.
    pub fn round(
        &self,
        exe: &str,
        live: &[usize],
        connects: usize,
        round: usize,
        step: &dyn Fn(String) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<((Design, usize), DesignCost)>> {
        let netns_path = self.netns.path();
        let mut measured = Vec::new();
        for (index, &sockets) in live.iter().enumerate() {
            for design in Design::ALL
                .into_iter()
                .filter(|d| index == 0 || !d.is_part())
            {
                step(format!(
                    "the reverse path's designs, round {round}: {} with {sockets} live sockets",
                    design.label()
                ))?;
                let client = Spawn::new(
                    self.cgroup.path(),
                    Some(netns_path.as_path()),
                    exe,
                    ["design-client", &sockets.to_string(), &connects.to_string()],
                )?;
                let cost = measure_one(design, &self.cgroup, &self.empty, client, self.log.path())
                    .with_context(|| format!("{} with {sockets} live sockets", design.label()))?;
                measured.push(((design, sockets), cost));
            }
        }
        Ok(measured)
    }
}

/// How a stalled round names a design and its live sockets.
pub fn stall_label((design, live): (Design, usize)) -> String {
    format!("{}, {live} live sockets", design.label())
}

/// Rounds by (design, live sockets), as [`DesignRounds`].
pub fn by_design(rounds: BTreeMap<(Design, usize), Vec<DesignCost>>) -> DesignRounds {
    let mut designs = DesignRounds::new();
    for ((design, live), costs) in rounds {
        designs.entry(design).or_default().insert(live, costs);
    }
    designs
}

/// `design` attached to `cgroup` while `client` holds its live sockets and
/// makes its timed connects there.
fn measure_one(
    design: Design,
    cgroup: &Cgroup,
    empty: &EmptyPrograms,
    client: Spawn,
    log: &Path,
) -> anyhow::Result<DesignCost> {
    // Loaded afresh each time: its maps start empty. The other designs'
    // tables are made as small as can be.
    let mut loader = EbpfLoader::new();
    for other in Design::ALL {
        if other != design
            && let Some(table) = other.table()
        {
            loader.map_max_entries(table, 1);
        }
    }
    let mut object = loader
        .load(DESIGNS_OBJECT)
        .context("loading the designs' object")?;
    if design == Design::RewriteFloor {
        write_floor_forward(&mut object, cgroup)?;
    }
    let directory = File::open(cgroup.path())?;
    let (connect, release) = design.programs();
    let mut ids = BTreeMap::new();
    let remember: &mut CgroupSockAddr = object
        .program_mut(connect)
        .with_context(|| format!("no program {connect}"))?
        .try_into()?;
    remember.load()?;
    remember.attach(&directory, CgroupAttachMode::Single)?;
    ids.insert(
        program::CONNECT4.to_owned(),
        u64::from(remember.info()?.id()),
    );
    if let Some(release) = release {
        let forget: &mut CgroupSock = object
            .program_mut(release)
            .with_context(|| format!("no program {release}"))?
            .try_into()?;
        forget.load()?;
        forget.attach(&directory, CgroupAttachMode::Single)?;
        ids.insert(program::RELEASE.to_owned(), u64::from(forget.info()?.id()));
    }

    let (_process, mut input, output) = client.start_piped(log)?;
    let mut lines = BufReader::new(output).lines();
    let ready = expect_line(&mut lines, log)?;
    anyhow::ensure!(ready == "ready", "the design client said {ready:?}");
    let before = programs::counts()?;
    writeln!(input, "go")?;
    let report: ClientReport = serde_json::from_str(&expect_line(&mut lines, log)?)?;
    let after = programs::counts()?;
    let map_bytes = programs::maps_memory(ids.values().copied(), None)?;
    writeln!(input, "end")?;

    let mut costs = programs::costs(&ids, empty, &before, &after);
    let connect = costs
        .remove(program::CONNECT4)
        .with_context(|| format!("{connect} did not run"))?;
    Ok(DesignCost {
        connect,
        release: costs.remove(program::RELEASE),
        bytes: map_bytes + report.storage_bytes,
    })
}

/// The forward the rewrite at its floor finds: the client's port of
/// `cgroup` (a cgroup at the parts' depth, 1) to where it goes anyway.
fn write_floor_forward(object: &mut Ebpf, cgroup: &Cgroup) -> anyhow::Result<()> {
    let mut forwards: HashMap<_, CgroupPort, CgroupForward> = object
        .map_mut("FORWARDS_BY_CGROUP")
        .context("no map FORWARDS_BY_CGROUP")?
        .try_into()?;
    let id = std::fs::metadata(cgroup.path())?.ino();
    let forward = CgroupForward {
        target: ForwardTarget {
            addr: [u32::from(Ipv4Addr::LOCALHOST).to_be(), 0, 0, 0],
            family: AF_INET,
            port_delta: 0,
            rule: 0,
            flags: 0,
        },
        scope: 0,
    };
    forwards.insert(CgroupPort::new(id, DISCARD_PORT, PROTO_UDP), forward, 0)?;
    Ok(())
}

/// The client's next line; its error output if it ended instead.
fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, log: &Path) -> anyhow::Result<String> {
    match lines.next() {
        Some(line) => Ok(line?),
        None => anyhow::bail!(
            "the design client ended: {}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        ),
    }
}

/// What the design client says after its timed connects.
#[derive(Debug, Serialize, Deserialize)]
struct ClientReport {
    /// The option memory (`SO_MEMINFO`) its live sockets were charged:
    /// the socket storage of the designs that keep some.
    storage_bytes: u64,
}

/// Where the client's sockets connect: a port of loopback in the
/// client's own network namespace. A UDP connect sends nothing.
const DISCARD_PORT: u16 = 9;

/// Live sockets one holder process keeps open: fewer than the open files
/// a process may have here (a hard limit of 20,000, which the bench cannot
/// raise: it runs without `CAP_SYS_RESOURCE`), and than the ports a
/// namespace hands out to one source address (32768–60999).
const SOCKETS_PER_HOLDER: usize = 15_000;

/// `design-client LIVE CONNECTS`: has holder processes open LIVE UDP
/// sockets, each connected, and keep them; says `ready` and waits for a
/// line; then connects CONNECTS more one after the other (each closed at
/// once), says how much option memory the live sockets were charged, and
/// waits for a line before it ends the holders and exits.
pub fn client(live: usize, connects: usize) -> anyhow::Result<()> {
    load::pin()?;
    let exe = std::env::current_exe()?;
    let mut holders = Vec::new();
    let mut storage_bytes = 0;
    for (index, start) in (0..live).step_by(SOCKETS_PER_HOLDER).enumerate() {
        let count = SOCKETS_PER_HOLDER.min(live - start);
        let mut holder = std::process::Command::new(&exe)
            .args(["design-holder", &index.to_string(), &count.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a holder of live sockets")?;
        let output = holder.stdout.take().context("the holder's output")?;
        let said = BufReader::new(output)
            .lines()
            .next()
            .context("a holder of live sockets ended")??;
        storage_bytes += said
            .strip_prefix("ready ")
            .and_then(|bytes| bytes.parse::<u64>().ok())
            .with_context(|| format!("a holder said {said:?}"))?;
        holders.push(holder);
    }
    let target = (Ipv4Addr::LOCALHOST, DISCARD_PORT);
    let mut stdin = std::io::stdin().lines();
    println!("ready");
    stdin.next().context("the bench said nothing")??;
    for _ in 0..connects {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.connect(target)?;
    }
    println!(
        "{}",
        serde_json::to_string(&ClientReport { storage_bytes })?
    );
    stdin.next().context("the bench said nothing")??;
    for mut holder in holders {
        // Its input closed, the holder closes its sockets and exits.
        drop(holder.stdin.take());
        holder.wait()?;
    }
    Ok(())
}

/// `design-holder INDEX COUNT`: opens COUNT UDP sockets bound to the
/// loopback address 127.0.0.(2 + INDEX), each connected; says `ready` and
/// the option memory they were charged (`SO_MEMINFO`); keeps them until
/// its input closes.
pub fn holder(index: u8, count: usize) -> anyhow::Result<()> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .context("raising the limit of open files to the hard limit")?;
    let source = Ipv4Addr::new(127, 0, 0, index.checked_add(2).context("too many holders")?);
    let held = (0..count)
        .map(|_| {
            let socket = UdpSocket::bind((source, 0))?;
            socket.connect((Ipv4Addr::LOCALHOST, DISCARD_PORT))?;
            Ok(socket)
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("opening the live sockets")?;
    let storage_bytes = held
        .iter()
        .map(option_memory)
        .sum::<anyhow::Result<u64>>()?;
    println!("ready {storage_bytes}");
    // Until the client closes its end.
    for line in std::io::stdin().lines() {
        line?;
    }
    drop(held);
    Ok(())
}

/// The option memory `socket` was charged (`SK_MEMINFO_OPTMEM`), which
/// socket storage is charged to.
fn option_memory(socket: &UdpSocket) -> anyhow::Result<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    let mut meminfo = [0u32; SK_MEMINFO_VARS];
    let mut length = libc::socklen_t::try_from(size_of_val(&meminfo))?;
    // SAFETY: the buffer and its length are valid for the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &raw mut length,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_MEMINFO)");
    }
    Ok(u64::from(
        meminfo[usize::try_from(libc::SK_MEMINFO_OPTMEM)?],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rounds;

    /// A design's round whose program at the release hook, or the empty
    /// one beside it, stalled is measured again; a design without a
    /// release program is never taken for stalled there.
    #[test]
    fn a_design_round_is_measured_again_when_a_release_program_stalled() {
        let cost = |ns_per_run, empty_ns_per_run| Cost {
            runs: 20_000,
            ns_per_run,
            empty_ns_per_run,
        };
        let design = |release| DesignCost {
            connect: cost(240.0, 30.0),
            release,
            bytes: 0,
        };
        let mut calls = 0;
        let mut reruns = Vec::new();
        rounds::measure(
            "the reverse path's designs",
            1..=5,
            stall_label,
            &FIGURES,
            &mut reruns,
            |round| {
                calls += 1;
                let first_time = calls <= 5;
                let forget = match round {
                    3 if first_time => cost(70.0, 150.0),
                    _ => cost(70.0, 30.0),
                };
                Ok(vec![
                    ((Design::CookieHash, 1), design(Some(forget))),
                    ((Design::SocketStorage, 1), design(None)),
                ])
            },
        )
        .unwrap();
        assert_eq!(calls, 6);
        let why: Vec<_> = reruns.iter().map(|rerun| rerun.why.as_str()).collect();
        assert_eq!(
            why,
            [
                "hash by socket cookie, preallocated, deleted on release, 1 live sockets: \
                 150 ns per run of the least empty program at release, median 30"
            ]
        );
    }
}
