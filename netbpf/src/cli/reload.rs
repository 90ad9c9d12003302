//! `netbpf reload`: has a running netbpf reload its policy file, and waits
//! until it has (or said why not).

use std::path::PathBuf;

use anyhow::bail;

use crate::api::control;

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Run directory of the netbpf to reload (as given to `netbpf run`).
    #[arg(long, default_value = control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

pub fn reload(args: &ReloadArgs) -> anyhow::Result<()> {
    match control::reload(&args.run_dir)?.error {
        None => {
            println!("policy reloaded");
            Ok(())
        }
        Some(error) => bail!("policy not reloaded, the running one stays: {error}"),
    }
}
