//! `netbpf doctor` on nodes of the tests' own (a Docker daemon in its own
//! network namespace, its containers below the test's cgroup): each broken
//! situation built for real, named by doctor, and fixed by the policy it
//! proposes, given to the agent; a healthy node gives no finding.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use std::os::fd::AsFd as _;

use netbpf::datapath::sys;
use netbpf_testenv::{
    AgentSetup, DockerNode, NODE_PUBLISHED, NetbpfRun, applied, doctor, findings, kernel,
    proposed_policy, wait_for_listener,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);

/// doctor on `setup`'s node, asking the agent `agent`.
fn examine(setup: &AgentSetup, agent: &NetbpfRun, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--run-dir", agent.run_dir().to_str().unwrap()];
    all.extend_from_slice(args);
    doctor(&setup.config, &all)
}

/// Gives the agent `policy` as a policy file of its own, and waits until
/// `scopes` scope instances are applied.
fn apply(setup: &AgentSetup, agent: &mut NetbpfRun, name: &str, policy: &str, scopes: usize) {
    setup.policy(name, policy).unwrap();
    agent.reload().unwrap();
    agent
        .wait_for_status(TIMEOUT, |status| applied(status).len() == scopes)
        .unwrap_or_else(|error| panic!("{error:#}"));
}

/// The states doctor gave the checks named `name`.
fn check_states(report: &Value, name: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["name"] == name)
        .map(|check| check["state"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_healthy_node_has_no_findings_and_a_detached_program_is_named() {
    let node = DockerNode::new();
    node.run("quiet-1", &[]);
    let (setup, agent) = node.agent(&format!(
        "version = 1\n[[scope]]\nname = \"quiet\"\nmatch = {{ container = \"quiet-*\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"{NODE_PUBLISHED}:8082\" }}]\n"
    ));
    agent
        .wait_for_status(TIMEOUT, |status| applied(status).len() == 1)
        .unwrap();

    let (code, report) = examine(&setup, &agent, &[]);
    assert_eq!(code, 0, "a healthy node: {report:#}");
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    for probe in [
        "socket address hooks",
        "getpeername hooks",
        "sk_lookup",
        "cgroup bpf links",
    ] {
        assert_eq!(check_states(&report, probe), ["ok"], "{probe}: {report:#}");
    }
    // Before TCX (6.6), a warning: MSS clamps then use a clsact qdisc.
    let tcx = if kernel::has_tcx() { "ok" } else { "warning" };
    assert_eq!(check_states(&report, "TCX"), [tcx], "{report:#}");
    assert_eq!(
        check_states(&report, "netbpf_connect4"),
        ["ok"],
        "{report:#}"
    );
    assert_eq!(check_states(&report, "agent"), ["ok"], "{report:#}");
    let (code, report) = examine(&setup, &agent, &["quiet-1", "--to", "localhost:8082"]);
    assert_eq!(code, 0, "{report:#}");
    let reach = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["area"] == "reach")
        .unwrap_or_else(|| panic!("no reach check: {report:#}"));
    assert!(
        reach["detail"]
            .as_str()
            .unwrap()
            .contains("netbpf forwards localhost:8082"),
        "{reach}"
    );

    // Detached behind the agent's back, as Cilium users saw their hooks
    // "enabled" with nothing attached: the kernel's view tells.
    let link = setup
        .pin_dir
        .join("links")
        .read_dir()
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with("-netbpf_connect4"))
        .expect("connect4's pinned link");
    sys::link_detach(sys::obj_get(&link).unwrap().as_fd()).unwrap();
    let (code, report) = examine(&setup, &agent, &[]);
    assert_eq!(code, 2, "{report:#}");
    let detached = findings(&report, "not-attached");
    assert_eq!(detached.len(), 1, "{report:#}");
    assert!(
        detached[0]["cause"]
            .as_str()
            .unwrap()
            .contains("netbpf_connect4"),
        "{report:#}"
    );
    assert_eq!(
        check_states(&report, "netbpf_connect4"),
        ["failed"],
        "{report:#}"
    );
    assert_ne!(node.get("quiet-1", "127.0.0.1", 8082), "published");

    // Its fix: the defunct pin removed, the agent restarted.
    let steps: Vec<&str> = detached[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step.as_str().unwrap())
        .collect();
    assert_eq!(steps[0], format!("rm {}", link.display()), "{steps:?}");
    std::fs::remove_file(&link).unwrap();
    assert!(agent.stop().unwrap().success());
    let agent = setup.start("restarted").unwrap();
    let (code, report) = examine(&setup, &agent, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(node.get("quiet-1", "127.0.0.1", 8082), "published");
}

#[test]
fn localhost_and_loopback_only_services_get_the_policy_that_reaches_them() {
    let node = DockerNode::new();
    let _tunnel = node
        .site()
        .start_http_server(node.work.path(), "127.0.0.1", 18188, "tunnel")
        .unwrap();
    node.run("desk-1", &[]);
    node.run_with(
        "backend-1",
        &["--add-host", "host.docker.internal:host-gateway"],
        &["sleep", "600"],
    );
    let (setup, mut agent) = node.agent("version = 1\n");

    // "curl localhost:8082 times out in the container."
    assert_ne!(node.get("desk-1", "127.0.0.1", 8082), "published");
    let (code, report) = examine(&setup, &agent, &["desk-1", "--to", "localhost:8082"]);
    assert_eq!(code, 2, "{report:#}");
    let policy = proposed_policy(&report, "localhost-forward");
    assert!(policy.contains("container = \"desk-1\""), "{policy}");
    assert!(
        policy.contains(&format!("to = \"{NODE_PUBLISHED}:8082\"")),
        "{policy}"
    );
    apply(&setup, &mut agent, "60-desk.toml", &policy, 1);
    assert_eq!(node.get("desk-1", "127.0.0.1", 8082), "published");
    let (code, report) = examine(&setup, &agent, &["desk-1", "--port", "8082"]);
    assert_eq!(code, 0, "fixed: {report:#}");
    // A container in a scope already gets rules to add to it: a second
    // scope would never match it.
    let (code, report) = examine(&setup, &agent, &["desk-1", "--to", "10.203.0.1:18188"]);
    assert_eq!(code, 2, "{report:#}");
    let finding = &findings(&report, "host-service")[0];
    let step = finding["steps"][0].as_str().unwrap();
    assert!(
        step.contains("applies to desk-1 already")
            && step.contains("host_services = [{ service = \"loopback-18188\""),
        "{finding:#}"
    );
    assert!(
        !finding["policy"].as_str().unwrap().contains("[[scope]]"),
        "only the service to declare: {finding:#}"
    );

    // "The container can't reach host.docker.internal:18188, though the
    // host can."
    assert_ne!(node.get("backend-1", NODE_PUBLISHED, 18188), "tunnel");
    let (code, report) = examine(
        &setup,
        &agent,
        &["backend-1", "--to", "host.docker.internal:18188"],
    );
    assert_eq!(code, 2, "{report:#}");
    let policy = proposed_policy(&report, "host-service");
    assert!(
        policy.contains("listen = \"127.0.0.1:18188\"")
            && policy.contains(&format!("dial = \"{NODE_PUBLISHED}:18188\"")),
        "{policy}"
    );
    apply(&setup, &mut agent, "60-backend.toml", &policy, 2);
    assert_eq!(node.get("backend-1", NODE_PUBLISHED, 18188), "tunnel");
    let (code, report) = examine(
        &setup,
        &agent,
        &["backend-1", "--to", "host.docker.internal:18188"],
    );
    assert_eq!(code, 0, "fixed: {report:#}");
}

#[test]
fn where_the_node_takes_rules_from_labels_doctor_proposes_labels() {
    let node = DockerNode::new();
    let project = "com.docker.compose.project=shop";
    node.run("shop-web", &[project]);
    let (setup, agent) = node.agent(
        "version = 1\n[[scope]]\nname = \"compose\"\n\
         match = { label = { \"com.docker.compose.project\" = \"*\" } }\n\
         labels = [\"forward\", \"host_services\"]\n",
    );
    agent
        .wait_for_status(TIMEOUT, |status| applied(status) == ["compose/shop-web"])
        .unwrap_or_else(|error| panic!("{error:#}"));

    let (code, report) = examine(&setup, &agent, &["shop-web", "--to", "localhost:8082"]);
    assert_eq!(code, 2, "{report:#}");
    let finding = &findings(&report, "localhost-forward")[0];
    let label = format!("io.netbpf.forward=localhost:8082={NODE_PUBLISHED}:8082");
    let step = finding["steps"][0].as_str().unwrap();
    assert!(
        step.contains("takes the rules of shop-web from its labels")
            && step.contains(&format!("\"{label}\"")),
        "{finding:#}"
    );
    assert!(finding["policy"].is_null(), "no policy file: {finding:#}");

    // The container made again with the label doctor gave reaches the
    // service; the node's policy is untouched.
    node.daemon.docker(&["rm", "--force", "shop-web"]).unwrap();
    node.run("shop-web", &[project, &label]);
    agent
        .wait_for_status(TIMEOUT, |status| {
            status["scopes"][0]["forwards"].as_array().map(Vec::len) == Some(1)
        })
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(node.get("shop-web", "127.0.0.1", 8082), "published");
}

#[test]
fn docker_isolation_between_two_networks_is_named_with_a_way_around_it() {
    let node = DockerNode::new();
    node.daemon
        .docker(&["network", "create", "--subnet", "10.204.0.0/24", "compose"])
        .unwrap();
    // A tunnel in a container on the default bridge, published on the
    // node's loopback; the application on a compose network.
    node.run_with(
        "tunnel-1",
        &["--publish", "127.0.0.1:18188:18188"],
        &["nc", "-ll", "-p", "18188", "-e", "echo", "tunnel"],
    );
    node.run_with("app-1", &["--network", "compose"], &["sleep", "600"]);
    let tunnel = node
        .daemon
        .docker(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "tunnel-1",
        ])
        .unwrap()
        .trim()
        .to_owned();
    let (setup, mut agent) = node.agent("version = 1\n");
    assert_ne!(node.get("app-1", &tunnel, 18188), "tunnel");

    let target = format!("{tunnel}:18188");
    let (code, report) = examine(&setup, &agent, &["app-1", "--to", &target]);
    assert_eq!(code, 2, "{report:#}");
    let isolated = findings(&report, "docker-isolation");
    assert_eq!(isolated.len(), 1, "{report:#}");
    let evidence = isolated[0]["evidence"].to_string();
    assert!(
        evidence.contains("DROP"),
        "the rules that drop it: {evidence}"
    );
    let policy = proposed_policy(&report, "docker-isolation");
    apply(&setup, &mut agent, "60-app.toml", &policy, 1);
    assert_eq!(node.get("app-1", &tunnel, 18188), "tunnel");
}

#[test]
fn host_network_instances_competing_for_a_port_get_a_bind_remap() {
    let node = DockerNode::new();
    let serve = |name: &str| {
        node.run_with(
            name,
            &["--network", "host"],
            &[
                "sh",
                "-c",
                &format!("until nc -ll -p 3000 -e echo {name}; do sleep 0.2; done"),
            ],
        );
    };
    serve("web-1");
    wait_for_listener(node.daemon.netns(), 3000, "tcp").unwrap();
    serve("web-2");
    let (setup, mut agent) = node.agent("version = 1\n");

    // "The second instance exits: port in use."
    let (code, report) = examine(&setup, &agent, &["--port", "3000"]);
    assert_eq!(code, 2, "{report:#}");
    let competing = findings(&report, "host-network-port");
    assert_eq!(competing.len(), 1, "{report:#}");
    assert_eq!(competing[0]["container"], "web-2", "{report:#}");
    let policy = proposed_policy(&report, "host-network-port");
    assert!(
        policy.contains("bind = [{ port = 3000, to = 3001 }]"),
        "{policy}"
    );
    apply(&setup, &mut agent, "60-web.toml", &policy, 1);
    let answer = || {
        node.site()
            .spawn("busybox", &["nc", "-w", "2", "127.0.0.1", "3001"])
            .and_then(|spawn| spawn.output(Duration::from_secs(5)))
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while answer() != "web-2" {
        assert!(
            std::time::Instant::now() < deadline,
            "web-2 never served on 3001: {}",
            agent.status(&[]).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, report) = examine(&setup, &agent, &[]);
    assert_eq!(
        code, 0,
        "fixed, and web-2 on its own port is no collision: {report:#}"
    );
}

#[test]
fn a_container_allowed_few_processes_is_named_with_the_command_that_raises_it() {
    let node = DockerNode::new();
    node.run_with("cramped-1", &["--pids-limit", "6"], &["sleep", "600"]);
    node.run("roomy-1", &[]);
    let forks = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait";
    let cramped = node
        .daemon
        .docker(&["exec", "cramped-1", "sh", "-c", forks]);
    assert!(cramped.is_err(), "forks beyond pids.max fail: {cramped:?}");
    let (setup, agent) = node.agent("version = 1\n");

    let (code, report) = examine(&setup, &agent, &[]);
    assert_eq!(code, 2, "{report:#}");
    let limited = findings(&report, "pids-limit");
    assert_eq!(limited.len(), 1, "roomy-1 is fine: {report:#}");
    assert_eq!(limited[0]["container"], "cramped-1");
    let fix = limited[0]["steps"][0].as_str().unwrap();
    assert!(
        fix.starts_with("docker update --pids-limit 4096 cramped-1"),
        "{fix}"
    );
    let command: Vec<&str> = fix
        .split(" (")
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    node.daemon.docker(&command).unwrap();
    node.daemon
        .docker(&[
            "exec",
            "cramped-1",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do true & done; wait",
        ])
        .unwrap();
    let (code, report) = examine(&setup, &agent, &["cramped-1"]);
    assert_eq!(code, 0, "fixed: {report:#}");
}
