//! `cargo xtask test`: the whole suite. The binaries and the agent's image
//! first, lints (they are quick), then every test of the workspace, the
//! privileged ones included: they load the programs into this kernel and
//! fail, never skip, where they cannot.
//! Then the benchmarks' verifier check and their quick mode, so a program
//! that grew or a benchmark that broke fails the suite; the Debian package,
//! which lintian checks, installed, restarted and purged on a node booted
//! under systemd in a VM (`cargo xtask node --quick`); last a subset of the
//! privileged tests on the oldest kernel of the matrix, in a VM.

use std::{path::Path, process::Command};

use crate::{
    bench::{self, BenchArgs},
    build, build_next, cmd, deploy,
    image::{self, ImageArgs},
    node, package, setup, vm,
};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Run the privileged tests in a VM on this kernel instead: `6.1` or
    /// `6.12` (the newest Debian package of it), or a vmlinuz path; or
    /// `host`, here, in the same table. Repeatable.
    #[arg(long)]
    kernel: Vec<String>,
    /// Run them on every kernel of the matrix (6.1 and 6.12 in VMs, then
    /// this host), with one summary table.
    #[arg(long, value_parser = ["all"])]
    kernels: Option<String>,
    /// With --kernel or --kernels: only these test binaries (the file
    /// names of tests/tests/, e.g. `localhost_forwarding`). Repeatable.
    #[arg(long = "test")]
    tests: Vec<String>,
}

pub fn test(workspace: &Path, args: &TestArgs) -> anyhow::Result<()> {
    let mut kernels = args.kernel.clone();
    if args.kernels.is_some() {
        kernels.extend(vm::MATRIX.map(str::to_owned));
    }
    if !kernels.is_empty() {
        return vm::run(workspace, &kernels, &args.tests);
    }
    anyhow::ensure!(
        args.tests.is_empty(),
        "--test picks test binaries for --kernel or --kernels; the suite here runs them all"
    );
    cmd::require_root("cargo xtask test")?;
    setup::test_environment()?;
    let next = build_next(workspace)?;
    let netbpf = build(workspace)?;
    let image = image::image(workspace, &ImageArgs { debug: true })?;
    cmd::cargo(workspace, &["fmt", "--all", "--", "--check"])?;
    cmd::cargo(
        workspace,
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    clippy_ebpf(workspace)?;
    deploy::check(workspace)?;
    cmd::run(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--exclude", "netbpf-ebpf"])
            .current_dir(workspace)
            .env("NETBPF_BIN", netbpf)
            .env("NETBPF_NEXT_BIN", next)
            .env("NETBPF_IMAGE", image),
    )?;
    for args in [
        BenchArgs {
            check: true,
            ..BenchArgs::default()
        },
        BenchArgs {
            quick: true,
            ..BenchArgs::default()
        },
    ] {
        bench::bench(workspace, args)?;
    }
    package::package(workspace)?;
    node::node(workspace, &node::NodeArgs::quick())?;
    let (kernel, tests) = vm::CI_SUBSET;
    vm::run(workspace, &[kernel.to_owned()], &tests.map(str::to_owned))
}

/// Clippy on the kernel crate, for the target it is built for.
fn clippy_ebpf(workspace: &Path) -> anyhow::Result<()> {
    let tools = setup::tools_dir(workspace).join("bin");
    let path = std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    cmd::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--package",
                "netbpf-ebpf",
                "--release",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(workspace)
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )
}
