//! The control socket of a running netbpf: `netbpf status` connects to it
//! and reads one JSON status document.

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    os::unix::net::{UnixListener as StdUnixListener, UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use super::status::Status;
use crate::containers::oci::State;

/// Where `netbpf run` serves its status, by default.
pub const DEFAULT_RUN_DIR: &str = "/run/netbpf";

/// The control socket inside a run directory.
#[must_use]
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("netbpf.sock")
}

/// What a client asks of a running netbpf: one line on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The status document.
    Status,
    /// Reload the policy file, and say how that went.
    Reload,
    /// Apply the policy to a container that is about to run (an OCI hook
    /// calls), and answer once it is in the maps.
    Register(State),
}

impl Request {
    const STATUS: &'static str = "status";
    const RELOAD: &'static str = "reload";
    const REGISTER: &'static str = "register ";

    /// The longest request line: an OCI state with its annotations.
    pub const MAX_LINE: u64 = 64 * 1024;

    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            Self::STATUS => Some(Self::Status),
            Self::RELOAD => Some(Self::Reload),
            other => serde_json::from_str(other.strip_prefix(Self::REGISTER)?)
                .ok()
                .map(Self::Register),
        }
    }

    fn line(&self) -> String {
        match self {
            Self::Status => Self::STATUS.to_owned(),
            Self::Reload => Self::RELOAD.to_owned(),
            Self::Register(state) => format!(
                "{}{}",
                Self::REGISTER,
                serde_json::to_string(state).expect("a state serializes")
            ),
        }
    }
}

/// The answer to [`Request::Register`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    /// The scope instance the container got, in force now; None when no
    /// scope matches it.
    pub scope: Option<String>,
    /// Why the instance's rules are not applied; None when they are.
    pub error: Option<String>,
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// Why the policy was not reloaded; None when it was.
    pub error: Option<String>,
}

/// Reads the status of the netbpf serving in `run_dir`.
pub fn query(run_dir: &Path) -> anyhow::Result<Status> {
    let answer = ask(run_dir, &Request::Status)?;
    serde_json::from_slice(&answer).context("parsing the status")
}

/// Has the netbpf serving in `run_dir` reload its policy, and waits for it.
pub fn reload(run_dir: &Path) -> anyhow::Result<Reloaded> {
    let answer = ask(run_dir, &Request::Reload)?;
    serde_json::from_slice(&answer).context("parsing the answer to reload")
}

/// Registers a container about to run with the netbpf serving in
/// `run_dir`, and waits until its policy is in force.
pub fn register(run_dir: &Path, state: State) -> anyhow::Result<Registered> {
    let answer = ask(run_dir, &Request::Register(state))?;
    serde_json::from_slice(&answer).context("parsing the answer to register")
}

/// Sends `request` to the netbpf serving in `run_dir`; its answer.
fn ask(run_dir: &Path, request: &Request) -> anyhow::Result<Vec<u8>> {
    let path = socket_path(run_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no netbpf is running with run directory {} (cannot connect to {})",
            run_dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(stream, "{}", request.line())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    Ok(answer)
}

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
