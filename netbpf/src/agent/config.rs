//! The agent's configuration file (TOML): where it reads its policy, where
//! it attaches, and how large its maps are. Every key is optional; each
//! default is documented where it is defined, and in docs/agent.md.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    api::control::DEFAULT_RUN_DIR,
    containers::Runtimes,
    plan::Capacity,
    policy::{Locator, PolicyError},
};

/// Where `netbpf agent` reads its configuration, by default. A missing
/// file there means every default.
pub const DEFAULT_CONFIG: &str = "/etc/netbpf/config.toml";

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The policy: every `*.toml` file of this directory, merged.
    /// Default `/etc/netbpf/policy.d`.
    pub policy_dir: PathBuf,
    /// Where the control socket (`netbpf status`, `netbpf reload`) lives.
    /// Default `/run/netbpf`.
    pub run_dir: PathBuf,
    /// The bpffs directory where the datapath is pinned, so that it outlives
    /// the agent: a new agent adopts it. Default `/sys/fs/bpf/netbpf`.
    pub pin_dir: PathBuf,
    /// The cgroup v2 directory the socket programs attach to; they act on
    /// the sockets of every process below it, and containers are looked
    /// for below it. Default: the root of the cgroup v2 hierarchy.
    pub cgroup_root: Option<PathBuf>,
    /// The node's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`):
    /// where host services listen and MSS clamps find interfaces. Default:
    /// the agent's own.
    pub netns: Option<PathBuf>,
    /// Where Prometheus metrics are served (`GET /metrics`), as
    /// `ADDRESS:PORT`, e.g. `127.0.0.1:9981`. Default: none, metrics off.
    pub metrics: Option<SocketAddr>,
    /// The container runtimes' API sockets.
    pub runtimes: Runtimes,
    /// How large the maps are.
    pub capacity: Capacity,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy_dir: PathBuf::from("/etc/netbpf/policy.d"),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            pin_dir: PathBuf::from("/sys/fs/bpf/netbpf"),
            cgroup_root: None,
            netns: None,
            metrics: None,
            runtimes: Runtimes::default(),
            capacity: Capacity::default(),
        }
    }
}

impl Config {
    /// Reads the configuration at `file`; when `file` is the default one
    /// and does not exist, every default.
    pub fn load(file: &Path) -> Result<Self, PolicyError> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && file == Path::new(DEFAULT_CONFIG) =>
            {
                return Ok(Self::default());
            }
            Err(error) => {
                return Err(PolicyError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    field: String::new(),
                    message: format!("cannot read the configuration: {error}"),
                });
            }
        };
        Self::parse(file, &text)
    }

    /// Parses `text`, the configuration file `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|error| Locator::new(file, text).toml_error(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_default_and_unknown_keys_are_errors() {
        let config: Config = toml::from_str("[capacity]\nscopes = 10\n").unwrap();
        assert_eq!(config.capacity.scopes, 10);
        assert_eq!(config.policy_dir, Config::default().policy_dir);
        let error = Config::load(Path::new("/nonexistent/netbpf.toml")).unwrap_err();
        assert!(error.message.contains("cannot read"), "{error}");
        let wrong: Result<Config, _> = toml::from_str("polcy_dir = \"/x\"\n");
        assert!(wrong.unwrap_err().to_string().contains("unknown field"));
    }
}
