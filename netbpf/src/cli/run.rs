//! `netbpf run`: the agent with a policy of one file, in the foreground:
//! it detaches everything when it stops.

use std::path::PathBuf;

use crate::{
    agent::PolicySource,
    api::control,
    cli::{
        node::NodeArgs,
        serve::{Serving, serve},
    },
    containers::Runtimes,
    plan::Capacity,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy file (TOML, version 1; see docs/policy.md).
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
    /// Directory of the control socket that `netbpf status` reads.
    #[arg(long, default_value = control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Serve Prometheus metrics on ADDRESS:PORT (default: off).
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let node = args.node.node(None, None)?;
    serve(
        node,
        PolicySource::File(args.policy.clone()),
        &Runtimes::default(),
        Capacity::default(),
        Serving {
            run_dir: &args.run_dir,
            metrics: args.metrics,
        },
        None,
    )
}
