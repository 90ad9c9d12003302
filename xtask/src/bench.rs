//! `cargo xtask bench`: builds netbpf (optimized, as nodes run it) and its
//! benchmarks (`bench/`), then runs them. The full run rewrites
//! `docs/benchmarks.md`, its plots and `docs/bench/results.json`;
//! `--repeat N` runs it N times in a row and the page compares their
//! verdicts; `--quick` measures less and writes to `target/bench/`;
//! `--check` compares the verifier's instruction counts with
//! `bench/verifier-baseline.json`.

use std::{path::Path, process::Command};

use crate::{build_release, cmd, setup};

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone, Copy, clap::Args)]
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
}

impl Default for BenchArgs {
    /// One full run.
    fn default() -> Self {
        Self {
            quick: false,
            check: false,
            bless: false,
            repeat: 1,
        }
    }
}

pub fn bench(workspace: &Path, args: BenchArgs) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask bench")?;
    setup::test_environment()?;
    let netbpf = build_release(workspace)?;
    // Optimized: its clients are the load, and their own cost dilutes
    // what they measure.
    cmd::cargo(
        workspace,
        &["build", "--release", "--package", "netbpf-bench"],
    )?;
    let mut bench = Command::new(workspace.join("target/release/netbpf-bench"));
    bench.env("NETBPF_BIN", netbpf).current_dir(workspace);
    if args.check {
        bench
            .args(["check", "--baseline"])
            .arg(workspace.join("bench/verifier-baseline.json"));
        if args.bless {
            bench.arg("--bless");
        }
    } else {
        let repeat = args.repeat.to_string();
        bench.args(["run", "--repeat", &repeat, "--out"]);
        if args.quick {
            bench.arg(workspace.join("target/bench")).arg("--quick");
        } else {
            bench.arg(workspace.join("docs"));
        }
    }
    cmd::run(&mut bench)
}
