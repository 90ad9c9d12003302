//! The running netbpf: answers status requests, follows interfaces as
//! they come and go, and stops on SIGINT or SIGTERM.

use std::{io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::AsyncWriteExt as _,
    net::UnixListener,
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    datapath::Datapath,
    host_services::HostServices,
    links::{LinkEvent, LinkWatcher},
    mss_clamp::{ClampError, MssClamper},
    policy::Policy,
    status::Status,
};

/// SIGINT and SIGTERM, the two ways to stop netbpf.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs the handlers; needs a tokio runtime.
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    /// Resolves when either signal arrives (or arrived already).
    async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

/// Everything a running netbpf holds.
pub struct Agent {
    pub datapath: Datapath,
    pub policy: Policy,
    pub clamper: MssClamper,
    pub host_services: HostServices,
    /// Interface changes, where the policy clamps MSS.
    pub links: Option<LinkWatcher>,
    pub policy_file: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Agent {
    /// Follows interface changes and serves the control socket until
    /// SIGINT or SIGTERM.
    pub async fn serve(
        &mut self,
        listener: UnixListener,
        stop: &mut StopSignals,
    ) -> anyhow::Result<()> {
        // Host services are looked for every second: a restarted service
        // (autossh reconnecting) is handed connections again within it.
        let mut look_for_listeners = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.received() => return Ok(()),
                _ = look_for_listeners.tick(), if !self.host_services.is_empty() => {
                    if let Err(error) = self.host_services.refresh(&mut self.datapath) {
                        tracing::warn!(error = format!("{error:#}"), "host services not refreshed");
                    }
                }
                events = next_link_events(self.links.as_mut()) => self.follow(events),
                accepted = listener.accept() => match accepted {
                    Ok((mut stream, _)) => {
                        let document = self.document();
                        let reply = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&document));
                        if let Err(error) = reply.await.map_err(io::Error::from).and_then(|written| written) {
                            tracing::warn!(%error, "a status client went away");
                        }
                    }
                    // Out of descriptors, or a client that gave up: the
                    // datapath runs on, and so does the socket.
                    Err(error) => {
                        tracing::warn!(%error, "accepting a status request failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Applies interface changes to the MSS clamps. A change that cannot
    /// be applied is logged: the rest of the datapath runs on.
    fn follow(&mut self, events: io::Result<Vec<LinkEvent>>) {
        match events {
            Ok(events) => {
                for event in &events {
                    if let Err(error) = self.clamper.handle(&mut self.datapath, event) {
                        tracing::warn!(error = format!("{error:#}"), "MSS clamp not applied");
                    }
                }
            }
            // The kernel dropped events (ENOBUFS): look at everything again.
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("interface events were lost: listing the interfaces again");
                if let Err(error) = self.clamper.resync(&mut self.datapath) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "MSS clamps not resynchronised"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "reading interface changes failed"),
        }
    }

    /// Applies `events` at start. An interface that cannot be clamped (of a
    /// kind netbpf cannot parse, or gone while it was attached) is said and
    /// skipped, as it would be later; running out of room is an error.
    pub fn start_clamps(&mut self, events: &[LinkEvent]) -> Result<(), ClampError> {
        for event in events {
            match self.clamper.handle(&mut self.datapath, event) {
                Err(error @ ClampError::TooManyInterfaces) => return Err(error),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "not clamping MSS"),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// The current status.
    pub fn status(&self) -> anyhow::Result<Status> {
        Status::collect(self)
    }

    fn document(&self) -> Vec<u8> {
        match self.status() {
            Ok(status) => serde_json::to_vec(&status).expect("a status serializes"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the counters failed");
                Vec::new()
            }
        }
    }
}

/// The next interface changes, or never when nothing is watched.
async fn next_link_events(links: Option<&mut LinkWatcher>) -> io::Result<Vec<LinkEvent>> {
    match links {
        Some(links) => links.next().await,
        None => std::future::pending().await,
    }
}
