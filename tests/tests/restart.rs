//! The datapath outlives the agent: a client opens connections through a
//! forward in a tight loop while the agent is killed (SIGKILL), started
//! again, stopped (SIGTERM) and started again. Not one connection fails,
//! the counters continue, and each program stays attached once.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{collections::BTreeSet, path::Path, time::Duration};

use netbpf_testenv::{AgentSetup, BRIDGE_V4, DesktopTopology, Place, require_root, run_checked};
use nix::sys::signal::Signal;

/// Ids of the programs attached to the cgroup at `path`, with the number
/// of times each is.
fn attached(path: &Path) -> Vec<u64> {
    let listing = run_checked("bpftool", ["-j", "cgroup", "show", path.to_str().unwrap()]).unwrap();
    let value: serde_json::Value = serde_json::from_str(&listing).unwrap_or_default();
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

#[test]
fn the_datapath_outlives_the_agent_killed_and_restarted_without_a_failed_connection() {
    require_root();
    let topology = DesktopTopology::new().unwrap();
    let _server = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8082, "bridge")
        .unwrap();
    let setup = AgentSetup::new(topology.work.path(), topology.root.path(), None).unwrap();
    setup
        .policy(
            "desktop.toml",
            &format!(
                "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
                 forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}]\n",
                topology.desktop.path().display()
            ),
        )
        .unwrap();
    let start = |round: &str| {
        setup
            .start(round)
            .unwrap_or_else(|error| panic!("{error:#}"))
    };

    let mut agent = start("first");
    let client = topology
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
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = start("second");
    std::thread::sleep(Duration::from_secs(1));

    // Stopped as a service manager stops it: the datapath stays too.
    assert!(agent.signal(Signal::SIGTERM).unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let agent = start("third");

    let mut client = client;
    client.wait(Duration::from_secs(15)).unwrap();
    let said = client.log();
    let mut fields = said.split_whitespace();
    let ok: u64 = fields
        .next()
        .and_then(|ok| ok.parse().ok())
        .unwrap_or_else(|| panic!("client said {said:?}"));
    let failed: u64 = fields
        .next()
        .and_then(|failed| failed.parse().ok())
        .unwrap();
    eprintln!("client: {ok} connections, {failed} failed");
    assert_eq!(failed, 0, "connections failed across the restarts: {said}");
    assert!(ok > 100, "the client connected {ok} times: {said}");

    // The counters went on from where the first agent left them.
    let status = agent.status_json().unwrap();
    let connects = status["scopes"][0]["forwards"][0]["connects"]
        .as_u64()
        .unwrap();
    assert!(
        connects >= ok,
        "{connects} connects counted for {ok} connections: {status}"
    );

    // Each program attached once, by the links of the first agent.
    let programs = attached(topology.root.path());
    let distinct: BTreeSet<u64> = programs.iter().copied().collect();
    assert_eq!((programs.len(), distinct.len()), (13, 13), "{programs:?}");
    let loaded: BTreeSet<u64> = agent.programs().unwrap().into_values().collect();
    assert_eq!(
        distinct, loaded,
        "the links run the newest agent's programs"
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
    assert!(!setup.pin_dir.exists(), "pins left after uninstall");
}
