//! `netbpf agent` and its policy directory: an edit takes effect while the
//! container runs, an invalid edit changes nothing and says where it is
//! wrong, and a name defined in two files is refused naming both. A full
//! map takes a replacement in one update. A held connection keeps what it
//! dialed across policy edits, derived or kept in its socket's storage.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{
    io::{BufRead, BufReader, Lines, Write},
    process::{ChildStdin, ChildStdout},
    time::Duration,
};

use netbpf_common::peer_bit;

use netbpf_testenv::{
    AgentOptions, AgentSetup, BRIDGE_V4, DesktopTopology, KernelMaps, Place, Process, Site,
    applied, cgroup_id, require_root,
};

/// A policy forwarding the desktop's localhost:8082 to `port` on the
/// bridge.
fn forward_to(topology: &DesktopTopology, port: u16) -> String {
    format!(
        "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:{port}\" }}]\n",
        topology.desktop.path().display()
    )
}

/// What the desktop gets at localhost:8082.
fn banner(topology: &DesktopTopology) -> String {
    banner_at(topology.site(Place::Desktop))
}

/// What `site` gets at localhost:8082. The server closes after its
/// banner, so the idle timeout is a ceiling only: in a kernel VM without
/// KVM, forking the server's `echo` took longer than 3 s.
fn banner_at(site: Site) -> String {
    let output = site
        .spawn("socat", &["-T", "20", "-", "TCP:127.0.0.1:8082"])
        .unwrap()
        .output(Duration::from_secs(30))
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An agent's setup in `topology`'s work directory, over its cgroup root.
fn agent_setup(topology: &DesktopTopology) -> AgentSetup {
    AgentSetup::new(
        topology.work.path(),
        topology.root.path(),
        AgentOptions::default(),
    )
    .unwrap()
}

/// Writes `text` as the policy file `name` the way editors save: a new
/// file renamed over the old one.
fn save(setup: &AgentSetup, name: &str, text: &str) {
    let temporary = setup.policy_dir.join(format!(".{name}.swp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, setup.policy_dir.join(name)).unwrap();
}

#[test]
fn the_policy_directory_is_followed_and_a_bad_edit_changes_nothing() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _first = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 9001, "first")
        .unwrap();
    let _second = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 9002, "second")
        .unwrap();
    let setup = agent_setup(&topology);
    setup
        .policy("desktop.toml", &forward_to(&topology, 9001))
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(banner(&topology), "first");
    // Every kernel of the matrix (6.1 and newer) has every feature the
    // agent probes at start.
    assert_eq!(
        agent.status_json().unwrap()["unavailable"],
        serde_json::json!([])
    );

    // Edited while the container runs: in force without a signal.
    save(&setup, "desktop.toml", &forward_to(&topology, 9002));
    agent
        .wait_for_status(Duration::from_secs(5), |status| {
            status["scopes"][0]["forwards"][0]["to"] == format!("{BRIDGE_V4}:9002")
        })
        .unwrap();
    assert_eq!(banner(&topology), "second");

    // An invalid edit: reported with file, line and field; nothing changes.
    save(
        &setup,
        "desktop.toml",
        &forward_to(&topology, 9002).replace("localhost:8082", "localhost:80820"),
    );
    let status = agent
        .wait_for_status(Duration::from_secs(5), |status| {
            !status["last_reload"]["error"].is_null()
        })
        .unwrap();
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("desktop.toml:5:") && error.contains("scope[0].forward[0].from"),
        "{error}"
    );
    assert_eq!(banner(&topology), "second", "the last good policy stays");

    // A name defined in two files: refused, naming both places.
    save(&setup, "desktop.toml", &forward_to(&topology, 9002));
    save(&setup, "again.toml", &forward_to(&topology, 9001));
    let status = agent
        .wait_for_status(Duration::from_secs(5), |status| {
            status["last_reload"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("defined twice"))
        })
        .unwrap();
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("again.toml:3") && error.contains("desktop.toml:3"),
        "{error}"
    );
    assert_eq!(banner(&topology), "second");
    assert!(agent.stop().unwrap().success());
}

/// A TCP connection through a forward that alone reaches its target
/// keeps nothing in the kernel: `getpeername()` derives what it dialed
/// from its peer. The connection still shows what it dialed after the
/// forward moves to another port (the kernel keeps the derived port for
/// the scope's live sockets), while a new connection through the new
/// port shows its own.
#[test]
fn a_held_connection_shows_what_it_dialed_across_policy_edits() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _server = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 9001, "target")
        .unwrap();
    let setup = agent_setup(&topology);
    let forward_from = |port: u16| {
        forward_to(&topology, 9001).replace("localhost:8082", &format!("localhost:{port}"))
    };
    setup.policy("desktop.toml", &forward_from(8082)).unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    let maps = KernelMaps::of(&agent).unwrap();
    assert_eq!(
        maps.entries("DERIVED_PEERS").unwrap(),
        1,
        "the forward's peer is derived"
    );

    let mut held = Held::dial(&topology, 8082);
    let dialed = serde_json::json!(["127.0.0.1", 8082]);
    assert_eq!(held.peer(false), dialed);

    save(&setup, "desktop.toml", &forward_from(8083));
    agent
        .wait_for_status(Duration::from_secs(5), |status| {
            status["scopes"][0]["forwards"][0]["from"]
                .as_str()
                .is_some_and(|from| from.ends_with(":8083"))
        })
        .unwrap();
    assert_eq!(
        held.peer(true),
        dialed,
        "the held connection, after the edit"
    );
    let new = topology
        .spawn_probe(Place::Desktop, &["tcp", "127.0.0.1", "8083"])
        .unwrap()
        .output(Duration::from_secs(10))
        .unwrap();
    let new: serde_json::Value = serde_json::from_slice(&new.stdout).unwrap();
    assert_eq!(
        (&new["peer"], new["data"].as_str()),
        (&serde_json::json!(["127.0.0.1", 8083]), Some("target")),
        "a new connection through the moved forward"
    );
    assert!(agent.stop().unwrap().success());
}

/// A TCP connection the desktop holds open to its localhost `port`,
/// which answers with its peer when asked.
struct Held {
    _client: Process,
    ask: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

impl Held {
    fn dial(topology: &DesktopTopology, port: u16) -> Self {
        let (client, ask, answers) = topology
            .spawn_probe(
                Place::Desktop,
                &["tcp-held", "127.0.0.1", &port.to_string()],
            )
            .unwrap()
            .start_piped(&topology.work.path().join(format!("held-{port}.log")))
            .unwrap();
        Self {
            _client: client,
            ask,
            answers: BufReader::new(answers).lines(),
        }
    }

    /// The connection's `getpeername()`: the one it printed at connect,
    /// or (`ask_again`) a new one.
    fn peer(&mut self, ask_again: bool) -> serde_json::Value {
        if ask_again {
            writeln!(self.ask).unwrap();
        }
        let line = self
            .answers
            .next()
            .expect("the held connection answers")
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["peer"].clone()
    }
}

/// A TCP connection that kept what it dialed in its socket's storage (two
/// forwards reach its target, so its peer is not derived) still shows it
/// after an edit takes its target out of the policy: `getpeername()` looks
/// at the storage only for peers in the kernel's filter of rewritten ones,
/// and the filter keeps the peers of earlier policies.
#[test]
fn a_held_connection_shows_what_it_dialed_after_its_target_left_the_policy() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _servers = [(9001, "old"), (9002, "new")].map(|(port, banner)| {
        topology
            .start_tcp_banner(Place::DockerHost, BRIDGE_V4, port, banner)
            .unwrap()
    });
    let bit = |port: u16| {
        let bridge: std::net::Ipv4Addr = BRIDGE_V4.parse().unwrap();
        peer_bit(&[u32::from(bridge).to_be(), 0, 0, 0], port.to_be())
    };
    assert_ne!(
        bit(9001),
        bit(9002),
        "the old target's bit in the filter must be none of the new policy's"
    );
    let setup = agent_setup(&topology);
    let two_forwards = forward_to(&topology, 9001).replace(
        "}]\n",
        &format!("}}, {{ from = \"localhost:8083\", to = \"{BRIDGE_V4}:9001\" }}]\n"),
    );
    setup.policy("desktop.toml", &two_forwards).unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(
        KernelMaps::of(&agent)
            .unwrap()
            .entries("DERIVED_PEERS")
            .unwrap(),
        0,
        "two forwards reach the target: its peer is not derived"
    );
    let mut held = Held::dial(&topology, 8082);
    let dialed = serde_json::json!(["127.0.0.1", 8082]);
    assert_eq!(held.peer(false), dialed);

    save(&setup, "desktop.toml", &forward_to(&topology, 9002));
    agent
        .wait_for_status(Duration::from_secs(5), |status| {
            status["scopes"][0]["forwards"][0]["to"]
                .as_str()
                .is_some_and(|to| to.ends_with(":9002"))
        })
        .unwrap();
    assert_eq!(banner(&topology), "new", "the edit took effect");
    assert_eq!(
        held.peer(true),
        dialed,
        "the held connection, after its target left the policy"
    );
    assert!(agent.stop().unwrap().success());
}

/// A policy of one scope per cgroup of `names` below the test's root, each
/// forwarding localhost:8082 to the bridge.
fn scopes_for(topology: &DesktopTopology, names: &[&str]) -> String {
    use std::fmt::Write as _;
    let mut policy = "version = 1\n".to_owned();
    for name in names {
        let _ = write!(
            policy,
            "[[scope]]\nname = \"{name}\"\nmatch = {{ cgroup = \"{}\" }}\n\
             forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:9001\" }}]\n",
            topology.root.path().join(name).display()
        );
    }
    policy
}

/// The scopes map holds two; the policy goes from cgroups a and b to b and
/// c in one update. c's entry is written while a's still holds its place:
/// the update makes room rather than fail the whole node. The kernel's map
/// then holds b's and c's entries, and c's connections are forwarded.
#[test]
fn a_full_map_takes_a_replacement_in_one_update() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _server = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 9001, "forwarded")
        .unwrap();
    let cgroups: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| topology.root.child(name).unwrap())
        .collect();
    let setup = agent_setup(&topology);
    setup.configure("[capacity]\nscopes = 2\n").unwrap();
    setup
        .policy("scopes.toml", &scopes_for(&topology, &["a", "b"]))
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(applied(&agent.status_json().unwrap()), ["a/a", "b/b"]);
    let maps = KernelMaps::of(&agent).unwrap();
    let scoped = |names: &[usize]| {
        let mut ids: Vec<u64> = names
            .iter()
            .map(|&index| cgroup_id(cgroups[index].path()).unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(maps.cgroup_keys("CGROUP_SCOPES").unwrap(), scoped(&[0, 1]));
    let site = |index: usize| Site {
        cgroup: &cgroups[index],
        netns: &topology.desktop_ns,
    };
    assert_eq!(banner_at(site(2)), "", "c is no scope yet");

    save(&setup, "scopes.toml", &scopes_for(&topology, &["b", "c"]));
    let status = agent
        .wait_for_status(Duration::from_secs(5), |status| {
            !status["last_reload"].is_null()
        })
        .unwrap();
    assert!(status["last_reload"]["error"].is_null(), "{status}");
    assert_eq!(applied(&status), ["b/b", "c/c"], "{status}");
    assert_eq!(
        maps.cgroup_keys("CGROUP_SCOPES").unwrap(),
        scoped(&[1, 2]),
        "the kernel's scopes map holds b and c, a's entry gone"
    );
    assert_eq!(
        banner_at(site(2)),
        "forwarded",
        "c's connection is forwarded"
    );
    assert_eq!(banner_at(site(0)), "", "a's is not");
    // The status of one scope, or of one instance, on its own.
    let only = |args: &[&str]| {
        let text = agent.status(args).unwrap();
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        applied(&status)
    };
    assert_eq!(only(&["--json", "--scope", "c"]), ["c/c"]);
    assert_eq!(only(&["--json", "--container", "b"]), ["b/b"]);
    assert!(only(&["--json", "--scope", "a"]).is_empty());
    assert!(agent.stop().unwrap().success());
}
