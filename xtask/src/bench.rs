//! `cargo xtask bench`: builds netbpf (optimized, as nodes run it) and its
//! benchmarks (`bench/`), then runs them. The full run rewrites
//! `docs/benchmarks.md`, its plots and `docs/bench/results.json`;
//! `--repeat N` runs it N times in a row and the page compares their
//! verdicts; `--quick` measures less and writes to `target/bench/`;
//! `--report` measures nothing and writes the page again from the raw
//! figures;
//! `--check` compares the verifier's instruction counts with
//! `bench/verifier-baseline.json`.

use std::{path::Path, process::Command};

use crate::{build_release, cmd, setup};

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone, Copy, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is a flag of the command line"
)]
pub struct BenchArgs {
    /// Fewer rounds, shorter runs, three scaling points; writes to
    /// target/bench/ (CI runs it).
    #[arg(long)]
    pub quick: bool,
    /// Only check the verifier's instruction counts against the committed
    /// baseline (CI runs it).
    #[arg(long, conflicts_with = "quick")]
    pub check: bool,
    /// With --check: write the counts measured now as the new baseline.
    #[arg(long, requires = "check")]
    pub bless: bool,
    /// Run the whole bench this many times in a row; the page shows each
    /// run's verdicts and whether they agree.
    #[arg(long, default_value_t = 1, conflicts_with = "check")]
    pub repeat: u16,
    /// Measure nothing: write the page and its plots again from the raw
    /// figures of the last run (after a change to how they are shown).
    #[arg(long, conflicts_with_all = ["check", "repeat"])]
    pub report: bool,
}

impl Default for BenchArgs {
    /// One full run.
    fn default() -> Self {
        Self {
            quick: false,
            check: false,
            bless: false,
            repeat: 1,
            report: false,
        }
    }
}

pub fn bench(workspace: &Path, args: BenchArgs) -> anyhow::Result<()> {
    let out = workspace.join(if args.quick { "target/bench" } else { "docs" });
    if args.report {
        // Only the page: nothing is loaded or measured.
        setup::build_toolchain(workspace)?;
        return cmd::run(bench_binary(workspace)?.arg("report").arg("--out").arg(out));
    }
    cmd::require_root("cargo xtask bench")?;
    setup::test_environment()?;
    let netbpf = build_release(workspace)?;
    let mut bench = bench_binary(workspace)?;
    bench.env("NETBPF_BIN", netbpf);
    if args.check {
        bench
            .args(["check", "--baseline"])
            .arg(workspace.join("bench/verifier-baseline.json"));
        if args.bless {
            bench.arg("--bless");
        }
    } else {
        let repeat = args.repeat.to_string();
        bench.args(["run", "--repeat", &repeat, "--out"]).arg(out);
        if args.quick {
            bench.arg("--quick");
        }
    }
    cmd::run(&mut bench)
}

/// Builds the bench, optimized (its clients are the load, and their own
/// cost dilutes what they measure); the command that runs it here.
fn bench_binary(workspace: &Path) -> anyhow::Result<Command> {
    cmd::cargo(
        workspace,
        &["build", "--release", "--package", "netbpf-bench"],
    )?;
    let mut bench = Command::new(workspace.join("target/release/netbpf-bench"));
    bench.current_dir(workspace);
    Ok(bench)
}
