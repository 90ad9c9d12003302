//! Policy in containers' labels, with a real Docker daemon (in a network
//! namespace of the test's own): the node's policy defines a host service
//! labels may grant and a scope that takes forwards and grants from the
//! labels of compose projects' containers; the containers carry the rest.
//! And with Podman, whose API service names the container and its labels,
//! and containerd, whose task bundles carry `ctr run --label`'s labels and
//! a Kubernetes pod's netbpf annotations.
//!
//! - A labelled container gets its forward and its grant.
//! - An invalid label gives its container nothing from labels, and says
//!   why, with the container's name, in `netbpf status` and the log.
//! - A label cannot grant a service the node did not mark grantable by
//!   label, nor take effect on a container the scope does not match.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{path::Path, process::Command, time::Duration};

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, Containerd, DockerNode, NODE_PUBLISHED, NetbpfRun, Netns,
    Process, Site, Spawn, applied, ensure_podman_image, podman_run_args, require_root, run_checked,
    unique_name,
};
use serde_json::Value;

const ANSWER: &str = "the loopback service answers";
const PRIVATE: &str = "the private service answers";
const PROJECT: &str = "com.docker.compose.project=shop";

/// The node: two services on its loopback (`gpu` grantable by label,
/// `private` not), the agent with the node's policy. Fields drop in
/// order: the agent first, the node last.
struct Lab {
    agent: NetbpfRun,
    _setup: AgentSetup,
    _services: [Process; 2],
    node: DockerNode,
}

impl Lab {
    fn new() -> Self {
        let node = DockerNode::new();
        let services = [(18188, ANSWER), (18189, PRIVATE)].map(|(port, answer)| {
            node.site()
                .start_http_server(node.work.path(), "127.0.0.1", port, answer)
                .unwrap()
        });
        let policy = "version = 1\n\
             [[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\ngrantable_by_label = true\n\
             [[host_service]]\nname = \"private\"\nlisten = \"127.0.0.1:18189\"\n\
             [[scope]]\nname = \"compose\"\n\
             match = { label = { \"com.docker.compose.project\" = \"*\" } }\n\
             labels = [\"forward\", \"host_services\"]\n";
        let (setup, agent) = node.agent(policy);
        Self {
            agent,
            _setup: setup,
            _services: services,
            node,
        }
    }

    /// The status of instance `compose/NAME` once the agent has it.
    fn instance(&self, name: &str) -> Value {
        let wanted = format!("compose/{name}");
        let status = self
            .agent
            .wait_for_status(Duration::from_secs(20), |status| {
                instance_of(status, &wanted).is_some_and(|instance| {
                    !instance["error"].is_null() || !instance["id"].is_null()
                })
            })
            .unwrap_or_else(|error| panic!("{error:#}\n{}", self.agent.log()));
        instance_of(&status, &wanted).unwrap().clone()
    }
}

fn instance_of<'s>(status: &'s Value, name: &str) -> Option<&'s Value> {
    status["scopes"]
        .as_array()?
        .iter()
        .find(|scope| scope["name"] == name)
}

#[test]
fn a_compose_projects_labels_give_its_containers_their_forwards_and_grants() {
    let lab = Lab::new();
    let node = &lab.node;
    let forward = "io.netbpf.forward=localhost:8082=10.203.0.1:8082";
    let grant = format!("io.netbpf.host_services=gpu={NODE_PUBLISHED}:18188");
    node.run("web", &[PROJECT, forward, &grant]);

    let web = lab.instance("web");
    assert!(web["error"].is_null(), "{web}");
    assert_eq!(web["forwards"].as_array().unwrap().len(), 1, "{web}");
    assert_eq!(web["grants"][0]["service"], "gpu", "{web}");
    assert_eq!(node.get("web", "127.0.0.1", 8082), "published");
    assert_eq!(node.get("web", NODE_PUBLISHED, 18188), ANSWER);

    // Labels of a container no labels scope matches are no policy.
    node.run("loner", &[forward, &grant]);
    assert_eq!(node.get("loner", "127.0.0.1", 8082), "");
    assert_eq!(node.get("loner", NODE_PUBLISHED, 18188), "");
    let status = lab.agent.status_json().unwrap();
    assert_eq!(applied(&status), ["compose/web"], "{status}");
}

#[test]
fn an_invalid_label_gives_nothing_and_says_why_with_the_containers_name() {
    let lab = Lab::new();
    let node = &lab.node;
    let grant = format!("io.netbpf.host_services=gpu={NODE_PUBLISHED}:18188");
    // The forward's second entry names no address: the valid first entry
    // and the grant are not applied either.
    node.run(
        "broken",
        &[
            PROJECT,
            "io.netbpf.forward=localhost:8082=10.203.0.1:8082,localhost:9000=nowhere",
            &grant,
        ],
    );
    // The node did not let labels grant "private".
    node.run(
        "greedy",
        &[
            PROJECT,
            &format!("io.netbpf.host_services=private={NODE_PUBLISHED}:18189"),
        ],
    );

    let broken = lab.instance("broken");
    let error = broken["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the labels of \"broken\"")
            && error.contains("io.netbpf.forward[1].to")
            && error.contains("nowhere"),
        "{broken}"
    );
    assert_eq!(node.get("broken", "127.0.0.1", 8082), "");
    assert_eq!(node.get("broken", NODE_PUBLISHED, 18188), "");

    let greedy = lab.instance("greedy");
    assert!(
        greedy["error"]
            .as_str()
            .is_some_and(|error| error.contains("not grantable by label")),
        "{greedy}"
    );
    assert_eq!(node.get("greedy", NODE_PUBLISHED, 18189), "");

    let log = lab.agent.log();
    assert!(
        log.contains("container=\"broken\"") && log.contains("io.netbpf.forward[1].to"),
        "the log names the container and the label:\n{log}"
    );
}

/// Podman's busybox image.
const PODMAN_IMAGE: &str = "localhost/netbpf-test-busybox:3";
/// Where the Podman container's forward leads: a server of the node.
const TARGET: &str = "10.62.0.1";

/// The forward's target in `netns`: [`TARGET`]:7000 on its loopback,
/// answering `labelled`.
fn serve_target(helpers: &Cgroup, netns: &Netns, work: &Path) -> Process {
    netns
        .ip(&["addr", "add", &format!("{TARGET}/32"), "dev", "lo"])
        .unwrap();
    Site {
        cgroup: helpers,
        netns,
    }
    .start_http_server(work, TARGET, 7000, "labelled")
    .unwrap()
}

/// The agent of the runtime `options` name, attached at `root`, whose
/// scope "stacks" takes forwards from the labels of containers labelled
/// `com.example.stack`, and "pods" from those of the pods of namespace
/// `shop`.
fn stacks_agent(work: &Path, root: &Cgroup, options: AgentOptions<'_>) -> (AgentSetup, NetbpfRun) {
    let setup = AgentSetup::new(work, root.path(), options).unwrap();
    setup
        .policy(
            "stacks.toml",
            "version = 1\n[[scope]]\nname = \"stacks\"\n\
             match = { label = { \"com.example.stack\" = \"*\" } }\nlabels = [\"forward\"]\n\
             [[scope]]\nname = \"pods\"\nmatch = { pod = \"shop/*\" }\nlabels = [\"forward\"]\n",
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    (setup, agent)
}

/// A Podman container, removed when dropped.
struct PodmanContainer(String);

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .output();
    }
}

#[test]
fn a_podman_containers_labels_give_it_its_forward() {
    require_root();
    ensure_podman_image(PODMAN_IMAGE).unwrap();
    let root = Cgroup::new_test_root(&unique_name("nbl")).unwrap();
    let [containers, helpers] = ["podman", "helpers"].map(|name| root.child(name).unwrap());
    let node = Netns::new("nblabel").unwrap();
    let work = tempfile::Builder::new()
        .prefix("netbpf-labels-")
        .tempdir()
        .unwrap();
    let _server = serve_target(&helpers, &node, work.path());
    // Events through a file: the API service sees the CLI's runs (no
    // journald in the kernel VMs).
    let socket = work.path().join("podman.sock");
    let _service = Spawn::new(
        helpers.path(),
        None,
        "podman",
        [
            "--events-backend",
            "file",
            "--cgroup-manager",
            "cgroupfs",
            "system",
            "service",
            "--time=0",
            &format!("unix://{}", socket.display()),
        ],
    )
    .unwrap()
    .start(&work.path().join("podman-service.log"))
    .unwrap();
    let (_setup, agent) = stacks_agent(
        work.path(),
        &root,
        AgentOptions {
            podman: Some(&socket),
            netns: Some(&node.path()),
            ..AgentOptions::default()
        },
    );
    agent
        .wait_for_status(Duration::from_secs(10), |_| socket.exists())
        .unwrap();

    let name = unique_name("nblab");
    let forward = format!("io.netbpf.forward=localhost:8082={TARGET}:7000");
    run_checked(
        "podman",
        podman_run_args(
            &name,
            &containers,
            &node,
            &["--events-backend", "file"],
            &["--label", "com.example.stack=shop", "--label", &forward],
            PODMAN_IMAGE,
            &["sleep", "600"],
        )
        .unwrap(),
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    let _container = PodmanContainer(name.clone());

    // A ceiling, not a measure: the kernel VMs emulate their CPU.
    let status = agent
        .wait_for_status(Duration::from_mins(1), |status| {
            applied(status) == [format!("stacks/{name}")]
        })
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent.log()));
    assert_eq!(
        status["scopes"][0]["forwards"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    let answer = run_checked(
        "podman",
        [
            "exec",
            &name,
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8082",
        ],
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(answer.lines().last().map(str::trim), Some("labelled"));
}

#[test]
fn containerd_tasks_and_pods_get_their_forward_from_their_labels() {
    require_root();
    let root = Cgroup::new_test_root(&unique_name("nbl")).unwrap();
    let [tasks, helpers] = ["containerd", "helpers"].map(|name| root.child(name).unwrap());
    let work = tempfile::Builder::new()
        .prefix("netbpf-labels-")
        .tempdir()
        .unwrap();
    let containerd = Containerd::start(&helpers, &work.path().join("containerd"))
        .unwrap_or_else(|error| panic!("{error:#}"));
    containerd.import_podman_image(PODMAN_IMAGE).unwrap();
    let _server = serve_target(&helpers, containerd.netns(), work.path());
    let (_setup, agent) = stacks_agent(
        work.path(),
        &root,
        AgentOptions {
            containerd: Some(containerd.state()),
            ..AgentOptions::default()
        },
    );

    let forward = format!("io.netbpf.forward=localhost:8082={TARGET}:7000");
    // A task labelled as `ctr run --label` labels it, and a Kubernetes
    // pod's container as the CRI annotates it, with the pod's netbpf
    // annotation (containerd passes it on where its `pod_annotations`
    // say so), in the pod's cgroup.
    let pod = root.child("pod-web-0").unwrap();
    let tasks = [
        (1, &tasks, vec!["com.example.stack=shop", &forward]),
        (
            2,
            &pod,
            vec![
                "io.kubernetes.cri.sandbox-namespace=shop",
                "io.kubernetes.cri.sandbox-name=web-0",
                "io.kubernetes.cri.container-name=app",
                &forward,
            ],
        ),
    ]
    .map(|(number, parent, labels)| {
        containerd
            .run_task(number, parent, PODMAN_IMAGE, &labels)
            .unwrap_or_else(|error| panic!("{error:#}"))
    });
    agent
        .wait_for_status(Duration::from_secs(20), |status| {
            let mut applied = applied(status);
            applied.sort();
            applied == ["pods/shop/web-0".to_owned(), format!("stacks/{}", tasks[0])]
        })
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent.log()));
    for id in &tasks {
        assert_eq!(containerd.get(id, 8082).unwrap(), "labelled", "{id}");
    }
}
