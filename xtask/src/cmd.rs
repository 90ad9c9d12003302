//! Running commands, with what failed in the error.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Runs `command`, streaming its output; fails unless it exits 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its standard output; fails unless it exits 0.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs the stable `cargo` with `args` in the workspace.
pub fn cargo(workspace: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace))
}

/// The workspace's crates of kernel programs: built by the build scripts
/// for the BPF target, never compiled or tested for the host.
pub const KERNEL_CRATES: [&str; 2] = ["netbpf-ebpf", "netbpf-bench-ebpf"];

/// `cargo test` of the whole workspace but [`KERNEL_CRATES`]: the one
/// selection every build of the tests uses, so that each reuses what the
/// others built (another selection unifies other features, and rebuilds).
pub fn workspace_tests(workspace: &Path) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.args(["test", "--workspace"]).current_dir(workspace);
    for name in KERNEL_CRATES {
        command.args(["--exclude", name]);
    }
    command
}

/// Fails with a clear message unless this process runs as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} loads eBPF programs and creates namespaces and cgroups: run it as root");
    }
    Ok(())
}
