//! The control socket's protocol: what a client asks a running netbpf
//! (one line), what it answers (one JSON document), and the calls of the
//! clients (`netbpf status`, `netbpf reload`, `netbpf hook`, `doctor`).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

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
