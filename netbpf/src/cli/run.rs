//! `netbpf run`: validate a policy, load and attach the datapath, serve
//! status until SIGINT or SIGTERM, then detach and leave nothing behind.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    agent::{
        Agent, Signals,
        control::{self, RunDir},
        existing_binds,
        host_services::HostServices,
        mss_clamp::MssClamper,
    },
    cli::node::{Node, NodeArgs},
    datapath::{Datapath, Optional},
    host::{
        links::{self, LinkEvent, LinkWatcher},
        netns,
    },
    plan::{self, Plan, ScopeIds},
    policy,
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
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _context = runtime.enter();
    // Installed before anything is loaded: a signal that arrives while the
    // datapath loads is answered by the same clean exit as a later one.
    let mut signals = Signals::install()?;

    let Node {
        cgroup_root,
        netns: node_netns,
        resolver,
    } = args.node.node()?;
    // Everything is validated before the kernel is touched.
    let policy = policy::load(&args.policy, &resolver)?;
    let mut scope_ids = ScopeIds::default();
    let plan = plan::compile(&policy, &mut scope_ids);
    let mut run_dir = RunDir::claim(&args.run_dir)?;

    let mut datapath = Datapath::load(Optional {
        mss_egress: policy
            .mss_clamps
            .iter()
            .any(|clamp| clamp.direction.egress()),
        mss_ingress: policy
            .mss_clamps
            .iter()
            .any(|clamp| clamp.direction.ingress()),
        host_services: !policy.host_services.is_empty(),
    })?;
    datapath.update(&Plan::default(), &plan)?;
    datapath.attach(&cgroup_root, || {
        // Without them netbpf still runs: those services are forwarded
        // until they bind again, as if they had started after netbpf.
        existing_binds::find(&policy).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list the sockets already bound inside scopes");
            Vec::new()
        })
    })?;
    let mut host_services =
        HostServices::new(policy.host_services.clone(), args.node.netns.as_deref());
    if !host_services.is_empty() {
        datapath.attach_host_services(&node_netns)?;
        if let Err(error) = host_services.refresh(&mut datapath) {
            tracing::warn!(
                error = format!("{error:#}"),
                "looking for the host services' listeners"
            );
        }
        host_services.warn_missing();
    }
    let clamper = MssClamper::new(policy.mss_clamps.clone(), args.node.netns.as_deref());
    let (links, interfaces) = if clamper.is_empty() {
        (None, Vec::new())
    } else {
        let (socket, interfaces) =
            netns::in_netns_or_here(args.node.netns.as_deref(), links::subscribe_and_list)
                .and_then(|listed| listed)
                .context("listing the network interfaces")?;
        (Some(LinkWatcher::new(socket)?), interfaces)
    };
    let mut agent = Agent {
        datapath,
        policy,
        plan,
        scope_ids,
        resolver,
        clamper,
        host_services,
        links,
        policy_file: args.policy.clone(),
        cgroup_root,
    };
    let present: Vec<LinkEvent> = interfaces.into_iter().map(LinkEvent::Present).collect();
    agent.start_clamps(&present)?;
    print!("{}", agent.status()?.render());
    tracing::info!(run_dir = %args.run_dir.display(), "netbpf is running; SIGHUP reloads the policy, SIGINT or SIGTERM stops it");

    let listener = run_dir.take_listener()?;
    runtime.block_on(agent.serve(listener, &mut signals))?;
    tracing::info!("stopping: detaching the programs");
    agent.clamper.release_all(&mut agent.datapath);
    drop(agent);
    drop(run_dir);
    Ok(())
}
