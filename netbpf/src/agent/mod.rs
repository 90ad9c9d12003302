//! The running netbpf: answers status requests, follows interfaces as
//! they come and go, and stops on SIGINT or SIGTERM.

use std::{io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{Signal, SignalKind, signal},
};

pub mod control;
pub mod existing_binds;
pub mod host_services;
pub mod mss_clamp;
mod report;
pub mod status;

use self::{
    control::{Reloaded, Request},
    host_services::HostServices,
    mss_clamp::{ClampError, MssClamper},
};
use crate::{
    datapath::Datapath,
    host::{
        links::{LinkEvent, LinkWatcher},
        resolve::HostResolver,
    },
    plan::{self, Plan, ScopeIds},
    policy::{self, Policy},
};

/// The signals netbpf answers: SIGINT and SIGTERM stop it, SIGHUP
/// reloads its policy.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

/// What a signal asks for.
enum Asked {
    Stop,
    Reload,
}

impl Signals {
    /// Installs the handlers; needs a tokio runtime.
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
        })
    }

    /// The next signal (or one that arrived already).
    async fn received(&mut self) -> Asked {
        tokio::select! {
            _ = self.interrupt.recv() => Asked::Stop,
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.hangup.recv() => Asked::Reload,
        }
    }
}

/// Everything a running netbpf holds.
pub struct Agent {
    pub datapath: Datapath,
    pub policy: Policy,
    /// What the maps hold for `policy`.
    pub plan: Plan,
    pub scope_ids: ScopeIds,
    /// Resolves the policy file again at a reload.
    pub resolver: HostResolver,
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
        signals: &mut Signals,
    ) -> anyhow::Result<()> {
        // Host services are looked for every second: a restarted service
        // (autossh reconnecting) is handed connections again within it.
        let mut look_for_listeners = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                asked = signals.received() => match asked {
                    Asked::Stop => return Ok(()),
                    Asked::Reload => {
                        let _ = self.reload();
                    }
                },
                _ = look_for_listeners.tick(), if !self.host_services.is_empty() => {
                    if let Err(error) = self.host_services.refresh(&mut self.datapath) {
                        tracing::warn!(error = format!("{error:#}"), "host services not refreshed");
                    }
                }
                events = next_link_events(self.links.as_mut()) => self.follow(events),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Err(error) = self.answer(stream).await {
                            tracing::warn!(%error, "a control client went away");
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

    /// Reads one request from a control client and answers it.
    async fn answer(&mut self, stream: UnixStream) -> io::Result<()> {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(reader.take(64));
        tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await??;
        let answer = match Request::parse(&line) {
            Some(Request::Status) => self.document(),
            Some(Request::Reload) => {
                let error = self.reload().err().map(|error| format!("{error:#}"));
                serde_json::to_vec(&Reloaded { error }).expect("an answer serializes")
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown request {line:?}"),
                ));
            }
        };
        tokio::time::timeout(Duration::from_secs(2), writer.write_all(&answer)).await?
    }

    /// Reloads the policy file (SIGHUP, `netbpf reload`). A policy that does
    /// not validate, or changes what needs a restart, leaves the running one
    /// as it is.
    fn reload(&mut self) -> anyhow::Result<()> {
        let reloaded = self.try_reload();
        match &reloaded {
            Ok(()) => tracing::info!(policy = %self.policy_file.display(), "policy reloaded"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "policy not reloaded: the running one stays"
            ),
        }
        reloaded
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let policy = policy::load(&self.policy_file, &self.resolver)?;
        anyhow::ensure!(
            policy.host_services == self.policy.host_services
                && policy.mss_clamps == self.policy.mss_clamps,
            "host services and MSS clamps change only with a restart of netbpf"
        );
        let plan = plan::compile(&policy, &mut self.scope_ids);
        if let Err(error) = self.datapath.update(&self.plan, &plan) {
            // Back to what was there: no half-applied policy.
            let restored = self.datapath.update(&plan, &self.plan);
            return Err(anyhow::Error::from(error).context(match restored {
                Ok(()) => "updating the maps; the running policy was restored",
                Err(_) => "updating the maps, and restoring the running policy failed too",
            }));
        }
        self.datapath
            .reset_rule_stats(policy.rules.max(self.policy.rules))?;
        // Scopes new to this policy may have services listening already.
        let existing = existing_binds::find(&policy).unwrap_or_default();
        self.datapath.record_binds(&existing)?;
        self.policy = policy;
        self.plan = plan;
        Ok(())
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
