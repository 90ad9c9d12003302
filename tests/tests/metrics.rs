//! The agent's Prometheus metrics, scraped from a running netbpf while
//! real traffic crosses its forward: the figures move with it.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{net::SocketAddr, time::Duration};

use netbpf_testenv::{
    BRIDGE_V4, DesktopTopology, KernelMaps, NetbpfRun, Place, Scrape, netbpf_binary, require_root,
};

/// A loopback address with a port nobody listens on now.
fn free_loopback_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn scraped_counters_follow_connections_reloads_and_new_cgroups() {
    require_root();
    let topology = DesktopTopology::new().expect("building the desktop topology");
    let policy = format!(
        "version = 1\n\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}]\n",
        topology.desktop.path().display()
    );
    let file = topology.file("policy.toml");
    std::fs::write(&file, &policy).unwrap();
    let address = free_loopback_address();
    let mut netbpf = NetbpfRun::start_with(
        &netbpf_binary(),
        &file,
        topology.root.path(),
        topology.work.path(),
        &["--metrics", &address.to_string(), "--log-format", "json"],
    )
    .expect("starting netbpf run");
    let _server = topology
        .start_http_server(BRIDGE_V4, 8082, "published")
        .unwrap();
    let forward = [
        ("scope", "desktop"),
        ("kind", "forward"),
        ("rule", "localhost:8082 -> 10.200.1.1:8082"),
    ];

    let before = Scrape::fetch(address, None).unwrap();
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        before.content_type
    );
    assert!(before.text.trim_end().ends_with("# EOF"), "{}", before.text);
    assert_eq!(before.count("netbpf_rule_connects_total", &forward), 0);
    assert_eq!(
        before.count("netbpf_map_entries", &[("map", "FORWARD_PORTS")]),
        1
    );
    assert_eq!(
        before.count("netbpf_scope_instances", &[("state", "applied")]),
        1
    );
    assert_eq!(before.count("netbpf_policy_reloads_total", &[]), 0);
    assert_eq!(before.count("netbpf_cgroup_resyncs_total", &[]), 0);
    assert!(
        before
            .text
            .contains("# TYPE netbpf_discovery_delay_seconds histogram")
    );

    for _ in 0..3 {
        assert_eq!(
            topology
                .curl(Place::Desktop, "http://localhost:8082/")
                .unwrap(),
            (0, "published".to_owned())
        );
    }
    let after = Scrape::fetch(address, None).unwrap();
    assert_eq!(
        after.count("netbpf_rule_connects_total", &forward),
        3,
        "{}",
        after.text
    );
    assert_map_entries_are_the_kernels(&after, &KernelMaps::of(&netbpf).unwrap());

    // A good reload and a bad one: both counted, the bad one as an error.
    netbpf.reload().unwrap();
    std::fs::write(&file, "version = 1\n[[scope]]\nname = 3\n").unwrap();
    netbpf.reload().unwrap();
    // A cgroup appearing under the root: its discovery delay is observed.
    let _late = topology.root.child("late").unwrap();
    let mut scrape = Scrape::fetch(address, None).unwrap();
    for _ in 0..50 {
        if scrape.value("netbpf_discovery_delay_seconds_count", &[]) >= Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        scrape = Scrape::fetch(address, None).unwrap();
    }
    assert_eq!(scrape.count("netbpf_policy_reloads_total", &[]), 2);
    assert_eq!(scrape.count("netbpf_policy_reload_errors_total", &[]), 1);
    assert_eq!(
        scrape.count("netbpf_discovery_delay_seconds_count", &[]),
        1,
        "{}",
        scrape.text
    );
    // Counters never go back: the running policy stayed.
    assert_eq!(scrape.count("netbpf_rule_connects_total", &forward), 3);

    assert_json_log(&netbpf.log());
}

/// The maps the agent reports filled hold, in the kernel, exactly the
/// entries it says, and can hold what it says; a map of a program not loaded (the grants of
/// `sk_lookup`, loaded only for host services) is reported empty.
fn assert_map_entries_are_the_kernels(scrape: &Scrape, maps: &KernelMaps) {
    for map in [
        "CGROUP_SCOPES",
        "NETNS_SCOPES",
        "FORWARD_PORTS",
        "FORWARDS",
        "ALIASES",
        "BIND_REMAPS",
        "GRANTS",
        "SCOPE_GRANTS",
        "HOST_SERVICES",
    ] {
        let held = if maps.has(map) {
            assert_eq!(
                scrape.count("netbpf_map_capacity_entries", &[("map", map)]),
                maps.capacity(map).unwrap(),
                "netbpf_map_capacity_entries of {map} against the kernel's map"
            );
            maps.entries(map).unwrap()
        } else {
            0
        };
        assert_eq!(
            scrape.count("netbpf_map_entries", &[("map", map)]),
            u64::try_from(held).unwrap(),
            "netbpf_map_entries of {map} against the kernel's map"
        );
    }
}

/// The log, written to a file: one JSON object per line and nothing else,
/// no colours, the scope's application and the refused reload among its
/// events.
fn assert_json_log(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in the log:\n{log}"
    );
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("a log line that is no JSON ({error}): {line}"))
        })
        .collect();
    assert!(
        events.iter().all(serde_json::Value::is_object),
        "a log line that is no object:\n{log}"
    );
    let applied = events
        .iter()
        .find(|event| event["message"] == "scope instance applied")
        .unwrap_or_else(|| panic!("no applied scope in:\n{log}"));
    assert_eq!(applied["scope"], "desktop/desktop", "{applied}");
    assert!(
        events
            .iter()
            .any(|event| event["message"] == "policy not reloaded: the running one stays"),
        "{log}"
    );
}
