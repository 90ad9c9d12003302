//! A container node of a test's own: a Docker daemon in its own network
//! namespace (the node's), its containers below the test's cgroup, a
//! service published on its bridge's gateway, and `netbpf agent` set up
//! to follow it.

use crate::{
    AgentOptions, AgentSetup, Cgroup, DockerDaemon, NetbpfRun, Process, Site, require_root,
    unique_name,
};

/// The busybox image the node's containers run (imported, never pulled).
pub const NODE_IMAGE: &str = "localhost/netbpf-test-busybox:1";
/// The node's Docker bridge.
pub const NODE_BRIDGE: &str = "10.203.0.1/24";
/// The bridge's gateway, where the node's service is published on port
/// 8082, answering `published`.
pub const NODE_PUBLISHED: &str = "10.203.0.1";

/// A node: a Docker daemon, a service on its bridge, and what an agent
/// needs. Fields drop in order: the daemon (and its containers) first,
/// the cgroups after it, the files last.
pub struct DockerNode {
    pub daemon: DockerDaemon,
    _service: Process,
    _containers: Cgroup,
    /// Where the test's own processes of the node run (servers, tunnels).
    pub helpers: Cgroup,
    /// The cgroup root of the node's agent.
    pub root: Cgroup,
    pub work: tempfile::TempDir,
}

impl Default for DockerNode {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerNode {
    #[must_use]
    pub fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbk")).unwrap();
        let containers = root.child("docker").unwrap();
        let helpers = root.child("helpers").unwrap();
        let work = tempfile::Builder::new()
            .prefix("netbpf-docker-")
            .tempdir()
            .unwrap();
        let daemon = DockerDaemon::start(
            &containers,
            &helpers,
            NODE_BRIDGE,
            &work.path().join("docker"),
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
        daemon.import_busybox(NODE_IMAGE).unwrap();
        let service = Site {
            cgroup: &helpers,
            netns: daemon.netns(),
        }
        .start_http_server(work.path(), NODE_PUBLISHED, 8082, "published")
        .unwrap();
        Self {
            daemon,
            _service: service,
            _containers: containers,
            helpers,
            root,
            work,
        }
    }

    /// Where the test's helper processes run on the node.
    #[must_use]
    pub fn site(&self) -> Site<'_> {
        Site {
            cgroup: &self.helpers,
            netns: self.daemon.netns(),
        }
    }

    /// The agent's setup for this node: its configuration follows this
    /// daemon and the cgroups below the test's root, the daemon's network
    /// namespace its node's.
    #[must_use]
    pub fn agent_setup(&self) -> AgentSetup {
        self.agent_setup_with(AgentOptions {
            docker: Some(self.daemon.socket()),
            ..AgentOptions::default()
        })
    }

    /// The agent's setup for this node following what `options` name
    /// (not this daemon's API unless they do), the daemon's network
    /// namespace its node's.
    #[must_use]
    pub fn agent_setup_with(&self, options: AgentOptions<'_>) -> AgentSetup {
        let node = self.daemon.netns().path();
        AgentSetup::new(
            self.work.path(),
            self.root.path(),
            AgentOptions {
                netns: Some(&node),
                ..options
            },
        )
        .unwrap()
    }

    /// `netbpf agent` with `policy` as its one policy file; its pins go
    /// with the returned setup.
    #[must_use]
    pub fn agent(&self, policy: &str) -> (AgentSetup, NetbpfRun) {
        let setup = self.agent_setup();
        setup.policy("50-test.toml", policy).unwrap();
        let agent = setup
            .start("agent")
            .unwrap_or_else(|error| panic!("{error:#}"));
        (setup, agent)
    }

    /// Starts a container that sleeps, named `name`, with `labels`.
    pub fn run(&self, name: &str, labels: &[&str]) {
        let mut options = Vec::new();
        for label in labels {
            options.extend(["--label", label]);
        }
        self.run_with(name, &options, &["sleep", "600"]);
    }

    /// Starts a container named `name` with `docker run` `options`,
    /// running `command`.
    pub fn run_with(&self, name: &str, options: &[&str], command: &[&str]) {
        let mut args = vec!["run", "--detach", "--name", name];
        args.extend_from_slice(options);
        args.push(NODE_IMAGE);
        args.extend_from_slice(command);
        self.daemon
            .docker(&args)
            .unwrap_or_else(|error| panic!("{error:#}"));
    }

    /// The body the container `name` gets for `GET /` from `host`:`port`,
    /// empty when it gets nothing (busybox nc: its wget needs a resolver
    /// the image does not have).
    #[must_use]
    pub fn get(&self, name: &str, host: &str, port: u16) -> String {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port} || true");
        let response = self
            .daemon
            .docker(&["exec", name, "sh", "-c", &script])
            .unwrap_or_else(|error| panic!("{error:#}"));
        response
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}
