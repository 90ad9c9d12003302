//! `netbpf status`: what a running netbpf has applied, with counters.

use std::path::PathBuf;

use crate::api::control;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Run directory of the netbpf to ask (as given to `netbpf run`).
    #[arg(long, default_value = control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let status = control::query(&args.run_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", super::status_table::render(&status));
    }
    Ok(())
}
