//! `cargo xtask bench`: builds netbpf (optimized, as nodes run it) and its
//! benchmarks (`bench/`), then runs them. The full run rewrites `docs/benchmarks.md`, its plots and
//! `docs/bench/results.json`; `--quick` measures less and writes to
//! `target/bench/`; `--check` compares the verifier's instruction counts
//! with `bench/verifier-baseline.json`.

use std::{path::Path, process::Command};

use crate::{build_release, cmd, setup};

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
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
}

pub fn bench(workspace: &Path, args: BenchArgs) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask bench")?;
    setup::test_environment()?;
    let netbpf = build_release(workspace)?;
    cmd::cargo(workspace, &["build", "--package", "netbpf-bench"])?;
    let mut bench = Command::new(workspace.join("target/debug/netbpf-bench"));
    bench.env("NETBPF_BIN", netbpf).current_dir(workspace);
    if args.check {
        bench
            .args(["check", "--baseline"])
            .arg(workspace.join("bench/verifier-baseline.json"));
        if args.bless {
            bench.arg("--bless");
        }
    } else if args.quick {
        bench
            .args(["run", "--quick", "--out"])
            .arg(workspace.join("target/bench"));
    } else {
        bench.args(["run", "--out"]).arg(workspace.join("docs"));
    }
    cmd::run(&mut bench)
}
