//! `netbpf hook`: an OCI runtime hook (`createRuntime`, from `hooks.d`, as
//! Podman and CRI-O read them). It registers the container with the agent
//! and returns once the container's policy is in force, before its first
//! process runs.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::{
    api::control::{self, Registered},
    containers::oci::State,
};

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// Run directory of the agent to register with.
    #[arg(long, default_value = control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Fail (so the container does not start) when the agent cannot be
    /// asked or cannot apply the container's rules. By default the
    /// container starts anyway, without them, and the reason is logged.
    #[arg(long)]
    require: bool,
}

pub fn hook(args: &HookArgs) -> anyhow::Result<()> {
    let state: State = serde_json::from_reader(std::io::stdin().lock())
        .context("reading the container's state (the OCI runtime gives it on stdin)")?;
    let id = state.id.clone();
    let reason = match control::register(&args.run_dir, state) {
        Ok(Registered { error: None, .. }) => return Ok(()),
        Ok(Registered {
            error: Some(error),
            scope,
        }) => format!(
            "container {id}: the rules of {} are not applied: {error}",
            scope.unwrap_or_default()
        ),
        Err(error) => format!("container {id}: the agent was not asked: {error:#}"),
    };
    if args.require {
        bail!("{reason}");
    }
    eprintln!("netbpf hook: {reason}; the container starts without them");
    Ok(())
}
