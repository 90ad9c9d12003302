//! The agent with real containers: a Docker daemon of the test's own (in a
//! network namespace of its own, its containers below the test's cgroup)
//! and `netbpf agent` following it through the Engine API and the cgroup
//! tree. Scopes name containers as users do: by name and by label.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, Containerd, DockerNode, KernelMaps, NODE_PUBLISHED,
    NetbpfRun, Site, applied, require_root, unique_name,
};

/// Restarts the agent: it knows the containers by name before it touches
/// the maps, so they keep their scope ids, and the counters go on.
fn restart_keeps_scopes(
    setup: &AgentSetup,
    agent: NetbpfRun,
    status: &serde_json::Value,
) -> NetbpfRun {
    assert!(agent.stop().unwrap().success());
    let agent = setup
        .start("restarted")
        .unwrap_or_else(|error| panic!("{error:#}"));
    let again = agent.status_json().unwrap();
    let ids = |status: &serde_json::Value| -> Vec<serde_json::Value> {
        status["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|scope| scope["id"].clone())
            .collect()
    };
    assert_eq!(ids(&again), ids(status), "{again}");
    assert_eq!(again["scopes"][0]["forwards"][0]["connects"], 1, "{again}");
    agent
}

#[test]
fn containers_started_after_the_agent_get_their_scope_by_name_and_by_label() {
    let node = DockerNode::new();
    let policy = format!(
        "version = 1\n\
         [[scope]]\nname = \"app\"\nmatch = {{ container = \"llamasketch-app-1\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"{NODE_PUBLISHED}:8082\" }}]\n\
         [[scope]]\nname = \"project\"\nmatch = {{ label = {{ \"com.docker.compose.project\" = \"llamasketch\" }} }}\n\
         forward = [{{ from = \"localhost:9082\", to = \"{NODE_PUBLISHED}:8082\" }}]\n"
    );
    let (setup, agent) = node.agent(&policy);
    assert!(applied(&agent.status_json().unwrap()).is_empty());

    let project = "com.docker.compose.project=llamasketch";
    node.run("llamasketch-app-1", &[project]);
    node.run("llamasketch-worker-1", &[project]);
    node.run("unrelated", &[]);
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| applied(status).len() == 2)
        .unwrap();
    assert_eq!(
        applied(&status),
        ["app/llamasketch-app-1", "project/llamasketch-worker-1"],
        "the first scope that matches a container is its scope: {status}"
    );
    assert_eq!(status["scopes"][0]["runtime"], "docker", "{status}");
    assert_eq!(
        status["scopes"][0]["container_id"].as_str().map(str::len),
        Some(64),
        "{status}"
    );
    assert_eq!(
        node.get("llamasketch-app-1", "127.0.0.1", 8082),
        "published"
    );
    assert_eq!(
        node.get("llamasketch-worker-1", "127.0.0.1", 9082),
        "published"
    );
    let status = agent.status_json().unwrap();
    assert_eq!(
        status["scopes"][0]["forwards"][0]["connects"], 1,
        "{status}"
    );

    let agent = restart_keeps_scopes(&setup, agent, &status);

    // More of the project, for a sample of the delay from a cgroup to its
    // scope in the maps.
    for worker in 2..=21 {
        node.run(&format!("llamasketch-worker-{worker}"), &[project]);
    }
    let status = agent
        .wait_for_status(Duration::from_secs(20), |status| {
            applied(status).len() == 22
        })
        .unwrap();
    let maps = KernelMaps::of(&agent).unwrap();
    assert_eq!(maps.entries("CGROUP_SCOPES").unwrap(), 22);
    eprintln!(
        "delay from a container's cgroup to its scope in the maps: p50 {} us, p99 {} us over {} cgroups",
        status["discovery"]["delay_p50_us"],
        status["discovery"]["delay_p99_us"],
        status["discovery"]["delays_measured"]
    );
    // Not a measure but the docs' claim: Docker starts a container's
    // process about 160 ms after its cgroup appears, and its policy is in
    // the maps before that.
    let p99 = status["discovery"]["delay_p99_us"].as_u64().unwrap();
    assert!(
        p99 < 160_000,
        "a container's scope reached the maps after Docker runs its process: {status}"
    );

    // Restarted: a new cgroup, and no new create event; the container
    // keeps its scope, with a new key.
    let before = status["scopes"][0]["cgroup_id"].clone();
    node.daemon
        .docker(&["restart", "--time", "0", "llamasketch-app-1"])
        .unwrap();
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| {
            status["scopes"].as_array().unwrap().iter().any(|scope| {
                scope["name"] == "app/llamasketch-app-1" && scope["cgroup_id"] != before
            })
        })
        .unwrap();
    assert_eq!(applied(&status).len(), 22, "{status}");
    assert_eq!(
        node.get("llamasketch-app-1", "127.0.0.1", 8082),
        "published"
    );

    // Removed: nothing of them stays.
    let project_ids = node
        .daemon
        .docker(&[
            "ps",
            "--quiet",
            "--filter",
            "label=com.docker.compose.project",
        ])
        .unwrap();
    let mut remove = vec!["rm", "--force"];
    remove.extend(project_ids.split_whitespace());
    node.daemon.docker(&remove).unwrap();
    agent
        .wait_for_status(Duration::from_secs(10), |status| {
            status["scopes"].as_array().is_some_and(Vec::is_empty)
        })
        .unwrap();
    for map in ["CGROUP_SCOPES", "FORWARD_PORTS", "FORWARDS", "LOCAL_BINDS"] {
        assert_eq!(maps.entries(map).unwrap(), 0, "{map} in the kernel");
    }
    assert!(agent.stop().unwrap().success());
}

/// `docker network connect` and `disconnect` change a container's
/// addresses and gateway, not its cgroup: its grant follows from the
/// network events.
#[test]
fn a_docker_container_is_known_from_dockers_state_before_its_api_answers() {
    // At boot Docker restarts its containers before its API answers: the
    // agent names them from Docker's data root. Here it has no API at all.
    let node = DockerNode::new();
    let data_root = node.daemon.data_root();
    let setup = node.agent_setup_with(AgentOptions {
        docker_root: Some(&data_root),
        ..AgentOptions::default()
    });
    setup
        .policy(
            "50-test.toml",
            &format!(
                "version = 1\n[[scope]]\nname = \"boot\"\n\
                 match = {{ container = \"boot-*\", label = {{ tier = \"front\" }} }}\n\
                 forward = [{{ from = \"localhost:8082\", to = \"{NODE_PUBLISHED}:8082\" }}]\n"
            ),
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    node.run("boot-1", &["tier=front"]);
    node.run("boot-2", &["tier=back"]);
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| {
            !applied(status).is_empty()
        })
        .unwrap();
    assert_eq!(applied(&status), ["boot/boot-1"], "{status}");
    assert_eq!(status["scopes"][0]["runtime"], "docker", "{status}");
    assert_eq!(node.get("boot-1", "127.0.0.1", 8082), "published");
    assert_eq!(node.get("boot-2", "127.0.0.1", 8082), "");
}

#[test]
fn a_granted_container_moved_to_another_network_keeps_its_host_service() {
    let node = DockerNode::new();
    let netns = node.daemon.netns();
    // The address containers dial for the service: the node's, where
    // nothing listens.
    netns
        .ip(&["addr", "add", "10.213.9.1/32", "dev", "lo"])
        .unwrap();
    let _tunnel = Site {
        cgroup: &node.helpers,
        netns,
    }
    .start_http_server(node.work.path(), "127.0.0.1", 18190, "tunnel")
    .unwrap();
    let (setup, agent) = node.agent(&granted_policy(&[("tunnel", 18190)]));
    node.run("granted-1", &[]);
    node.run("other-1", &[]);
    let gateway = |status: &serde_json::Value| status["scopes"][0]["grants"][0]["gateway"].clone();
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| applied(status).len() == 1)
        .unwrap();
    assert_eq!(gateway(&status), NODE_PUBLISHED, "{status}");
    assert_eq!(node.get("granted-1", "10.213.9.1", 18190), "tunnel");
    // Guarded where it arrives: the ports of its bridge.
    let guarded = |status: &serde_json::Value| status["grant_guard"].as_array().unwrap().clone();
    let before = agent
        .wait_for_status(Duration::from_secs(5), |status| !guarded(status).is_empty())
        .unwrap();

    node.daemon
        .docker(&["network", "create", "--subnet", "10.214.0.0/24", "moved"])
        .unwrap();
    node.daemon
        .docker(&["network", "connect", "moved", "granted-1"])
        .unwrap();
    node.daemon
        .docker(&["network", "disconnect", "bridge", "granted-1"])
        .unwrap();
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| {
            gateway(status) == "10.214.0.1"
        })
        .unwrap();
    assert!(status["scopes"][0]["error"].is_null(), "{status}");
    assert_eq!(node.get("granted-1", "10.213.9.1", 18190), "tunnel");
    let after = agent.status_json().unwrap();
    assert!(!guarded(&after).is_empty(), "{after}");
    assert_ne!(guarded(&after), guarded(&before), "{after}");
    // A container of no grant is refused.
    let refused = node
        .daemon
        .docker(&[
            "exec",
            "other-1",
            "sh",
            "-c",
            "nc -w 5 10.213.9.1 18190 </dev/null",
        ])
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("Connection refused"),
        "{refused:#}"
    );

    // A reload puts a service nobody serves where the tunnel was: its
    // grant is refused, never handed to the tunnel's listener.
    setup
        .policy(
            "50-test.toml",
            &granted_policy(&[("metrics", 18191), ("tunnel", 18190)]),
        )
        .unwrap();
    agent
        .wait_for_status(Duration::from_secs(10), |status| {
            status["scopes"][0]["grants"].as_array().map(Vec::len) == Some(2)
        })
        .unwrap();
    let moved = node
        .daemon
        .docker(&[
            "exec",
            "granted-1",
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.213.9.1 18191",
        ])
        .map(|answer| answer.lines().last().unwrap_or_default().trim().to_owned());
    let refused = moved.expect_err("the tunnel answered for metrics");
    assert!(
        format!("{refused:#}").contains("Connection refused"),
        "{refused:#}"
    );
    assert_eq!(node.get("granted-1", "10.213.9.1", 18190), "tunnel");
    assert!(agent.stop().unwrap().success());
}

/// A policy of the host `services` (name, port on the node's loopback) in
/// this order, each granted to the `granted-*` containers at the same port
/// of 10.213.9.1.
fn granted_policy(services: &[(&str, u16)]) -> String {
    use std::fmt::Write as _;
    let mut policy = "version = 1\n".to_owned();
    let mut grants = Vec::new();
    for (name, port) in services {
        let _ = write!(
            policy,
            "[[host_service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n"
        );
        grants.push(format!(
            "{{ service = \"{name}\", dial = \"10.213.9.1:{port}\" }}"
        ));
    }
    let _ = write!(
        policy,
        "[[scope]]\nname = \"granted\"\nmatch = {{ container = \"granted-*\" }}\n\
         host_services = [{}]\n",
        grants.join(", ")
    );
    policy
}

/// A containerd of the test's own, and a service in its network namespace
/// (which `--net-host` containers share).
#[test]
fn containerd_containers_and_pods_get_their_scope_from_their_bundles() {
    require_root();
    let root = Cgroup::new_test_root(&unique_name("nbc")).unwrap();
    let tasks = root.child("containerd").unwrap();
    let helpers = root.child("helpers").unwrap();
    let work = tempfile::Builder::new()
        .prefix("netbpf-containerd-")
        .tempdir()
        .unwrap();
    let containerd = Containerd::start(&helpers, &work.path().join("containerd"))
        .unwrap_or_else(|error| panic!("{error:#}"));
    let image = "localhost/netbpf-test-busybox:3";
    containerd.import_podman_image(image).unwrap();
    containerd
        .netns()
        .ip(&["addr", "add", "10.204.0.1/32", "dev", "lo"])
        .unwrap();
    let _service = Site {
        cgroup: &helpers,
        netns: containerd.netns(),
    }
    .start_http_server(work.path(), "10.204.0.1", 8082, "published")
    .unwrap();
    let setup = AgentSetup::new(
        work.path(),
        root.path(),
        AgentOptions {
            containerd: Some(containerd.state()),
            ..AgentOptions::default()
        },
    )
    .unwrap();
    setup
        .policy(
            "front.toml",
            "version = 1\n[[scope]]\nname = \"front\"\nmatch = { label = { tier = \"front\" } }\n\
             forward = [{ from = \"localhost:8082\", to = \"10.204.0.1:8082\" }]\n\
             [[scope]]\nname = \"shop\"\nmatch = { pod = \"shop/web-*\" }\n\
             forward = [{ from = \"localhost:9082\", to = \"10.204.0.1:8082\" }]\n",
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));

    // Task ids as the CRI makes them, labelled as `ctr run --label` does.
    let run = |number: u32, parent: &Cgroup, labels: &[&str]| -> String {
        containerd
            .run_task(number, parent, image, labels)
            .unwrap_or_else(|error| panic!("{error:#}"))
    };
    let ask = |id: &str, port: u16| containerd.get(id, port);
    let front = run(1, &tasks, &["tier=front"]);
    // Two containers of one Kubernetes pod, as the CRI annotates them, in
    // the pod's cgroup: one instance of the pod's scope.
    let pod = root.child("pod-web-0").unwrap();
    let cri = |name: &'static str| {
        [
            "io.kubernetes.cri.sandbox-namespace=shop",
            "io.kubernetes.cri.sandbox-name=web-0",
            name,
        ]
    };
    let app = run(2, &pod, &cri("io.kubernetes.cri.container-name=app"));
    let sidecar = run(3, &pod, &cri("io.kubernetes.cri.container-name=sidecar"));
    let status = agent
        .wait_for_status(Duration::from_secs(10), |status| applied(status).len() == 2)
        .unwrap();
    assert_eq!(
        applied(&status),
        [format!("front/{front}"), "shop/shop/web-0".to_owned()],
        "{status}"
    );
    assert_eq!(ask(&front, 8082).unwrap(), "published");
    assert_eq!(ask(&app, 9082).unwrap(), "published");
    assert_eq!(ask(&sidecar, 9082).unwrap(), "published");
    // The pod's forward is its own: the front container has none on 9082.
    let refused = ask(&front, 9082).unwrap_err();
    assert!(
        format!("{refused:#}").contains("Connection refused"),
        "{refused:#}"
    );
    assert!(agent.stop().unwrap().success());
}
