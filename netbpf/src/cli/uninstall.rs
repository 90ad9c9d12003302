//! `netbpf uninstall`: removes the pinned datapath (every link, so every
//! program detaches, and every map), once no agent runs, and the clsact
//! filters of its tc programs (before TCX, no pin holds them).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    agent::{
        config::{Config, DEFAULT_CONFIG},
        control::RunDir,
    },
    datapath::{Pins, remove_clsact_filters},
    host::{links, netns},
};

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The agent's configuration file, for its `pin_dir` and `run_dir`.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The pinned datapath's directory, in place of the configuration's.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// The agent's run directory, in place of the configuration's.
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let pin_dir = args.pin_dir.clone().unwrap_or(config.pin_dir);
    let run_dir = args.run_dir.clone().unwrap_or(config.run_dir);
    // A running agent would pin again what is removed: it stops first.
    let _claim = RunDir::claim(&run_dir).context("stop the agent before uninstalling")?;
    if pin_dir.exists() {
        Pins::new(&pin_dir).remove_all()?;
        println!(
            "removed the datapath pinned at {}: its programs are detached",
            pin_dir.display()
        );
    } else {
        println!("nothing is pinned at {}", pin_dir.display());
    }
    let cleaned = netns::in_netns_or_here(config.netns.as_deref(), || {
        let interfaces = links::list()?;
        remove_clsact_filters(interfaces.iter().map(|interface| interface.name.as_str()))
            .map_err(std::io::Error::other)
    })
    .and_then(|cleaned| cleaned)
    .context("removing netbpf's clsact filters")?;
    if cleaned > 0 {
        println!("removed netbpf's clsact filters from {cleaned} interfaces");
    }
    Ok(())
}
