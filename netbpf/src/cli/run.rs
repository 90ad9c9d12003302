//! `netbpf run`: validate a policy, load and attach the datapath, serve
//! status until SIGINT or SIGTERM, then detach and leave nothing behind.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncWriteExt as _,
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroup, control,
    datapath::Datapath,
    plan,
    policy::{self, Policy},
    resolve::HostResolver,
    status::Status,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy file (TOML, version 1; see docs/policy.md).
    #[arg(long)]
    policy: PathBuf,
    /// cgroup v2 directory to attach the programs to; they act on the
    /// sockets of every process below it. Default: the root of the cgroup
    /// v2 hierarchy.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Directory of the control socket that `netbpf status` reads.
    #[arg(long, default_value = control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let cgroup_root = match &args.cgroup_root {
        Some(root) => root.clone(),
        None => cgroup::cgroup2_mount().context("finding the cgroup v2 root")?,
    };
    let resolver = HostResolver::new(&cgroup_root).with_context(|| {
        format!(
            "cgroup root {} is not a cgroup v2 directory",
            cgroup_root.display()
        )
    })?;
    // Everything is validated before the kernel is touched.
    let policy = policy::load(&args.policy, &resolver)?;
    let plan = plan::compile(&policy);
    let run_dir = RunDir::claim(&args.run_dir)?;

    let mut datapath = Datapath::load()?;
    datapath.apply(&plan)?;
    datapath.attach(&cgroup_root)?;
    let status = Status::collect(&datapath, &policy, args.policy.clone(), cgroup_root.clone())?;
    print!("{}", status.render());
    tracing::info!(run_dir = %args.run_dir.display(), "netbpf is running; SIGINT or SIGTERM stops it");

    let server = Server {
        datapath: &datapath,
        policy: &policy,
        policy_file: &args.policy,
        cgroup_root: &cgroup_root,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(server.serve(&run_dir))?;
    tracing::info!("stopping: detaching the programs");
    drop(datapath);
    drop(run_dir);
    Ok(())
}

/// Answers status requests for the running datapath.
struct Server<'a> {
    datapath: &'a Datapath,
    policy: &'a Policy,
    policy_file: &'a Path,
    cgroup_root: &'a Path,
}

impl Server<'_> {
    /// Serves the control socket until SIGINT or SIGTERM.
    async fn serve(&self, run_dir: &RunDir) -> anyhow::Result<()> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let listener = UnixListener::bind(&run_dir.socket)
            .with_context(|| format!("listening on {}", run_dir.socket.display()))?;
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                accepted = listener.accept() => {
                    let (mut stream, _) = accepted.context("accepting a status request")?;
                    let document = self.document();
                    let reply = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&document));
                    if let Err(error) = reply.await.map_err(io::Error::from).and_then(|written| written) {
                        tracing::warn!(%error, "a status client went away");
                    }
                }
            }
        }
    }

    fn document(&self) -> Vec<u8> {
        let status = Status::collect(
            self.datapath,
            self.policy,
            self.policy_file.to_owned(),
            self.cgroup_root.to_owned(),
        );
        match status {
            Ok(status) => serde_json::to_vec(&status).expect("a status serializes"),
            Err(error) => {
                tracing::warn!(error = %anyhow::Error::from(error), "reading the counters failed");
                Vec::new()
            }
        }
    }
}

/// The run directory, claimed by this process: its control socket is
/// removed on drop, and the directory too if this process created it.
struct RunDir {
    dir: PathBuf,
    socket: PathBuf,
    created: bool,
}

impl RunDir {
    fn claim(dir: &Path) -> anyhow::Result<Self> {
        let created = !dir.exists();
        fs::create_dir_all(dir)
            .with_context(|| format!("creating run directory {}", dir.display()))?;
        let socket = control::socket_path(dir);
        if control::is_served(dir) {
            bail!(
                "another netbpf is running with run directory {}",
                dir.display()
            );
        }
        match fs::remove_file(&socket) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(error)
                    .with_context(|| format!("removing stale socket {}", socket.display()));
            }
            _ => {}
        }
        Ok(Self {
            dir: dir.to_owned(),
            socket,
            created,
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
        if self.created {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}
