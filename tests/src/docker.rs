//! A real Docker daemon (Debian's docker.io) for one test: started inside
//! a network namespace of the test's own, with its own data, exec root,
//! socket and containerd namespace, so it touches nothing of the host's
//! (its bridge and iptables rules land in that namespace). Its containers
//! go below a cgroup of the test. Its containerd is the test's own too,
//! started beside it rather than by it: dockerd kills a containerd that
//! does not answer within its patience, and restarts it, which in a kernel
//! VM without KVM can go on past any test's. Stopped, with every container
//! and mount it made, when dropped; the containers of a daemon that left a
//! command unanswered go with their cgroup instead.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

use crate::{
    Cgroup, Containerd, Netns, Process, Spawn, busybox_rootfs,
    process::{output_within, wait_for_daemon},
    unique_name,
};

/// How long one docker command may run: a daemon wedged on a container
/// (its shim gone, its kill never answered) fails the caller, never hangs
/// it.
const CLIENT_LIMIT: Duration = Duration::from_mins(5);

/// A running dockerd of one test.
pub struct DockerDaemon {
    daemon: Option<Process>,
    socket: PathBuf,
    dir: PathBuf,
    netns: Netns,
    /// Whether a command went unanswered: the daemon is wedged, and what
    /// it still runs is killed with its cgroups rather than removed
    /// through it (each removal would wait out [`CLIENT_LIMIT`]).
    wedged: AtomicBool,
    /// Stopped after dockerd (fields drop after [`Drop::drop`]).
    _containerd: Containerd,
}

impl DockerDaemon {
    /// Starts dockerd in a new network namespace, its bridge on `bridge`
    /// (`ADDR/LEN`), its containers' cgroups below `containers`, itself in
    /// the cgroup `daemon_cgroup`, its files in `dir`.
    pub fn start(
        containers: &Cgroup,
        daemon_cgroup: &Cgroup,
        bridge: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let netns = Netns::new("nbdock")?;
        std::fs::create_dir_all(dir)?;
        let own_containerd = Containerd::start(daemon_cgroup, &dir.join("containerd"))?;
        let socket = dir.join("docker.sock");
        let namespace = unique_name("nbd");
        let parent = containers.runtime_parent()?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let args = [
            "--data-root".to_owned(),
            path("data"),
            "--exec-root".to_owned(),
            path("exec"),
            "-H".to_owned(),
            format!("unix://{}", socket.display()),
            "--pidfile".to_owned(),
            path("docker.pid"),
            "--containerd-namespace".to_owned(),
            namespace.clone(),
            "--containerd-plugins-namespace".to_owned(),
            format!("{namespace}-p"),
            "--bip".to_owned(),
            bridge.to_owned(),
            "--cgroup-parent".to_owned(),
            parent,
            "--containerd".to_owned(),
            own_containerd.socket().to_string_lossy().into_owned(),
            "--log-level".to_owned(),
            "warn".to_owned(),
        ];
        let daemon = Spawn::new(daemon_cgroup.path(), Some(&netns.path()), "dockerd", &args)?
            .start(&dir.join("dockerd.log"))?;
        let docker = Self {
            daemon: Some(daemon),
            socket,
            dir: dir.to_owned(),
            netns,
            wedged: AtomicBool::new(false),
            _containerd: own_containerd,
        };
        wait_for_daemon("dockerd", &dir.join("dockerd.log"), || {
            docker.docker(&["version"]).is_ok()
        })?;
        Ok(docker)
    }

    /// Its data root, where it keeps each container's state.
    #[must_use]
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs the docker client against this daemon; what it printed.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        self.docker_within(args, CLIENT_LIMIT)
    }

    /// Runs the docker client against this daemon, for at most `limit`
    /// (then the daemon counts as wedged); what it printed.
    pub fn docker_within(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let output = output_within(
            Command::new(client())
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args),
            limit,
        )
        .inspect_err(|_| self.wedged.store(true, Ordering::Relaxed))?;
        if !output.status.success() {
            bail!(
                "docker {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Imports the busybox image as `name` (never pulled).
    pub fn import_busybox(&self, name: &str) -> anyhow::Result<()> {
        let tar = busybox_rootfs(&self.dir)?;
        self.docker(&["import", tar.to_str().context("UTF-8 path")?, name])
            .map(drop)
    }

    /// The daemon's Engine API socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The network namespace the daemon and its bridge live in.
    #[must_use]
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        if !self.wedged.load(Ordering::Relaxed)
            && let Ok(ids) = self.docker(&["ps", "-aq"])
        {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "--force"];
                args.extend(ids);
                if let Err(error) = self.docker(&args) {
                    eprintln!("warning: {error:#}");
                }
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.stop(Signal::SIGTERM, Duration::from_secs(20));
        }
        // Whatever it left mounted below its directory goes before the
        // directory does.
        crate::unmount_below(&self.dir);
    }
}

/// The docker client.
fn client() -> &'static str {
    "docker"
}
