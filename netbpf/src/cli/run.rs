//! `netbpf run`: validate a policy, load and attach the datapath, serve
//! status until SIGINT or SIGTERM, then detach and leave nothing behind.

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
    io::AsyncWriteExt as _,
    net::UnixListener,
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    cgroup, control,
    datapath::Datapath,
    existing_binds, plan,
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _context = runtime.enter();
    // Installed before anything is loaded: a signal that arrives while the
    // datapath loads is answered by the same clean exit as a later one.
    let mut stop = StopSignals::install()?;

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
    let mut run_dir = RunDir::claim(&args.run_dir)?;

    let mut datapath = Datapath::load()?;
    datapath.apply(&plan)?;
    datapath.attach(&cgroup_root, || {
        // Without them netbpf still runs: those services are forwarded
        // until they bind again, as if they had started after netbpf.
        existing_binds::find(&policy).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list the sockets already bound inside scopes");
            Vec::new()
        })
    })?;
    let server = Server {
        datapath: &datapath,
        policy: &policy,
        policy_file: &args.policy,
        cgroup_root: &cgroup_root,
    };
    print!("{}", server.status()?.render());
    tracing::info!(run_dir = %args.run_dir.display(), "netbpf is running; SIGINT or SIGTERM stops it");

    let listener = run_dir.take_listener()?;
    runtime.block_on(server.serve(listener, &mut stop))?;
    tracing::info!("stopping: detaching the programs");
    drop(datapath);
    drop(run_dir);
    Ok(())
}

/// SIGINT and SIGTERM, the two ways to stop netbpf.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    /// Resolves when either signal arrives (or arrived already).
    async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
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
    async fn serve(&self, listener: UnixListener, stop: &mut StopSignals) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.received() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((mut stream, _)) => {
                        let document = self.document();
                        let reply = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&document));
                        if let Err(error) = reply.await.map_err(io::Error::from).and_then(|written| written) {
                            tracing::warn!(%error, "a status client went away");
                        }
                    }
                    // Out of descriptors, or a client that gave up: the
                    // datapath runs on, and so does the socket.
                    Err(error) => {
                        tracing::warn!(%error, "accepting a status request failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    fn status(&self) -> anyhow::Result<Status> {
        Ok(Status::collect(
            self.datapath,
            self.policy,
            self.policy_file.to_owned(),
            self.cgroup_root.to_owned(),
        )?)
    }

    fn document(&self) -> Vec<u8> {
        match self.status() {
            Ok(status) => serde_json::to_vec(&status).expect("a status serializes"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the counters failed");
                Vec::new()
            }
        }
    }
}

/// The run directory, held by this process through an exclusive lock on
/// its lock file, with the control socket bound. On drop the socket and
/// lock file are removed, and the directory too if this process made it.
struct RunDir {
    dir: PathBuf,
    socket: PathBuf,
    lock_file: PathBuf,
    listener: Option<StdUnixListener>,
    _lock: Flock<File>,
    created: bool,
}

impl RunDir {
    fn claim(dir: &Path) -> anyhow::Result<Self> {
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
        let socket = control::socket_path(dir);
        match fs::remove_file(&socket) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(error)
                    .with_context(|| format!("removing stale socket {}", socket.display()));
            }
            _ => {}
        }
        let listener = StdUnixListener::bind(&socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
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
    fn take_listener(&mut self) -> anyhow::Result<UnixListener> {
        let listener = self
            .listener
            .take()
            .context("the control socket is served once")?;
        Ok(UnixListener::from_std(listener)?)
    }
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
