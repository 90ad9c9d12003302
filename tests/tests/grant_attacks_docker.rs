//! Attacks on host-service grants through a real Docker daemon (in a
//! network namespace of the test's own): a container started with
//! `--network container:` of the granted one, a container of no grant on
//! the same bridge, and one given the granted container's address once it
//! left that network. The kernel-level attacks are in `grant_attacks.rs`.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, DockerNode, NODE_PUBLISHED, NetbpfRun, Process, Spawn,
    applied, unique_name,
};

const ANSWER: &str = "the loopback service answers";

/// The node, a service on its loopback granted to `grant-a` at its
/// bridge's gateway, and the agent. Fields drop in order: the agent
/// first, the node (its daemon and containers) last.
struct Lab {
    agent: NetbpfRun,
    _setup: AgentSetup,
    _service: Process,
    node: DockerNode,
}

impl Lab {
    fn new() -> Self {
        let node = DockerNode::new();
        let service = node
            .site()
            .start_http_server(node.work.path(), "127.0.0.1", 18188, ANSWER)
            .unwrap();
        let policy = format!(
            "version = 1\n\
             [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:18188\"\n\
             [[scope]]\nname = \"granted\"\nmatch = {{ container = \"grant-a\" }}\n\
             host_services = [{{ service = \"svc\", dial = \"{NODE_PUBLISHED}:18188\" }}]\n"
        );
        let (setup, agent) = node.agent(&policy);
        Self {
            agent,
            _setup: setup,
            _service: service,
            node,
        }
    }
}

#[test]
fn a_container_on_the_granted_ones_network_namespace_is_refused() {
    let lab = Lab::new();
    let (node, agent) = (&lab.node, &lab.agent);
    node.run("grant-a", &[]);
    node.run_with(
        "shared-b",
        &["--network", "container:grant-a"],
        &["sleep", "600"],
    );
    node.run("other-c", &[]);
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| {
            applied(status).len() == 1 && !status["grant_guard"].as_array().unwrap().is_empty()
        })
        .unwrap();
    assert_eq!(applied(&status), ["granted/grant-a"], "{status}");
    assert_eq!(node.get("grant-a", NODE_PUBLISHED, 18188), ANSWER);
    // shared-b has grant-a's address, interface and routes: only its
    // cgroup differs.
    assert_eq!(
        node.get("shared-b", NODE_PUBLISHED, 18188),
        "",
        "the container sharing grant-a's network reached the service"
    );
    assert_eq!(node.get("other-c", NODE_PUBLISHED, 18188), "");
    let status = agent.status_json().unwrap();
    assert_eq!(
        status["host_services"][0]["borrowed"], 2,
        "shared-b and other-c refused at connect(): {status}"
    );
    assert_eq!(status["host_services"][0]["steered"], 1, "{status}");
    assert!(lab.agent.stop().unwrap().success());
}

/// What `curl` gets from `url`, run in the network namespace of the
/// container `name` by a process in `outside` (no cgroup of netbpf's): what
/// its packets alone get past, with no socket hook to refuse it first.
fn curl_from_the_netns_of(
    node: &DockerNode,
    outside: &Cgroup,
    name: &str,
    url: &str,
) -> (i32, String) {
    let netns = format!("--net=/proc/{}/ns/net", container_pid(node, name));
    let output = Spawn::new(
        outside.path(),
        None,
        "nsenter",
        [netns.as_str(), "curl", "--silent", "--max-time", "3", url],
    )
    .unwrap()
    .output(Duration::from_secs(10))
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

/// The pid of container `name`'s first process.
fn container_pid(node: &DockerNode, name: &str) -> String {
    node.daemon
        .docker(&["inspect", "--format", "{{.State.Pid}}", name])
        .unwrap()
        .trim()
        .to_owned()
}

/// An agent that follows no runtime's API (as on a node where it only sees
/// cgroups and hooks): the container is its cgroup, its network what the
/// node shows. A container that leaves a network is seen only by the link
/// it loses.
#[test]
fn a_container_given_the_granted_address_after_the_granted_one_left_is_refused() {
    let node = DockerNode::new();
    let _service = node
        .site()
        .start_http_server(node.work.path(), "127.0.0.1", 18188, ANSWER)
        .unwrap();
    let outside = Cgroup::new_test_root(&unique_name("nbdo")).unwrap();
    for (network, subnet) in [("front", "10.215.0.0/24"), ("back", "10.216.0.0/24")] {
        node.daemon
            .docker(&["network", "create", "--subnet", subnet, network])
            .unwrap();
    }
    node.run_with(
        "grant-a",
        &["--network", "front", "--ip", "10.215.0.5"],
        &["sleep", "600"],
    );
    let cgroups =
        std::fs::read_to_string(format!("/proc/{}/cgroup", container_pid(&node, "grant-a")))
            .unwrap();
    let cgroup = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::/"))
        .unwrap()
        .to_owned();
    let setup = node.agent_setup_with(AgentOptions::default());
    setup
        .policy(
            "50-test.toml",
            &format!(
                "version = 1\n\
                 [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:18188\"\n\
                 [[scope]]\nname = \"granted\"\nmatch = {{ cgroup = \"{cgroup}\" }}\n\
                 host_services = [{{ service = \"svc\", dial = \"10.215.0.1:18188\" }}]\n"
            ),
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    agent
        .wait_for_status(Duration::from_secs(10), |status| {
            applied(status).len() == 1 && status["scopes"][0]["error"].is_null()
        })
        .unwrap();
    assert_eq!(node.get("grant-a", "10.215.0.1", 18188), ANSWER);
    // grant-a moves to the back network; front's address is free again.
    node.daemon
        .docker(&["network", "connect", "back", "grant-a"])
        .unwrap();
    node.daemon
        .docker(&["network", "disconnect", "front", "grant-a"])
        .unwrap();
    node.run_with(
        "other-c",
        &["--network", "front", "--ip", "10.215.0.5"],
        &["sleep", "600"],
    );
    let before = agent.status_json().unwrap()["host_services"][0]["steered"].clone();
    let (code, body) =
        curl_from_the_netns_of(&node, &outside, "other-c", "http://10.215.0.1:18188/");
    let status = agent.status_json().unwrap();
    assert_ne!(
        code, 0,
        "other-c, given grant-a's old address, reached the service: {body}\n{status}"
    );
    assert_eq!(status["host_services"][0]["steered"], before, "{status}");
    // grant-a keeps its service from its new network.
    assert_eq!(node.get("grant-a", "10.215.0.1", 18188), ANSWER);
    assert!(agent.stop().unwrap().success());
}
