//! Where the policy comes from, and its changes: the policy directory is
//! watched with inotify, and a file written, moved in or out, or removed
//! there asks for a reload. Editors write in bursts (a temporary file, a
//! rename), so the agent reloads once the burst is over.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{EventStream, Inotify, WatchMask};

use crate::policy::{self, Policy, PolicyError};

/// How long the directory stays quiet before the policy is reloaded.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// One file (`netbpf run --policy FILE`).
    File(PathBuf),
    /// Every `*.toml` file of a directory, merged.
    Dir(PathBuf),
}

impl PolicySource {
    /// Reads and validates the policy.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        match self {
            Self::File(file) => policy::load(file),
            Self::Dir(dir) => policy::load_dir(dir),
        }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Self::File(path) | Self::Dir(path) => path,
        }
    }
}

/// The changes of a policy directory.
pub struct PolicyWatch {
    events: EventStream<Vec<u8>>,
}

impl PolicyWatch {
    /// Watches `dir`; needs a tokio runtime.
    pub fn start(dir: &Path) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        let events = inotify.into_event_stream(vec![0; 4096])?;
        events.watches().add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::CREATE,
        )?;
        Ok(Self { events })
    }

    /// Waits for the next change of a policy file (`*.toml`).
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let event = self
                .events
                .next()
                .await
                .ok_or_else(|| io::Error::other("the inotify stream ended"))??;
            // The files `policy::load_dir` reads, the directory itself, or
            // what a Kubernetes ConfigMap volume swaps (`..data`, renamed
            // over in one step).
            let is_policy = event.name.as_deref().is_none_or(|name| {
                Path::new(name).extension().is_some_and(|ext| ext == "toml")
                    || name.to_str().is_some_and(|name| name.starts_with(".."))
            });
            if is_policy {
                return Ok(());
            }
        }
    }
}
