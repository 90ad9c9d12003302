//! Attacks on host-service grants through a real Docker daemon (in a
//! network namespace of the test's own): a container started with
//! `--network container:` of the granted one, and a container of no grant
//! on the same bridge. The kernel-level attacks are in `grant_attacks.rs`.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use netbpf_testenv::{AgentSetup, DockerNode, NODE_PUBLISHED, NetbpfRun, Process, applied};

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
