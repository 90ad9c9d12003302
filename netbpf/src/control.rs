//! The control socket of a running netbpf: `netbpf status` connects to it
//! and reads one JSON status document.

use std::{
    io::Read as _,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::status::Status;

/// Where `netbpf run` serves its status, by default.
pub const DEFAULT_RUN_DIR: &str = "/run/netbpf";

/// The control socket inside a run directory.
#[must_use]
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("netbpf.sock")
}

/// Reads the status of the netbpf serving in `run_dir`.
pub fn query(run_dir: &Path) -> anyhow::Result<Status> {
    let path = socket_path(run_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no netbpf is running with run directory {} (cannot connect to {})",
            run_dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut document = Vec::new();
    stream
        .read_to_end(&mut document)
        .with_context(|| format!("reading the status from {}", path.display()))?;
    serde_json::from_slice(&document)
        .with_context(|| format!("parsing the status from {}", path.display()))
}
