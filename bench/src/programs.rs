//! What each of netbpf's programs costs per run, from the kernel's own
//! run-time statistics (`BPF_ENABLE_STATS`) minus the least of a few empty
//! programs at the same hook measured the same way; `BPF_PROG_TEST_RUN`
//! for the tc and `sk_lookup` programs; and the verifier's instruction
//! count of each.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use netbpf::{
    datapath::{Datapath, Optional, cgroup_hooks, sys},
    plan::Capacity,
};
use netbpf_common::{MssConfig, names::program};
use netbpf_testenv::{bpftool_json, packet::Segment};
use serde::{Deserialize, Serialize};

use crate::{
    stats::Summary,
    sys::{enable_run_time_stats, test_run},
};

/// The kernel's run-time statistics of programs, on while this lives: the
/// kernel turns them off again when its descriptor closes, also when the
/// bench dies.
pub struct BpfStats {
    _enabled: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let enabled = enable_run_time_stats()
            .context("turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS)")?;
        Ok(Self { _enabled: enabled })
    }
}

/// The programs the bench's IPv4 clients exercise; an empty program goes
/// beside each, at its hook.
const MEASURED: [&str; 6] = [
    program::CONNECT4,
    program::GETPEER4,
    program::SENDMSG4,
    program::RECVMSG4,
    program::BOUND4,
    program::RELEASE,
];

/// Empty programs at each hook. One right after netbpf's program at
/// connect4, getpeername or recvmsg took up to 12 ns per run more than
/// the ones after it, in some loads and not in others: beside a single
/// one, a net cost moved by that much from one run to the next. The least
/// of them is what running a program at the hook costs.
const EMPTY_PER_HOOK: usize = 3;

/// [`EMPTY_PER_HOOK`] empty programs at the hook of each of [`MEASURED`],
/// attached to a cgroup beside netbpf's; detached when dropped.
pub struct EmptyPrograms {
    /// netbpf's program at the hook -> the empty ones' kernel ids.
    ids: BTreeMap<&'static str, Vec<u64>>,
    _links: Vec<OwnedFd>,
}

impl EmptyPrograms {
    pub fn attach(cgroup: &Path) -> anyhow::Result<Self> {
        let directory =
            File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut names = BTreeMap::new();
        let mut links = Vec::new();
        let hooks = cgroup_hooks().filter(|hook| MEASURED.contains(&hook.program));
        for (index, hook) in hooks.enumerate() {
            let (program, attach_type) = (hook.program, hook.attach_type as u32);
            let mut hook_names = Vec::new();
            for copy in 0..EMPTY_PER_HOOK {
                let name = format!("nb_empty_{index}_{copy}");
                let fd = sys::load_trivial(&name, hook.prog_type(), attach_type)
                    .with_context(|| format!("loading an empty program beside {program}"))?;
                links.push(
                    sys::link_create(fd.as_fd(), directory.as_fd(), attach_type)
                        .with_context(|| format!("attaching an empty program beside {program}"))?,
                );
                hook_names.push(name);
            }
            names.insert(program, hook_names);
        }
        let loaded = loaded_program_ids()?;
        let ids = names
            .into_iter()
            .map(|(program, names)| {
                let ids = names
                    .iter()
                    .map(|name| {
                        loaded
                            .get(name)
                            .copied()
                            .with_context(|| format!("no program {name} is loaded"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok((program, ids))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { ids, _links: links })
    }
}

/// The id of each loaded program by name, the newest of a name's.
fn loaded_program_ids() -> anyhow::Result<BTreeMap<String, u64>> {
    let mut ids = BTreeMap::new();
    for program in bpftool_json(&["prog", "show"])?
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(name), Some(id)) = (program["name"].as_str(), program["id"].as_u64()) {
            let newest = ids.entry(name.to_owned()).or_insert(id);
            *newest = (*newest).max(id);
        }
    }
    Ok(ids)
}

/// Memory of the maps the programs `ids` use and of those pinned in
/// `pinned` (an agent's maps directory, which also holds the maps the
/// agent alone uses), from the kernel (`bytes_memlock`), each map counted
/// once.
pub fn maps_memory(
    ids: impl IntoIterator<Item = u64>,
    pinned: Option<&Path>,
) -> anyhow::Result<u64> {
    let mut maps = std::collections::BTreeSet::new();
    for entry in pinned
        .map(std::fs::read_dir)
        .transpose()?
        .into_iter()
        .flatten()
    {
        let path = entry?.path();
        let path = path.to_str().context("a pin's path is UTF-8")?;
        let map = bpftool_json(&["map", "show", "pinned", path])?;
        maps.extend(map["id"].as_u64());
    }
    for id in ids {
        let program = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        maps.extend(
            program["map_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
    }
    let mut bytes = 0;
    for id in maps {
        let map = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        bytes += map["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(bytes)
}

/// Runs and time spent of programs, by id.
pub type Counts = BTreeMap<u64, (u64, u64)>;

/// The kernel's run count and run time of every loaded program.
pub fn counts() -> anyhow::Result<Counts> {
    Ok(bpftool_json(&["prog", "show"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|program| {
            Some((
                program["id"].as_u64()?,
                (
                    program["run_cnt"].as_u64().unwrap_or(0),
                    program["run_time_ns"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// One program's cost over a stretch of load.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Cost {
    pub runs: u64,
    /// Kernel time per run of netbpf's program.
    pub ns_per_run: f64,
    /// Kernel time per run of the empty programs at the same hook: the
    /// least of them.
    pub empty_ns_per_run: f64,
}

impl Cost {
    /// What netbpf's program adds to an empty one.
    #[must_use]
    pub fn net(&self) -> f64 {
        (self.ns_per_run - self.empty_ns_per_run).max(0.0)
    }
}

/// The cost of each of netbpf's programs (`programs`: name -> id) between
/// `before` and `after`; programs that did not run are absent.
pub fn costs(
    programs: &BTreeMap<String, u64>,
    empty: &EmptyPrograms,
    before: &Counts,
    after: &Counts,
) -> BTreeMap<&'static str, Cost> {
    let delta = |id: u64| {
        let (runs_before, time_before) = before.get(&id).copied().unwrap_or_default();
        let (runs, time) = after.get(&id).copied().unwrap_or_default();
        (runs - runs_before, time - time_before)
    };
    let per_run = |(runs, time): (u64, u64)| {
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let value = time as f64 / runs as f64;
        value
    };
    let mut costs = BTreeMap::new();
    for (&name, empty_ids) in &empty.ids {
        let Some(&id) = programs.get(name) else {
            continue;
        };
        let (runs, time) = delta(id);
        if runs == 0 {
            continue;
        }
        let Some(empty_ns_per_run) = empty_ids
            .iter()
            .map(|&empty_id| delta(empty_id))
            .filter(|&(runs, _)| runs > 0)
            .map(per_run)
            .reduce(f64::min)
        else {
            continue;
        };
        costs.insert(
            name,
            Cost {
                runs,
                ns_per_run: per_run((runs, time)),
                empty_ns_per_run,
            },
        );
    }
    costs
}

/// Each program's cost over a round measured in `slices`, each slice a
/// stretch of the round's load with counts of its own: its median slice's
/// time per run, and the empty programs' median slice, so that a burst of
/// the machine's neighbours within one slice moves neither; the runs of
/// every slice. A program absent from a slice (it did not run) is left out
/// of that slice only.
pub fn median_over(slices: &[BTreeMap<&'static str, Cost>]) -> BTreeMap<&'static str, Cost> {
    let mut by_program: BTreeMap<&'static str, Vec<Cost>> = BTreeMap::new();
    for slice in slices {
        for (&name, &cost) in slice {
            by_program.entry(name).or_default().push(cost);
        }
    }
    by_program
        .into_iter()
        .map(|(name, costs)| {
            let median = |of: fn(&Cost) -> f64| {
                Summary::of(&costs.iter().map(of).collect::<Vec<_>>()).median
            };
            let cost = Cost {
                runs: costs.iter().map(|cost| cost.runs).sum(),
                ns_per_run: median(|cost| cost.ns_per_run),
                empty_ns_per_run: median(|cost| cost.empty_ns_per_run),
            };
            (name, cost)
        })
        .collect()
}

/// One `BPF_PROG_TEST_RUN` case: netbpf's program and an empty one of the
/// same type on the same input, in ns per run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TestRun {
    pub ns_per_run: f64,
    pub empty_ns_per_run: f64,
}

impl TestRun {
    /// What netbpf's program adds to an empty one.
    #[must_use]
    pub fn net(&self) -> f64 {
        (self.ns_per_run - self.empty_ns_per_run).max(0.0)
    }
}

/// `BPF_PROG_TEST_RUN` times of the tc and `sk_lookup` programs, by case.
pub fn test_runs(repeat: u32) -> anyhow::Result<BTreeMap<String, TestRun>> {
    let mut datapath = Datapath::load(
        Optional {
            mss_egress: true,
            mss_ingress: false,
            host_services: true,
        },
        &Capacity::default(),
        None,
    )?;
    // BPF_PROG_TEST_RUN runs on the loopback device: ifindex 1.
    datapath.set_mss_interface(
        1,
        MssConfig {
            mss: 1200,
            l3_offset: 14,
            slot: 0,
        },
    )?;
    // The test runs repeat on one packet, so a clamp would rewrite only
    // the first: the SYN's MSS is at the clamp already, and every run walks
    // its options to the MSS and leaves it.
    let syn = frame(
        0x02,
        &[
            2, 4, 0x04, 0xb0, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ],
    );
    let ack = frame(0x10, &[]);
    let empty_tc = sys::load_trivial(
        "nb_empty_tc",
        bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32,
        0,
    )?;
    let empty_lookup = sys::load_trivial(
        "nb_empty_lookup",
        bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP as u32,
        bpf_attach_type::BPF_SK_LOOKUP as u32,
    )?;
    let mut results = BTreeMap::new();
    let mut time = |name: &str, program: &'static str, data: &[u8], context: &[u8]| {
        let run = |fd: std::os::fd::BorrowedFd<'_>| {
            test_run(fd, data, context, repeat)
                .map(f64::from)
                .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))
        };
        let empty = if context.is_empty() {
            &empty_tc
        } else {
            &empty_lookup
        };
        let empty_ns_per_run = run(empty.as_fd())?;
        let ns_per_run = run(datapath.program_fd(program)?.as_fd())?;
        results.insert(
            name.to_owned(),
            TestRun {
                ns_per_run,
                empty_ns_per_run,
            },
        );
        anyhow::Ok(())
    };
    time(
        "netbpf_mss_out: SYN with options (MSS at the clamp)",
        program::MSS_OUT,
        &syn,
        &[],
    )?;
    time(
        "netbpf_mss_out: not a SYN (fast path)",
        program::MSS_OUT,
        &ack,
        &[],
    )?;
    time(
        "netbpf_grant_guard: not for a host service",
        program::GRANT_GUARD,
        &ack,
        &[],
    )?;
    time(
        "netbpf_hostsvc: not for a host service",
        program::HOST_SERVICE,
        &[],
        &sk_lookup_context(),
    )?;
    Ok(results)
}

/// An Ethernet frame of a TCP segment with `flags` and `options`.
fn frame(flags: u8, options: &[u8]) -> Vec<u8> {
    Segment {
        src: IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 200, 1, 1)),
        src_port: 40_000,
        dst_port: 443,
        flags,
        options: options.to_vec(),
        payload: Vec::new(),
    }
    .frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

/// A `struct bpf_sk_lookup` of a TCP connection from 10.200.1.2:40000 to
/// 10.200.1.1:443, which no host service takes.
fn sk_lookup_context() -> Vec<u8> {
    let mut context = vec![0u8; 72];
    let mut put = |offset: usize, value: u32| {
        context[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    };
    put(8, u32::from(netbpf_common::AF_INET));
    put(12, u32::from(netbpf_common::PROTO_TCP));
    put(16, u32::from_be_bytes([10, 200, 1, 2]).to_be());
    put(36, u32::from(40_000u16.to_be()));
    put(40, u32::from_be_bytes([10, 200, 1, 1]).to_be());
    put(60, 443);
    context
}

/// Instructions the verifier processed for each program netbpf loads.
pub fn verifier_counts() -> anyhow::Result<BTreeMap<String, u64>> {
    let datapath = Datapath::load(
        Optional {
            mss_egress: true,
            mss_ingress: true,
            host_services: true,
        },
        &Capacity::default(),
        None,
    )?;
    datapath
        .programs()
        .iter()
        .map(|program| {
            let count = program.verified_instructions.with_context(|| {
                format!(
                    "the kernel reports no verified instruction count for {}",
                    program.name
                )
            })?;
            Ok((program.name.clone(), u64::from(count)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(ns_per_run: f64, empty_ns_per_run: f64) -> Cost {
        Cost {
            runs: 100,
            ns_per_run,
            empty_ns_per_run,
        }
    }

    #[test]
    fn a_burst_in_one_slice_moves_neither_median_and_every_slice_counts_its_runs() {
        let slices = [
            BTreeMap::from([
                ("connect4", cost(90.0, 52.0)),
                ("release", cost(70.0, 50.0)),
            ]),
            BTreeMap::from([
                ("connect4", cost(151.0, 53.0)),
                ("release", cost(71.0, 50.0)),
            ]),
            BTreeMap::from([("connect4", cost(88.0, 70.0))]),
        ];
        let round = median_over(&slices);
        let connect = round["connect4"];
        assert_eq!(
            (connect.runs, connect.ns_per_run, connect.empty_ns_per_run),
            (300, 90.0, 53.0)
        );
        let release = round["release"];
        assert_eq!((release.runs, release.ns_per_run), (200, 70.5));
    }
}
