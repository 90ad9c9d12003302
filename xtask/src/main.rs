//! netbpf's chores, run as `cargo xtask <command>`. Each command first does
//! what it needs of `setup`, so nothing has to be remembered.

mod bench;
mod cmd;
mod demo;
mod deploy;
mod excerpt;
mod image;
mod node;
mod package;
mod setup;
mod test;
mod vm;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "netbpf's chores: setup, build, test, demo, bench")]
struct Xtask {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing netbpf needs (idempotent):
    /// rust-src for the nightly, bpf-linker, Debian packages, bpffs.
    Setup,
    /// Build the netbpf binary with its embedded eBPF programs.
    Build,
    /// Run the whole suite: formatting, clippy, unit tests and the
    /// privileged tests that load the programs into this kernel; or, with
    /// --kernel, the privileged tests on other kernels in VMs.
    Test(test::TestArgs),
    /// Show localhost forwarding on a throw-away desktop/bridge topology.
    Demo,
    /// Check deploy/ offline: the systemd unit with systemd-analyze, the
    /// Kubernetes manifest against the API's schemas.
    CheckDeploy,
    /// Build the agent's container image offline with Podman
    /// (`localhost/netbpf`), and save it under target/image/.
    Image(image::ImageArgs),
    /// Measure netbpf against no program and the iptables way, side by
    /// side; writes docs/benchmarks.md, its plots and the raw figures.
    Bench(bench::BenchArgs),
    /// Build the Debian package and a tarball for other distributions
    /// (release build, lintian-checked), in target/package/.
    Package,
    /// Boot a Debian node under systemd in a VM, install the package there
    /// and check what its users expect, across a reboot.
    Node(node::NodeArgs),
}

fn main() -> anyhow::Result<()> {
    let workspace = workspace_root();
    match Xtask::parse().command {
        Command::Setup => setup::setup(&workspace),
        Command::Build => build(&workspace).map(drop),
        Command::Test(args) => test::test(&workspace, &args),
        Command::Demo => demo::demo(&workspace),
        Command::CheckDeploy => deploy::check(&workspace),
        Command::Image(args) => image::image(&workspace, &args).map(drop),
        Command::Bench(args) => bench::bench(&workspace, args),
        Command::Package => package::package(&workspace).map(drop),
        Command::Node(args) => node::node(&workspace, &args),
    }
}

/// Builds the `netbpf` binary as its next version (a new map layout) would
/// be, as `target/debug/netbpf-next`, for the upgrade test; returns its
/// path. Call before [`build`], which writes the same output file.
fn build_next(workspace: &Path) -> anyhow::Result<PathBuf> {
    setup::build_toolchain(workspace)?;
    cmd::cargo(
        workspace,
        &[
            "build",
            "--package",
            "netbpf",
            "--bin",
            "netbpf",
            "--features",
            "next-layout",
        ],
    )?;
    let next = workspace.join("target/debug/netbpf-next");
    std::fs::copy(workspace.join("target/debug/netbpf"), &next)?;
    Ok(next)
}

/// Sets up what a build needs and builds the `netbpf` binary; returns its
/// path.
fn build(workspace: &Path) -> anyhow::Result<PathBuf> {
    setup::build_toolchain(workspace)?;
    cmd::cargo(
        workspace,
        &["build", "--package", "netbpf", "--bin", "netbpf"],
    )?;
    Ok(workspace.join("target/debug/netbpf"))
}

/// As [`build`], optimized: what a node runs, and what the bench measures.
fn build_release(workspace: &Path) -> anyhow::Result<PathBuf> {
    setup::build_toolchain(workspace)?;
    cmd::cargo(
        workspace,
        &[
            "build",
            "--release",
            "--package",
            "netbpf",
            "--bin",
            "netbpf",
        ],
    )?;
    Ok(workspace.join("target/release/netbpf"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the workspace")
        .to_owned()
}
