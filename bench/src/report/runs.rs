//! What the page says of the runs as a whole: the rounds measured again
//! in each, and the programs' costs from one run to the next.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{ProgramCosts, Results, net};
use crate::programs::Cost;

/// The rounds each run measured again, and why.
pub(super) fn reruns_section(text: &mut String, runs: &[Results]) {
    text.push_str("## Rounds measured again\n\n");
    if runs.iter().all(|run| run.reruns.is_empty()) {
        text.push_str("No round stalled: none was measured again.\n\n");
        return;
    }
    text.push_str(
        "| run | measurement | round | what stalled | CPU steal in that round | in its measurement's rounds (median) | busiest processes in that round (share of the machine's CPU time) |\n\
         | ---: | --- | ---: | --- | ---: | ---: | --- |\n",
    );
    for (run, results) in runs.iter().enumerate() {
        for rerun in &results.reruns {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {:.1}% | {:.1}% | {} |",
                run + 1,
                rerun.measurement,
                rerun.round,
                rerun.why,
                rerun.steal_percent,
                rerun.usual_steal_percent,
                rerun.busiest
            );
        }
    }
    text.push('\n');
}

/// One side of the programs' costs: the sockets of a scope, or of none.
type Side = fn(&ProgramCosts) -> &BTreeMap<String, Vec<Cost>>;

/// Each program's net cost in each run (the median of its rounds), and
/// over every round of every run; nothing for a single run.
pub(super) fn program_costs_section(text: &mut String, runs: &[Results]) {
    if runs.len() < 2 {
        return;
    }
    text.push_str(
        "## Cost of each program, run by run\n\n\
         Net ns per run: the median of each run's rounds, then the median (interquartile range) \
         of every round of every run.\n\n| program | socket |",
    );
    for run in 1..=runs.len() {
        let _ = write!(text, " run {run} |");
    }
    text.push_str(" all runs |\n| --- | --- |");
    text.push_str(&" ---: |".repeat(runs.len() + 1));
    text.push('\n');
    let sides: [(&str, Side); 2] = [
        ("of a scope", |costs| &costs.scoped),
        ("of no scope", |costs| &costs.unscoped),
    ];
    for (socket, side) in sides {
        let names: std::collections::BTreeSet<&String> = runs
            .iter()
            .flat_map(|run| side(&run.programs).keys())
            .collect();
        for name in names {
            let _ = write!(text, "| {name} | {socket} |");
            let mut every_round = Vec::new();
            for run in runs {
                match side(&run.programs).get(name) {
                    Some(rounds) => {
                        every_round.extend_from_slice(rounds);
                        let _ = write!(text, " {:.0} |", net(rounds).median);
                    }
                    None => text.push_str(" - |"),
                }
            }
            let _ = writeln!(text, " {} |", net(&every_round).show(0));
        }
    }
    text.push('\n');
}
