//! The datapath outlives the agent: a client opens connections through a
//! forward in a tight loop while the agent is killed (SIGKILL), started
//! again, stopped (SIGTERM) and replaced by its next version (a new map
//! layout, migrated). It connects in every one of those phases, not one
//! connection fails, the counters continue with each connection counted
//! once, and each program stays attached once.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use netbpf_common::{MAP_LAYOUT, names};
use netbpf_testenv::{
    AgentOptions, AgentSetup, BRIDGE_V4, DesktopTopology, NetbpfRun, Place, Process, bpftool_json,
    netbpf_binary, netbpf_next_binary, pinned_values, require_root,
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

/// Connects to localhost:8082 as fast as it can until the phase file
/// (argv 1) says `done`, counting each connection (ok, failed) under the
/// phase the file named when it began; the counts so far are in the
/// progress file (argv 2) after every connection. At the end it prints
/// `{"phases": {PHASE: [OK, FAILED]}, "first_failure": "..."}`, the first
/// failure with how long it took: a datapath that lets a connection down
/// refuses it at once, a slow machine (the VMs emulate their CPUs) times
/// out, so the timeout is generous.
const CLIENT: &str = "\
import json, os, socket, sys, time
phase_file, progress_file = sys.argv[1], sys.argv[2]
phases = {}
first = ''
while True:
    with open(phase_file) as f:
        phase = f.read()
    if phase == 'done':
        break
    counts = phases.setdefault(phase, [0, 0])
    began = time.monotonic()
    try:
        with socket.create_connection(('127.0.0.1', 8082), timeout=10) as s:
            data = s.recv(64)
        if data.strip() == b'bridge':
            counts[0] += 1
        else:
            counts[1] += 1
            first = first or '%s: %r after %.3f s' % (phase, data, time.monotonic() - began)
    except OSError as error:
        counts[1] += 1
        first = first or '%s: %r after %.3f s' % (phase, error, time.monotonic() - began)
    with open(progress_file + '.new', 'w') as f:
        json.dump(phases, f)
    os.replace(progress_file + '.new', progress_file)
    time.sleep(0.002)
print(json.dumps({'phases': phases, 'first_failure': first}))
";

/// The client of [`CLIENT`], told which phase of the test it is in.
struct PhasedClient {
    process: Process,
    phase_file: PathBuf,
    progress_file: PathBuf,
}

/// Connections each phase made, at least: enough to show the datapath
/// worked all through it.
const PER_PHASE: u64 = 5;

impl PhasedClient {
    fn start(topology: &DesktopTopology, first_phase: &str) -> Self {
        let phase_file = topology.file("client.phase");
        let progress_file = topology.file("client.progress");
        tell(&phase_file, first_phase);
        let client = Self {
            process: topology
                .spawn(
                    Place::Desktop,
                    "python3",
                    &[
                        "-c",
                        CLIENT,
                        phase_file.to_str().unwrap(),
                        progress_file.to_str().unwrap(),
                    ],
                )
                .unwrap()
                .start(&topology.file("client.log"))
                .unwrap(),
            phase_file,
            progress_file,
        };
        client.wait_in(first_phase);
        client
    }

    /// Tells the client the test is in `phase` now, and waits until it has
    /// made [`PER_PHASE`] connections in it (a phase cut short is a test
    /// that proves nothing of it).
    fn enter(&self, phase: &str) {
        tell(&self.phase_file, phase);
        self.wait_in(phase);
    }

    /// Waits until the client has made [`PER_PHASE`] connections in
    /// `phase`, or one failed.
    fn wait_in(&self, phase: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let [ok, failed] = self.progress(phase);
            if ok >= PER_PHASE || failed > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the client made {ok} connections in 30 s of phase {phase}:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the client counted in `phase` so far.
    fn progress(&self, phase: &str) -> [u64; 2] {
        std::fs::read_to_string(&self.progress_file)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|phases| serde_json::from_value(phases[phase].clone()).ok())
            .unwrap_or([0, 0])
    }

    /// Ends the client: its counts per phase and its first failure.
    fn finish(mut self) -> (BTreeMap<String, [u64; 2]>, String) {
        tell(&self.phase_file, "done");
        self.process.wait(Duration::from_secs(15)).unwrap();
        let said = self.process.log();
        let result: serde_json::Value = serde_json::from_str(said.trim())
            .unwrap_or_else(|error| panic!("the client said {said:?}: {error}"));
        (
            serde_json::from_value(result["phases"].clone()).unwrap(),
            result["first_failure"].as_str().unwrap().to_owned(),
        )
    }
}

/// Writes `phase` to the phase file in one step, as the client reads it.
fn tell(phase_file: &Path, phase: &str) {
    let new = phase_file.with_extension("new");
    std::fs::write(&new, phase).unwrap();
    std::fs::rename(&new, phase_file).unwrap();
}

/// The desktop's localhost:8082 forwarded to the bridge, and an MSS clamp
/// on the bridge (whose egress every connection's SYN-ACK crosses), for an
/// agent whose node is the docker host's namespace, and which runs there
/// (as on a node: what it leaves behind on the way out is in its own
/// namespace).
fn pinned_agent(topology: &DesktopTopology) -> AgentSetup {
    let netns = topology.host_ns.path();
    let mut setup = AgentSetup::new(
        topology.work.path(),
        topology.root.path(),
        AgentOptions {
            netns: Some(&netns),
            ..AgentOptions::default()
        },
    )
    .unwrap();
    setup.process.netns = Some(netns.clone());
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

/// Ends the client and checks that it connected in every phase, not once
/// failing; returns how many connections it tried.
fn assert_every_phase_connected(client: PhasedClient) -> u64 {
    let (phases, first_failure) = client.finish();
    eprintln!("client, connections per phase (ok, failed): {phases:?}");
    let (ok, failed) = phases
        .values()
        .fold((0, 0), |(ok, failed), [o, f]| (ok + o, failed + f));
    assert_eq!(
        failed, 0,
        "connections failed across the restarts: {phases:?}, the first: {first_failure}"
    );
    let phase_names: Vec<&str> = phases.keys().map(String::as_str).collect();
    assert_eq!(
        phase_names,
        [
            "first agent",
            "killed",
            "second agent",
            "stopped",
            "upgraded"
        ]
    );
    assert!(
        phases.values().all(|[ok, _]| *ok >= PER_PHASE),
        "{phases:?}"
    );
    ok + failed
}

/// The counters went on from where the first agent left them, each
/// connection the client tried (`tried`) counted once: the migration's
/// merge neither lost nor doubled one. What the older layout counted was
/// carried into the array the agent alone writes (`maps_dir`'s
/// `RULE_STATS_CARRIED`), never written over the counters the programs
/// count in while it is added.
fn assert_counters_went_on(status: &serde_json::Value, tried: u64, maps_dir: &Path) {
    let connects = status["scopes"][0]["forwards"][0]["connects"]
        .as_u64()
        .unwrap();
    assert_eq!(
        connects, tried,
        "connects counted for the connections the client tried: {status}"
    );
    // `connects` is the first field of a rule's counters.
    let carried: u64 = pinned_values(&maps_dir.join(names::RULE_COUNTERS.carried))
        .unwrap()
        .iter()
        .map(|value| u64::from_ne_bytes(value[..8].try_into().unwrap()))
        .sum();
    assert!(
        0 < carried && carried < tried,
        "{carried} connects carried over from the older layout, of {tried}"
    );
    // Every connection's SYN-ACK crosses the bridge (so do the desktop's
    // own checks of the forward of 8083).
    let seen = status["mss_clamps"][0]["attached"][0]["seen"]
        .as_u64()
        .unwrap();
    assert!(
        seen >= tried,
        "{seen} handshakes seen by the MSS clamp for {tried} connections: {status}"
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
    let client = PhasedClient::start(&topology, "first agent");

    // Killed: nothing detaches, and a new agent adopts what is pinned.
    agent.signal(Signal::SIGKILL).unwrap();
    client.enter("killed");
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
    let mut agent = start("second");
    client.enter("second agent");
    let second_clamp = agent.programs().unwrap()["netbpf_mss_out"];

    // Stopped as a service manager stops it, and upgraded: the next
    // version of netbpf (a new map layout) migrates the maps and replaces
    // the programs in their links.
    assert!(agent.signal(Signal::SIGTERM).unwrap().success());
    client.enter("stopped");
    assert_eq!(
        topology.host_ns.tc_attachments_of(second_clamp).unwrap(),
        1,
        "the MSS clamp stays in force when the agent stops"
    );
    // What an upgrade interrupted before its links switched leaves: staged
    // maps of the new layout, never used. They are made again.
    let (layout, next) = (MAP_LAYOUT, MAP_LAYOUT + 1);
    let staged = setup.pin_dir.join(format!("maps-v{next}-staged"));
    std::fs::create_dir(&staged).unwrap();
    let agent = setup
        .start_binary("third", &netbpf_next_binary())
        .unwrap_or_else(|error| panic!("{error:#}"));
    // Ready: every connection from here is the upgraded datapath's.
    client.enter("upgraded");
    assert_eq!(agent.status_json().unwrap()["map_layout"], next);
    assert!(
        setup.pin_dir.join(format!("maps-v{next}")).is_dir()
            && !setup.pin_dir.join(format!("maps-v{layout}")).exists()
    );
    assert!(!staged.exists(), "the staged maps are settled");

    let tried = assert_every_phase_connected(client);
    assert_counters_went_on(
        &agent.status_json().unwrap(),
        tried,
        &setup.pin_dir.join(format!("maps-v{next}")),
    );

    assert_older_version_refuses(&setup, &topology);
    assert_own_listener_recounted(&topology, &mut own);

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
