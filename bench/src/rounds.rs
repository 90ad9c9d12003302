//! Rounds of a measurement: every way measured once per round, in turn.
//! A round in which some way stalled (its figure worse than that way's
//! median by more than [`STALL_FACTOR`]) is measured again, whole, so
//! that round-by-round ratios never pair a stalled side with a normal
//! one; the page says which rounds were measured again, and how much CPU
//! time the machine's neighbours took meanwhile.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::stats::{Better, Summary, stalled};

/// How much worse than its way's median a figure may be before its round
/// counts as stalled. The ordinary spread of this machine's rounds is
/// within ±20%; the stalls seen were 25 times slower.
pub const STALL_FACTOR: f64 = 1.5;

/// How many times one measurement's stalled rounds are measured again.
const MAX_RERUNS: usize = 3;

/// A figure of a way's measurement that a stall shows in.
pub struct Figure<V> {
    pub name: &'static str,
    pub better: Better,
    pub of: fn(&V) -> f64,
}

/// A round measured again, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rerun {
    /// What was measured: "TCP connections".
    pub measurement: String,
    /// Which round (from 1).
    pub round: usize,
    /// The figure that stalled: "netbpf: 215 connections/s, median 7100".
    pub why: String,
    /// The share of CPU time the hypervisor gave to others (steal) during
    /// the stalled round, and during that measurement's rounds at large
    /// (median), in percent.
    pub steal_percent: f64,
    pub usual_steal_percent: f64,
}

/// One measured round: each way's measurement, and the CPU steal.
struct Round<K, V> {
    by_way: Vec<(K, V)>,
    steal_percent: f64,
}

/// `count` rounds of `measure_round` (which measures every way once, in
/// turn, given the round's number from 1), stalled rounds measured again
/// up to [`MAX_RERUNS`] times; each way's measurements in round order.
pub fn measure<K: Ord + Copy, V>(
    what: &str,
    count: usize,
    label: fn(K) -> &'static str,
    figures: &[Figure<V>],
    reruns: &mut Vec<Rerun>,
    mut measure_round: impl FnMut(usize) -> anyhow::Result<Vec<(K, V)>>,
) -> anyhow::Result<BTreeMap<K, Vec<V>>> {
    let mut timed = |round: usize| -> anyhow::Result<Round<K, V>> {
        let before = CpuTimes::read()?;
        let by_way = measure_round(round)?;
        Ok(Round {
            by_way,
            steal_percent: CpuTimes::read()?.steal_percent_since(&before),
        })
    };
    let mut rounds = (1..=count)
        .map(&mut timed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..MAX_RERUNS {
        let stalls = stalls(&rounds, label, figures);
        if stalls.is_empty() {
            break;
        }
        let usual_steal = Summary::of(
            &rounds
                .iter()
                .map(|round| round.steal_percent)
                .collect::<Vec<_>>(),
        )
        .median;
        for (index, why) in stalls {
            reruns.push(Rerun {
                measurement: what.to_owned(),
                round: index + 1,
                why,
                steal_percent: rounds[index].steal_percent,
                usual_steal_percent: usual_steal,
            });
            rounds[index] = timed(index + 1)?;
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
fn stalls<K: Ord + Copy, V>(
    rounds: &[Round<K, V>],
    label: fn(K) -> &'static str,
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
                    format!(
                        "{}: {:.0} {}, median {median:.0}",
                        label(way),
                        series[index],
                        figure.name
                    )
                });
            }
        }
    }
    found
}

/// The CPU times of the whole machine, from `/proc/stat`, in clock ticks.
struct CpuTimes {
    steal: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&stat).context("/proc/stat has no `cpu` line of numbers")
    }

    /// The first line, "cpu user nice system idle iowait irq softirq
    /// steal ...".
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self {
            steal: *fields.get(7)?,
            // guest and guest_nice are counted in user and nice already.
            total: fields.iter().take(8).sum(),
        })
    }

    fn steal_percent_since(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "tick counts of one round are far below 2^52"
        )]
        let share = self.steal.saturating_sub(before.steal) as f64 / total as f64;
        share * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_steal_from_proc_stat() {
        let before = CpuTimes::parse("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuTimes::parse("cpu  200 0 100 1500 0 0 0 200 0 0\n").unwrap();
        assert!((after.steal_percent_since(&before) - 15.0).abs() < 1e-9);
        assert!(CpuTimes::parse("intr 1 2 3\n").is_none());
    }

    /// A way that stalled in one round has that round measured again,
    /// every way of it; the others are kept.
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
            5,
            |way: u8| if way == 0 { "a" } else { "b" },
            &figures,
            &mut reruns,
            |round| {
                calls.push(round);
                let stalled = round == 4 && calls.len() == 4;
                Ok(vec![(0, 100.0), (1, if stalled { 4.0 } else { 98.0 })])
            },
        )
        .unwrap();
        assert_eq!(calls, [1, 2, 3, 4, 5, 4]);
        assert_eq!(measured[&1], [98.0; 5]);
        assert_eq!(measured[&0], [100.0; 5]);
        assert_eq!(reruns.len(), 1);
        assert_eq!(reruns[0].round, 4);
        assert_eq!(reruns[0].why, "b: 4 per second, median 98");
    }
}
