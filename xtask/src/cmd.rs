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

/// Fails with a clear message unless this process runs as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} loads eBPF programs and creates namespaces and cgroups: run it as root");
    }
    Ok(())
}
