//! Host loopback services for containers, with real parts: an OpenSSH
//! tunnel (`ssh -N -L 127.0.0.1:18188:...`) on the node to an HTTP server
//! on a "GPU box", reached from a container on a compose-style bridge by
//! a host alias, only by the container granted it.
//!
//! ```text
//!  granted   10.210.1.2 ─┐                                 ┌─ gpubox 10.50.0.2
//!  other     10.210.1.3 ─┤ bridge 10.210.1.1   node        │  sshd :2222, HTTP on 127.0.0.1:8000
//!                        └──────────────────── ssh -L 127.0.0.1:18188 ──┘
//!                                              netbpf: sk_lookup on the node's netns
//! ```
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use netbpf_testenv::{
    Cgroup, NetbpfRun, Netns, Process, Site, netbpf_binary, require_root, run_checked, unique_name,
};

const GPU_ANSWER: &str = "the gpu box answers";
const V6_ANSWER: &str = "an IPv6 loopback service answers";
const PRIVATE_ANSWER: &str = "a loopback service nobody was granted";

/// The node, its compose bridge with two containers, and the GPU box.
struct Lab {
    /// Held so that the servers stop with the lab.
    servers: Vec<Process>,
    tunnel: Option<Process>,
    root: Cgroup,
    granted_procs: Cgroup,
    other_procs: Cgroup,
    node_procs: Cgroup,
    node: Netns,
    granted: Netns,
    other: Netns,
    gpubox: Netns,
    work: tempfile::TempDir,
    _privsep: Option<PrivsepDir>,
}

impl Lab {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbh")).unwrap();
        let [granted_procs, other_procs, node_procs] =
            ["granted", "other", "node"].map(|name| root.child(name).unwrap());
        let [node, granted, other, gpubox] =
            ["nbnode", "nbgrant", "nbother", "nbgpu"].map(|prefix| Netns::new(prefix).unwrap());
        let work = tempfile::Builder::new()
            .prefix("netbpf-hostsvc-")
            .tempdir()
            .unwrap();

        node.ip(&["link", "add", "compose", "type", "bridge"])
            .unwrap();
        address(&node, "compose", "10.210.1.1/24", "fd21::1/64");
        for (container, v4, v6) in [
            (&granted, "10.210.1.2/24", "fd21::2/64"),
            (&other, "10.210.1.3/24", "fd21::3/64"),
        ] {
            let (inside, port) = container.veth_to(&node).unwrap();
            node.ip(&["link", "set", &port, "master", "compose", "up"])
                .unwrap();
            address(container, &inside, v4, v6);
            container
                .ip(&["route", "add", "default", "via", "10.210.1.1"])
                .unwrap();
            container
                .ip(&["-6", "route", "add", "default", "via", "fd21::1"])
                .unwrap();
        }
        let (node_side, gpu_side) = node.veth_to(&gpubox).unwrap();
        address(&node, &node_side, "10.50.0.1/24", "fd50::1/64");
        address(&gpubox, &gpu_side, "10.50.0.2/24", "fd50::2/64");
        // The GPU box can try to reach the node's services from outside.
        gpubox
            .ip(&["route", "add", "10.210.1.0/24", "via", "10.50.0.1"])
            .unwrap();

        let mut lab = Self {
            servers: Vec::new(),
            tunnel: None,
            root,
            granted_procs,
            other_procs,
            node_procs,
            node,
            granted,
            other,
            gpubox,
            work,
            _privsep: PrivsepDir::ensure(),
        };
        let gpu_http = lab.http_server(Place::GpuBox, "127.0.0.1", 8000, GPU_ANSWER);
        let v6_service = lab.http_server(Place::Node, "::1", 18189, V6_ANSWER);
        let private = lab.http_server(Place::Node, "127.0.0.1", 18190, PRIVATE_ANSWER);
        let sshd = lab.start_sshd();
        lab.servers = vec![gpu_http, v6_service, private, sshd];
        lab
    }

    fn site(&self, place: Place) -> Site<'_> {
        let (cgroup, netns) = match place {
            Place::Granted => (&self.granted_procs, &self.granted),
            Place::Other => (&self.other_procs, &self.other),
            Place::Node => (&self.node_procs, &self.node),
            Place::GpuBox => (&self.node_procs, &self.gpubox),
        };
        Site { cgroup, netns }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Python's http.server answering `body`, bound to `addr`:`port`.
    fn http_server(&self, place: Place, addr: &str, port: u16, body: &str) -> Process {
        self.site(place)
            .start_http_server(self.work.path(), addr, port, body)
            .unwrap()
    }

    /// OpenSSH's server on the GPU box, with keys made here.
    fn start_sshd(&self) -> Process {
        for key in ["host_key", "client_key"] {
            run_checked(
                "ssh-keygen",
                ["-q", "-t", "ed25519", "-N", "", "-f", path(&self.file(key))],
            )
            .unwrap();
        }
        std::fs::copy(self.file("client_key.pub"), self.file("authorized_keys")).unwrap();
        let config = format!(
            "Port 2222\nListenAddress 10.50.0.2\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             AllowTcpForwarding yes\n",
            self.file("host_key").display(),
            self.file("authorized_keys").display()
        );
        std::fs::write(self.file("sshd_config"), config).unwrap();
        self.site(Place::GpuBox)
            .start_server(
                "/usr/sbin/sshd",
                &["-D", "-e", "-f", path(&self.file("sshd_config"))],
                2222,
                "tcp",
                &self.file("sshd.log"),
            )
            .unwrap()
    }

    /// netbpf on the node's policy, its network namespace the node's.
    fn start_netbpf(&self) -> NetbpfRun {
        std::fs::create_dir(self.file("netbpf")).unwrap();
        NetbpfRun::start_with(
            &netbpf_binary(),
            &self.policy(),
            self.root.path(),
            &self.file("netbpf"),
            &["--netns", path(&self.node.path())],
        )
        .unwrap()
    }

    /// `ssh -N -L 127.0.0.1:18188:127.0.0.1:8000` on the node: the tunnel,
    /// bound to the node's loopback only.
    fn open_tunnel(&mut self) {
        let known_hosts = format!("UserKnownHostsFile={}", self.file("known_hosts").display());
        let ssh = self
            .site(Place::Node)
            .start_server(
                "ssh",
                &[
                    "-N",
                    "-i",
                    path(&self.file("client_key")),
                    "-p",
                    "2222",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    &known_hosts,
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-L",
                    "127.0.0.1:18188:127.0.0.1:8000",
                    "root@10.50.0.2",
                ],
                18188,
                "tcp",
                &self.file(&format!("ssh-{}.log", unique_name("s"))),
            )
            .unwrap_or_else(|error| {
                let sshd = std::fs::read_to_string(self.file("sshd.log")).unwrap_or_default();
                panic!("{error:#}\nsshd's log:\n{sshd}")
            });
        self.tunnel = Some(ssh);
    }

    fn close_tunnel(&mut self) {
        drop(self.tunnel.take());
    }

    /// curl at `place`: its exit code and body.
    fn curl(&self, place: Place, url: &str) -> (i32, String) {
        self.site(place).curl(url).unwrap()
    }

    fn policy(&self) -> PathBuf {
        let policy = format!(
            "version = 1\n\n\
             [[host_service]]\nname = \"gpu-tunnel\"\nlisten = \"127.0.0.1:18188\"\n\n\
             [[host_service]]\nname = \"v6-service\"\nlisten = \"[::1]:18189\"\n\n\
             [[scope]]\nname = \"granted\"\nmatch = {{ netns = \"{}\" }}\nhost_services = [\n  \
             {{ service = \"gpu-tunnel\", dial = \"172.17.0.1:18188\" }},\n  \
             {{ service = \"v6-service\", dial = \"[fd00:17::1]:18189\" }},\n]\n",
            self.granted.path().display()
        );
        let file = self.file("policy.toml");
        std::fs::write(&file, policy).unwrap();
        file
    }
}

#[derive(Debug, Clone, Copy)]
enum Place {
    Granted,
    Other,
    Node,
    GpuBox,
}

/// sshd's privilege separation directory, made if missing and removed
/// again when the last of this process's labs that needed it is gone:
/// tests run in parallel, and an sshd whose directory went away resets
/// every new connection during its key exchange.
struct PrivsepDir;

/// How many labs use the directory this process made (None: it made
/// none, the directory was there).
static PRIVSEP_USERS: Mutex<Option<usize>> = Mutex::new(None);

/// The directory itself.
const PRIVSEP: &str = "/run/sshd";

impl PrivsepDir {
    fn ensure() -> Option<Self> {
        let mut users = PRIVSEP_USERS.lock().unwrap();
        if let Some(count) = users.as_mut() {
            *count += 1;
            return Some(Self);
        }
        if Path::new(PRIVSEP).exists() {
            return None;
        }
        std::fs::create_dir_all(PRIVSEP).unwrap();
        *users = Some(1);
        Some(Self)
    }
}

impl Drop for PrivsepDir {
    fn drop(&mut self) {
        let mut users = PRIVSEP_USERS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = users.as_mut() {
            *count -= 1;
            if *count == 0 {
                let _ = std::fs::remove_dir(PRIVSEP);
                *users = None;
            }
        }
    }
}

fn address(netns: &Netns, interface: &str, v4: &str, v6: &str) {
    netns.ip(&["addr", "add", v4, "dev", interface]).unwrap();
    netns
        .ip(&["addr", "add", v6, "dev", interface, "nodad"])
        .unwrap();
    netns.ip(&["link", "set", interface, "up"]).unwrap();
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// curl's exit code for a refused connection.
const REFUSED: i32 = 7;

#[test]
fn a_granted_container_reaches_an_ssh_tunnel_bound_to_the_nodes_loopback() {
    let mut node = Lab::new();
    node.open_tunnel();
    let iptables_before = node.node.exec(&["iptables-save"]).unwrap();

    // Without netbpf, the host alias leads nowhere and the gateway port is
    // closed: the tunnel listens on the node's loopback only.
    assert_ne!(node.curl(Place::Granted, "http://10.210.1.1:18188/").0, 0);

    let netbpf = node.start_netbpf();

    // The granted container dials the host alias, as host.docker.internal.
    assert_eq!(
        node.curl(Place::Granted, "http://172.17.0.1:18188/"),
        (0, GPU_ANSWER.to_owned())
    );
    // ... and the IPv6 loopback service by its IPv6 alias.
    assert_eq!(
        node.curl(Place::Granted, "http://[fd00:17::1]:18189/"),
        (0, V6_ANSWER.to_owned())
    );

    // A container without the grant is refused at the same gateway port,
    // on IPv4 and IPv6.
    assert_eq!(
        node.curl(Place::Other, "http://10.210.1.1:18188/").0,
        REFUSED
    );
    assert_eq!(
        node.curl(Place::Other, "http://[fd21::1]:18189/").0,
        REFUSED
    );
    // The granted one reaches no other loopback port of the node.
    assert_eq!(
        node.curl(Place::Granted, "http://10.210.1.1:18190/").0,
        REFUSED
    );
    // Nothing outside the node reaches the service.
    assert_eq!(
        node.curl(Place::GpuBox, "http://10.210.1.1:18188/").0,
        REFUSED
    );
    assert_eq!(
        node.curl(Place::GpuBox, "http://10.50.0.1:18188/").0,
        REFUSED
    );

    let status = netbpf.status_json().unwrap();
    let gpu = &status["host_services"][0];
    assert_eq!(gpu["name"], "gpu-tunnel");
    assert_eq!(
        gpu["listener_pid"].as_u64(),
        node.tunnel.as_ref().map(|ssh| u64::from(ssh.id())),
        "{status}"
    );
    assert_eq!(
        gpu["steered"], 1,
        "the granted container's one connection: {status}"
    );
    assert_eq!(
        status["host_services"][1]["steered"], 1,
        "and its one on IPv6: {status}"
    );
    assert_eq!(
        gpu["borrowed"], 2,
        "the other container and the GPU box, in no scope granted it, refused at connect(): {status}"
    );
    assert_eq!(status["scopes"][0]["grants"][0]["connects"], 1, "{status}");
    assert_eq!(
        status["host_services"][1]["borrowed"], 1,
        "the other container on IPv6: {status}"
    );

    assert_survives_a_tunnel_restart(&mut node, &netbpf);
    assert_stayed_on_loopback(&node, &iptables_before);
    assert!(netbpf.stop().unwrap().success());
}

/// The tunnel goes down (autossh reconnecting) and comes back as a new
/// socket: refused, not hung, meanwhile; then reached again without
/// restarting netbpf.
fn assert_survives_a_tunnel_restart(node: &mut Lab, netbpf: &NetbpfRun) {
    node.close_tunnel();
    let (code, _) = node.curl(Place::Granted, "http://172.17.0.1:18188/");
    assert_eq!(
        code, REFUSED,
        "while the tunnel is down, connections are refused"
    );
    // ... and comes back as a new socket, which netbpf swaps in by itself.
    node.open_tunnel();
    let mut answer = (0, String::new());
    for _ in 0..50 {
        answer = node.curl(Place::Granted, "http://172.17.0.1:18188/");
        if answer.0 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        answer,
        (0, GPU_ANSWER.to_owned()),
        "the restarted tunnel is reached without restarting netbpf"
    );
    let status = netbpf.status_json().unwrap();
    assert_eq!(
        status["host_services"][0]["listener_pid"].as_u64(),
        node.tunnel.as_ref().map(|ssh| u64::from(ssh.id())),
        "{status}"
    );
}

/// The tunnel stayed bound to loopback, and no iptables rule was needed.
fn assert_stayed_on_loopback(node: &Lab, iptables_before: &str) {
    let listening = node
        .node
        .exec(&["ss", "-Htln", "sport", "=", ":18188"])
        .unwrap();
    let local: Vec<&str> = listening
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect();
    assert_eq!(local, ["127.0.0.1:18188"], "{listening}");
    let iptables_after = node.node.exec(&["iptables-save"]).unwrap();
    let rules = |dump: &str| {
        dump.lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(iptables_before), rules(&iptables_after));
}

/// The interface of `netns`'s default route, and its MAC address.
fn default_interface(netns: &Netns) -> (String, String) {
    let route = netns.ip(&["-o", "route", "show", "default"]).unwrap();
    let mut words = route.split_whitespace();
    let name = words
        .by_ref()
        .skip_while(|word| *word != "dev")
        .nth(1)
        .unwrap()
        .to_owned();
    let link = netns.ip(&["-o", "link", "show", &name]).unwrap();
    let mut words = link.split_whitespace();
    let mac = words
        .by_ref()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap()
        .to_owned();
    (name, mac)
}

#[test]
fn a_container_that_forges_a_granted_address_does_not_reach_the_service() {
    let mut node = Lab::new();
    node.open_tunnel();
    let _plain = node.http_server(Place::Node, "10.210.1.1", 18199, "a plain node service");
    let netbpf = node.start_netbpf();
    assert_eq!(
        node.curl(Place::Granted, "http://172.17.0.1:18188/"),
        (0, GPU_ANSWER.to_owned())
    );

    // The other container (with NET_ADMIN and NET_RAW) takes the granted
    // container's address, and the node's neighbour entry for it (as ARP
    // spoofing would): its handshakes with that source address complete.
    let (inside, mac) = default_interface(&node.other);
    node.other
        .ip(&["addr", "add", "10.210.1.2/32", "dev", &inside])
        .unwrap();
    node.node
        .ip(&[
            "neigh",
            "replace",
            "10.210.1.2",
            "lladdr",
            &mac,
            "dev",
            "compose",
            "nud",
            "permanent",
        ])
        .unwrap();
    let forged = |url: &str| {
        let output = node
            .site(Place::Other)
            .spawn(
                "curl",
                &[
                    "--silent",
                    "--interface",
                    "10.210.1.2",
                    "--max-time",
                    "3",
                    url,
                ],
            )
            .unwrap()
            .output(Duration::from_secs(10))
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    };
    assert_eq!(
        forged("http://10.210.1.1:18199/"),
        (0, "a plain node service".to_owned()),
        "the forged address works against a plain service of the node"
    );
    // Its sockets hold no grant: refused at connect(). (Forged packets
    // that bypass its sockets meet the guard: grant_attacks.rs.)
    let (code, body) = forged("http://10.210.1.1:18188/");
    assert_ne!(code, 0, "the forger reached the service: {body}");
    let status = netbpf.status_json().unwrap();
    assert_eq!(
        status["host_services"][0]["borrowed"], 1,
        "the forger's one connection: {status}"
    );
    assert_eq!(
        status["grant_guard"].as_array().unwrap().len(),
        2,
        "both ports of the compose bridge: {status}"
    );

    // The real container, its neighbour entry back, still gets through.
    node.other
        .ip(&["addr", "del", "10.210.1.2/32", "dev", &inside])
        .unwrap();
    node.node
        .ip(&["neigh", "del", "10.210.1.2", "dev", "compose"])
        .unwrap();
    assert_eq!(
        node.curl(Place::Granted, "http://172.17.0.1:18188/"),
        (0, GPU_ANSWER.to_owned())
    );
    assert!(netbpf.stop().unwrap().success());
}
