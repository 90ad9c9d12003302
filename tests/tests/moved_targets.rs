//! Re-pointing a rule moves the sockets it connected: resolvers in a loop
//! on one socket each, with real DNS servers (two dnsmasq, answering
//! differently), while the policy's aliases are re-pointed from the first
//! to the second and the agent reloads.
//!
//! - A connected UDP socket sent through the alias is disconnected: its
//!   next call fails with `ECONNABORTED`, and the socket the resolver
//!   opens instead reaches the new server.
//! - A TCP connection is reset where its alias says `on_move = "reset"`,
//!   and kept with the old server where it says nothing.
//! - A socket that dialed the old server itself is no rule's: it stays.
//! - The same for a forward of `localhost:53` in another scope, whose TCP
//!   connections keep no record of what they dialed (the forward alone
//!   reaches its target): UDP moved, TCP reset.
//!
//! ```text
//!  node (the test's namespace): dnsmasq "old" on 169.254.20.10:53
//!                               dnsmasq "new" on 169.254.20.11:53
//!  the resolvers, in cgroups "app" (aliases) and "local" (a forward)
//! ```
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{ChildStdin, ChildStdout},
    thread,
    time::Duration,
};

use netbpf_testenv::{Cgroup, NetbpfRun, Netns, Process, Site, require_root, unique_name};
use serde_json::Value;

const NAME: &str = "db.svc.test";
/// What each server answers for [`NAME`].
const OLD_ANSWER: &str = "10.244.1.1";
const NEW_ANSWER: &str = "10.244.2.2";
const OLD_SERVER: &str = "169.254.20.10";
const NEW_SERVER: &str = "169.254.20.11";
/// How long the resolvers go on after the move: long enough for a
/// moved one to fail once and be answered by the new server.
const AFTER_THE_MOVE: Duration = Duration::from_millis(1500);

struct Lab {
    _servers: [Process; 2],
    root: Cgroup,
    app: Cgroup,
    local: Cgroup,
    /// Where the servers run: removing it stops them.
    _servers_cgroup: Cgroup,
    node: Netns,
    work: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbm")).unwrap();
        let [app, local, servers_cgroup] =
            ["app", "local", "servers"].map(|name| root.child(name).unwrap());
        let node = Netns::new("nbmove").unwrap();
        let work = tempfile::Builder::new()
            .prefix("netbpf-moved-")
            .tempdir()
            .unwrap();
        node.ip(&["link", "set", "lo", "up"]).unwrap();
        let site = Site {
            cgroup: &servers_cgroup,
            netns: &node,
        };
        let servers =
            [(OLD_SERVER, OLD_ANSWER), (NEW_SERVER, NEW_ANSWER)].map(|(address, answer)| {
                node.ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"])
                    .unwrap();
                site.start_dns_server(work.path(), address, NAME, answer)
                    .unwrap()
            });
        Self {
            _servers: servers,
            root,
            app,
            local,
            _servers_cgroup: servers_cgroup,
            node,
            work,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The policy: the scope "app" with two aliases of cluster DNS
    /// addresses to `server`, one resetting its TCP connections when it
    /// moves; the scope "local" with a forward of `localhost:53` there,
    /// resetting them too.
    fn write_policy(&self, server: &str) {
        let policy = format!(
            "version = 1\n\n\
             [[scope]]\nname = \"app\"\nmatch = {{ cgroup = \"{}\" }}\nalias = [\n  \
             {{ from = \"10.96.0.10:53\", to = \"{server}:53\", proto = \"both\", on_move = \"reset\" }},\n  \
             {{ from = \"10.96.0.11:53\", to = \"{server}:53\", proto = \"both\" }},\n]\n\n\
             [[scope]]\nname = \"local\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n  \
             {{ from = \"localhost:53\", to = \"{server}:53\", proto = \"both\", on_move = \"reset\" }},\n]\n",
            self.app.path().display(),
            self.local.path().display(),
        );
        std::fs::write(self.file("policy.toml"), policy).unwrap();
    }

    fn start_netbpf(&self) -> NetbpfRun {
        self.write_policy(OLD_SERVER);
        let policy = self.file("policy.toml");
        NetbpfRun::start_on_node(&policy, self.root.path(), &self.node, self.work.path()).unwrap()
    }

    /// A resolver in `cgroup` querying `address` over `proto` on one
    /// socket.
    fn start_resolver(&self, cgroup: &Cgroup, address: &str, proto: &str) -> Resolver {
        let site = Site {
            cgroup,
            netns: &self.node,
        };
        let log = self.file(&format!("resolver-{address}-{proto}.log"));
        let (process, input, output) = site
            .spawn_probe(&["dns-loop", address, "53", NAME, proto])
            .unwrap()
            .start_piped(&log)
            .unwrap();
        Resolver {
            process,
            input,
            output: BufReader::new(output),
        }
    }
}

/// A resolver querying in a loop until it is told to stop.
struct Resolver {
    process: Process,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Resolver {
    /// Waits for its first answer (or error): it queries from then on.
    fn wait_until_querying(&mut self) {
        let mut first = String::new();
        self.output.read_line(&mut first).unwrap();
        assert!(
            first.contains("first"),
            "the resolver said {first:?}; its errors:\n{}",
            self.process.log()
        );
    }

    /// Stops it: what it got, in runs (`[answer or error, how many in a
    /// row]`), the counts dropped.
    fn runs(self) -> Vec<String> {
        let Self {
            mut process,
            input,
            mut output,
        } = self;
        drop(input);
        let mut report = String::new();
        output.read_to_string(&mut report).unwrap();
        process.wait(Duration::from_secs(10)).unwrap();
        let report: Value = serde_json::from_str(report.trim()).unwrap_or_else(|error| {
            panic!(
                "the resolver's report {report:?}: {error}; its errors:\n{}",
                process.log()
            )
        });
        report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| run[0].as_str().unwrap().to_owned())
            .collect()
    }
}

/// What a resolver's runs should be.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// The old server's answers, then one of these errors once, then the
    /// new server's answers.
    Moved(&'static [&'static str]),
    /// The old server's answers throughout.
    Kept,
}

impl Expected {
    fn fits(self, runs: &[String]) -> bool {
        match (self, runs) {
            (Self::Moved(errors), [old, error, new]) => {
                old == OLD_ANSWER && errors.contains(&error.as_str()) && new == NEW_ANSWER
            }
            (Self::Moved(_), _) => false,
            (Self::Kept, runs) => runs == [OLD_ANSWER],
        }
    }
}

#[test]
fn re_pointed_aliases_move_connected_udp_sockets_and_the_tcp_connections_they_reset() {
    let lab = Lab::new();
    let mut netbpf = lab.start_netbpf();

    let mut resolvers = [
        (&lab.app, "10.96.0.10", "udp"),
        (&lab.app, "10.96.0.10", "tcp"),
        (&lab.app, "10.96.0.11", "tcp"),
        (&lab.app, OLD_SERVER, "udp"),
        (&lab.local, "127.0.0.1", "udp"),
        (&lab.local, "127.0.0.1", "tcp"),
    ]
    .map(|(cgroup, address, proto)| {
        let resolver = lab.start_resolver(cgroup, address, proto);
        ((address, proto), resolver)
    });
    for (_, resolver) in &mut resolvers {
        resolver.wait_until_querying();
    }
    lab.write_policy(NEW_SERVER);
    let reloaded = netbpf.reload().unwrap();
    assert!(reloaded.contains("reloaded"), "{reloaded}");
    thread::sleep(AFTER_THE_MOVE);

    let got: Vec<_> = resolvers
        .into_iter()
        .map(|(which, resolver)| (which, resolver.runs()))
        .collect();
    // A disconnected UDP socket fails its next call: recv() with
    // ECONNABORTED, or send() with EDESTADDRREQ (it has no peer any more).
    let expected = [
        Expected::Moved(&["ECONNABORTED", "EDESTADDRREQ"]),
        Expected::Moved(&["ECONNABORTED"]),
        Expected::Kept,
        Expected::Kept,
        Expected::Moved(&["ECONNABORTED", "EDESTADDRREQ"]),
        Expected::Moved(&["ECONNABORTED"]),
    ];
    for ((which, runs), expected) in got.iter().zip(expected) {
        assert!(
            expected.fits(runs),
            "the resolver of {which:?} should be {expected:?}; it got {runs:?}; netbpf's log:\n{}",
            netbpf.log()
        );
    }
    assert!(
        netbpf.log().contains("udp=2 tcp=2"),
        "the agent counts what it destroyed:\n{}",
        netbpf.log()
    );
}
