//! `netbpf check`: validate and resolve a policy on this host, as `run`
//! would, without loading anything.

use std::path::PathBuf;

use crate::{cli::node::NodeArgs, policy};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file (TOML, version 1; see docs/policy.md).
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let node = args.node.node()?;
    let policy = policy::load(&args.policy, &node.resolver)?;
    let count = |rules: fn(&policy::Scope) -> usize| policy.scopes.iter().map(rules).sum::<usize>();
    println!(
        "{}: valid: {} scopes, {} forwards, {} host service grants, {} bind remaps, {} aliases, {} host services, {} MSS clamps",
        args.policy.display(),
        policy.scopes.len(),
        count(|scope| scope.forwards.len()),
        count(|scope| scope.grants.len()),
        count(|scope| scope.binds.len()),
        count(|scope| scope.aliases.len()),
        policy.host_services.len(),
        policy.mss_clamps.len(),
    );
    Ok(())
}
