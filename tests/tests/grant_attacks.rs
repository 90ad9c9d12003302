//! Attacks on host-service grants, made as an attacker on the node would
//! make them, against the real agent: a process that shares the granted
//! container's network namespace, SYNs with the granted address forged
//! from another bridge, from a dual-homed container's other interface and
//! from the granted bridge, IPv6 segments behind
//! more extension headers than a parser walks, a local user who tries to
//! send from the granted address, addresses a granted container adds in a
//! network namespace of its own making, and a CRI-O pod whose annotations
//! name another namespace's pod, fed to `netbpf hook`. Each attack worked
//! on the code before its fix (the closing note of issue 18 quotes how it
//! failed); each test shows netbpf refuses it and counts it where
//! `docs/security.md` says.
//!
//! ```text
//!  granted  10.210.1.2 ─┐ compose 10.210.1.1            node: HTTP on 127.0.0.1:18188
//!  other    10.210.1.3 ─┘                                      and [::1]:18189
//!  stranger 10.220.1.2 ── backend 10.220.1.1
//! ```
//!
//! Processes in `outside` are in no cgroup below netbpf's root: what they
//! send meets only the packet-level checks (as traffic from a container
//! whose sockets netbpf does not see would).
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::Duration;

use netbpf_testenv::{
    Cgroup, NetbpfRun, Netns, PacketSocket, Process, Site, applied, mac_address, netbpf_binary,
    packet::{SYN, Segment},
    require_root, unique_name,
};

const ANSWER: &str = "the loopback service answers";
const ANSWER_V6: &str = "the IPv6 loopback service answers";
/// How many forged SYNs each attack sends.
const FORGED: u64 = 5;

/// The node, its two bridges, and the containers on them.
struct GrantLab {
    /// The granted container's first process: its own network namespace.
    _init: Process,
    /// The services on the node's loopback: svc, then svc6.
    servers: Vec<Process>,
    root: Cgroup,
    outside: Cgroup,
    granted_procs: Cgroup,
    sidecar_procs: Cgroup,
    other_procs: Cgroup,
    /// Where the services run.
    _node_procs: Cgroup,
    node: Netns,
    granted: Netns,
    other: Netns,
    stranger: Netns,
    work: tempfile::TempDir,
}

/// Where a test process runs.
#[derive(Debug, Clone, Copy)]
enum Place {
    Granted,
    /// In the granted container's network namespace, in a cgroup of its
    /// own the policy does not name (`--network container:`, a pod's
    /// sidecar).
    Sidecar,
    Other,
    /// On the other bridge, outside netbpf's cgroups.
    StrangerOutside,
    /// On the node, outside netbpf's cgroups: a local user.
    NodeOutside,
}

impl GrantLab {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbga")).unwrap();
        let outside = Cgroup::new_test_root(&unique_name("nbgo")).unwrap();
        let [granted_procs, sidecar_procs, other_procs, node_procs] =
            ["granted", "sidecar", "other", "node"].map(|name| root.child(name).unwrap());
        let [node, granted, other, stranger] =
            ["nganode", "ngagrant", "ngaother", "ngastr"].map(|prefix| Netns::new(prefix).unwrap());
        let work = tempfile::Builder::new()
            .prefix("netbpf-grant-attacks-")
            .tempdir()
            .unwrap();
        for (bridge, v4, v6, members) in [
            (
                "compose",
                "10.210.1.1/24",
                "fd21::1/64",
                vec![
                    (&granted, "10.210.1.2/24", "fd21::2/64"),
                    (&other, "10.210.1.3/24", "fd21::3/64"),
                ],
            ),
            (
                "backend",
                "10.220.1.1/24",
                "fd22::1/64",
                vec![(&stranger, "10.220.1.2/24", "fd22::2/64")],
            ),
        ] {
            node.ip(&["link", "add", bridge, "type", "bridge"]).unwrap();
            address(&node, bridge, v4, v6);
            let gateways = (gateway_of(v4), gateway_of(v6));
            for (container, v4, v6) in members {
                let (inside, port) = container.veth_to(&node).unwrap();
                node.ip(&["link", "set", &port, "master", bridge, "up"])
                    .unwrap();
                address(container, &inside, v4, v6);
                container
                    .ip(&["route", "add", "default", "via", &gateways.0])
                    .unwrap();
                container
                    .ip(&["-6", "route", "add", "default", "via", &gateways.1])
                    .unwrap();
            }
        }
        let site = Site {
            cgroup: &granted_procs,
            netns: &granted,
        };
        let init = site.spawn("sleep", &["600"]).unwrap();
        let init = init.start(&work.path().join("init.log")).unwrap();
        let node_site = Site {
            cgroup: &node_procs,
            netns: &node,
        };
        let servers = vec![
            node_site
                .start_http_server(work.path(), "127.0.0.1", 18188, ANSWER)
                .unwrap(),
            node_site
                .start_http_server(work.path(), "::1", 18189, ANSWER_V6)
                .unwrap(),
        ];
        Self {
            _init: init,
            servers,
            root,
            outside,
            granted_procs,
            sidecar_procs,
            other_procs,
            _node_procs: node_procs,
            node,
            granted,
            other,
            stranger,
            work,
        }
    }

    fn site(&self, place: Place) -> Site<'_> {
        let (cgroup, netns) = match place {
            Place::Granted => (&self.granted_procs, &self.granted),
            Place::Sidecar => (&self.sidecar_procs, &self.granted),
            Place::Other => (&self.other_procs, &self.other),
            Place::StrangerOutside => (&self.outside, &self.stranger),
            Place::NodeOutside => (&self.outside, &self.node),
        };
        Site { cgroup, netns }
    }

    fn curl(&self, place: Place, url: &str) -> (i32, String) {
        self.site(place).curl(url).unwrap()
    }

    /// netbpf, granting the services to the granted container's cgroup.
    fn start_netbpf(&self) -> NetbpfRun {
        let netbpf = self.start_netbpf_with(&format!(
            "[[scope]]\nname = \"granted\"\nmatch = {{ cgroup = \"{}\" }}\nhost_services = [\n  \
             {{ service = \"svc\", dial = \"10.210.1.1:18188\" }},\n  \
             {{ service = \"svc6\", dial = \"[fd21::1]:18189\" }},\n]\n",
            self.granted_procs.path().display()
        ));
        // The grant needs the container's network: applied once resolved.
        netbpf
            .wait_for_status(Duration::from_secs(10), |status| {
                status["scopes"][0]["grants"].as_array().map(Vec::len) == Some(2)
                    && status["grant_guard"].as_array().map(Vec::len) == Some(2)
            })
            .unwrap();
        netbpf
    }

    /// netbpf with the lab's two host services and `scopes`.
    fn start_netbpf_with(&self, scopes: &str) -> NetbpfRun {
        let policy = format!(
            "version = 1\n\n\
             [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:18188\"\nowner = {{ uid = 0 }}\n\n\
             [[host_service]]\nname = \"svc6\"\nlisten = \"[::1]:18189\"\n\n{scopes}"
        );
        let file = self.work.path().join(unique_name("policy"));
        std::fs::write(&file, policy).unwrap();
        NetbpfRun::start_on_node(&file, self.root.path(), &self.node, self.work.path()).unwrap()
    }

    /// Sends `FORGED` SYNs to the node's address on `bridge` and `port`,
    /// from `netns`'s interface `interface`, with the source `source`;
    /// IPv6 ones behind `extensions` Destination Options headers.
    fn forge_syns(
        &self,
        (netns, interface): (&Netns, &str),
        bridge: &str,
        source: &str,
        destination: &str,
        port: u16,
        extensions: usize,
    ) {
        let socket = PacketSocket::open(netns, interface).unwrap();
        let from_mac = mac_address(netns, interface).unwrap();
        let to_mac = mac_address(&self.node, bridge).unwrap();
        for attempt in 0..FORGED {
            let segment = Segment {
                src: source.parse().unwrap(),
                dst: destination.parse().unwrap(),
                src_port: 40_000 + u16::try_from(attempt).unwrap(),
                dst_port: port,
                flags: SYN,
                options: Vec::new(),
                payload: Vec::new(),
            };
            let frame = if extensions == 0 {
                segment.frame(from_mac, to_mac)
            } else {
                segment.frame_behind_destination_options(from_mac, to_mac, extensions)
            };
            socket.send(&frame).unwrap();
        }
        // sk_lookup and the guard run as each frame arrives; the counters
        // are read through the agent a moment later.
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn address(netns: &Netns, interface: &str, v4: &str, v6: &str) {
    netns.ip(&["addr", "add", v4, "dev", interface]).unwrap();
    netns
        .ip(&["-6", "addr", "add", v6, "dev", interface, "nodad"])
        .unwrap();
    netns.ip(&["link", "set", interface, "up"]).unwrap();
}

/// The address of `cidr` without its prefix length.
fn gateway_of(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_owned()
}

/// The interface of `netns`'s default route.
fn default_interface(netns: &Netns) -> String {
    let route = netns.ip(&["-o", "route", "show", "default"]).unwrap();
    route
        .split_whitespace()
        .skip_while(|word| *word != "dev")
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Forges `FORGED` SYNs with each granted address (IPv4, then IPv6) from
/// `from` (a namespace and its interface) to the node's `bridge`, and
/// asserts that none is steered to the service and each is counted as
/// forged; `from_where` says where they came from, for failures.
fn assert_forged_syns_are_dropped(
    lab: &GrantLab,
    netbpf: &NetbpfRun,
    from: (&Netns, &str),
    bridge: &str,
    from_where: &str,
) {
    for (index, source, destination, port) in [
        (0, "10.210.1.2", "10.210.1.1", 18188),
        (1, "fd21::2", "fd21::1", 18189),
    ] {
        let before = counters(netbpf, index, ["steered", "forged"]);
        lab.forge_syns(from, bridge, source, destination, port, 0);
        let after = counters(netbpf, index, ["steered", "forged"]);
        assert_eq!(
            after[0], before[0],
            "forged SYNs from {source} {from_where} were steered to the service (steered {} -> {})",
            before[0], after[0]
        );
        assert_eq!(
            after[1],
            before[1] + FORGED,
            "each counted as forged ({from_where})"
        );
    }
}

/// A counter of host service `index` (0: svc, 1: svc6) in netbpf's status.
fn counter(netbpf: &NetbpfRun, index: usize, name: &str) -> u64 {
    let status = netbpf.status_json().unwrap();
    status["host_services"][index][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} of host service {index}: {status}"))
}

/// The named counters of host service `index`, in order.
fn counters<const N: usize>(netbpf: &NetbpfRun, index: usize, names: [&str; N]) -> [u64; N] {
    names.map(|name| counter(netbpf, index, name))
}

#[test]
fn a_process_sharing_the_granted_containers_network_namespace_is_refused_at_connect() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    assert_eq!(
        lab.curl(Place::Granted, "http://10.210.1.1:18188/"),
        (0, ANSWER.to_owned())
    );
    assert_eq!(
        lab.curl(Place::Granted, "http://[fd21::1]:18189/"),
        (0, ANSWER_V6.to_owned())
    );
    // Same network namespace, same source address, same interface: only
    // its cgroup, which the policy does not name, tells it apart.
    for (index, url) in [
        (0, "http://10.210.1.1:18188/"),
        (1, "http://[fd21::1]:18189/"),
    ] {
        let (code, body) = lab.curl(Place::Sidecar, url);
        assert_ne!(code, 0, "the sidecar reached {url}: {body}");
        assert_eq!(
            counter(&netbpf, index, "borrowed"),
            1,
            "refused at connect(): {}",
            netbpf.status_json().unwrap()
        );
    }
    // The granted container still gets through.
    assert_eq!(
        lab.curl(Place::Granted, "http://10.210.1.1:18188/"),
        (0, ANSWER.to_owned())
    );
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn syns_with_the_granted_address_forged_from_another_bridge_are_not_steered() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    let stranger = default_interface(&lab.stranger);
    assert_forged_syns_are_dropped(
        &lab,
        &netbpf,
        (&lab.stranger, &stranger),
        "backend",
        "on another bridge",
    );
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn syns_with_the_granted_address_from_a_dual_homed_containers_other_interface_are_not_steered() {
    let lab = GrantLab::new();
    // The other container, on the granted bridge, has a second interface
    // on the backend bridge.
    let (inside, port) = lab.other.veth_to(&lab.node).unwrap();
    lab.node
        .ip(&["link", "set", &port, "master", "backend", "up"])
        .unwrap();
    address(&lab.other, &inside, "10.220.1.3/24", "fd22::3/64");
    let netbpf = lab.start_netbpf();
    assert_forged_syns_are_dropped(
        &lab,
        &netbpf,
        (&lab.other, &inside),
        "backend",
        "on a dual-homed container's other interface",
    );
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn syns_with_the_granted_address_forged_on_the_granted_bridge_are_dropped_by_the_guard() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    let other = default_interface(&lab.other);
    assert_forged_syns_are_dropped(
        &lab,
        &netbpf,
        (&lab.other, &other),
        "compose",
        "through another port of the granted bridge",
    );
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn ipv6_syns_behind_eight_destination_options_headers_are_dropped_by_the_guard() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    let other = default_interface(&lab.other);
    let mut unparsed = 0;
    for extensions in [8, 12] {
        let before = counter(&netbpf, 1, "steered");
        lab.forge_syns(
            (&lab.other, &other),
            "compose",
            "fd21::2",
            "fd21::1",
            18189,
            extensions,
        );
        let after = counter(&netbpf, 1, "steered");
        assert_eq!(
            after, before,
            "forged SYNs behind {extensions} Destination Options headers were steered \
             (steered {before} -> {after})",
        );
        unparsed += FORGED;
        assert_eq!(
            counter(&netbpf, 1, "unparsed"),
            unparsed,
            "each counted as unparsed: {}",
            netbpf.status_json().unwrap()
        );
    }
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn a_local_user_cannot_send_from_the_granted_address() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    let before = counter(&netbpf, 0, "steered");
    // Any user may bind a non-local address with IP_FREEBIND; the kernel
    // then refuses to route from it (only IP_TRANSPARENT, which needs
    // CAP_NET_ADMIN, may send from an address not the node's).
    let script = "import socket\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_IP, 15, 1)\n\
                  s.bind(('10.210.1.2', 0))\n\
                  s.settimeout(2)\n\
                  try:\n    s.connect(('10.210.1.1', 18188))\n    print('connected')\n\
                  except OSError as error:\n    print(error.errno)\n";
    let output = lab
        .site(Place::NodeOutside)
        .spawn("python3", &["-c", script])
        .unwrap()
        .output(Duration::from_secs(10))
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        said.trim(),
        libc::ENETUNREACH.to_string(),
        "the local user's connect from the granted address"
    );
    assert_eq!(counter(&netbpf, 0, "steered"), before);
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn addresses_a_granted_container_adds_in_a_network_namespace_it_made_are_not_granted() {
    let lab = GrantLab::new();
    // Inside the granted container, a namespace of its own (as `unshare
    // -Urn` gives an unprivileged process) with the stranger's address.
    let unshared = lab
        .site(Place::Granted)
        .spawn(
            "unshare",
            &[
                "--net",
                "sh",
                "-c",
                "ip link set lo up && ip addr add 10.220.1.2/32 dev lo && exec sleep 600",
            ],
        )
        .unwrap()
        .start(&lab.work.path().join("unshared.log"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let netbpf = lab.start_netbpf();
    let before = counters(&netbpf, 0, ["steered", "refused"]);
    let (code, body) = lab.curl(Place::StrangerOutside, "http://10.210.1.1:18188/");
    assert_ne!(
        code, 0,
        "the stranger reached the service with an address the granted container added: {body}"
    );
    let after = counters(&netbpf, 0, ["steered", "refused"]);
    assert_eq!(after[0], before[0]);
    assert!(after[1] > before[1], "refused: its address is not granted");
    drop(unshared);
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn the_attack_lab_reaches_what_it_attacks() {
    // The packet-level tests count on frames the kernel accepts: the same
    // handshake from the granted container, not forged, is steered.
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    let before = counter(&netbpf, 0, "steered");
    assert_eq!(
        lab.curl(Place::Granted, "http://10.210.1.1:18188/"),
        (0, ANSWER.to_owned())
    );
    assert_eq!(counter(&netbpf, 0, "steered"), before + 1);
    // And a process outside every scope is refused at connect().
    let (code, _) = lab.curl(Place::Other, "http://10.210.1.1:18188/");
    assert_ne!(code, 0);
    assert_eq!(counter(&netbpf, 0, "borrowed"), 1);
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn a_crio_pod_annotated_as_another_namespaces_pod_gets_its_own_scope() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf_with(
        "[[scope]]\nname = \"victim\"\nmatch = { pod = \"victim/*\" }\n\
         host_services = [{ service = \"svc\", dial = \"10.210.1.1:18188\" }]\n\
         [[scope]]\nname = \"tenant\"\nmatch = { pod = \"tenant/*\" }\n",
    );
    // A CRI-O container's cgroup, with its first process waiting.
    let id = "c0ffee".repeat(10) + "abcd";
    let pod = lab.root.child("kubepods-pod1234").unwrap();
    let container = pod.child(&format!("crio-{id}.scope")).unwrap();
    let first = Site {
        cgroup: &container,
        netns: &lab.other,
    }
    .spawn("sleep", &["600"])
    .unwrap()
    .start(&lab.work.path().join("crio.log"))
    .unwrap();
    // What CRI-O hands its hooks: kubelet's labels in its own annotation,
    // and the pod's own annotations, where the tenant wrote containerd's
    // keys naming another namespace's pod.
    let labels = serde_json::json!({
        "io.kubernetes.container.name": "app",
        "io.kubernetes.pod.namespace": "tenant",
        "io.kubernetes.pod.name": "web-0",
    });
    let state = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": "created",
        "pid": first.id(),
        "bundle": format!("/run/containers/storage/overlay-containers/{id}/userdata"),
        "annotations": {
            "io.kubernetes.cri-o.Labels": labels.to_string(),
            "io.kubernetes.cri.container-name": "db",
            "io.kubernetes.cri.sandbox-namespace": "victim",
            "io.kubernetes.cri.sandbox-name": "db-0",
        },
    });
    let mut hook = std::process::Command::new(netbpf_binary())
        .args(["hook", "--run-dir"])
        .arg(netbpf.run_dir())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut hook.stdin.take().unwrap(),
        state.to_string().as_bytes(),
    )
    .unwrap();
    assert!(hook.wait().unwrap().success());
    let status = netbpf.status_json().unwrap();
    assert_eq!(
        applied(&status),
        ["tenant/tenant/web-0"],
        "the pod is the tenant's, as CRI-O says: {status}"
    );
    drop(first);
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn a_local_user_listening_where_the_service_was_gets_none_of_its_connections() {
    let mut lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    assert_eq!(
        lab.curl(Place::Granted, "http://10.210.1.1:18188/"),
        (0, ANSWER.to_owned())
    );
    // The service (root's, as the policy's owner says) dies; a local user
    // binds its loopback port at once.
    drop(lab.servers.remove(0));
    let rogue = "import socket\n\
                 s = socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', 18188))\n\
                 s.listen()\n\
                 while True:\n    c, _ = s.accept()\n    c.recv(4096)\n    \
                 c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nthe rogue listener answers\\n')\n    c.close()\n";
    let _rogue = Site {
        cgroup: &lab.outside,
        netns: &lab.node,
    }
    .start_server(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            // Debian's, which any user may run (a pyenv shim is root's).
            "/usr/bin/python3",
            "-c",
            rogue,
        ],
        18188,
        "tcp",
        &lab.work.path().join("rogue.log"),
    )
    .unwrap();
    let status = netbpf
        .wait_for_status(Duration::from_secs(10), |status| {
            !status["host_services"][0]["unowned_listener"].is_null()
        })
        .unwrap();
    let (code, body) = lab.curl(Place::Granted, "http://10.210.1.1:18188/");
    assert_ne!(
        code, 0,
        "the granted container's connection went to the rogue listener: {body}"
    );
    let service = &status["host_services"][0];
    assert_eq!(service["unowned_listener"]["uid"], 65534, "{status}");
    assert!(service["listener_pid"].is_null(), "{status}");
    let table = netbpf.status(&[]).unwrap();
    assert!(table.contains("is not the owner (uid 0)"), "{table}");
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn a_grant_whose_gateway_address_goes_is_withdrawn_at_once() {
    let lab = GrantLab::new();
    let netbpf = lab.start_netbpf();
    // The node's address on the granted bridge goes: the node's own
    // address event resolves the grant again, and it fails, saying why.
    lab.node
        .ip(&["addr", "del", "10.210.1.1/24", "dev", "compose"])
        .unwrap();
    let status = netbpf
        .wait_for_status(Duration::from_secs(5), |status| {
            status["scopes"][0]["error"]
                .as_str()
                .is_some_and(|error| error.contains("is not an address of the node"))
        })
        .unwrap();
    assert!(
        status["scopes"][0]["grants"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{status}"
    );
    assert!(netbpf.stop().unwrap().success());
}
