//! `netbpf agent`: the node agent, configured by a file, with its policy
//! in a directory of files.

use std::path::PathBuf;

use crate::{
    agent::{
        PolicySource,
        config::{Config, DEFAULT_CONFIG},
    },
    cli::{
        node::NodeArgs,
        serve::{Serving, serve},
    },
    datapath::Pins,
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (TOML; see docs/agent.md). A missing default
    /// file means every default.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The policy directory, in place of the configuration's `policy_dir`.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// The run directory, in place of the configuration's `run_dir`.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDRESS:PORT, in place of the
    /// configuration's `metrics`.
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn agent(args: &AgentArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let node = args
        .node
        .node(config.cgroup_root.as_ref(), config.netns.as_ref())?;
    let policy_dir = args.policy_dir.clone().unwrap_or(config.policy_dir);
    let run_dir = args.run_dir.clone().unwrap_or(config.run_dir);
    serve(
        node,
        PolicySource::Dir(policy_dir),
        &config.runtimes,
        config.capacity,
        Serving {
            run_dir: &run_dir,
            metrics: args.metrics.or(config.metrics),
        },
        Some(&Pins::new(&config.pin_dir)),
    )
}
