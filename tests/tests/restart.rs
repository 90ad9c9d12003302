//! The datapath outlives the agent: a client opens connections through a
//! forward in a tight loop while the agent is killed (SIGKILL), started
//! again, stopped (SIGTERM) and replaced by its next version (a new map
//! layout, migrated). Not one connection fails, the counters continue, and
//! each program stays attached once.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use netbpf_common::MAP_LAYOUT;
use netbpf_testenv::{
    AgentOptions, AgentSetup, BRIDGE_V4, DesktopTopology, NetbpfRun, Place, Process, bpftool_json,
    netbpf_binary, netbpf_next_binary, require_root,
};
use nix::sys::signal::Signal;

/// Ids of the programs attached to the cgroup at `path`, with the number
/// of times each is.
fn attached(path: &Path) -> Vec<u64> {
    let value = bpftool_json(&["cgroup", "show", path.to_str().unwrap()]).unwrap();
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["id"].as_u64())
        .collect()
}

/// Connects to localhost:8082 for `seconds`, as fast as it can; prints
/// `OK FAILED` and the first failure.
const CLIENT: &str = "\
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
ok = failed = 0
first = ''
while time.monotonic() < end:
    try:
        with socket.create_connection(('127.0.0.1', 8082), timeout=2) as s:
            data = s.recv(64)
        if data.strip() == b'bridge':
            ok += 1
        else:
            failed += 1
            first = first or repr(data)
    except OSError as error:
        failed += 1
        first = first or repr(error)
    time.sleep(0.002)
print(ok, failed, first)
";

/// The desktop's localhost:8082 forwarded to the bridge, and an MSS clamp
/// on the bridge (whose egress every connection's SYN-ACK crosses), for an
/// agent whose node is the docker host's namespace.
fn pinned_agent(topology: &DesktopTopology) -> AgentSetup {
    let netns = topology.host_ns.path();
    let setup = AgentSetup::new(
        topology.work.path(),
        topology.root.path(),
        AgentOptions {
            netns: Some(&netns),
            ..AgentOptions::default()
        },
    )
    .unwrap();
    setup
        .policy(
            "desktop.toml",
            &format!(
                "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
                 forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}, \
                 {{ from = \"localhost:8083\", to = \"{BRIDGE_V4}:8083\" }}]\n\
                 [[mss_clamp]]\ninterface = \"br0\"\nmss = 1300\n",
                topology.desktop.path().display()
            ),
        )
        .unwrap();
    setup
}

/// What localhost:`port` answers in the desktop.
fn answer(topology: &DesktopTopology, port: u16) -> String {
    let output = topology
        .spawn(
            Place::Desktop,
            "socat",
            &["-T2", "-", &format!("TCP:127.0.0.1:{port}")],
        )
        .unwrap()
        .output(Duration::from_secs(5))
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The counters went on from where the first agent left them: at least
/// one per connection the client made (`ok`).
fn assert_counters_went_on(status: &serde_json::Value, ok: u64) {
    let connects = status["scopes"][0]["forwards"][0]["connects"]
        .as_u64()
        .unwrap();
    assert!(
        connects >= ok,
        "{connects} connects counted for {ok} connections: {status}"
    );
    let seen = status["mss_clamps"][0]["attached"][0]["seen"]
        .as_u64()
        .unwrap();
    assert!(
        seen >= ok,
        "{seen} handshakes seen by the MSS clamp for {ok} connections: {status}"
    );
}

/// The new layout counted the desktop's own listener on 8083 again (local
/// binds are recounted, never copied); once it closes, the new release
/// hook uncounts it and the port is forwarded.
fn assert_own_listener_recounted(topology: &DesktopTopology, own: &mut Process) {
    assert_eq!(answer(topology, 8083), "own");
    own.stop(Signal::SIGTERM, Duration::from_secs(2)).unwrap();
    let mut forwarded = String::new();
    for _ in 0..50 {
        forwarded = answer(topology, 8083);
        if forwarded == "bridge-8083" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(forwarded, "bridge-8083");
}

/// What the client said: connections made, connections failed, and the
/// whole line.
fn client_result(client: &mut Process) -> (u64, u64, String) {
    client.wait(Duration::from_secs(15)).unwrap();
    let said = client.log();
    let numbers: Vec<u64> = said
        .split_whitespace()
        .take(2)
        .filter_map(|number| number.parse().ok())
        .collect();
    let [ok, failed] = numbers[..] else {
        panic!("the client said {said:?}");
    };
    (ok, failed, said)
}

/// The ids of the programs `agent` loaded for the cgroup.
fn socket_programs(agent: &NetbpfRun) -> BTreeSet<u64> {
    agent
        .programs()
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("netbpf_mss"))
        .map(|(_, id)| id)
        .collect()
}

/// The older version of netbpf refuses the newer map layout, naming it,
/// and changes nothing.
fn assert_older_version_refuses(setup: &AgentSetup, topology: &DesktopTopology) {
    let refused = Command::new(netbpf_binary())
        .args(["agent", "--config"])
        .arg(&setup.config)
        .arg("--run-dir")
        .arg(topology.file("downgrade-run"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("pinned by a newer netbpf"),
        "{said}"
    );
}

#[test]
fn the_datapath_outlives_restarts_and_an_upgrade_without_a_failed_connection() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _server = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8082, "bridge")
        .unwrap();
    let _forwarded = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8083, "bridge-8083")
        .unwrap();
    // A service of the desktop's own on a forwarded port, bound before
    // netbpf started: its port is the desktop's, never forwarded.
    let mut own = topology
        .start_tcp_banner(Place::Desktop, "127.0.0.1", 8083, "own")
        .unwrap();
    let setup = pinned_agent(&topology);
    let start = |round: &str| {
        setup
            .start(round)
            .unwrap_or_else(|error| panic!("{error:#}"))
    };

    let mut agent = start("first");
    let first_clamp = agent.programs().unwrap()["netbpf_mss_out"];
    let mut client = topology
        .spawn(Place::Desktop, "python3", &["-c", CLIENT, "6"])
        .unwrap()
        .start(&topology.file("client.log"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Killed: nothing detaches, and a new agent adopts what is pinned.
    agent.signal(Signal::SIGKILL).unwrap();
    assert_eq!(
        attached(topology.root.path()).len(),
        13,
        "the programs stay attached"
    );
    assert_eq!(
        topology.host_ns.tc_attachments_of(first_clamp).unwrap(),
        1,
        "the MSS clamp stays attached"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = start("second");
    std::thread::sleep(Duration::from_secs(1));

    // Stopped as a service manager stops it, and upgraded: the next
    // version of netbpf (a new map layout) migrates the maps and replaces
    // the programs in their links.
    assert!(agent.signal(Signal::SIGTERM).unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    // What an upgrade interrupted before its links switched leaves: staged
    // maps of the new layout, never used. They are made again.
    let (layout, next) = (MAP_LAYOUT, MAP_LAYOUT + 1);
    let staged = setup.pin_dir.join(format!("maps-v{next}-staged"));
    std::fs::create_dir(&staged).unwrap();
    let agent = setup
        .start_binary("third", &netbpf_next_binary())
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(agent.status_json().unwrap()["map_layout"], next);
    assert!(
        setup.pin_dir.join(format!("maps-v{next}")).is_dir()
            && !setup.pin_dir.join(format!("maps-v{layout}")).exists()
    );
    assert!(!staged.exists(), "the staged maps are settled");

    assert_older_version_refuses(&setup, &topology);

    assert_own_listener_recounted(&topology, &mut own);

    let (ok, failed, said) = client_result(&mut client);
    eprintln!("client: {ok} connections, {failed} failed");
    assert_eq!(failed, 0, "connections failed across the restarts: {said}");
    // It kept connecting through the restarts: at least once a second of
    // its six (hundreds here; a few dozen in a kernel VM without KVM).
    assert!(ok >= 6, "the client connected {ok} times: {said}");

    assert_counters_went_on(&agent.status_json().unwrap(), ok);

    // Each program attached once, its link running the newest agent's.
    let programs = attached(topology.root.path());
    let distinct: BTreeSet<u64> = programs.iter().copied().collect();
    assert_eq!((programs.len(), distinct.len()), (13, 13), "{programs:?}");
    assert_eq!(
        distinct,
        socket_programs(&agent),
        "the links run the newest agent's programs"
    );
    let clamp = agent.programs().unwrap()["netbpf_mss_out"];
    assert_eq!(
        (
            topology.host_ns.tc_attachments_of(clamp).unwrap(),
            topology.host_ns.tc_attachments_of(first_clamp).unwrap()
        ),
        (1, 0),
        "the MSS clamp's link runs the newest agent's program"
    );

    // Uninstalled: nothing is left.
    assert!(agent.stop().unwrap().success());
    let output = setup.uninstall().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        attached(topology.root.path()).is_empty(),
        "programs left after uninstall"
    );
    assert_eq!(
        topology.host_ns.tc_attachments_of(clamp).unwrap(),
        0,
        "the MSS clamp is gone after uninstall"
    );
    assert!(!setup.pin_dir.exists(), "pins left after uninstall");
}
