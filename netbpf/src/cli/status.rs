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
    /// Only the instances of this scope (its name in the policy).
    #[arg(long, value_name = "NAME")]
    scope: Option<String>,
    /// Only the instances of this container: its name, or the start of
    /// its id.
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut status = control::query(&args.run_dir)?;
    status.scopes.retain(|instance| {
        args.scope
            .as_ref()
            .is_none_or(|scope| instance.scope == *scope)
            && args.container.as_ref().is_none_or(|container| {
                instance.instance == *container
                    || instance
                        .container_id
                        .as_ref()
                        .is_some_and(|id| id.starts_with(container.as_str()))
            })
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", super::status_table::render(&status));
    }
    Ok(())
}
