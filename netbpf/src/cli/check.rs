//! `netbpf check`: validate a policy file or directory, loading nothing.

use std::path::PathBuf;

use crate::agent::PolicySource;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file, or directory of policy files (TOML, version 1; see
    /// docs/policy.md).
    #[arg(long)]
    policy: PathBuf,
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let source = if args.policy.is_dir() {
        PolicySource::Dir(args.policy.clone())
    } else {
        PolicySource::File(args.policy.clone())
    };
    let policy = source.load()?;
    println!(
        "{}: valid: {} scopes, {} host services, {} MSS clamps",
        args.policy.display(),
        policy.scopes.len(),
        policy.host_services.len(),
        policy.mss_clamps.len(),
    );
    Ok(())
}
