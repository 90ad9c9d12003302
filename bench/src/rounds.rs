//! Rounds of a measurement: every way measured once per round, in turn.
//! A round in which some way stalled (its figure worse than that way's
//! median by more than [`STALL_FACTOR`]) is measured again, whole, so
//! that round-by-round ratios never pair a stalled side with a normal
//! one; the page says which rounds were measured again, what the stalled
//! side showed (its lost packets), and what else had the CPUs meanwhile:
//! the hypervisor's other machines (steal) and this machine's busiest
//! processes.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Display,
};

use anyhow::Context as _;
use procfs::CurrentSI as _;
use serde::{Deserialize, Serialize};

use crate::{
    load::Measurement,
    programs::Cost,
    stats::{Better, Summary, stalled},
};

/// How much worse than its way's median a figure may be before its round
/// counts as stalled. The ordinary spread of this machine's rounds is
/// within ±20%; the stalls seen were 25 times slower.
pub const STALL_FACTOR: f64 = 1.5;

/// How many times one measurement's stalled rounds are measured again.
const MAX_RERUNS: usize = 3;

/// How many of the busiest processes a stalled round names.
const BUSIEST: usize = 3;

/// A figure of a way's measurement that a stall shows in.
pub struct Figure<V> {
    pub name: &'static str,
    pub better: Better,
    pub of: fn(&V) -> f64,
}

/// What a measured value itself shows of a stall, beyond its figures.
pub trait Symptoms {
    /// "12 TCP retransmits", or nothing.
    fn symptoms(&self) -> Option<String> {
        None
    }
}

impl Symptoms for f64 {}

impl Symptoms for Cost {}

impl Symptoms for Measurement {
    fn symptoms(&self) -> Option<String> {
        (self.retransmits > 0).then(|| format!("{} TCP retransmits", self.retransmits))
    }
}

/// A round measured again, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rerun {
    /// What was measured: "TCP connections".
    pub measurement: String,
    /// Which round (from 1).
    pub round: usize,
    /// The figure that stalled, and its symptoms: "netbpf: 215
    /// connections/s, median 7100; 3 TCP retransmits".
    pub why: String,
    /// The share of CPU time the hypervisor gave to others (steal) during
    /// the stalled round, and during that measurement's rounds at large
    /// (median), in percent.
    pub steal_percent: f64,
    pub usual_steal_percent: f64,
    /// The processes that used the most of the machine's CPU time during
    /// the stalled round: "netbpf-bench 31%, ksoftirqd/1 4%".
    #[serde(default)]
    pub busiest: String,
}

/// One measured round: each way's measurement, and the CPU's use.
struct Round<K, V> {
    by_way: Vec<(K, V)>,
    cpu: CpuUse,
}

/// `items` in the order round `round` (from 1) takes them: each starts
/// a round in turn, so that a bias of the position in a round (first
/// after a pause, or right after another way's load) falls on every way
/// alike.
pub fn in_turn<T>(items: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = round
        .saturating_sub(1)
        .checked_rem(items.len())
        .unwrap_or(0);
    items[start..].iter().chain(&items[..start])
}

/// `runs` runs of `each` over `items`, the items taking turns run by run,
/// each turn starting from the next item, so that none always runs first
/// or after the same one, and a slow stretch of this VM falls on every
/// item alike; each item's results, in `items`' order.
pub fn in_turns<T, R>(
    items: &[T],
    runs: usize,
    mut each: impl FnMut(&T) -> anyhow::Result<R>,
) -> anyhow::Result<Vec<Vec<R>>> {
    let mut results: Vec<Vec<R>> = items.iter().map(|_| Vec::with_capacity(runs)).collect();
    let indices: Vec<usize> = (0..items.len()).collect();
    for run in 1..=runs {
        for &index in in_turn(&indices, run) {
            results[index].push(each(&items[index])?);
        }
    }
    Ok(results)
}

/// The rounds `numbers` of `measure_round` (which measures every way
/// once, in turn, given the round's number, from 1 in a run), stalled
/// rounds measured again up to [`MAX_RERUNS`] times; each way's
/// measurements in round order.
pub fn measure<K: Ord + Copy, V: Symptoms, L: Display>(
    what: &str,
    numbers: std::ops::RangeInclusive<usize>,
    label: impl Fn(K) -> L,
    figures: &[Figure<V>],
    reruns: &mut Vec<Rerun>,
    mut measure_round: impl FnMut(usize) -> anyhow::Result<Vec<(K, V)>>,
) -> anyhow::Result<BTreeMap<K, Vec<V>>> {
    let mut timed = |round: usize| -> anyhow::Result<Round<K, V>> {
        let before = CpuSnapshot::take()?;
        let by_way = measure_round(round)?;
        Ok(Round {
            by_way,
            cpu: CpuSnapshot::take()?.since(&before),
        })
    };
    let first = *numbers.start();
    let mut rounds = numbers
        .map(&mut timed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..MAX_RERUNS {
        let stalls = stalls(&rounds, &label, figures);
        if stalls.is_empty() {
            break;
        }
        let usual_steal = Summary::of(
            &rounds
                .iter()
                .map(|round| round.cpu.steal_percent)
                .collect::<Vec<_>>(),
        )
        .median;
        for (index, why) in stalls {
            reruns.push(Rerun {
                measurement: what.to_owned(),
                round: first + index,
                why,
                steal_percent: rounds[index].cpu.steal_percent,
                usual_steal_percent: usual_steal,
                busiest: rounds[index].cpu.busiest.clone(),
            });
            rounds[index] = timed(first + index)?;
        }
    }
    let mut by_way: BTreeMap<K, Vec<V>> = BTreeMap::new();
    for round in rounds {
        for (way, value) in round.by_way {
            by_way.entry(way).or_default().push(value);
        }
    }
    Ok(by_way)
}

/// The rounds (indices) in which some way's figure stalled, each with the
/// first stall found in it.
fn stalls<K: Ord + Copy, V: Symptoms, L: Display>(
    rounds: &[Round<K, V>],
    label: &impl Fn(K) -> L,
    figures: &[Figure<V>],
) -> BTreeMap<usize, String> {
    let mut ways: BTreeMap<K, Vec<&V>> = BTreeMap::new();
    for round in rounds {
        for (way, value) in &round.by_way {
            ways.entry(*way).or_default().push(value);
        }
    }
    let mut found = BTreeMap::new();
    for (way, values) in ways {
        for figure in figures {
            let series: Vec<f64> = values.iter().map(|value| (figure.of)(value)).collect();
            let median = Summary::of(&series).median;
            for index in stalled(&series, figure.better, STALL_FACTOR) {
                found.entry(index).or_insert_with(|| {
                    let mut why = format!(
                        "{}: {:.0} {}, median {median:.0}",
                        label(way),
                        series[index],
                        figure.name
                    );
                    if let Some(symptoms) = values[index].symptoms() {
                        why = format!("{why}; {symptoms}");
                    }
                    why
                });
            }
        }
    }
    found
}

/// What a process does, for the page: its name, and its first argument
/// when that is a word (the bench's own processes are one binary, told
/// apart by their subcommand: `netbpf-bench tcp-server`).
fn role(comm: &str, cmdline: &[String]) -> String {
    match cmdline.get(1) {
        Some(argument)
            if !argument.starts_with('-')
                && argument
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            format!("{comm} {argument}")
        }
        _ => comm.to_owned(),
    }
}

/// What the CPUs did between two snapshots.
struct CpuUse {
    /// The share of CPU time the hypervisor gave to other machines.
    steal_percent: f64,
    /// The [`BUSIEST`] processes, with their share of the machine's time.
    busiest: String,
}

/// The CPU time used so far, in clock ticks: the whole machine's, from
/// `/proc/stat`, and each process's, from `/proc/PID/stat`.
struct CpuSnapshot {
    steal: u64,
    total: u64,
    /// By pid: what the process does ([`role`]) and its user and system
    /// time.
    processes: HashMap<i32, (String, u64)>,
}

impl CpuSnapshot {
    fn take() -> anyhow::Result<Self> {
        let cpu = procfs::KernelStats::current()
            .context("reading /proc/stat")?
            .total;
        let steal = cpu.steal.unwrap_or_default();
        // guest and guest_nice are counted in user and nice already.
        let total = [cpu.iowait, cpu.irq, cpu.softirq]
            .into_iter()
            .flatten()
            .sum::<u64>()
            + cpu.user
            + cpu.nice
            + cpu.system
            + cpu.idle
            + steal;
        // A process that ends while /proc is walked is left out.
        let processes = procfs::process::all_processes()
            .context("listing /proc")?
            .filter_map(|process| {
                let process = process.ok()?;
                let stat = process.stat().ok()?;
                let name = role(&stat.comm, &process.cmdline().unwrap_or_default());
                Some((stat.pid, (name, stat.utime + stat.stime)))
            })
            .collect();
        Ok(Self {
            steal,
            total,
            processes,
        })
    }

    /// What the CPUs did from `before` to this snapshot.
    fn since(&self, before: &Self) -> CpuUse {
        let total = self.total.saturating_sub(before.total);
        #[expect(
            clippy::cast_precision_loss,
            reason = "tick counts of one round are far below 2^52"
        )]
        let percent = |ticks: u64| {
            if total == 0 {
                0.0
            } else {
                ticks as f64 * 100.0 / total as f64
            }
        };
        let mut by_role: HashMap<&str, u64> = HashMap::new();
        for (pid, (name, ticks)) in &self.processes {
            let earlier = match before.processes.get(pid) {
                Some((earlier_name, earlier)) if earlier_name == name => *earlier,
                Some(_) => continue,
                None => 0,
            };
            *by_role.entry(name).or_default() += ticks.saturating_sub(earlier);
        }
        let mut used: Vec<(&str, u64)> = by_role
            .into_iter()
            .filter(|(_, ticks)| *ticks > 0)
            .collect();
        used.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let busiest = used
            .iter()
            .take(BUSIEST)
            .map(|(name, ticks)| format!("{name} {:.0}%", percent(*ticks)))
            .collect::<Vec<_>>()
            .join(", ");
        CpuUse {
            steal_percent: percent(self.steal.saturating_sub(before.steal)),
            busiest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_starts_a_round_in_turn() {
        let ways = ["none", "netbpf", "iptables"];
        let order = |round| in_turn(&ways, round).copied().collect::<Vec<_>>();
        assert_eq!(order(1), ["none", "netbpf", "iptables"]);
        assert_eq!(order(2), ["netbpf", "iptables", "none"]);
        assert_eq!(order(3), ["iptables", "none", "netbpf"]);
        assert_eq!(order(4), order(1));
        assert_eq!(in_turn::<u8>(&[], 5).count(), 0);
    }

    #[test]
    fn runs_in_turns_start_from_the_next_item_each_time() {
        let mut order = Vec::new();
        let results = in_turns(&["a", "b", "c"], 4, |&item| {
            order.push(item);
            Ok(order.len())
        })
        .unwrap();
        assert_eq!(order.concat(), "abcbcacababc");
        // Each item's results, in the items' order.
        assert_eq!(
            results,
            [vec![1, 6, 8, 10], vec![2, 4, 9, 11], vec![3, 5, 7, 12]]
        );
    }

    fn snapshot(steal: u64, total: u64, processes: &[(i32, &str, u64)]) -> CpuSnapshot {
        CpuSnapshot {
            steal,
            total,
            processes: processes
                .iter()
                .map(|&(pid, name, ticks)| (pid, (name.to_owned(), ticks)))
                .collect(),
        }
    }

    /// The steal's share and the busiest processes of the time between
    /// two snapshots; a pid whose name changed is another process.
    #[test]
    fn names_what_used_the_cpus_between_two_snapshots() {
        let before = snapshot(
            50,
            1000,
            &[(1, "init", 10), (7, "rustc", 100), (9, "old", 5)],
        );
        let after = snapshot(
            200,
            2000,
            &[
                (1, "init", 20),
                (7, "rustc", 600),
                (9, "reused", 50),
                (12, "new", 20),
                (13, "new", 10),
            ],
        );
        let used = after.since(&before);
        assert!((used.steal_percent - 15.0).abs() < 1e-9);
        assert_eq!(used.busiest, "rustc 50%, new 3%, init 1%");
        assert!(CpuSnapshot::take().unwrap().total > 0);
    }

    /// The bench's processes are told apart by their subcommand.
    #[test]
    fn names_a_process_by_its_subcommand() {
        let words = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            role(
                "netbpf-bench",
                &words(&["/x/netbpf-bench", "tcp-server", "10.0.0.1:80"])
            ),
            "netbpf-bench tcp-server"
        );
        assert_eq!(role("iperf3", &words(&["iperf3", "--server"])), "iperf3");
        assert_eq!(role("kworker/0:1", &[]), "kworker/0:1");
    }

    /// A way that stalled in one round has that round measured again,
    /// every way of it; the others are kept. The rounds are numbered as
    /// in the run (here a later pass's).
    #[test]
    fn measures_a_stalled_round_again() {
        let figures = [Figure {
            name: "per second",
            better: Better::Higher,
            of: |value: &f64| *value,
        }];
        let mut calls = Vec::new();
        let mut reruns = Vec::new();
        let measured = measure(
            "rates",
            6..=10,
            |way: u8| if way == 0 { "a" } else { "b" },
            &figures,
            &mut reruns,
            |round| {
                calls.push(round);
                let stalled = round == 9 && calls.len() == 4;
                Ok(vec![(0, 100.0), (1, if stalled { 4.0 } else { 98.0 })])
            },
        )
        .unwrap();
        assert_eq!(calls, [6, 7, 8, 9, 10, 9]);
        assert_eq!(measured[&1], [98.0; 5]);
        assert_eq!(measured[&0], [100.0; 5]);
        assert_eq!(reruns.len(), 1);
        assert_eq!(reruns[0].round, 9);
        assert_eq!(reruns[0].why, "b: 4 per second, median 98");
        assert!(reruns[0].steal_percent >= 0.0);
    }
}
