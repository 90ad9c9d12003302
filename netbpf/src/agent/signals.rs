//! The signals the agent answers: SIGINT and SIGTERM stop it, SIGHUP
//! reloads its policy.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals netbpf answers: SIGINT and SIGTERM stop it, SIGHUP
/// reloads its policy.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

/// What a signal asks for.
pub(super) enum Asked {
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
    pub(super) async fn received(&mut self) -> Asked {
        tokio::select! {
            _ = self.interrupt.recv() => Asked::Stop,
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.hangup.recv() => Asked::Reload,
        }
    }
}
