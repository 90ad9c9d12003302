//! cgroup v2 directories made for one test, removed with their processes.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Context as _;

/// A cgroup v2 directory this test created, with the child cgroups made
/// through it. On drop every process in it is killed and the directories
/// are removed, deepest first.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// A new cgroup `name` directly under the cgroup v2 mount: the subtree
    /// a test attaches netbpf to (never the root cgroup itself).
    pub fn new_test_root(name: &str) -> anyhow::Result<Self> {
        Self::create(cgroup2_mount()?.join(name))
    }

    /// A new child cgroup `name` of this one.
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        Self::create(self.path.join(name))
    }

    fn create(path: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid`, every thread of it, into this cgroup.
    pub fn adopt(&self, pid: u32) -> anyhow::Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", procs.display()))
    }

    /// The CPU time (user and system) the processes of this cgroup used
    /// while in it, to the microsecond, their exited threads included:
    /// `usage_usec` of its `cpu.stat`, which cgroup v2 keeps for every
    /// cgroup, the cpu controller enabled or not.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat_path = self.path.join("cpu.stat");
        let stat = fs::read_to_string(&stat_path)
            .with_context(|| format!("reading {}", stat_path.display()))?;
        let usage = stat
            .lines()
            .find_map(|line| line.strip_prefix("usage_usec "))
            .with_context(|| format!("{} has no usage_usec", stat_path.display()))?;
        let micros = usage
            .trim()
            .parse()
            .with_context(|| format!("usage_usec of {}: {usage:?}", stat_path.display()))?;
        Ok(Duration::from_micros(micros))
    }

    /// The cgroup as runtimes' `--cgroup-parent` takes it: its path from
    /// the root of the cgroup v2 hierarchy.
    pub fn runtime_parent(&self) -> anyhow::Result<String> {
        let mount = cgroup2_mount()?;
        let relative = self
            .path
            .strip_prefix(&mount)
            .context("the cgroup is on the cgroup v2 mount")?;
        Ok(format!("/{}", relative.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_tree(&self.path);
        // Runtimes on a hybrid host (Podman, Docker, runc) make the same
        // directories in each cgroup v1 hierarchy: they go too.
        if let Ok(mount) = cgroup2_mount()
            && let Ok(relative) = self.path.strip_prefix(&mount)
        {
            for hierarchy in cgroup1_mounts() {
                let twin = hierarchy.join(relative);
                if twin.exists() {
                    remove_tree(&twin);
                }
            }
        }
    }
}

/// Kills every process of the cgroup tree at `path` and removes it.
fn remove_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    for _ in 0..100 {
        // cgroup.kill (5.14+) kills the whole subtree at once; older
        // kernels get each process killed in turn.
        if fs::write(path.join("cgroup.kill"), "1").is_err() {
            kill_each(path);
        }
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {}", path.display());
}

/// Sends SIGKILL to every process listed in the cgroup at `path`.
fn kill_each(path: &Path) {
    let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The mount points of the cgroup v1 hierarchies, from
/// /proc/self/mountinfo (none on a host with cgroup v2 alone).
fn cgroup1_mounts() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            (filesystem.split_whitespace().next()? == "cgroup")
                .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            (filesystem.split_whitespace().next()? == "cgroup2")
                .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted")
}
