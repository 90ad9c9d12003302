//! A `netbpf agent` set up for one test: its configuration file, its
//! policy directory, and a bpffs pin directory of its own, never the
//! host's default. The pinned datapath is uninstalled (links detached,
//! pins removed) when the setup is dropped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{AgentProcess, NetbpfRun, netbpf_binary, unique_name};

/// What a test's agent follows beyond the cgroup tree, and where its node
/// is.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentOptions<'a> {
    /// A Docker daemon's Engine API socket.
    pub docker: Option<&'a Path>,
    /// A Docker daemon's data root, where it keeps its containers' state.
    pub docker_root: Option<&'a Path>,
    /// Podman's API service socket.
    pub podman: Option<&'a Path>,
    /// A containerd's state directory.
    pub containerd: Option<&'a Path>,
    /// The node's network namespace (a test's own): where the agent
    /// attaches its tc and `sk_lookup` programs.
    pub netns: Option<&'a Path>,
}

/// The configuration, policy and pins of one test's agent.
pub struct AgentSetup {
    pub config: PathBuf,
    pub policy_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// Where and with what the agent's process runs.
    pub process: AgentProcess,
    work: PathBuf,
}

impl AgentSetup {
    /// An agent attached at `cgroup_root`, its files in `work`, following
    /// the runtimes `options` names (and no other).
    pub fn new(work: &Path, cgroup_root: &Path, options: AgentOptions<'_>) -> anyhow::Result<Self> {
        let policy_dir = work.join("policy.d");
        std::fs::create_dir_all(&policy_dir)?;
        let setup = Self {
            config: work.join("config.toml"),
            policy_dir,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(unique_name("nbpin")),
            process: AgentProcess::default(),
            work: work.to_owned(),
        };
        std::fs::write(
            &setup.config,
            format!(
                "policy_dir = \"{}\"\npin_dir = \"{}\"\ncgroup_root = \"{}\"\n{}\
                 [runtimes]\ndocker = \"{}\"\npodman = \"{}\"\ncontainerd = \"{}\"\ndocker_root = \"{}\"\n",
                setup.policy_dir.display(),
                setup.pin_dir.display(),
                cgroup_root.display(),
                options
                    .netns
                    .map(|netns| format!("netns = \"{}\"\n", netns.display()))
                    .unwrap_or_default(),
                text(options.docker),
                text(options.podman),
                text(options.containerd),
                text(options.docker_root),
            ),
        )?;
        Ok(setup)
    }

    /// Appends `text` (a table such as `[capacity]`) to the configuration
    /// file.
    pub fn configure(&self, text: &str) -> anyhow::Result<()> {
        let mut config = std::fs::read_to_string(&self.config)?;
        config.push_str(text);
        std::fs::write(&self.config, config)?;
        Ok(())
    }

    /// Writes the policy file `name` of the policy directory.
    pub fn policy(&self, name: &str, text: &str) -> anyhow::Result<()> {
        std::fs::write(self.policy_dir.join(name), text)?;
        Ok(())
    }

    /// Starts the agent, its log and run directory in `WORK/round`.
    pub fn start(&self, round: &str) -> anyhow::Result<NetbpfRun> {
        self.start_binary(round, &netbpf_binary())
    }

    /// Starts the agent `binary` (another version of netbpf), its log and
    /// run directory in `WORK/round`.
    pub fn start_binary(&self, round: &str, binary: &Path) -> anyhow::Result<NetbpfRun> {
        let work = self.work.join(round);
        std::fs::create_dir_all(&work)?;
        NetbpfRun::start_agent(binary, &self.config, &work, &self.process)
    }

    /// `netbpf uninstall` of this setup (the agent must be stopped).
    pub fn uninstall(&self) -> anyhow::Result<Output> {
        Ok(Command::new(netbpf_binary())
            .args(["uninstall", "--config"])
            .arg(&self.config)
            .arg("--run-dir")
            .arg(self.work.join("uninstall-run"))
            .output()?)
    }
}

impl Drop for AgentSetup {
    fn drop(&mut self) {
        let _ = self.uninstall();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A path for the configuration, or "" (off).
fn text(path: Option<&Path>) -> String {
    path.map(|path| path.display().to_string())
        .unwrap_or_default()
}
