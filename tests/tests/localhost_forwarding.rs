//! Localhost forwarding with the real programs loaded into this kernel and
//! real traffic between namespaces: a desktop container reaches ports
//! published on another bridge's gateway as `localhost`.
//!
//! Privileged: run as root (`cargo xtask test`). Each test builds its own
//! topology under unique names and removes it, also when it fails.

use std::time::Duration;

use netbpf_testenv::{
    BRIDGE_V4, Cgroup, DesktopTopology, NetbpfRun, Place, Site, doctor, doctor_config, findings,
    netbpf_binary, proposed_policy, require_root, wait_for_listener,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A desktop topology and a netbpf running a policy for it.
struct Setup {
    netbpf: NetbpfRun,
    topology: DesktopTopology,
}

impl Setup {
    /// netbpf with `forwards` (the body of a TOML array) for the desktop
    /// container's cgroup.
    fn desktop_forwards(forwards: &str) -> Self {
        let topology = new_topology();
        let selector = format!("cgroup = \"{}\"", topology.desktop.path().display());
        Self::start(topology, &selector, forwards)
    }

    /// netbpf with `forwards` for a scope that matches `selector`.
    fn start(topology: DesktopTopology, selector: &str, forwards: &str) -> Self {
        let scope = format!(
            "[[scope]]\nname = \"desktop\"\nmatch = {{ {selector} }}\nforward = [\n{forwards}\n]\n"
        );
        Self::with_scopes(topology, &scope)
    }

    /// netbpf with a policy of `scopes` (its `[[scope]]` tables).
    fn with_scopes(topology: DesktopTopology, scopes: &str) -> Self {
        let policy = format!("version = 1\n\n{scopes}");
        let file = topology.file("policy.toml");
        std::fs::write(&file, policy).unwrap();
        let netbpf = NetbpfRun::start(
            &netbpf_binary(),
            &file,
            topology.root.path(),
            topology.work.path(),
        )
        .expect("starting netbpf run");
        Self { netbpf, topology }
    }

    /// Counters of forward `rule` of the only scope, from `status --json`.
    fn counters(&self, rule: usize) -> (u64, u64, u64) {
        let status = self.netbpf.status_json().unwrap();
        let forward = &status["scopes"][0]["forwards"][rule];
        let count = |name: &str| {
            forward[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} in {forward}"))
        };
        (count("connects"), count("datagrams"), count("local_skips"))
    }

    fn probe(&self, place: Place, args: &[&str]) -> Value {
        probe(&self.topology, place, args)
    }

    /// Asserts that localhost:`port` in the desktop answers `expected`
    /// within 5 s: a released socket is forgotten when its last reference
    /// goes, which can trail the process's exit.
    fn assert_eventually_answers(&self, port: u16, expected: &str) {
        let port = port.to_string();
        let mut answer = Value::Null;
        for _ in 0..50 {
            answer = self.probe(Place::Desktop, &["tcp", "127.0.0.1", &port]);
            if answer["data"] == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("localhost:{port} answered {answer}, not {expected:?}");
    }
}

fn new_topology() -> DesktopTopology {
    require_root();
    DesktopTopology::new().expect("building the desktop topology")
}

/// Runs tests/scripts/probe.py at `place`; returns its JSON report.
fn probe(topology: &DesktopTopology, place: Place, args: &[&str]) -> Value {
    probe_at(topology.site(place), args)
}

/// Runs tests/scripts/probe.py at `site`; returns its JSON report.
fn probe_at(site: Site<'_>, args: &[&str]) -> Value {
    let output = site.spawn_probe(args).unwrap().output(TIMEOUT).unwrap();
    assert!(
        output.status.success(),
        "probe {args:?} in {} failed: {}",
        site.cgroup.path().display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn curl_localhost_reaches_the_server_published_on_the_bridge() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:8082", to = "{BRIDGE_V4}:8082" }}"#
    ));
    let _server = setup
        .topology
        .start_http_server(BRIDGE_V4, 8082, "published on the bridge")
        .unwrap();

    for url in [
        "http://localhost:8082/",
        "http://127.0.0.1:8082/",
        "http://127.0.0.53:8082/",
        "http://[::1]:8082/",
    ] {
        assert_eq!(
            setup.topology.curl(Place::Desktop, url).unwrap(),
            (0, "published on the bridge".to_owned()),
            "{url} from the desktop container"
        );
    }
    let (connects, datagrams, skips) = setup.counters(0);
    assert_eq!(connects, 4, "every connect is counted, once");
    assert_eq!((datagrams, skips), (0, 0));
    let table = setup.netbpf.status(&[]).unwrap();
    assert!(
        table.contains("localhost:8082") && table.contains("10.200.1.1:8082"),
        "{table}"
    );
}

#[test]
fn udp_replies_come_from_the_address_the_client_sent_to() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:5300", to = "{BRIDGE_V4}:5353", proto = "udp" }}"#
    ));
    let _echo = setup.topology.start_udp_echo(BRIDGE_V4, 5353).unwrap();

    let unconnected = setup.probe(Place::Desktop, &["udp", "127.0.0.1", "5300"]);
    assert_eq!(unconnected["data"], "ping");
    assert_eq!(
        unconnected["source"],
        json!(["127.0.0.1", 5300]),
        "recvfrom() shows the dialed address"
    );

    let connected = setup.probe(Place::Desktop, &["udp-connected", "127.0.0.1", "5300"]);
    assert_eq!(connected["data"], "ping");
    assert_eq!(connected["source"], json!(["127.0.0.1", 5300]));
    assert_eq!(
        connected["peer"],
        json!(["127.0.0.1", 5300]),
        "getpeername() shows the dialed address"
    );

    let connected6 = setup.probe(Place::Desktop, &["udp-connected", "::1", "5300"]);
    assert_eq!(connected6["data"], "ping");
    assert_eq!(connected6["source"], json!(["::1", 5300]));
    assert_eq!(connected6["peer"], json!(["::1", 5300]));

    // A dual-stack IPv6 socket sending to an IPv4-mapped localhost goes
    // through the IPv4 hooks, and reads its reply through the IPv6 ones.
    let dual_stack = setup.probe(Place::Desktop, &["udp", "::ffff:127.0.0.1", "5300"]);
    assert_eq!(dual_stack["data"], "ping");
    assert_eq!(dual_stack["source"], json!(["::ffff:127.0.0.1", 5300]));

    let (connects, datagrams, _) = setup.counters(0);
    assert_eq!(
        (connects, datagrams),
        (2, 2),
        "two connected sockets, two datagrams sent with sendto()"
    );
}

/// One UDP socket that reaches the forward's target both through the
/// forward and directly: a connected one sees each peer as it is; an
/// unconnected one cannot tell the replies apart, and the loss is counted.
#[test]
fn a_socket_that_also_reaches_the_target_directly_sees_it_as_it_is_or_the_loss_is_counted() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:5300", to = "{BRIDGE_V4}:5353", proto = "udp" }}"#
    ));
    let _echo = setup.topology.start_udp_echo(BRIDGE_V4, 5353).unwrap();
    let both = ["127.0.0.1", "5300", BRIDGE_V4, "5353"];
    let direct = json!([BRIDGE_V4, 5353]);
    let forwarded = json!(["127.0.0.1", 5300]);

    let reconnected = setup.probe(Place::Desktop, &[&["udp-reconnected"][..], &both].concat());
    assert_eq!(
        (&reconnected["peers"], &reconnected["sources"]),
        (&json!([forwarded, direct]), &json!([forwarded, direct])),
        "connected to the target itself, the socket's peer is the target"
    );
    let status = setup.netbpf.status_json().unwrap();
    assert_eq!(
        status["scopes"][0]["forwards"][0]["unremembered"], 0,
        "nothing lost: {status}"
    );

    let twice = setup.probe(Place::Desktop, &[&["udp-twice"][..], &both].concat());
    assert_eq!(
        twice["sources"],
        json!([forwarded, forwarded]),
        "replies of the one target are shown as the forward's"
    );
    let status = setup.netbpf.status_json().unwrap();
    assert_eq!(
        status["scopes"][0]["forwards"][0]["unremembered"], 1,
        "the reply the socket cannot tell apart is counted: {status}"
    );
}

#[test]
fn getpeername_returns_the_dialed_address() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:8082", to = "{BRIDGE_V4}:80" }}"#
    ));
    let _server = setup
        .topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 80, "port-80")
        .unwrap();

    let v4 = setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "8082"]);
    assert_eq!(
        (v4["data"].as_str(), &v4["peer"]),
        (Some("port-80"), &json!(["127.0.0.1", 8082]))
    );
    let v6 = setup.probe(Place::Desktop, &["tcp", "::1", "8082"]);
    assert_eq!(
        (v6["data"].as_str(), &v6["peer"]),
        (Some("port-80"), &json!(["::1", 8082]))
    );
    // Linux connects the wildcard address to loopback: it is localhost
    // too, and the peer is the loopback address, as without netbpf.
    for (wildcard, loopback) in [("0.0.0.0", "127.0.0.1"), ("::", "::1")] {
        let answer = setup.probe(Place::Desktop, &["tcp", wildcard, "8082"]);
        assert_eq!(
            (answer["data"].as_str(), &answer["peer"]),
            (Some("port-80"), &json!([loopback, 8082])),
            "connect() to {wildcard}:8082"
        );
    }
}

/// `getpeername()` shows what each socket dialed, however the scope reaches
/// a target: through either of two forwards to one target, through a
/// loopback address other than 127.0.0.1, from IPv6 sockets, and directly
/// (the target itself, also dialed by a forward of the same scope).
#[test]
fn getpeername_is_exact_for_every_way_a_scope_reaches_a_target() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:8082", to = "{BRIDGE_V4}:80" }},
           {{ from = "localhost:8083", to = "{BRIDGE_V4}:80" }},
           {{ from = "localhost:8090", to = "{BRIDGE_V4}:90" }}"#
    ));
    let _servers = [(80, "port-80"), (90, "port-90")].map(|(port, banner)| {
        setup
            .topology
            .start_tcp_banner(Place::DockerHost, BRIDGE_V4, port, banner)
            .unwrap()
    });
    for (host, port, banner, peer) in [
        ("127.0.0.1", 8082, "port-80", json!(["127.0.0.1", 8082])),
        ("127.0.0.1", 8083, "port-80", json!(["127.0.0.1", 8083])),
        ("127.0.0.5", 8090, "port-90", json!(["127.0.0.5", 8090])),
        ("127.0.0.1", 8090, "port-90", json!(["127.0.0.1", 8090])),
        ("::1", 8090, "port-90", json!(["::1", 8090])),
        (
            "::ffff:127.0.0.1",
            8090,
            "port-90",
            json!(["::ffff:127.0.0.1", 8090]),
        ),
        (BRIDGE_V4, 90, "port-90", json!([BRIDGE_V4, 90])),
        (BRIDGE_V4, 80, "port-80", json!([BRIDGE_V4, 80])),
    ] {
        let answer = setup.probe(Place::Desktop, &["tcp", host, &port.to_string()]);
        assert_eq!(
            (answer["data"].as_str(), &answer["peer"]),
            (Some(banner), &peer),
            "connect() to {host} port {port}"
        );
    }
}

/// `getpeername()` shows what a socket dialed from the scope instance its
/// task is in, wherever the task's cgroup sits: a scope's cgroup, a cgroup
/// of no scope below it, and a scope's cgroup below another scope's (the
/// outer scope found the long way, past the deeper level).
#[test]
fn getpeername_is_exact_for_a_task_anywhere_below_its_scope() {
    let topology = new_topology();
    let inner = topology.desktop.child("inner").unwrap();
    let below = topology.desktop.child("below").unwrap();
    let scope = |name: &str, cgroup: &Cgroup, port: u16| {
        format!(
            "[[scope]]\nname = \"{name}\"\nmatch = {{ cgroup = \"{}\" }}\n\
             forward = [{{ from = \"localhost:{port}\", to = \"{BRIDGE_V4}:{}\" }}]\n\n",
            cgroup.path().display(),
            port - 8000
        )
    };
    let scopes = scope("inner", &inner, 8091) + &scope("desktop", &topology.desktop, 8090);
    let setup = Setup::with_scopes(topology, &scopes);
    let topology = &setup.topology;
    let _servers = [(90, "port-90"), (91, "port-91")].map(|(port, banner)| {
        topology
            .start_tcp_banner(Place::DockerHost, BRIDGE_V4, port, banner)
            .unwrap()
    });
    for (cgroup, port, banner) in [
        (&inner, 8091, "port-91"),
        (&topology.desktop, 8090, "port-90"),
        (&below, 8090, "port-90"),
    ] {
        let site = Site {
            cgroup,
            netns: &topology.desktop_ns,
        };
        let answer = probe_at(site, &["tcp", "127.0.0.1", &port.to_string()]);
        assert_eq!(
            (answer["data"].as_str(), &answer["peer"]),
            (Some(banner), &json!(["127.0.0.1", port])),
            "connect() to localhost port {port} from {}",
            cgroup.path().display()
        );
    }
}

#[test]
fn a_port_range_maps_onto_a_range() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:9000-9010", to = "{BRIDGE_V4}:8100-8110" }}"#
    ));
    let topology = &setup.topology;
    let _first = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8100, "first")
        .unwrap();
    let _middle = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8107, "middle")
        .unwrap();
    let _last = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8110, "last")
        .unwrap();

    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "9000"])["data"],
        "first"
    );
    // Inside the range, what a socket dialed is kept in its storage: the
    // filter of rewritten peers holds every target port of the range.
    let middle = setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "9007"]);
    assert_eq!(
        (middle["data"].as_str(), &middle["peer"]),
        (Some("middle"), &json!(["127.0.0.1", 9007]))
    );
    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "9010"])["data"],
        "last"
    );
    // Ports outside the range are not forwarded: nothing listens locally.
    assert_ne!(
        topology
            .curl(Place::Desktop, "http://127.0.0.1:9011/")
            .unwrap()
            .0,
        0
    );
    assert_eq!(setup.counters(0).0, 3);
}

/// A scope's own service, whose bind netbpf remapped, is reached at the
/// port the scope dialed, and `getpeername()` shows that port to IPv4 and
/// IPv6 sockets: the connect kept it in the socket's storage, which is
/// looked at for every localhost peer (the filter of rewritten peers holds
/// no localhost address).
#[test]
fn getpeername_of_an_own_service_shows_the_port_dialed() {
    let topology = new_topology();
    let scope = format!(
        "[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
         bind = [{{ port = 3000, to = 7000 }}]\n",
        topology.desktop.path().display()
    );
    let setup = Setup::with_scopes(topology, &scope);
    let topology = &setup.topology;
    // It binds :3000 and gets :7000, where it is waited for.
    let _own = topology
        .site(Place::Desktop)
        .start_server(
            "socat",
            &[
                "TCP-LISTEN:3000,bind=127.0.0.1,fork,reuseaddr",
                "SYSTEM:echo own",
            ],
            7000,
            "tcp",
            &topology.file("own-service.log"),
        )
        .unwrap();
    for host in ["127.0.0.1", "::ffff:127.0.0.1"] {
        let answer = setup.probe(Place::Desktop, &["tcp", host, "3000"]);
        assert_eq!(
            (answer["data"].as_str(), &answer["peer"]),
            (Some("own"), &json!([host, 3000])),
            "connect() to {host} port 3000"
        );
    }
}

#[test]
fn every_port_leaves_the_scopes_own_listeners_alone() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:*", to = "{BRIDGE_V4}" }}"#
    ));
    let topology = &setup.topology;
    let _bridge_7001 = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 7001, "bridge-7001")
        .unwrap();
    let _bridge_7002 = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 7002, "bridge-7002")
        .unwrap();
    // The container's own service, bound on localhost inside the scope
    // after netbpf started: the kernel programs see the bind.
    let mut local = topology
        .start_tcp_banner(Place::Desktop, "127.0.0.1", 7002, "local-7002")
        .unwrap();

    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "7001"])["data"],
        "bridge-7001"
    );
    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "7002"])["data"],
        "local-7002"
    );
    let (connects, _, skips) = setup.counters(0);
    assert_eq!((connects, skips), (1, 1));

    // Once the local service is gone (its socket released), the port is
    // forwarded again.
    local
        .stop(nix::sys::signal::Signal::SIGTERM, TIMEOUT)
        .unwrap();
    setup.assert_eventually_answers(7002, "bridge-7002");
}

#[test]
fn a_process_outside_the_scope_is_not_redirected() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:8082", to = "{BRIDGE_V4}:8082" }}"#
    ));
    let topology = &setup.topology;
    let _bridge = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8082, "bridge")
        .unwrap();
    // A listener in the desktop's namespace, started by a process of no
    // scope: only sockets of the scope are forwarded past it.
    let _local = topology
        .start_tcp_banner(Place::Outside, "127.0.0.1", 8082, "local")
        .unwrap();

    assert_eq!(
        setup.probe(Place::Outside, &["tcp", "127.0.0.1", "8082"])["data"],
        "local"
    );
    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "8082"])["data"],
        "bridge"
    );
    assert_eq!(
        setup.counters(0),
        (1, 0, 0),
        "only the scoped connection is counted"
    );
}

#[test]
fn a_network_namespace_scope_matches_by_netns_cookie() {
    let topology = new_topology();
    let selector = format!("netns = \"{}\"", topology.desktop_ns.path().display());
    let forwards = format!(r#"{{ from = "localhost:8082", to = "{BRIDGE_V4}:8082" }}"#);
    let setup = Setup::start(topology, &selector, &forwards);
    let _bridge = setup
        .topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 8082, "bridge")
        .unwrap();

    // Both processes live in the desktop's namespace, in different cgroups,
    // and see what they dialed as their peer (derived by the namespace).
    for (place, host) in [(Place::Outside, "127.0.0.1"), (Place::Desktop, "::1")] {
        let answer = setup.probe(place, &["tcp", host, "8082"]);
        assert_eq!(
            (answer["data"].as_str(), &answer["peer"]),
            (Some("bridge"), &json!([host, 8082])),
            "connect() to {host} port 8082 from {place:?}"
        );
    }
    // A process below the same cgroup root in another namespace is not
    // the scope's: its localhost is its own, where nothing listens.
    let elsewhere = setup
        .topology
        .spawn_probe(Place::DockerHost, &["tcp", "127.0.0.1", "8082"])
        .unwrap()
        .output(TIMEOUT)
        .unwrap();
    let said = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        !elsewhere.status.success() && said.contains("ConnectionRefusedError"),
        "another namespace's localhost:8082 was forwarded: {}{said}",
        String::from_utf8_lossy(&elsewhere.stdout)
    );
    let status = setup.netbpf.status_json().unwrap();
    assert!(
        status["scopes"][0]["netns_cookie"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert_eq!(
        status["scopes"][0]["forwards"][0]["connects"], 2,
        "the two connects of the namespace, and no other: {status}"
    );
}

#[test]
fn a_listener_bound_before_netbpf_started_is_left_alone_too() {
    let topology = new_topology();
    let _bridge = topology
        .start_tcp_banner(Place::DockerHost, BRIDGE_V4, 7003, "bridge-7003")
        .unwrap();
    // The container's service was listening before netbpf attached: the
    // bind hooks never saw it, sock_diag finds it at start.
    let mut local = topology
        .start_tcp_banner(Place::Desktop, "127.0.0.1", 7003, "local-7003")
        .unwrap();
    let selector = format!("cgroup = \"{}\"", topology.desktop.path().display());
    let setup = Setup::start(
        topology,
        &selector,
        &format!(r#"{{ from = "localhost:*", to = "{BRIDGE_V4}" }}"#),
    );

    assert_eq!(
        setup.probe(Place::Desktop, &["tcp", "127.0.0.1", "7003"])["data"],
        "local-7003"
    );
    assert_eq!(setup.counters(0), (0, 0, 1));
    // Counted with the cookie the release hook sees: when the service
    // stops, its port is forwarded.
    local
        .stop(nix::sys::signal::Signal::SIGTERM, TIMEOUT)
        .unwrap();
    setup.assert_eventually_answers(7003, "bridge-7003");
    // The port it held is the scope's again to take: a service that binds
    // it now, through the bind hooks, is left alone too.
    let _again = setup
        .topology
        .start_tcp_banner(Place::Desktop, "127.0.0.1", 7003, "local-again")
        .unwrap();
    setup.assert_eventually_answers(7003, "local-again");
}

#[test]
fn an_alias_sends_udp_elsewhere_and_replies_come_from_the_alias() {
    let topology = new_topology();
    let selector = format!("cgroup = \"{}\"", topology.desktop.path().display());
    let policy = format!(
        "version = 1\n\n[[scope]]\nname = \"desktop\"\nmatch = {{ {selector} }}\n\
         alias = [{{ from = \"10.99.0.53:53\", to = \"{BRIDGE_V4}:5353\", proto = \"udp\" }}]\n"
    );
    let file = topology.file("policy.toml");
    std::fs::write(&file, policy).unwrap();
    let netbpf = NetbpfRun::start(
        &netbpf_binary(),
        &file,
        topology.root.path(),
        topology.work.path(),
    )
    .unwrap();
    let _echo = topology.start_udp_echo(BRIDGE_V4, 5353).unwrap();

    // The desktop has no route to 10.99.0.53: only the alias gets it there.
    let reply = probe(&topology, Place::Desktop, &["udp", "10.99.0.53", "53"]);
    assert_eq!(reply["data"], "ping");
    assert_eq!(
        reply["source"],
        json!(["10.99.0.53", 53]),
        "replies come from the alias"
    );
    let status = netbpf.status_json().unwrap();
    assert_eq!(
        status["scopes"][0]["aliases"][0]["datagrams"], 1,
        "{status}"
    );
}

/// Sends one datagram from each of COUNT sockets to localhost:FIRST, then
/// one datagram from a single socket to each of the ports FIRST.. given;
/// prints where each reply came from, as JSON.
const MANY_REPLIES: &str = r#"
import json, resource, socket, sys
count, ports = int(sys.argv[1]), [int(port) for port in sys.argv[2:]]
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
for sock in sockets:
    sock.sendto(b"x", ("127.0.0.1", ports[0]))
dialed = 0
for sock in sockets:
    sock.settimeout(5)
    dialed += sock.recvfrom(64)[1] == ("127.0.0.1", ports[0])
one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
one.settimeout(5)
for port in ports:
    one.sendto(b"x", ("127.0.0.1", port))
sources = sorted("%s:%d" % one.recvfrom(64)[1] for _ in ports)
print(json.dumps({"dialed": dialed, "sources": sources}))
"#;

/// Echoes every datagram on ADDR, on each port given. Its receive buffer
/// is forced past `net.core.rmem_max` (`SO_RCVBUFFORCE`: it runs as root),
/// so a burst of 3000 datagrams waits there on a slow machine or VM.
const ECHO: &str = r"
import selectors, socket, sys
selector = selectors.DefaultSelector()
for port in sys.argv[2:]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE
    sock.bind((sys.argv[1], int(port)))
    selector.register(sock, selectors.EVENT_READ)
while True:
    for key, _ in selector.select():
        data, sender = key.fileobj.recvfrom(64)
        key.fileobj.sendto(data, sender)
";

#[test]
fn every_socket_keeps_its_reverse_path_and_a_lost_one_is_counted() {
    let setup = Setup::desktop_forwards(&format!(
        r#"{{ from = "localhost:9100-9105", to = "{BRIDGE_V4}:9100-9105", proto = "udp" }}"#
    ));
    let ports: Vec<String> = (9100..=9105).map(|port| port.to_string()).collect();
    let echo_args: Vec<&str> = ["-c", ECHO, BRIDGE_V4]
        .into_iter()
        .chain(ports.iter().map(String::as_str))
        .collect();
    let _echo = setup
        .topology
        .spawn(Place::DockerHost, "python3", &echo_args)
        .unwrap()
        .start(&setup.topology.file("echo.log"))
        .unwrap();
    wait_for_listener(&setup.topology.host_ns, 9105, "udp").unwrap();
    let sockets = "3000";
    let args: Vec<&str> = ["-c", MANY_REPLIES, sockets]
        .into_iter()
        .chain(ports.iter().map(String::as_str))
        .collect();
    let output = setup
        .topology
        .spawn(Place::Desktop, "python3", &args)
        .unwrap()
        .output(Duration::from_mins(1))
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replies: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Each of 3000 open sockets remembers what it dialed (the LRU table
    // this replaced evicted entries when full): every reply shows it.
    assert_eq!(replies["dialed"], 3000, "{replies}");
    // One socket that dialed six destinations remembers the last four
    // (DIALED_PER_SOCKET): the two it forgot reply from where they are,
    // and the forward counts them.
    let sources: Vec<&str> = replies["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| source.as_str().unwrap())
        .collect();
    let from = |addr: &str, ports: std::ops::RangeInclusive<u16>| -> Vec<String> {
        ports.map(|port| format!("{addr}:{port}")).collect()
    };
    let mut expected = from(BRIDGE_V4, 9100..=9101);
    expected.extend(from("127.0.0.1", 9102..=9105));
    expected.sort();
    assert_eq!(sources, expected);
    let status = setup.netbpf.status_json().unwrap();
    assert_eq!(
        status["scopes"][0]["forwards"][0]["unremembered"], 2,
        "{status}"
    );
    assert!(
        setup.netbpf.status(&[]).unwrap().contains("REVERSE LOST"),
        "netbpf status shows the lost reverse paths"
    );
}

#[test]
fn doctor_names_a_half_done_dnat_and_the_forward_it_proposes_replaces_it() {
    let topology = new_topology();
    let _server = topology
        .start_http_server(BRIDGE_V4, 8082, "published on the bridge")
        .unwrap();
    // What users try first: localhost DNATed to the bridge, without
    // route_localnet or MASQUERADE.
    let dnat = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "127.0.0.1",
        "-p",
        "tcp",
        "--dport",
        "8082",
        "-j",
        "DNAT",
        "--to-destination",
        "10.200.1.1:8082",
    ];
    topology.desktop_ns.exec(&dnat).unwrap();
    let url = "http://127.0.0.1:8082/";
    assert_ne!(topology.curl(Place::Desktop, url).unwrap().0, 0);
    let resident = topology
        .spawn(Place::Desktop, "sleep", &["600"])
        .unwrap()
        .start(&topology.file("resident.log"))
        .unwrap();
    let config = doctor_config(topology.work.path()).unwrap();
    let (pid, root, node) = (
        resident.id().to_string(),
        topology.root.path().to_str().unwrap().to_owned(),
        topology.host_ns.path().to_str().unwrap().to_owned(),
    );
    let (code, report) = doctor(&config, &[&pid, "--cgroup-root", &root, "--netns", &node]);
    assert_eq!(code, 2, "{report:#}");
    let policy = proposed_policy(&report, "half-done-iptables");
    assert!(
        policy.contains(&format!("to = \"{BRIDGE_V4}:8082\"")),
        "{policy}"
    );
    let finding = &findings(&report, "half-done-iptables")[0];
    let evidence = finding["evidence"].to_string();
    assert!(
        evidence.contains("route_localnet") && evidence.contains("MASQUERADE"),
        "{evidence}"
    );
    assert!(
        finding["steps"][0]
            .as_str()
            .unwrap()
            .ends_with("iptables -t nat -D OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8082 -j DNAT --to-destination 10.200.1.1:8082"),
        "{finding}"
    );

    let file = topology.file("doctor-policy.toml");
    std::fs::write(&file, &policy).unwrap();
    let _netbpf = NetbpfRun::start(
        &netbpf_binary(),
        &file,
        topology.root.path(),
        topology.work.path(),
    )
    .unwrap();
    assert_eq!(
        topology.curl(Place::Desktop, url).unwrap(),
        (0, "published on the bridge".to_owned())
    );
}
