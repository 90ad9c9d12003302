//! The topology of the localhost-forwarding problem, built in namespaces:
//! a "desktop" network namespace whose processes sit in their own cgroup,
//! wired to a "docker host" namespace that holds a bridge at 10.200.1.1/24
//! (and `fd00:200:1::1/64`) where published ports live.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{Cgroup, Netns, Process, Site, Spawn, unique_name};

/// The bridge gateway, where the "published ports" listen.
pub const BRIDGE_V4: &str = "10.200.1.1";
/// The bridge gateway's IPv6 address.
pub const BRIDGE_V6: &str = "fd00:200:1::1";

/// A desktop container and a docker host, in throw-away namespaces and
/// cgroups. Dropping it kills every process started through it and
/// removes the cgroups, namespaces and work directory.
pub struct DesktopTopology {
    /// Processes of the desktop container: the scope under test.
    pub desktop: Cgroup,
    /// Processes under the cgroup root but in no scope.
    pub outside: Cgroup,
    /// The servers on the docker host's bridge.
    pub servers: Cgroup,
    /// What netbpf attaches to: parent of the three above.
    pub root: Cgroup,
    /// The desktop container's network namespace.
    pub desktop_ns: Netns,
    /// The docker host's network namespace, with the bridge.
    pub host_ns: Netns,
    /// Logs, policies and files served.
    pub work: tempfile::TempDir,
}

impl DesktopTopology {
    pub fn new() -> anyhow::Result<Self> {
        let root = Cgroup::new_test_root(&unique_name("nbt"))?;
        let desktop = root.child("desktop")?;
        let outside = root.child("outside")?;
        let servers = root.child("servers")?;
        let desktop_ns = Netns::new("nbdesk")?;
        let host_ns = Netns::new("nbhost")?;
        let topology = Self {
            desktop,
            outside,
            servers,
            root,
            desktop_ns,
            host_ns,
            work: tempfile::Builder::new().prefix("netbpf-test-").tempdir()?,
        };
        topology
            .wire()
            .context("wiring the desktop to the docker host's bridge")?;
        Ok(topology)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let host = &self.host_ns;
        host.ip(&["link", "add", "br0", "type", "bridge"])?;
        host.ip(&["addr", "add", &format!("{BRIDGE_V4}/24"), "dev", "br0"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{BRIDGE_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        host.ip(&["link", "set", "br0", "up"])?;
        let (desk_if, host_if) = self.desktop_ns.veth_to(host)?;
        host.ip(&["link", "set", &host_if, "master", "br0", "up"])?;
        let desk = &self.desktop_ns;
        desk.ip(&["addr", "add", "10.200.1.2/24", "dev", &desk_if])?;
        desk.ip(&["addr", "add", "fd00:200:1::2/64", "dev", &desk_if, "nodad"])?;
        desk.ip(&["link", "set", &desk_if, "up"])?;
        Ok(())
    }

    /// The cgroup and namespace of `place`.
    #[must_use]
    pub fn site(&self, place: Place) -> Site<'_> {
        let (cgroup, netns) = match place {
            Place::Desktop => (&self.desktop, &self.desktop_ns),
            Place::Outside => (&self.outside, &self.desktop_ns),
            Place::DockerHost => (&self.servers, &self.host_ns),
        };
        Site { cgroup, netns }
    }

    /// A command run at `place`.
    pub fn spawn(&self, place: Place, program: &str, args: &[&str]) -> anyhow::Result<Spawn> {
        self.site(place).spawn(program, args)
    }

    /// `tests/scripts/probe.py` with `args` at `place`: one connection or
    /// exchange of the mode the script names, reported as JSON.
    pub fn spawn_probe(&self, place: Place, args: &[&str]) -> anyhow::Result<Spawn> {
        self.site(place).spawn_probe(args)
    }

    /// curl at `place`: its exit code and the body it got.
    pub fn curl(&self, place: Place, url: &str) -> anyhow::Result<(i32, String)> {
        self.site(place).curl(url)
    }

    /// A path in the work directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Starts an HTTP server (Python's http.server) on the docker host at
    /// `addr`:`port` that answers `GET /` with `body`.
    pub fn start_http_server(&self, addr: &str, port: u16, body: &str) -> anyhow::Result<Process> {
        self.site(Place::DockerHost)
            .start_http_server(self.work.path(), addr, port, body)
    }

    /// Starts a TCP server (socat) at `place` on `addr`:`port` that sends
    /// `text` to every client and closes.
    pub fn start_tcp_banner(
        &self,
        place: Place,
        addr: &str,
        port: u16,
        text: &str,
    ) -> anyhow::Result<Process> {
        let listen = format!("TCP-LISTEN:{port},bind={addr},fork,reuseaddr");
        let reply = format!("SYSTEM:echo {text}");
        self.start_server(place, "socat", &[&listen, &reply], port, "tcp")
    }

    /// Starts a UDP echo server (socat) on the docker host at `addr`:`port`.
    pub fn start_udp_echo(&self, addr: &str, port: u16) -> anyhow::Result<Process> {
        let listen = format!("UDP-RECVFROM:{port},bind={addr},fork");
        self.start_server(
            Place::DockerHost,
            "socat",
            &[&listen, "EXEC:cat"],
            port,
            "udp",
        )
    }

    fn start_server(
        &self,
        place: Place,
        program: &str,
        args: &[&str],
        port: u16,
        protocol: &str,
    ) -> anyhow::Result<Process> {
        let log = self.file(&format!("{program}-{place:?}-{protocol}-{port}.log"));
        self.site(place)
            .start_server(program, args, port, protocol, &log)
    }
}

/// Where a process of the topology runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the desktop container: its cgroup (the scope) and namespace.
    Desktop,
    /// In the desktop's namespace, but in a cgroup of no scope.
    Outside,
    /// On the docker host, where the bridge is.
    DockerHost,
}
