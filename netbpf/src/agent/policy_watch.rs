//! Where the policy comes from, and its changes: the policy directory is
//! watched with inotify, and a file written, moved in or out, or removed
//! there asks for a reload. Editors write in bursts (a temporary file, a
//! rename), so the agent reloads once the burst is over. A new file counts
//! once it is closed, not when it is created: `cat > FILE` may take its
//! time between the two, and the half-written file is not the policy.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{EventMask, EventStream, Inotify, WatchMask};

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
    dir: PathBuf,
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
        Ok(Self {
            dir: dir.to_owned(),
            events,
        })
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
            // A regular file just created is being written: its close
            // says when it is whole. A link (`ln -s`) is whole at once.
            let being_written = event.mask.contains(EventMask::CREATE)
                && event.name.as_deref().is_some_and(|name| {
                    std::fs::symlink_metadata(self.dir.join(name))
                        .is_ok_and(|metadata| metadata.file_type().is_file())
                });
            if is_policy && !being_written {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write as _};

    use super::*;

    /// Whether the watch reports a change within half a second.
    async fn reports(watch: &mut PolicyWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(500), watch.changed())
            .await
            .is_ok_and(|changed| changed.is_ok())
    }

    /// `cat > FILE` as a user types it: the file exists, half written,
    /// long before it is closed.
    #[tokio::test]
    async fn a_file_being_written_counts_once_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = PolicyWatch::start(dir.path()).unwrap();
        let mut file = fs::File::create(dir.path().join("50-tunnel.toml")).unwrap();
        file.write_all(b"version = 1\n[[host_service]]\n").unwrap();
        assert!(!reports(&mut watch).await, "a half-written file counted");
        file.write_all(b"name = \"gpu\"\n").unwrap();
        drop(file);
        assert!(reports(&mut watch).await, "the closed file did not count");
    }

    #[tokio::test]
    async fn links_renames_and_removals_count_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let written = outside.path().join("written.toml");
        fs::write(&written, "version = 1\n").unwrap();
        let mut watch = PolicyWatch::start(dir.path()).unwrap();
        std::os::unix::fs::symlink(&written, dir.path().join("10-link.toml")).unwrap();
        assert!(reports(&mut watch).await, "a link did not count");
        fs::rename(&written, dir.path().join("20-moved.toml")).unwrap();
        assert!(reports(&mut watch).await, "a rename did not count");
        fs::remove_file(dir.path().join("20-moved.toml")).unwrap();
        assert!(reports(&mut watch).await, "a removal did not count");
        fs::write(dir.path().join("notes.txt"), "not policy").unwrap();
        assert!(!reports(&mut watch).await, "a file of no policy counted");
    }
}
