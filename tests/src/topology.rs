//! The topology of the localhost-forwarding problem, built in namespaces:
//! a "desktop" network namespace whose processes sit in their own cgroup,
//! wired to a "docker host" namespace that holds a bridge at 10.200.1.1/24
//! (and `fd00:200:1::1/64`) where published ports live.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{Cgroup, Netns, Process, Spawn, unique_name};

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

    /// A command run at `place`.
    pub fn spawn(&self, place: Place, program: &str, args: &[&str]) -> anyhow::Result<Spawn> {
        let (cgroup, netns) = match place {
            Place::Desktop => (&self.desktop, &self.desktop_ns),
            Place::Outside => (&self.outside, &self.desktop_ns),
            Place::DockerHost => (&self.servers, &self.host_ns),
        };
        Spawn::new(cgroup.path(), Some(&netns.path()), program, args)
    }

    /// A path in the work directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Starts an HTTP server (Python's http.server) on the docker host at
    /// `addr`:`port` that answers `GET /` with `body`.
    pub fn start_http_server(&self, addr: &str, port: u16, body: &str) -> anyhow::Result<Process> {
        let root = self.file(&format!("www-{port}"));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), body)?;
        let port_text = port.to_string();
        let args = [
            "-m",
            "http.server",
            "--bind",
            addr,
            &port_text,
            "--directory",
            path_str(&root)?,
        ];
        self.start_server(Place::DockerHost, "python3", &args, port, "tcp")
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
        let server = self.spawn(place, program, args)?.start(&log)?;
        let netns = match place {
            Place::Desktop | Place::Outside => &self.desktop_ns,
            Place::DockerHost => &self.host_ns,
        };
        wait_for_listener(netns, port, protocol)
            .with_context(|| format!("{program} did not start; its log:\n{}", server.log()))?;
        Ok(server)
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

/// Waits until something listens on `port` (tcp or udp) in `netns`.
pub fn wait_for_listener(netns: &Netns, port: u16, protocol: &str) -> anyhow::Result<()> {
    let flag = if protocol == "udp" { "-uln" } else { "-tln" };
    for _ in 0..250 {
        let sport = format!(":{port}");
        let listening = netns.exec(&["ss", "-H", flag, "sport", "=", &sport])?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "nothing listens on {protocol} port {port} in {} after 5 s",
        netns.name()
    )
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("the work directory path is UTF-8")
}
