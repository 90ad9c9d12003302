//! The control socket of a running netbpf, served: its run directory,
//! claimed by one agent at a time, the socket bound in it that only root
//! may connect to, and each client's request read and answered. What goes
//! over it is `api::control`'s.

use std::{
    fs::{self, File},
    io,
    os::unix::net::UnixListener as StdUnixListener,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::api::control::{Request, socket_path};

/// The run directory, held by this process through an exclusive lock on
/// its lock file, with the control socket bound. On drop the socket and
/// lock file are removed, and the directory too if this process made it.
pub struct RunDir {
    dir: PathBuf,
    socket: PathBuf,
    lock_file: PathBuf,
    listener: Option<StdUnixListener>,
    _lock: Flock<File>,
    created: bool,
}

impl RunDir {
    /// Claims `dir` for this process, or fails if another netbpf holds it.
    pub fn claim(dir: &Path) -> anyhow::Result<Self> {
        let created = !dir.exists();
        fs::create_dir_all(dir)
            .with_context(|| format!("creating run directory {}", dir.display()))?;
        let lock_file = dir.join("netbpf.lock");
        let file = File::create(&lock_file)
            .with_context(|| format!("creating {}", lock_file.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                bail!(
                    "another netbpf is running with run directory {}",
                    dir.display()
                )
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("locking {}", lock_file.display()));
            }
        };
        // Under the lock, a socket left here is a dead instance's.
        let socket = socket_path(dir);
        match fs::remove_file(&socket) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(error)
                    .with_context(|| format!("removing stale socket {}", socket.display()));
            }
            _ => {}
        }
        let listener = bind_private(&socket)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            dir: dir.to_owned(),
            socket,
            lock_file,
            listener: Some(listener),
            _lock: lock,
            created,
        })
    }

    /// The bound control socket, for the runtime to serve.
    pub fn take_listener(&mut self) -> anyhow::Result<UnixListener> {
        let listener = self
            .listener
            .take()
            .context("the control socket is served once")?;
        Ok(UnixListener::from_std(listener)?)
    }
}

/// Binds the control socket at `socket` with its final mode, 0600: only
/// root may ask, for a hook's registration applies policy. It is bound
/// and restricted in a directory only its owner can enter, then moved into
/// place, so that no other user can connect to it in between.
fn bind_private(socket: &Path) -> anyhow::Result<StdUnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let parent = socket
        .parent()
        .context("the socket is in the run directory")?;
    let private = parent.join(format!(".bind-{}", std::process::id()));
    let _ = fs::remove_dir_all(&private);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = private.join("socket");
    let listener = StdUnixListener::bind(&bound)
        .and_then(|listener| {
            fs::set_permissions(&bound, fs::Permissions::from_mode(0o600))?;
            fs::rename(&bound, socket)?;
            Ok(listener)
        })
        .with_context(|| format!("listening on {}", socket.display()));
    let _ = fs::remove_dir_all(&private);
    listener
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.lock_file);
        if self.created {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// A control request, and where its answer goes.
pub type ControlRequest = (Request, tokio::sync::oneshot::Sender<Vec<u8>>);

/// Reads one request from a control client, has the loop answer it
/// through `asking`, and writes the answer back.
pub async fn serve_client(stream: UnixStream, asking: tokio::sync::mpsc::Sender<ControlRequest>) {
    let served = async {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(reader.take(Request::MAX_LINE));
        tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await??;
        let request = Request::parse(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request {line:?}"),
            )
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        asking
            .send((request, reply))
            .await
            .map_err(|_| io::Error::other("the agent is stopping"))?;
        let answer = answer
            .await
            .map_err(|_| io::Error::other("the agent is stopping"))?;
        tokio::time::timeout(Duration::from_secs(2), writer.write_all(&answer)).await?
    };
    if let Err(error) = served.await {
        tracing::warn!(%error, "a control client went away");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_control_socket_is_owner_only_and_nothing_of_its_binding_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::claim(&dir.path().join("run")).unwrap();
        let mode = fs::metadata(&run.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(&run.dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "the socket and the lock only: {names:?}");
    }
}
