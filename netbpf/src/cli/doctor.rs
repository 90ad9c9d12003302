//! `netbpf doctor`: what is wrong with this node's container networking,
//! and the policy that fixes it.

use std::path::PathBuf;

use crate::{
    agent::config::{Config, DEFAULT_CONFIG},
    cli::node::NodeArgs,
    doctor::{self, Focus, Scene},
};

/// The exit status of a report with findings.
const FOUND_PROBLEMS: i32 = 2;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Look at one container only: its name, id (or a prefix of it), or
    /// the PID of one of its processes.
    container: Option<String>,
    /// Why can the container not reach this: `HOST:PORT`, where HOST is
    /// `localhost`, an address, or a name of the container's /etc/hosts.
    #[arg(long, value_parser = parse_target, requires = "container")]
    to: Option<(String, u16)>,
    /// Only findings about this port; with a container and no --to, why
    /// it cannot reach localhost:PORT.
    #[arg(long)]
    port: Option<u16>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The agent's configuration: where its cgroup root, network
    /// namespace, pins, run directory and runtimes are.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The agent's run directory, in place of the configuration's
    /// `run_dir`.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// `HOST:PORT`, `[V6]:PORT`.
fn parse_target(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} in {text:?} is not a port (1 to 65535)"))?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') && !bracketed {
        return Err(format!(
            "{text:?}: write an IPv6 address in brackets, [ADDRESS]:PORT"
        ));
    }
    if host.is_empty() || port == 0 {
        return Err(format!("{text:?} is not HOST:PORT"));
    }
    Ok((host.to_owned(), port))
}

/// Exits 0 on a clean report, 2 when it has findings.
pub fn doctor(args: &DoctorArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let node = args
        .node
        .node(config.cgroup_root.as_ref(), config.netns.as_ref())?;
    let scene = Scene {
        node: &node,
        pin_dir: config.pin_dir,
        run_dir: args.run_dir.clone().unwrap_or(config.run_dir),
        runtimes: &config.runtimes,
    };
    let focus = Focus {
        container: args.container.clone(),
        to: args.to.clone(),
        port: args.port,
    };
    let report = doctor::examine(&scene, &focus)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.findings.is_empty() {
        std::process::exit(FOUND_PROBLEMS);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn a_target_is_a_host_and_a_port() {
        assert_eq!(
            parse_target("host.docker.internal:18188"),
            Ok(("host.docker.internal".to_owned(), 18188))
        );
        assert_eq!(parse_target("[::1]:80"), Ok(("::1".to_owned(), 80)));
        assert!(parse_target("localhost").is_err());
        assert!(parse_target("fd00::1:80").is_err());
        assert!(parse_target("localhost:0").is_err());
        assert!(parse_target("localhost:http").is_err());
    }
}
