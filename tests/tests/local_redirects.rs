//! Local redirects, with real parts: a metadata-style HTTP proxy on the
//! node's loopback, reached at `169.254.169.254:80`, and a node-local DNS
//! cache (dnsmasq on a link-local address) reached at a cluster DNS address,
//! `10.96.0.10:53`, over UDP and TCP. A bridged pod reaches them through
//! a grant and an alias of its network namespace's scope; a host-network
//! pod through aliases of its cgroup's scope. Each sees the address it
//! dialed; a process of the node in no scope is sent nowhere.
//!
//! ```text
//!  pod 10.244.0.2 ── cni0 10.244.0.1   node: metadata proxy on 127.0.0.1:8181
//!                                            dnsmasq on 169.254.20.10:53
//!  host-network pod, and a process in no scope: in the node's namespace
//! ```
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{path::PathBuf, time::Duration};

use netbpf_testenv::{Cgroup, NetbpfRun, Netns, Process, Site, require_root, unique_name};
use serde_json::{Value, json};

const PROXY_ANSWER: &str = "the metadata proxy answers";
/// The node-local cache's answer for [`NAME`].
const CACHED: &str = "10.244.9.9";
const NAME: &str = "db.svc.test";

/// The node, a bridged pod on its `cni0`, and the cgroups of the pods.
struct Lab {
    /// Held so that the servers stop with the lab.
    proxy: Process,
    _cache: Process,
    root: Cgroup,
    pod_procs: Cgroup,
    hostnet_procs: Cgroup,
    other_procs: Cgroup,
    node: Netns,
    pod: Netns,
    work: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
enum Place {
    /// The bridged pod: its own network namespace.
    Pod,
    /// A host-network pod: the node's namespace, its own cgroup.
    HostNetwork,
    /// A process of the node in no scope.
    Other,
}

impl Lab {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbr")).unwrap();
        let [pod_procs, hostnet_procs, other_procs] =
            ["pod", "hostnet", "other"].map(|name| root.child(name).unwrap());
        let [node, pod] = ["nbnode", "nbpod"].map(|prefix| Netns::new(prefix).unwrap());
        let work = tempfile::Builder::new()
            .prefix("netbpf-redirect-")
            .tempdir()
            .unwrap();

        node.ip(&["link", "add", "cni0", "type", "bridge"]).unwrap();
        node.ip(&["addr", "add", "10.244.0.1/24", "dev", "cni0"])
            .unwrap();
        node.ip(&["link", "set", "cni0", "up"]).unwrap();
        let (inside, port) = pod.veth_to(&node).unwrap();
        node.ip(&["link", "set", &port, "master", "cni0", "up"])
            .unwrap();
        pod.ip(&["addr", "add", "10.244.0.2/24", "dev", &inside])
            .unwrap();
        pod.ip(&["link", "set", &inside, "up"]).unwrap();
        pod.ip(&["route", "add", "default", "via", "10.244.0.1"])
            .unwrap();
        // Where node-local DNS caches listen: a link-local address of the
        // node (on a dummy interface in production; on loopback here, whose
        // kernel may lack the dummy driver), reached by the pods through it.
        node.ip(&["addr", "add", "169.254.20.10/32", "dev", "lo"])
            .unwrap();

        let node_site = Site {
            cgroup: &other_procs,
            netns: &node,
        };
        let proxy = node_site
            .start_http_server(work.path(), "127.0.0.1", 8181, PROXY_ANSWER)
            .unwrap();
        let cache = node_site
            .start_dns_server(work.path(), "169.254.20.10", NAME, CACHED)
            .unwrap();
        Self {
            proxy,
            _cache: cache,
            root,
            pod_procs,
            hostnet_procs,
            other_procs,
            node,
            pod,
            work,
        }
    }

    fn site(&self, place: Place) -> Site<'_> {
        let (cgroup, netns) = match place {
            Place::Pod => (&self.pod_procs, &self.pod),
            Place::HostNetwork => (&self.hostnet_procs, &self.node),
            Place::Other => (&self.other_procs, &self.node),
        };
        Site { cgroup, netns }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// netbpf on the node with the policy a node with both redirects has:
    /// the bridged pod granted the proxy at the metadata address, the
    /// host-network pod sent to its loopback; both sent to the cache.
    fn start_netbpf(&self) -> NetbpfRun {
        let policy = format!(
            "version = 1\n\n\
             [[host_service]]\nname = \"metadata\"\nlisten = \"127.0.0.1:8181\"\n\n\
             [[scope]]\nname = \"pods\"\nmatch = {{ netns = \"{}\" }}\n\
             host_services = [{{ service = \"metadata\", dial = \"169.254.169.254:80\" }}]\n\
             alias = [{{ from = \"10.96.0.10:53\", to = \"169.254.20.10:53\", proto = \"both\" }}]\n\n\
             [[scope]]\nname = \"host-network\"\nmatch = {{ cgroup = \"{}\" }}\nalias = [\n  \
             {{ from = \"169.254.169.254:80\", to = \"127.0.0.1:8181\" }},\n  \
             {{ from = \"10.96.0.10:53\", to = \"169.254.20.10:53\", proto = \"both\" }},\n]\n",
            self.pod.path().display(),
            self.hostnet_procs.path().display(),
        );
        let file = self.file("policy.toml");
        std::fs::write(&file, policy).unwrap();
        let netbpf =
            NetbpfRun::start_on_node(&file, self.root.path(), &self.node, self.work.path())
                .unwrap();
        // The grant needs the pod's network: applied once resolved.
        netbpf
            .wait_for_status(Duration::from_secs(10), |status| {
                status["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|scope| scope["grants"].as_array().map(Vec::len) == Some(1))
            })
            .unwrap();
        netbpf
    }

    /// `probe.py` with `args` at `place`: its report, or what it said
    /// when it failed.
    fn probe(&self, place: Place, args: &[&str]) -> Result<Value, String> {
        let output = self
            .site(place)
            .spawn_probe(args)
            .unwrap()
            .output(Duration::from_secs(15))
            .unwrap();
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

#[test]
fn a_metadata_proxy_on_the_nodes_loopback_answers_at_169_254_169_254() {
    let lab = Lab::new();
    let _netbpf = lab.start_netbpf();

    for place in [Place::Pod, Place::HostNetwork] {
        assert_eq!(
            lab.site(place).curl("http://169.254.169.254/").unwrap(),
            (0, PROXY_ANSWER.to_owned()),
            "curl at {place:?}"
        );
        let report = lab
            .probe(place, &["http", "169.254.169.254", "80"])
            .unwrap_or_else(|error| panic!("probe at {place:?}: {error}"));
        assert_eq!(report["data"], PROXY_ANSWER);
        assert_eq!(
            report["peer"],
            json!(["169.254.169.254", 80]),
            "getpeername() at {place:?} shows the address dialed"
        );
    }
    // A proxy that tells pods apart by their address sees the bridged
    // pod's own.
    assert!(
        lab.proxy.log().contains("10.244.0.2 - -"),
        "the proxy's log:\n{}",
        lab.proxy.log()
    );

    let (code, body) = lab
        .site(Place::Other)
        .curl("http://169.254.169.254/")
        .unwrap();
    assert_ne!(code, 0, "a process in no scope is sent nowhere: {body}");
}

#[test]
fn a_node_local_dns_cache_answers_at_the_cluster_dns_address_over_udp_and_tcp() {
    let lab = Lab::new();
    let _netbpf = lab.start_netbpf();

    // Each query's mode, where the probe reports the address the answer
    // came from, and the call that shows it.
    let queries = [
        ("dns-udp", "source", "recvfrom()"),
        ("dns-tcp", "peer", "getpeername()"),
    ];
    for place in [Place::Pod, Place::HostNetwork] {
        for (mode, shown_in, call) in queries {
            let report = lab
                .probe(place, &[mode, "10.96.0.10", "53", NAME])
                .unwrap_or_else(|error| panic!("{mode} at {place:?}: {error}"));
            assert_eq!(
                report["data"], CACHED,
                "the cache's answer, {mode} at {place:?}"
            );
            assert_eq!(
                report[shown_in],
                json!(["10.96.0.10", 53]),
                "{call} at {place:?} shows the address queried"
            );
        }
    }

    for (mode, _, _) in queries {
        let sent = lab.probe(Place::Other, &[mode, "10.96.0.10", "53", NAME]);
        assert!(
            sent.is_err(),
            "a process in no scope is sent nowhere ({mode}): {sent:?}"
        );
    }
}
