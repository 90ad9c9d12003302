//! `netbpf run` as a child process: started with a policy, ready once its
//! control socket answers, stopped with SIGTERM (and killed on drop).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

use crate::{Process, process::DAEMON_START};

/// The `netbpf` binary under test: `$NETBPF_BIN`, else the one cargo built
/// beside the running test (`target/<profile>/netbpf`).
#[must_use]
pub fn netbpf_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NETBPF_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> -> target/<profile>/netbpf
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = profile_dir.join("netbpf");
    assert!(
        binary.is_file(),
        "the netbpf binary is not built at {}: run the tests with `cargo xtask test`, which builds it",
        binary.display()
    );
    binary
}

/// The next version of the `netbpf` binary (a new map layout), which
/// `cargo xtask test` builds beside it: `$NETBPF_NEXT_BIN`, else
/// `target/<profile>/netbpf-next`.
#[must_use]
pub fn netbpf_next_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NETBPF_NEXT_BIN") {
        return PathBuf::from(path);
    }
    let binary = netbpf_binary().with_file_name("netbpf-next");
    assert!(
        binary.is_file(),
        "the next version of netbpf is not built at {}: run the tests with `cargo xtask test`, which builds it",
        binary.display()
    );
    binary
}

/// Where and with what a test's netbpf process runs.
#[derive(Debug, Default, Clone)]
pub struct AgentProcess {
    /// The network namespace it runs in, entered by `nsenter` (which then
    /// becomes netbpf), for a node whose agent shares the namespace it
    /// attaches in (none: the test's own).
    pub netns: Option<PathBuf>,
    /// Where it tells its readiness, as systemd's `NOTIFY_SOCKET`.
    pub notify_socket: Option<PathBuf>,
}

/// A running `netbpf run`.
pub struct NetbpfRun {
    process: Process,
    binary: PathBuf,
    run_dir: PathBuf,
}

impl NetbpfRun {
    /// Starts `netbpf run` with `policy`, attached at `cgroup_root`, with
    /// its run directory and log in `work`; returns once it serves status.
    pub fn start(
        binary: &Path,
        policy: &Path,
        cgroup_root: &Path,
        work: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(binary, policy, cgroup_root, work, &[])
    }

    /// As [`Self::start`], with more arguments for `netbpf run`.
    pub fn start_with(
        binary: &Path,
        policy: &Path,
        cgroup_root: &Path,
        work: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<OsString> = vec!["run".into(), "--policy".into(), policy.into()];
        args.extend(["--cgroup-root".into(), cgroup_root.into()]);
        args.extend(extra_args.iter().map(OsString::from));
        Self::launch(binary, args, work, &AgentProcess::default())
    }

    /// `netbpf run` of the policy file `policy`, attached at
    /// `cgroup_root`, its network namespace `node` (a test's own); its run
    /// directory and log in a directory of its own in `work`.
    pub fn start_on_node(
        policy: &Path,
        cgroup_root: &Path,
        node: &crate::Netns,
        work: &Path,
    ) -> anyhow::Result<Self> {
        let dir = work.join(crate::unique_name("netbpf"));
        std::fs::create_dir(&dir)?;
        let node = node.path();
        let node = node.to_str().context("the namespace's path is UTF-8")?;
        Self::start_with(
            &netbpf_binary(),
            policy,
            cgroup_root,
            &dir,
            &["--netns", node],
        )
    }

    /// Starts `netbpf agent` with the configuration file `config`, its run
    /// directory and log in `work`, as `process` says; returns once it
    /// serves status.
    pub fn start_agent(
        binary: &Path,
        config: &Path,
        work: &Path,
        process: &AgentProcess,
    ) -> anyhow::Result<Self> {
        let args = vec!["agent".into(), "--config".into(), config.into()];
        Self::launch(binary, args, work, process)
    }

    /// Runs `netbpf ARGS --run-dir WORK/run` as `process` says, logging to
    /// `WORK/netbpf.log`, until its control socket answers.
    fn launch(
        binary: &Path,
        mut args: Vec<OsString>,
        work: &Path,
        process: &AgentProcess,
    ) -> anyhow::Result<Self> {
        let run_dir = work.join("run");
        args.extend(["--run-dir".into(), run_dir.clone().into()]);
        let log = work.join("netbpf.log");
        let out = std::fs::File::create(&log)?;
        let mut command = match &process.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        if let Some(socket) = &process.notify_socket {
            command.env("NOTIFY_SOCKET", socket);
        }
        crate::process::die_with_parent(&mut command);
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut run = Self {
            process: Process::from_child(child, log),
            binary: binary.to_owned(),
            run_dir,
        };
        let deadline = Instant::now() + DAEMON_START;
        while run.status_json().is_err() {
            if run.process.has_exited() {
                bail!("netbpf exited before it was ready:\n{}", run.process.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "netbpf was not ready after {} s:\n{}",
                    DAEMON_START.as_secs(),
                    run.process.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(run)
    }

    /// Polls `netbpf status --json` until `done` holds of it, for at most
    /// `timeout`; the status that satisfied it.
    pub fn wait_for_status(
        &self,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status_json()?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the status did not reach what was awaited in {timeout:?}: {status}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `netbpf status --json`, parsed.
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.status(&["--json"])?;
        Ok(serde_json::from_str(&output)?)
    }

    /// `netbpf status` with `args`: what it prints.
    pub fn status(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .arg("status")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!(
                "netbpf status failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// What `netbpf run` printed so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The programs it loaded: name -> kernel id.
    pub fn programs(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let status = self.status_json()?;
        status["programs"]
            .as_array()
            .context("status has programs")?
            .iter()
            .map(|program| {
                let name = program["name"].as_str().context("a program has a name")?;
                let id = program["id"].as_u64().context("a program has an id")?;
                Ok((name.to_owned(), id))
            })
            .collect()
    }

    /// Stops it with SIGTERM, as a service manager would.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)
    }

    /// Asks netbpf to reload its policy file (SIGHUP) and waits until its
    /// log says how that went; returns the log line.
    pub fn reload(&mut self) -> anyhow::Result<String> {
        let before = self.log().lines().count();
        self.process.signal(Signal::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .skip(before)
                .find(|line| line.contains("reloaded"))
            {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!("netbpf did not answer SIGHUP within 10 s:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits for netbpf to exit.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<ExitStatus> {
        self.process.stop(signal, Duration::from_secs(10))
    }

    #[must_use]
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Its process id, for what /proc says of it.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

/// The names (`SCOPE/INSTANCE`) of the scope instances a status document
/// shows applied.
#[must_use]
pub fn applied(status: &serde_json::Value) -> Vec<String> {
    status["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|scope| scope["error"].is_null())
        .filter_map(|scope| scope["name"].as_str().map(str::to_owned))
        .collect()
}
