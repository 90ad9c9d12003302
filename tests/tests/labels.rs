//! Policy in containers' labels, with a real Docker daemon (in a network
//! namespace of the test's own): the node's policy defines a host service
//! labels may grant and a scope that takes forwards and grants from the
//! labels of compose projects' containers; the containers carry the rest.
//!
//! - A labelled container gets its forward and its grant.
//! - An invalid label gives its container nothing from labels, and says
//!   why, with the container's name, in `netbpf status` and the log.
//! - A label cannot grant a service the node did not mark grantable by
//!   label, nor take effect on a container the scope does not match.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use netbpf_testenv::{AgentSetup, DockerNode, NODE_PUBLISHED, NetbpfRun, Process, applied};
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
