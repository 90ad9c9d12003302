//! Rootless networking served by the root agent: an unprivileged user
//! (`nobody`) runs its processes in a user and network namespace of its
//! own, connected by pasta (the network of rootless Podman's
//! `--network pasta`), inside a network namespace of the test's own. The
//! agent scopes the cgroup the user's processes run in.
//!
//! - Forwards, aliases and bind remaps work: they act on the processes'
//!   own sockets, whatever namespace they are in, and pasta carries what
//!   leaves the namespace out as the user's own connections. Here the
//!   target is a service on the node's loopback, which pasta maps to the
//!   namespace's gateway address (the pasta of Debian 12 resets outbound
//!   connections through its tap on this kernel: `reset at
//!   tcp_conn_from_tap`, which its `--debug` shows).
//! - A grant cannot: no packet of the user's namespace reaches the node.
//!   pasta re-makes each connection as a socket of the user in the node's
//!   namespace, and the host service decides nothing about it. The
//!   agent refuses the grant, saying why.
//!
//! ```text
//!  node (the test's namespace): d0 10.70.0.1/24, default via 10.70.0.254
//!                               a server on 127.0.0.1:9000
//!  nobody's namespace, by pasta: a copy of d0's address and route;
//!                                10.70.0.254 is the node's loopback
//! ```
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use netbpf_testenv::{Cgroup, NetbpfRun, Netns, Process, Site, Spawn, require_root, unique_name};
use serde_json::Value;

/// The node's loopback service, and the address pasta gives it in the
/// user's namespace (its gateway).
const LOOPBACK_ANSWER: &str = "the node's loopback service";
const NODE_AS_GATEWAY: &str = "10.70.0.254";
/// The user the namespace belongs to.
const NOBODY: &str = "65534";

struct Lab {
    _server: Process,
    root: Cgroup,
    user: Cgroup,
    /// Where the server runs: removing it stops the server.
    _helpers: Cgroup,
    node: Netns,
    work: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbr")).unwrap();
        let [user, helpers] = ["user", "helpers"].map(|name| root.child(name).unwrap());
        let node = Netns::new("nbrootless").unwrap();
        let work = tempfile::Builder::new()
            .prefix("netbpf-rootless-")
            .tempdir()
            .unwrap();
        // The user's processes read their script and serve files here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // pasta copies the address and default route of the node's
        // interface into the user's namespace.
        node.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
            .unwrap();
        node.ip(&["addr", "add", "10.70.0.1/24", "dev", "d0"])
            .unwrap();
        for link in ["d0", "d1"] {
            node.ip(&["link", "set", link, "up"]).unwrap();
        }
        node.ip(&["route", "add", "default", "via", "10.70.0.254", "dev", "d0"])
            .unwrap();
        let server = Site {
            cgroup: &helpers,
            netns: &node,
        }
        .start_http_server(work.path(), "127.0.0.1", 9000, LOOPBACK_ANSWER)
        .unwrap();
        Self {
            _server: server,
            root,
            user,
            _helpers: helpers,
            node,
            work,
        }
    }

    fn start_netbpf(&self, rules: &str) -> NetbpfRun {
        let policy = format!(
            "version = 1\n\
             [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:18188\"\n\
             [[scope]]\nname = \"rootless\"\nmatch = {{ cgroup = \"{}\" }}\n{rules}",
            self.user.path().display()
        );
        let file = self.work.path().join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        NetbpfRun::start_on_node(&file, self.root.path(), &self.node, self.work.path()).unwrap()
    }

    /// Runs `script` as nobody, in a user and network namespace of its own
    /// made by pasta, in the user's cgroup; what it printed. The node's
    /// `/dev/net/tun` may be root's alone (it is here): a private mount
    /// namespace gives pasta one nobody may open, as distributions' is.
    fn as_nobody_behind_pasta(&self, script: &str) -> String {
        let inner = format!(
            "mount -t tmpfs -o mode=755 none /dev/net && mknod -m 666 /dev/net/tun c 10 200 && \
             exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \
             pasta --foreground --quiet --config-net -- sh -c '{script}'"
        );
        // `ip netns exec` mounts the namespace's own /sys, where pasta
        // finds the interface it copies.
        let output = Spawn::new(
            self.user.path(),
            None,
            "ip",
            [
                "netns",
                "exec",
                self.node.name(),
                "unshare",
                "--mount",
                "sh",
                "-c",
                &inner,
            ],
        )
        .unwrap()
        .current_dir(self.work.path())
        .output(Duration::from_mins(1))
        .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The line of `output` that starts with `what: `, without it.
fn answer<'o>(output: &'o str, what: &str) -> &'o str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{what}: ")))
        .unwrap_or_else(|| panic!("no {what:?} in:\n{output}"))
        .trim()
}

#[test]
fn forwards_aliases_and_binds_act_on_a_rootless_users_namespace() {
    let lab = Lab::new();
    let _netbpf = lab.start_netbpf(&format!(
        "forward = [{{ from = \"localhost:8082\", to = \"{NODE_AS_GATEWAY}:9000\" }}]\n\
         alias = [{{ from = \"10.96.0.1:80\", to = \"{NODE_AS_GATEWAY}:9000\" }}]\n\
         bind = [{{ port = 3000, to = 7041 }}]\n",
    ));
    std::fs::create_dir(lab.work.path().join("own")).unwrap();
    std::fs::write(lab.work.path().join("own/index.html"), "its own server").unwrap();
    let output = lab.as_nobody_behind_pasta(
        "echo owner: $(cut -c11-30 /proc/self/uid_map); \
         echo forward: $(curl -s -m 5 http://127.0.0.1:8082/); \
         echo alias: $(curl -s -m 5 http://10.96.0.1/); \
         python3 -m http.server --bind 127.0.0.1 --directory own 3000 >/dev/null 2>&1 & \
         sleep 1; \
         echo remapped: $(curl -s -m 5 http://127.0.0.1:7041/); \
         echo dialed: $(curl -s -m 5 http://127.0.0.1:3000/); \
         kill $!",
    );
    // Root inside, nobody outside: a rootless namespace.
    assert_eq!(answer(&output, "owner"), NOBODY, "{output}");
    assert_eq!(answer(&output, "forward"), LOOPBACK_ANSWER, "{output}");
    assert_eq!(answer(&output, "alias"), LOOPBACK_ANSWER, "{output}");
    // Its server asked for :3000 and got :7041; dialing :3000 reaches it.
    assert_eq!(answer(&output, "remapped"), "its own server", "{output}");
    assert_eq!(answer(&output, "dialed"), "its own server", "{output}");
}

#[test]
fn a_grant_to_a_rootless_users_namespace_is_refused_with_its_reason() {
    let lab = Lab::new();
    let netbpf =
        lab.start_netbpf("host_services = [{ service = \"svc\", dial = \"10.70.0.254:18188\" }]\n");
    // The instance is tried once the user's namespace runs a process.
    let script = "sleep 5";
    let waited = std::thread::scope(|scope| {
        let user = scope.spawn(|| lab.as_nobody_behind_pasta(script));
        let status = netbpf.wait_for_status(Duration::from_secs(20), |status| {
            instance(status).is_some_and(|scope| {
                scope["error"]
                    .as_str()
                    .is_some_and(|error| !error.contains("no process of the instance runs yet"))
            })
        });
        user.join().unwrap();
        status
    });
    let status = waited.unwrap_or_else(|error| panic!("{error:#}\n{}", netbpf.log()));
    let error = instance(&status).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("is not an address of the node"), "{error}");
}

fn instance(status: &Value) -> Option<&Value> {
    status["scopes"].as_array()?.first()
}
