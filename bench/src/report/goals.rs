//! The goals of the issues, each judged on its figure's interquartile
//! range, and their table across the runs of one bench.

use std::{collections::BTreeMap, fmt::Write as _};

use netbpf_common::names::program;

use super::{
    ProgramCosts, Results, ScalePoint, agent, median_time_ratios, net, p50_us, throughput_ratio,
    way_series,
};
use crate::{
    load::Measurement,
    programs::Cost,
    stats::{Bound, Summary, Verdict},
    throughput::Clamp,
    ways::Way,
};

/// One line of the goals table.
pub(super) struct Goal {
    what: String,
    target: String,
    measured: String,
    verdict: Verdict,
    /// What the measured figure is made of: said when the goal is not met.
    why: String,
}

impl Goal {
    /// The goal that `summary` (of rounds) be within `bound`, judged on
    /// where its quartiles may lie; shown with `decimals` decimals and
    /// `unit`.
    pub(super) fn judged(
        what: String,
        bound: Bound,
        summary: &Summary,
        decimals: usize,
        unit: &str,
        why: String,
    ) -> Self {
        Self {
            what,
            target: bound.show(unit),
            measured: format!(
                "{}{unit}, quartiles within {}",
                summary.show(decimals),
                summary.show_quartile_bounds(decimals)
            ),
            verdict: bound.judge(&summary.rounded(decimals)),
            why,
        }
    }
}

/// A kind of socket whose programs' costs are judged, and how.
struct Sockets<'a> {
    /// "socket of a scope".
    label: &'static str,
    /// Their costs, by program.
    costs: &'a BTreeMap<String, Vec<Cost>>,
    /// Programs whose goal for them is judged elsewhere.
    elsewhere: &'static [&'static str],
    /// Net ns per run a program may take for them.
    target: fn(&str) -> f64,
    /// What a program does for them, as the page says it.
    work: fn(&str) -> &'static str,
}

/// The per-run goals of the programs every socket below the root meets
/// (issue 21's): a socket of a scope, then one of no scope, then one of
/// no scope connecting to a peer no forward reaches. connect4 of a scope
/// is judged at the largest scaling point instead.
fn program_goals(costs: &ProgramCosts) -> Vec<Goal> {
    let kinds = [
        Sockets {
            label: "socket of a scope",
            costs: &costs.scoped,
            elsewhere: &[program::CONNECT4],
            target: scoped_target,
            work: scoped_work,
        },
        Sockets {
            label: "socket of no scope",
            costs: &costs.unscoped,
            elsewhere: &[],
            target: unscoped_target,
            work: unscoped_work,
        },
        Sockets {
            label: "socket of no scope, to a peer no forward reaches",
            costs: &costs.unscoped_unforwarded,
            elsewhere: &[],
            target: unscoped_target,
            work: unforwarded_work,
        },
    ];
    let mut goals = Vec::new();
    for name in [
        program::CONNECT4,
        program::RELEASE,
        program::BOUND4,
        program::RECVMSG4,
        program::GETPEER4,
    ] {
        for kind in &kinds {
            if kind.elsewhere.contains(&name) {
                continue;
            }
            if let Some(rounds) = kind.costs.get(name) {
                goals.push(Goal::judged(
                    format!("{name} per run, {}", kind.label),
                    Bound::AtMost((kind.target)(name)),
                    &net(rounds),
                    0,
                    " ns",
                    (kind.work)(name).to_owned(),
                ));
            }
        }
    }
    goals
}

/// Net ns per run a program may take for a socket of a scope: a bind
/// allocates what counts its port; the rest look up and rewrite.
fn scoped_target(program: &str) -> f64 {
    match program {
        program::BOUND4 => 150.0,
        _ => 50.0,
    }
}

/// Net ns per run a program may take for a socket of no scope: connect4
/// also checks whether it dials a host service.
fn unscoped_target(program: &str) -> f64 {
    match program {
        program::CONNECT4 => 40.0,
        _ => 20.0,
    }
}

/// The work a program does for a socket of a scope.
fn scoped_work(program: &str) -> &'static str {
    match program {
        program::BOUND4 => {
            "The bench's binds are of ports the kernel picks, which no scope forwards: the \
             port's bit in the set of forwarded localhost ports (an array) says so before the \
             scope is looked for. A bind of a forwarded port gives its socket storage and counts \
             the port, the price of counting a scope's own services exactly, paid by a service \
             starting."
        }
        program::RELEASE => {
            "A released socket's storage is looked up, and a counted bind's count taken back \
             with an atomic."
        }
        program::GETPEER4 => {
            "The TCP socket's connect kept nothing, its forward alone reaching its target: its \
             storage is looked up and not found, then the derived peer is found by the task's \
             cgroup (the helper and one lookup, keyed by the scope instance: its scope is never \
             looked for)."
        }
        _ => "The socket's storage is looked up for the address it dialed.",
    }
}

/// The work a program does for a socket of no scope below the cgroup
/// root, as the bench's process of no scope meets it.
fn unscoped_work(program: &str) -> &'static str {
    match program {
        program::BOUND4 => {
            "The bench's binds are of ports the kernel picks, which no scope forwards: the \
             port's bit in the set of forwarded localhost ports (an array) says so before the \
             scope is looked for."
        }
        program::CONNECT4 => {
            "The process of no scope dials the server itself, the target of a forward whose \
             peer `getpeername()` derives: a socket of that scope that dials the target itself \
             must keep storage saying so, so the program looks for the derived peer of the \
             socket's scope instance and finds none (the helper and a lookup that misses, by \
             the task's cgroup: the floor in the parts of finding a scope). A connect to a \
             peer no rule rewrites to is ruled out by the rewritten peers' filter, in the \
             lookups' cache line, and looks nothing up."
        }
        program::GETPEER4 => {
            "A socket of no scope has no storage; its peer, a forward's target, passes the \
             rewritten peers' filter, so its storage is looked up and none found, then its \
             derived peer is looked up by the task's cgroup and not found (all scopes here are \
             cgroups at one depth: no other instance to look for)."
        }
        _ => {
            "A socket of no scope has no storage: one lookup of the socket's storage finds none, \
             the least a program that keeps per-socket state can do (that lookup alone is a \
             part in the reverse path's designs)."
        }
    }
}

/// The work a program does for a socket of no scope that connects to a
/// peer no forward reaches (most connects of a node).
fn unforwarded_work(program: &str) -> &'static str {
    match program {
        program::CONNECT4 => {
            "The destination is read and ruled out as localhost, as an alias (none on this \
             node) and as a derived peer (the rewritten peers' filter), and the host-service check \
             reads the same cache line: nothing is looked up. What is left is the program \
             itself: the base every connect of the node pays."
        }
        program::GETPEER4 => {
            "The peer is read and ruled out by the rewritten peers' filter, in the lookups' \
             cache line: neither the socket's storage nor a derived peer is looked up."
        }
        _ => {
            "A socket of no scope has no storage: one lookup of the socket's storage finds none \
             (that lookup alone, at connect4 and at the release hook, is a part in the reverse \
             path's designs)."
        }
    }
}

/// The connect of a socket of a scope.
const REWRITE_WORK: &str = "A rewritten TCP `connect()` whose forward alone reaches its target \
    keeps nothing: `getpeername()` derives what it dialed from the rule, whose forward says so. \
    What is left is the port's bit in the set of forwarded localhost ports (an array), a call \
    into the rewrite (a function of its own, which keeps the connects it rules out in the \
    program's first few hundred bytes), the task's cgroup (a helper) and one hash lookup that \
    finds the scope's forward by cgroup and port, the rule's counters (an array) and the \
    rewrite; a scope none of whose sockets listens on a forwarded port skips the local-binds \
    lookup. The helper and a hash lookup, each alone, are in the parts of finding a scope, \
    beside the storage the connect no longer makes (UDP and forwards sharing a target still \
    keep it).";

/// What a ratio of rates is made of.
fn ratio_of_rounds(ratio: &Summary, cpus: usize) -> String {
    format!(
        "The rounds' ratios range from {:.3} to {:.3} on this {cpus}-CPU machine (interquartile \
         {:.3}–{:.3}).",
        ratio.min, ratio.max, ratio.q1, ratio.q3
    )
}

/// What netbpf adds to the median connection, and the rounds' spread.
fn median_connection(
    tcp: &BTreeMap<Way, Vec<Measurement>>,
    ratio: &Summary,
    cpus: usize,
) -> String {
    let median_us = |way: Way| Summary::of(&way_series(tcp, way, p50_us)).median;
    let (direct, netbpf) = (median_us(Way::Direct), median_us(Way::Netbpf));
    format!(
        "The median connection takes {direct:.1} µs with no program and {netbpf:.1} µs with \
         netbpf: its programs (connect4, getpeer4 and the release hook, and the kernel's calls to \
         them) add about {:.0} ns to each. {}",
        (netbpf - direct) * 1000.0,
        ratio_of_rounds(ratio, cpus)
    )
}

/// Every goal of the issue, with what this run measured.
pub(super) fn goals(results: &Results) -> Vec<Goal> {
    let cpus = results.machine.cpus;
    let mut goals = Vec::new();
    if let Some(point) = results
        .scaling
        .last()
        .filter(|point| !point.connect4.is_empty())
    {
        goals.push(Goal::judged(
            format!("connect4 per run, with {} other containers", point.others),
            Bound::AtMost(150.0),
            &net(&point.connect4),
            0,
            " ns",
            REWRITE_WORK.to_owned(),
        ));
    }
    goals.extend(program_goals(&results.programs));
    let check = &results.host_service_check;
    if !check.with_service.is_empty() {
        goals.push(Goal::judged(
            "connect4, a connect to no host service, with a host service granted on the node: \
             added to the same connect with none (net ns per run, a socket in no scope, to a \
             peer no forward reaches)"
                .to_owned(),
            Bound::AtMost(20.0),
            &Summary::of_differences(&check.with_service, &check.without_service),
            1,
            " ns",
            format!(
                "The check reads the lookups' flag and port filter (in the cache line the \
                 program reads anyway) and the destination port. Measured in {} rounds, each \
                 a load of connects with each policy, the two policies taking turns to go \
                 first; each load's figure is the median of its {} client runs, each counted \
                 on its own; the rounds' spread is that of connect4 itself.",
                check.with_service.len(),
                results.cost_slices
            ),
        ));
    }
    let ratio = Summary::of(&median_time_ratios(&results.tcp, Way::Netbpf));
    goals.push(Goal::judged(
        "connections per second at the median connection, netbpf / no program".to_owned(),
        Bound::AtLeast(0.99),
        &ratio,
        3,
        "",
        median_connection(&results.tcp, &ratio, cpus),
    ));
    goals.extend(scaling_goal(results));
    if let Some(ns) = results
        .test_runs
        .iter()
        .find(|(name, _)| name.contains("fast path"))
        .map(|(_, run)| run.net())
    {
        goals.push(Goal::judged(
            "MSS clamp, a segment that is not a SYN (BPF_PROG_TEST_RUN, net)".to_owned(),
            Bound::AtMost(15.0),
            &Summary::of(&[ns]),
            0,
            " ns",
            "The fast path reads the IP and TCP headers straight from the packet; the rest is \
             the program's bounds checks."
                .to_owned(),
        ));
    }
    for (name, throughput) in [
        (
            "through the forward",
            throughput_ratio(&results.forward_throughput, &Way::Direct, &Way::Netbpf),
        ),
        (
            "across the MSS clamp",
            throughput_ratio(&results.clamp_throughput, &Clamp::None, &Clamp::Netbpf),
        ),
    ] {
        goals.push(Goal::judged(
            format!("iperf3 throughput {name}, netbpf / none"),
            Bound::AtLeast(0.99),
            &throughput,
            3,
            "",
            ratio_of_rounds(&throughput, cpus),
        ));
    }
    goals.push(memory_goal(results));
    goals.extend(agent::goals(results));
    goals
}

/// netbpf's connection rate at the largest scaling point against the
/// smallest, taken round by round as every ratio: a round's two points
/// are of one pass, on its topologies.
fn scaling_goal(results: &Results) -> Option<Goal> {
    let (first, last) = (results.scaling.first()?, results.scaling.last()?);
    let at = |point: &ScalePoint| median_time_ratios(&point.connections, Way::Netbpf);
    let change = Summary::of_ratios(&at(last), &at(first)).map(|ratio| (ratio - 1.0) * 100.0);
    Some(Goal::judged(
        format!(
            "netbpf's connection rate from {} to {} other containers (ratio to no program at the \
             median connection): its change",
            first.others, last.others
        ),
        Bound::WithinOf(5.0),
        &change,
        1,
        "%",
        format!(
            "The rounds' changes range from {:.1}% to {:.1}% on this {}-CPU machine \
             (interquartile {:.1}%–{:.1}%).",
            change.min, change.max, results.machine.cpus, change.q1, change.q3
        ),
    ))
}

fn memory_goal(results: &Results) -> Goal {
    #[expect(
        clippy::cast_precision_loss,
        reason = "memory sizes are far below 2^52"
    )]
    let mib = results.memory.at_start as f64 / f64::from(1 << 20);
    Goal::judged(
        "maps' memory of a new agent".to_owned(),
        Bound::AtMost(8.0),
        &Summary::of(&[mib]),
        1,
        " MiB",
        "The maps preallocated at start hold this much at the default capacities; the \
         capacities are settings (see the agent's guide)."
            .to_owned(),
    )
}

/// How the goals are judged, as the page says it.
const JUDGING: &str = "\
    Each goal is judged on its figure's interquartile range, never on the median alone, \
    and on where its quartiles may lie: the rounds are a sample of what this machine does, \
    and a run with a few more rounds in a slow stretch has its quartiles further out. So \
    each quartile is bounded, from the rounds' order statistics, with 95% confidence on \
    its side (the first from below, the third from above; with ten rounds or fewer, by \
    the least and the largest). *Met* when the whole of that range meets the target, *not \
    met* when none of it does, *within noise* when the target lies inside it (this \
    machine's noise is larger than what the goal asks to resolve). A figure measured once \
    has no range. Each cell: median (interquartile range), the range the quartiles lie \
    within, verdict. A figure is judged as it is shown, at its decimals: a range shown as \
    20–22 ns holds a target of 20 ns. The connection rate's goals compare \
    each round's median connection time: a round's rate (its connections over its time) \
    also holds this VM's stalls, which fall on the slowest connections of any way and spread \
    the rounds' rate ratios several times wider than their median times' ratios; the rates \
    themselves are in the tables below.";

/// The goals table: each run's figure and verdict, and whether the runs
/// agree; then why each goal some run did not meet is so.
pub(super) fn section(text: &mut String, runs: &[Results]) {
    let tables: Vec<Vec<Goal>> = runs.iter().map(goals).collect();
    let Some(last) = tables.last() else {
        return;
    };
    let _ = write!(text, "## Goals\n\n{JUDGING}\n\n| goal | target |");
    for run in 1..=runs.len() {
        let _ = write!(text, " run {run} |");
    }
    let several = runs.len() > 1;
    if several {
        text.push_str(" the runs agree |");
    }
    text.push_str("\n| --- | --- |");
    text.push_str(&" --- |".repeat(runs.len() + usize::from(several)));
    text.push('\n');
    let mut agreeing = 0;
    for (index, goal) in last.iter().enumerate() {
        let of_runs: Vec<Option<&Goal>> = tables
            .iter()
            .map(|table| {
                table
                    .get(index)
                    .filter(|same| same.what == goal.what)
                    .or_else(|| table.iter().find(|same| same.what == goal.what))
            })
            .collect();
        let _ = write!(text, "| {} | {} |", goal.what, goal.target);
        for of_run in &of_runs {
            match of_run {
                Some(goal) => {
                    let _ = write!(text, " {}: {} |", goal.measured, verdict_cell(goal.verdict));
                }
                None => text.push_str(" - |"),
            }
        }
        if several {
            let agree = of_runs
                .iter()
                .all(|of_run| of_run.is_some_and(|same| same.verdict == goal.verdict));
            agreeing += usize::from(agree);
            text.push_str(if agree { " yes |" } else { " **no** |" });
        }
        text.push('\n');
    }
    if several {
        let _ = writeln!(
            text,
            "\nThe {} runs agree on the verdict of {agreeing} of the {} goals.",
            runs.len(),
            last.len()
        );
    }
    // Said only when every run was timed: raw figures from before were not.
    if let Some(minutes) = runs
        .iter()
        .map(|run| run.minutes)
        .collect::<Option<Vec<f64>>>()
    {
        let minutes: Vec<String> = minutes
            .iter()
            .map(|minutes| format!("{minutes:.0}"))
            .collect();
        let _ = writeln!(
            text,
            "\nMinutes each run took, in order: {}.",
            minutes.join(", ")
        );
    }
    let unmet: Vec<&Goal> = last
        .iter()
        .filter(|goal| {
            tables
                .iter()
                .flatten()
                .any(|same| same.what == goal.what && same.verdict != Verdict::Met)
        })
        .collect();
    if unmet.is_empty() {
        text.push_str("\nEvery goal is met.\n\n");
        return;
    }
    text.push_str("\nWhere a goal is not met, or within noise, in some run, and why:\n\n");
    for goal in unmet {
        let _ = writeln!(text, "- **{}**: {}", goal.what, goal.why);
    }
    text.push('\n');
}

/// A verdict as the goals table shows it.
fn verdict_cell(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Met => "met",
        Verdict::NotMet => "**not met**",
        Verdict::WithinNoise => "within noise",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose TCP rounds give netbpf `ratios` of no program's speed
    /// at the median connection.
    fn run_with_ratios(ratios: &[f64]) -> Results {
        let round = |speed: f64| Measurement {
            per_second: 1000.0 * speed,
            p50_us: 100.0 / speed,
            p99_us: 200.0,
            retransmits: 0,
            runs_p50_us: Vec::new(),
        };
        let mut run = Results::default();
        run.tcp
            .insert(Way::Direct, ratios.iter().map(|_| round(1.0)).collect());
        run.tcp
            .insert(Way::Netbpf, ratios.iter().copied().map(round).collect());
        run
    }

    fn row<'a>(page: &'a str, goal: &str) -> &'a str {
        page.lines()
            .find(|line| line.starts_with(&format!("| {goal}")))
            .unwrap_or_else(|| panic!("no row of {goal} in:\n{page}"))
    }

    #[test]
    fn the_runs_agree_only_on_the_same_verdict() {
        const RATE: &str = "connections per second at the median connection, netbpf / no program";
        let met = run_with_ratios(&[1.0, 1.01, 1.02, 1.0, 1.01]);
        let noisy = run_with_ratios(&[0.95, 1.0, 1.03, 0.97, 1.02]);
        let mut page = String::new();
        section(&mut page, &[met, noisy]);
        let rate = row(&page, RATE);
        assert!(rate.contains(": met |"), "{rate}");
        assert!(rate.contains(": within noise |"), "{rate}");
        assert!(rate.ends_with(" **no** |"), "{rate}");
        assert!(page.contains("Where a goal is not met, or within noise, in some run"));

        let mut page = String::new();
        section(
            &mut page,
            &[
                run_with_ratios(&[1.0, 1.01, 1.02]),
                run_with_ratios(&[1.0, 1.0, 1.01]),
                run_with_ratios(&[1.02, 1.01, 1.0]),
            ],
        );
        assert!(row(&page, RATE).ends_with(": met | yes |"));
    }

    #[test]
    fn the_runs_say_how_long_they_took_when_all_were_timed() {
        let timed = |minutes| Results {
            minutes: Some(minutes),
            ..run_with_ratios(&[1.0])
        };
        let mut page = String::new();
        section(&mut page, &[timed(54.6), timed(51.2)]);
        assert!(
            page.contains("\nMinutes each run took, in order: 55, 51.\n"),
            "{page}"
        );

        let mut page = String::new();
        section(&mut page, &[timed(54.6), run_with_ratios(&[1.0])]);
        assert!(!page.contains("Minutes each run took"), "{page}");
    }

    #[test]
    fn a_single_run_has_no_agreement_column() {
        let mut page = String::new();
        section(&mut page, &[run_with_ratios(&[0.9, 0.91, 0.92])]);
        assert!(page.contains("| goal | target | run 1 |\n"));
        assert!(row(&page, "connections per second").ends_with(": **not met** |"));
    }
}
