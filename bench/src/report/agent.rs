//! The agent's part of the page: its section, and its goals.

use std::fmt::Write as _;

use super::{Results, goals::Goal};
use crate::{
    agent_scale::{AgentRound, AgentSize, Workloads},
    start_window::StartWindow,
    stats::{Bound, Summary},
};

/// One figure of `size`'s rounds, round by round.
fn values(size: &AgentSize, field: fn(&AgentRound) -> f64) -> Vec<f64> {
    size.rounds.iter().map(field).collect()
}

/// Summary of one figure of `size`'s rounds.
fn of(size: &AgentSize, field: fn(&AgentRound) -> f64) -> Summary {
    Summary::of(&values(size, field))
}

/// Summary of every reload of `size`'s rounds (of NaN where none was
/// measured, like [`check`]'s).
fn reloads(size: &AgentSize) -> Summary {
    let values: Vec<f64> = size
        .rounds
        .iter()
        .flat_map(|round| round.reload_s.iter().copied())
        .collect();
    if values.is_empty() {
        return Summary::of(&[f64::NAN]);
    }
    Summary::of(&values)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "memory sizes are far below 2^52"
)]
fn mib_of(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn applied(round: &AgentRound) -> f64 {
    round.applied_s
}

fn gone(round: &AgentRound) -> f64 {
    round.gone_s
}

fn cpu(round: &AgentRound) -> f64 {
    round.cpu_per_event_us
}

fn rss_loaded(round: &AgentRound) -> f64 {
    mib_of(round.rss_loaded)
}

/// How far the memory after removal is above the memory at start, in
/// percent of the start.
fn rss_back(round: &AgentRound) -> f64 {
    (mib_of(round.rss_after) / mib_of(round.rss_start) - 1.0) * 100.0
}

fn check(round: &AgentRound) -> f64 {
    round.check_s.unwrap_or(f64::NAN)
}

/// The size of bare cgroups of `count`, if measured.
fn cgroups(results: &Results, count: usize) -> Option<&AgentSize> {
    results
        .agent
        .iter()
        .find(|size| size.workloads == Workloads::Cgroups && size.count == count)
}

/// The agent's goals, at the sizes the issue names (where measured).
pub(super) fn goals(results: &Results) -> Vec<Goal> {
    let mut goals = Vec::new();
    if let Some(size) = cgroups(results, 10_000) {
        goals.push(seconds_goal(
            "all applied after the last of 10000 cgroups appears",
            of(size, applied),
            1.0,
            APPLIED_WHY,
        ));
        goals.push(seconds_goal(
            "all gone after the last of 10000 cgroups goes",
            of(size, gone),
            1.0,
            APPLIED_WHY,
        ));
        goals.push(Goal::judged(
            "the agent's RSS with 10000 cgroups applied".to_owned(),
            Bound::AtMost(48.0),
            &of(size, rss_loaded),
            1,
            " MiB",
            "The agent holds each instance's rules, outcome and cgroup as it applied them."
                .to_owned(),
        ));
        goals.push(Goal::judged(
            "the agent's RSS a second after 10000 cgroups went, above its start".to_owned(),
            Bound::AtMost(10.0),
            &of(size, rss_back),
            1,
            "%",
            RSS_WHY.to_owned(),
        ));
        if let Some(first) = cgroups(results, 1000) {
            goals.push(Goal::judged(
                "CPU per event at 10000 cgroups, to that at 1000".to_owned(),
                Bound::AtMost(2.0),
                // Round by round: the sizes take turns in each round.
                &Summary::of_ratios(&values(size, cpu), &values(first, cpu)),
                2,
                "×",
                CPU_WHY.to_owned(),
            ));
        }
    }
    if let Some(size) = cgroups(results, 20_000) {
        goals.push(seconds_goal(
            "`netbpf check` of a policy of 20000 scopes",
            of(size, check),
            0.5,
            RELOAD_WHY,
        ));
        goals.push(seconds_goal(
            "reload of a policy of 20000 scopes, 20000 cgroups present",
            reloads(size),
            0.5,
            RELOAD_WHY,
        ));
    }
    goals
}

/// A goal of at most `limit` seconds.
fn seconds_goal(what: &str, seconds: Summary, limit: f64, why: &str) -> Goal {
    Goal::judged(
        what.to_owned(),
        Bound::AtMost(limit),
        &seconds,
        2,
        " s",
        why.to_owned(),
    )
}

const APPLIED_WHY: &str = "The agent reconciles the whole node once a burst of events is over: \
    its work is linear in the instances present, done once per burst.";

const RSS_WHY: &str = "The allocator keeps part of what the instances used in pages that still \
    hold a live allocation; the agent gives back what it can once half the peak's cgroups are gone.";

const CPU_WHY: &str = "A burst is reconciled as a whole: each reconcile walks every instance \
    present, so a burst that arrives in more pieces costs more per event at a larger size.";

const RELOAD_WHY: &str = "A reload reads and validates the whole policy, matches every workload \
    against it and compiles every instance's entries.";

pub(super) fn section(text: &mut String, results: &Results) {
    if results.agent.is_empty() {
        return;
    }
    let passes = results.passes.max(1);
    let rounds_a_pass = |kind: Workloads| {
        results
            .agent
            .iter()
            .find(|size| size.workloads == kind)
            .map(|size| size.rounds.len() / passes)
    };
    // Raw figures from before reloaded once a round.
    let reloads_a_round = results
        .agent
        .iter()
        .find_map(|size| size.rounds.first())
        .map_or(1, |round| round.reload_s.len());
    let docker_rounds = results
        .agent
        .iter()
        .find(|size| size.workloads == Workloads::Docker)
        .map(|size| {
            format!(
                ", Docker in {} a run (its containers take minutes a round; no goal reads them)",
                size.rounds.len()
            )
        })
        .unwrap_or_default();
    let _ = write!(
        text,
        "## The agent at scale\n\n![the agent's times by workloads](bench/agent.svg)\n\n\
         What the agent takes to follow workloads. **Cgroups**: N cgroups made below its cgroup \
         root as fast as the bench can, then removed, all selected by one scope with a forward \
         (what N instances of one template look like to it). Then `netbpf check` reads a policy of \
         N scopes, one per cgroup, which replaces the template and gives way to it again \
         (`netbpf reload`, every cgroup present; reloads a round: {}, and the reload's figures \
         are of every reload). \
         **Docker**: containers (`--network none`: a bridge takes 1,024 ports) started through a \
         daemon of the bench's own, four `docker run` at a time, then removed ten per \
         `docker rm`, one after the other; a round the daemon fails (a `docker rm` stuck for a \
         minute, any other command for five) is measured again with a new daemon, and said \
         below the table. Each size of cgroups is measured in {} rounds a pass{docker_rounds}. \
         The times run from the last appearance (or removal) until the kernel's scope map, read \
         from its pin every 10 ms, holds every instance (or none): the agent's word is never \
         taken for it. CPU time (user and system, every thread) comes from a cgroup the agent \
         is moved into, to the microsecond (`/proc` counts 10 ms ticks, a seventh of the agent's \
         CPU at 1,000 cgroups), and RSS from `/proc`; CPU per event is the agent's CPU over the \
         appearances and the removals, divided by their number. A new agent each round (release build); sizes take turns round by round; each \
         figure is the median of the rounds with their range.\n\n\
         | workloads | N | all applied after the last appears | all gone after the last goes | CPU per event | RSS start | RSS loaded | RSS a second after | reload of N scopes | `netbpf check` of N scopes |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        reloads_a_round,
        rounds_a_pass(Workloads::Cgroups).unwrap_or_default(),
    );
    for size in &results.agent {
        let seconds = |summary: Summary| {
            if summary.median.is_nan() {
                "-".to_owned()
            } else {
                format!("{} s", summary.show(3))
            }
        };
        let _ = writeln!(
            text,
            "| {:?} | {} | {} | {} | {} µs | {} MiB | {} MiB | {} MiB | {} | {} |",
            size.workloads,
            size.count,
            seconds(of(size, applied)),
            seconds(of(size, gone)),
            of(size, cpu).show(0),
            of(size, |round| mib_of(round.rss_start)).show(1),
            of(size, rss_loaded).show(1),
            of(size, |round| mib_of(round.rss_after)).show(1),
            seconds(reloads(size)),
            seconds(of(size, check)),
        );
    }
    text.push('\n');
    for size in &results.agent {
        for why in &size.retried {
            let _ = writeln!(
                text,
                "- A round of {} {:?} workloads was measured again: {why}",
                size.count, size.workloads
            );
        }
    }
    if results.agent.iter().any(|size| !size.retried.is_empty()) {
        text.push('\n');
    }
    if let Some(window) = &results.start_window {
        start_window(text, window);
    }
}

/// The start window of Docker containers: a table of its quantiles.
fn start_window(text: &mut String, window: &StartWindow) {
    let milliseconds = |fraction: f64| format!("{:.0} ms", window.quantile(fraction) * 1000.0);
    let _ = write!(
        text,
        "### Docker containers: from their first process to their rules\n\n\
         Docker runs no hook: the agent learns of a container from its cgroup and Docker's \
         state, and applies a grant once the container's network is set up. {} containers \
         (four `docker run` at a time, on Docker's bridge) are granted a host service; each \
         one's first process reads the clock (`/proc/uptime`, in 10 ms steps) and dials the \
         service until it answers. The window is the time until then: 0 when its first dial \
         was answered.\n\n\
         | containers | first dial answered | window p50 | p99 | longest |\n\
         | ---: | ---: | ---: | ---: | ---: |\n\
         | {} | {} | {} | {} | {} |\n\n",
        window.windows_s.len(),
        window.windows_s.len(),
        window.first_dial_answered,
        milliseconds(0.5),
        milliseconds(0.99),
        milliseconds(1.0),
    );
}
