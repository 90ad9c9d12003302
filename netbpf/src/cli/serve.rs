//! What `run` and `agent` share: start the agent, serve its control
//! socket until SIGINT or SIGTERM, then stop.

use std::io::IsTerminal as _;

use anyhow::Context as _;

use crate::{
    agent::{Agent, PolicySource, Signals, control::RunDir},
    containers::Runtimes,
    containers::engine,
    datapath::Pins,
    host::Node,
    plan::Capacity,
};

/// Where a running agent answers.
#[derive(Debug, Clone, Copy)]
pub struct Serving<'a> {
    /// The directory of its control socket.
    pub run_dir: &'a std::path::Path,
    /// Where it serves Prometheus metrics, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs an agent on `node` with the policy from `source`, answering as
/// `serving` says, until SIGINT or SIGTERM. With `pins` the datapath stays
/// in force when it stops; without, it goes with it.
pub fn serve(
    node: Node,
    source: PolicySource,
    runtimes: &Runtimes,
    capacity: Capacity,
    serving: Serving<'_>,
    pins: Option<&Pins>,
) -> anyhow::Result<()> {
    let run_dir = serving.run_dir;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _context = runtime.enter();
    // Installed before anything is loaded: a signal that arrives while the
    // datapath loads is answered by the same clean exit as a later one.
    let mut signals = Signals::install()?;
    // Validated before the run directory is claimed or the kernel touched.
    source.load()?;
    crate::host::capabilities::check()?;
    let mut run_dir_lock = RunDir::claim(run_dir)?;
    // Taken before the kernel is touched: an address in use fails the
    // start, not a later scrape.
    let metrics = serving
        .metrics
        .map(|address| {
            std::net::TcpListener::bind(address)
                .and_then(|listener| {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)
                })
                .with_context(|| format!("serving metrics on {address}"))
        })
        .transpose()?;
    // What the runtimes run now is known before the maps are touched.
    let described = runtime.block_on(engine::list_all(
        &runtimes.sockets(),
        std::time::Duration::from_secs(3),
    ));
    let mut agent = Agent::start(
        node,
        source,
        runtimes,
        capacity,
        pins,
        described,
        // What outlives this agent is kept for the next one.
        pins.map(|_| run_dir.join("described.json")),
    )?;
    let status = agent.status()?;
    // The table is for a person at a terminal; a log collector reading
    // stdout and stderr together gets only log events.
    if std::io::stdout().is_terminal() {
        print!("{}", super::status_table::render(&status));
    }
    tracing::info!(
        version = %status.version,
        map_layout = status.map_layout,
        pinned = status.pinned.as_ref().map(|dir| dir.display().to_string()),
        programs = status.programs.len(),
        run_dir = %run_dir.display(),
        "netbpf is running; SIGHUP reloads the policy, SIGINT or SIGTERM stops it"
    );
    if let Some(address) = serving.metrics {
        tracing::info!(%address, "serving Prometheus metrics on GET /metrics");
    }
    let listener = run_dir_lock.take_listener()?;
    // Under systemd (`Type=notify`) the units ordered after netbpf start
    // now, not when it was exec'd: the datapath is attached, the policy in
    // force for what runs, and the control socket listening.
    tell_service_manager(&[sd_notify::NotifyState::Ready]);
    runtime.block_on(agent.serve(listener, metrics, &mut signals))?;
    tell_service_manager(&[sd_notify::NotifyState::Stopping]);
    if let Some(pins) = pins {
        tracing::info!(pins = %pins.dir().display(), "stopping: the pinned datapath stays in force (`netbpf uninstall` removes it)");
    } else {
        tracing::info!("stopping: detaching the programs");
    }
    agent.release();
    drop(agent);
    drop(run_dir_lock);
    Ok(())
}

/// Tells the service manager that started netbpf (if one did: systemd's
/// `NOTIFY_SOCKET`) how it is doing. It only waits on the answer with
/// `Type=notify`; a failed datagram is logged, and changes nothing else.
fn tell_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "telling the service manager through NOTIFY_SOCKET failed");
    }
}
