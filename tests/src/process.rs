//! Processes started inside a cgroup and a network namespace, killed when
//! their guard is dropped.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

/// Builds commands that start in a given cgroup and network namespace.
///
/// The child joins the cgroup before the namespace and before `exec`, so
/// that its sockets belong to the cgroup from the start (`ip netns exec`
/// would remount /sys and hide the cgroup).
pub struct Spawn {
    command: Command,
}

impl Spawn {
    /// `program` with `args`, to run in `cgroup` (a cgroup v2 directory)
    /// and in the network namespace at `netns` (None: this one).
    pub fn new<S: AsRef<std::ffi::OsStr>>(
        cgroup: &Path,
        netns: Option<&Path>,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> anyhow::Result<Self> {
        let procs = OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
        let namespace = netns
            .map(|path| {
                File::open(path).with_context(|| format!("opening netns {}", path.display()))
            })
            .transpose()?;
        let mut command = Command::new(program);
        command.args(args);
        die_with_parent(&mut command);
        // SAFETY: the closure only makes async-signal-safe system calls
        // (write, setns) on descriptors opened before the fork.
        unsafe {
            command.pre_exec(move || {
                let written = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(namespace) = &namespace {
                    setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET)?;
                }
                Ok(())
            });
        }
        Ok(Self { command })
    }

    /// Sets the working directory of the child.
    #[must_use]
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Sets an environment variable of the child.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    /// Starts the command in the background; its output goes to `log`.
    pub fn start(mut self, log: &Path) -> anyhow::Result<Process> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {:?}", self.command))?;
        Ok(Process {
            child,
            log: log.to_owned(),
        })
    }

    /// Starts the command in the background, to take turns with it line
    /// by line: its standard input and output are the returned pipes, its
    /// standard error goes to `log`.
    pub fn start_piped(mut self, log: &Path) -> anyhow::Result<(Process, ChildStdin, ChildStdout)> {
        let errors = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors)
            .spawn()
            .with_context(|| format!("starting {:?}", self.command))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("{:?} has no pipes", self.command);
        };
        Ok((
            Process {
                child,
                log: log.to_owned(),
            },
            input,
            output,
        ))
    }

    /// Runs the command to completion, for at most `timeout`.
    pub fn output(mut self, timeout: Duration) -> anyhow::Result<Output> {
        output_within(&mut self.command, timeout)
    }
}

/// Runs `command` to completion, its output collected, for at most
/// `timeout`.
pub(crate) fn output_within(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    wait_with_timeout(child, timeout).with_context(|| format!("{command:?}"))
}

/// Waits for `child` and collects its output; kills it after `timeout`.
/// The pipes are drained while it runs, so a chatty child never blocks.
fn wait_with_timeout(child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let (done, result) = mpsc::channel();
    thread::spawn(move || done.send(child.wait_with_output()));
    if let Ok(output) = result.recv_timeout(timeout) {
        return Ok(output?);
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let output = result.recv()??;
    bail!(
        "still running after {timeout:?}, killed; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes the child of `command` receive SIGTERM when the thread that
/// started it dies, so no test process outlives a killed test run.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `program` with `args` in this namespace and fails unless it exits 0.
pub fn run_checked<S: AsRef<std::ffi::OsStr>>(
    program: &str,
    args: impl IntoIterator<Item = S>,
) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    let output = command.output().with_context(|| {
        format!("running {command:?} (is it installed? `cargo xtask setup` installs it)")
    })?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A background process, killed and reaped when dropped.
pub struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    /// Takes charge of a child started elsewhere, whose output is in `log`.
    #[must_use]
    pub fn from_child(child: Child, log: std::path::PathBuf) -> Self {
        Self { child, log }
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit;
    /// returns its exit status.
    pub fn stop(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        // A child already reaped keeps its status: no signal may reach a
        // process that reused its pid.
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        self.wait(timeout)
            .with_context(|| format!("after {signal}"))
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "process {} did not exit within {timeout:?}; log:\n{}",
                    self.child.id(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "the process has exited:\n{}",
            self.log()
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    /// Asks the process to stop (SIGTERM), so it can remove what it made
    /// (wireguard-go its control socket); kills it if it has not after 2 s.
    fn drop(&mut self) {
        if self
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(2))
            .is_err()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a daemon may take to answer: seconds here, but more than a
/// minute in a kernel VM without KVM while other tests start theirs.
pub(crate) const DAEMON_START: Duration = Duration::from_mins(2);

/// Waits until the daemon `what` answers (`answers` returns true), at most
/// [`DAEMON_START`]; its log at `log` says why it did not.
pub fn wait_for_daemon(
    what: &str,
    log: &Path,
    mut answers: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let timeout = DAEMON_START;
    let deadline = Instant::now() + timeout;
    while !answers() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{what} did not answer in {} s:\n{}",
                timeout.as_secs(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
