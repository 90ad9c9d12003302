//! A real containerd (Debian's) for one test: started inside a network
//! namespace of the test's own, with its own root, state and sockets, the
//! CRI plugin off; driven with `ctr`. Its containers go below a cgroup of
//! the test. Stopped, with every container and mount it made, when dropped.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::{
    Cgroup, Netns, Process, Spawn, ensure_podman_image, process::wait_for_daemon, run_checked,
    unique_name,
};

/// A running containerd of one test.
pub struct Containerd {
    daemon: Option<Process>,
    socket: PathBuf,
    state: PathBuf,
    namespace: String,
    dir: PathBuf,
    netns: Netns,
}

impl Containerd {
    /// Starts containerd in a new network namespace, itself in the cgroup
    /// `daemon_cgroup`, its files in `dir`.
    pub fn start(daemon_cgroup: &Cgroup, dir: &Path) -> anyhow::Result<Self> {
        let netns = Netns::new("nbctrd")?;
        std::fs::create_dir_all(dir)?;
        let path = |name: &str| dir.join(name);
        let config = path("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = \"{}\"\n[ttrpc]\naddress = \"{}\"\n[debug]\naddress = \"{}\"\n",
                path("root").display(),
                path("state").display(),
                path("containerd.sock").display(),
                path("containerd.sock.ttrpc").display(),
                path("debug.sock").display(),
            ),
        )?;
        let daemon = Spawn::new(
            daemon_cgroup.path(),
            Some(&netns.path()),
            "containerd",
            ["--config", config.to_str().context("UTF-8 path")?],
        )?
        .start(&path("containerd.log"))?;
        let containerd = Self {
            daemon: Some(daemon),
            socket: path("containerd.sock"),
            state: path("state"),
            namespace: unique_name("nbns"),
            dir: dir.to_owned(),
            netns,
        };
        wait_for_daemon("containerd", &path("containerd.log"), || {
            containerd.ctr(&["version"]).is_ok()
        })?;
        Ok(containerd)
    }

    /// Runs `ctr` against this containerd, in the test's namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let socket = self.socket.to_str().context("UTF-8 path")?;
        run_checked(
            "ctr",
            ["--address", socket, "--namespace", &self.namespace]
                .iter()
                .chain(args),
        )
    }

    /// Starts a task of `image` that sleeps, on the host's network (this
    /// containerd's namespace), in a cgroup below `parent`, with `labels`
    /// (`KEY=VALUE`, in its bundle's annotations); its id, 64 hexadecimal
    /// digits as the CRI makes them, unique by `number` in this process.
    pub fn run_task(
        &self,
        number: u32,
        parent: &Cgroup,
        image: &str,
        labels: &[&str],
    ) -> anyhow::Result<String> {
        let id = format!("{:0>64}", format!("{:x}{number:04x}", std::process::id()));
        let cgroup = format!("{}/{id}", parent.runtime_parent()?);
        let mut args = vec!["run", "--detach", "--net-host", "--cgroup", &cgroup];
        for label in labels {
            args.extend(["--label", label]);
        }
        args.extend([image, &id, "sleep", "600"]);
        self.ctr(&args)?;
        Ok(id)
    }

    /// The body task `id` gets for `GET /` from its `127.0.0.1:port`.
    pub fn get(&self, id: &str, port: u16) -> anyhow::Result<String> {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 {port}");
        let answer = self.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "probe",
            id,
            "sh",
            "-c",
            &script,
        ])?;
        Ok(answer.lines().last().unwrap_or_default().trim().to_owned())
    }

    /// Imports the Podman image `image` (exported as a docker archive).
    pub fn import_podman_image(&self, image: &str) -> anyhow::Result<()> {
        ensure_podman_image(image)?;
        let archive = self.dir.join("image.tar");
        let archive_text = archive.to_str().context("UTF-8 path")?;
        run_checked(
            "podman",
            [
                "save",
                "--quiet",
                "--format",
                "docker-archive",
                "--output",
                archive_text,
                image,
            ],
        )?;
        self.ctr(&["images", "import", archive_text]).map(drop)
    }

    /// Its gRPC socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's state directory, where its tasks' bundles are.
    #[must_use]
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The network namespace containerd and its host-network containers
    /// live in.
    #[must_use]
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(tasks) = self.ctr(&["tasks", "list", "--quiet"]) {
            for id in tasks.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "--force", id]);
            }
        }
        if let Ok(containers) = self.ctr(&["containers", "list", "--quiet"]) {
            for id in containers.split_whitespace() {
                let _ = self.ctr(&["containers", "delete", id]);
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
