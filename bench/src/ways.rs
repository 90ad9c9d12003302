//! The ways a container reaches a server published on another bridge's
//! gateway, each set up on a throw-away topology of its own (so no way
//! meets another's `TIME_WAIT` or conntrack entries): dialing the gateway
//! with no program attached (the floor), dialing localhost forwarded by
//! netbpf's agent, and dialing localhost forwarded the iptables way (DNAT
//! and `route_localnet` and MASQUERADE, inside the topology's own
//! namespace). Each can carry the scopes and rules of many other containers.

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;
use netbpf_common::{
    CgroupForward, CgroupPort, ForwardTarget, MAP_LAYOUT, PROTO_TCP, ScopeEntry, ScopePort, names,
};
use netbpf_testenv::{
    AgentOptions, AgentSetup, BRIDGE_V4, DesktopTopology, NetbpfRun, Place, Process, run_checked,
    wait_for_listener,
};
use serde::{Deserialize, Serialize};

use crate::{
    load::{LOAD_CPU, Sample},
    programs,
};

/// The port of the TCP server (and of its forward).
pub const TCP_PORT: u16 = 8082;
/// The port of the UDP echo server.
pub const UDP_PORT: u16 = 8053;
/// The port of the iperf3 server.
pub const IPERF_PORT: u16 = 5201;
/// The port of a TCP server no forward reaches: what most connects of a
/// process in no scope dial.
pub const UNFORWARDED_PORT: u16 = 8084;

/// Capacities of the agent that carries up to 100,000 other containers
/// (and of the agent's own measurements, up to 50,000 cgroups).
pub const SCALING_CAPACITY: &str =
    "[capacity]\nscopes = 131072\nrules = 131072\nforward_ports = 131072\n";

/// How the desktop reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Way {
    /// Dialing the gateway itself, with no program attached.
    Direct,
    /// Dialing localhost, forwarded by netbpf.
    Netbpf,
    /// Dialing localhost, forwarded by iptables.
    Iptables,
}

impl Way {
    /// Every way, in the order of the report; the first is the floor.
    pub const ALL: [Way; 3] = [Way::Direct, Way::Netbpf, Way::Iptables];

    pub fn label(self) -> &'static str {
        match self {
            Way::Direct => "no program",
            Way::Netbpf => "netbpf",
            Way::Iptables => "iptables",
        }
    }
}

/// A protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Connections opened one after the other.
    Tcp,
    /// The same, always to the gateway's server that no forward reaches.
    TcpUnforwarded,
    /// Datagrams, each waiting for its echo.
    Udp,
    /// UDP sockets bound to the wildcard address and closed.
    Bind,
}

/// One way set up on a topology of its own, with its servers running.
pub struct Prepared {
    pub way: Way,
    // Dropped in order: the agent, then its pins, then the topology.
    agent: Option<NetbpfRun>,
    setup: Option<AgentSetup>,
    /// Held for their lifetime: the servers, and what holds the desktop's
    /// network (see [`Self::hold_desktop_network`]).
    held: Vec<Process>,
    pub topology: DesktopTopology,
    /// Other containers' scopes and rules loaded so far.
    others: usize,
}

impl Prepared {
    /// Sets `way` up; netbpf's agent gets `capacity` (a `[capacity]`
    /// section, or nothing for the defaults) and `policy_extra` (more
    /// policy, such as an MSS clamp).
    pub fn new(exe: &str, way: Way, capacity: &str, policy_extra: &str) -> anyhow::Result<Self> {
        let topology = DesktopTopology::new()?;
        let servers = start_servers(exe, &topology)?;
        let mut prepared = Self {
            way,
            agent: None,
            setup: None,
            held: servers,
            topology,
            others: 0,
        };
        match way {
            Way::Direct => {}
            Way::Netbpf => prepared.start_agent(capacity, policy_extra)?,
            Way::Iptables => prepared.iptables_rules(0)?,
        }
        Ok(prepared)
    }

    fn start_agent(&mut self, capacity: &str, policy_extra: &str) -> anyhow::Result<()> {
        let topology = &self.topology;
        let setup = AgentSetup::new(
            topology.work.path(),
            topology.root.path(),
            AgentOptions {
                netns: Some(&topology.host_ns.path()),
                ..AgentOptions::default()
            },
        )?;
        setup.configure(capacity)?;
        setup.policy("bench.toml", &self.policy(policy_extra))?;
        self.agent = Some(setup.start("agent")?);
        self.setup = Some(setup);
        Ok(())
    }

    /// The desktop's forwards, then `extra` (more of the desktop's scope,
    /// or more policy).
    fn policy(&self, extra: &str) -> String {
        let mut policy = format!(
            "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n",
            self.topology.desktop.path().display()
        );
        for (port, proto) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp"), (IPERF_PORT, "tcp")] {
            let _ = writeln!(
                policy,
                "  {{ from = \"localhost:{port}\", to = \"{BRIDGE_V4}:{port}\", proto = \"{proto}\" }},"
            );
        }
        policy.push_str("]\n");
        policy.push_str(extra);
        policy
    }

    /// Has netbpf's agent apply the desktop's forwards and `extra`
    /// instead of what it applies now.
    pub fn repolicy(&mut self, extra: &str) -> anyhow::Result<()> {
        let policy = self.policy(extra);
        let (Some(setup), Some(agent)) = (&self.setup, &mut self.agent) else {
            anyhow::bail!("only netbpf's way has a policy");
        };
        setup.policy("bench.toml", &policy)?;
        let said = agent.reload()?;
        anyhow::ensure!(!said.contains("not reloaded"), "{said}");
        // The agent follows its policy directory too: that reload settles.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// Gives the desktop what a granted container has: a default route to
    /// its bridge's gateway, and a first process, holding its network
    /// namespace.
    pub fn hold_desktop_network(&mut self) -> anyhow::Result<()> {
        self.topology
            .desktop_ns
            .ip(&["route", "add", "default", "via", BRIDGE_V4])?;
        let held = self
            .topology
            .spawn(Place::Desktop, "sleep", &["3600"])?
            .start(&self.topology.file("hold.log"))?;
        self.held.push(held);
        Ok(())
    }

    /// The address the desktop dials for the server of `port`.
    pub fn target(&self, port: u16) -> String {
        match self.way {
            Way::Direct => format!("{BRIDGE_V4}:{port}"),
            Way::Netbpf | Way::Iptables => format!("127.0.0.1:{port}"),
        }
    }

    /// One run of the `load` client at `place` (the desktop, or a process
    /// of no scope dialing the gateway).
    pub fn sample(
        &self,
        exe: &str,
        place: Place,
        load: Load,
        count: usize,
    ) -> anyhow::Result<Sample> {
        let (command, port) = match load {
            Load::Tcp => ("tcp-client", TCP_PORT),
            Load::TcpUnforwarded => ("tcp-client", UNFORWARDED_PORT),
            Load::Udp => ("udp-client", UDP_PORT),
            Load::Bind => ("bind-client", 0),
        };
        let target = if place == Place::Desktop && load != Load::TcpUnforwarded {
            self.target(port)
        } else {
            format!("{BRIDGE_V4}:{port}")
        };
        let count = count.to_string();
        let args: &[&str] = if load == Load::Bind {
            &[command, &count]
        } else {
            &[command, &target, &count]
        };
        let output = self
            .topology
            .spawn(place, exe, args)?
            .output(Duration::from_mins(5))?;
        anyhow::ensure!(
            output.status.success(),
            "{command} to {target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The running agent, for the netbpf way.
    pub fn agent(&self) -> Option<&NetbpfRun> {
        self.agent.as_ref()
    }

    /// Stops netbpf's agent and starts it again, its log in `WORK/round`:
    /// the new agent loads its programs anew and puts them in the pinned
    /// links, where the old ones ran (first at each hook).
    pub fn restart_agent(&mut self, round: &str) -> anyhow::Result<()> {
        let (Some(setup), Some(agent)) = (&self.setup, self.agent.take()) else {
            anyhow::bail!("only netbpf's way has an agent");
        };
        let stopped = agent.stop()?;
        anyhow::ensure!(stopped.success(), "netbpf's agent exited with {stopped}");
        self.agent = Some(setup.start(round)?);
        Ok(())
    }

    /// Makes the way carry `total` other containers: netbpf gets their
    /// scopes (a cgroup each, at the desktop's depth) and one forward each
    /// in its maps, as the agent writes them; the iptables way one DNAT
    /// rule each, before the desktop's, in the chain its packets walk.
    pub fn carry_others(&mut self, total: usize) -> anyhow::Result<()> {
        match self.way {
            Way::Direct => {}
            Way::Netbpf => self.add_scopes(total)?,
            Way::Iptables => self.iptables_rules(total)?,
        }
        self.others = total;
        Ok(())
    }

    fn add_scopes(&self, total: usize) -> anyhow::Result<()> {
        let setup = self.setup.as_ref().context("the netbpf way has an agent")?;
        let maps = maps_dir(setup);
        let open = |name: &str| -> anyhow::Result<aya::maps::MapData> {
            aya::maps::MapData::from_pin(maps.join(name)).with_context(|| format!("map {name}"))
        };
        let mut scopes: aya::maps::HashMap<_, u64, ScopeEntry> = aya::maps::HashMap::try_from(
            aya::maps::Map::HashMap(open(names::CGROUP_SCOPES.name)?),
        )?;
        let mut forwards: aya::maps::HashMap<_, ScopePort, ForwardTarget> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(open(
                names::FORWARD_PORTS.name,
            )?))?;
        let mut cgroup_forwards: aya::maps::HashMap<_, CgroupPort, CgroupForward> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(open(
                names::CGROUP_FORWARDS.name,
            )?))?;
        // The desktop's own entry: its level is every container's here.
        let level = scopes
            .iter()
            .next()
            .context("the desktop's scope is in the map")??
            .1
            .level;
        let gateway = u32::from_be_bytes([10, 201, 0, 1]).to_be();
        for other in self.others..total {
            let index = u32::try_from(other)?;
            // Ids no real cgroup has, and scope ids past the agent's own.
            let cgroup = u64::MAX - u64::from(index);
            let scope = (1 << 24) + index;
            scopes
                .insert(
                    cgroup,
                    ScopeEntry {
                        id: scope,
                        flags: 0,
                        level,
                    },
                    0,
                )
                .with_context(|| format!("adding scope {other} to CGROUP_SCOPES"))?;
            let target = ForwardTarget {
                addr: [gateway, 0, 0, 0],
                family: netbpf_common::AF_INET,
                port_delta: 0,
                rule: index % 4096,
                flags: 0,
            };
            forwards
                .insert(ScopePort::new(scope, TCP_PORT, PROTO_TCP), target, 0)
                .with_context(|| format!("adding the forward of scope {other} to FORWARD_PORTS"))?;
            cgroup_forwards
                .insert(
                    CgroupPort::new(cgroup, TCP_PORT, PROTO_TCP),
                    CgroupForward { target, scope },
                    0,
                )
                .with_context(|| {
                    format!("adding the forward of scope {other} to CGROUP_FORWARDS")
                })?;
        }
        Ok(())
    }

    /// The iptables way's rules in the desktop's namespace: `others` DNAT
    /// rules of other containers (their own localhost addresses and ports,
    /// which the desktop's packets never match), then the desktop's.
    fn iptables_rules(&self, others: usize) -> anyhow::Result<()> {
        let mut rules = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
        );
        for other in 0..others {
            let _ = writeln!(
                rules,
                "-A OUTPUT -d 127.0.0.{} -p tcp --dport {} -j DNAT --to-destination 10.201.{}.{}:{TCP_PORT}",
                2 + other / 50_000,
                10_000 + other % 50_000,
                (other >> 8) & 255,
                other & 255
            );
        }
        for (port, proto) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp"), (IPERF_PORT, "tcp")] {
            let _ = writeln!(
                rules,
                "-A OUTPUT -d 127.0.0.1 -p {proto} --dport {port} -j DNAT --to-destination {BRIDGE_V4}:{port}"
            );
        }
        let _ = writeln!(rules, "-A POSTROUTING -d {BRIDGE_V4} -j MASQUERADE\nCOMMIT");
        let file = self.topology.file("iptables.rules");
        std::fs::write(&file, rules)?;
        let netns = self.topology.desktop_ns.name();
        run_checked(
            "sh",
            [
                "-c",
                &format!(
                    "ip netns exec {netns} iptables-restore < {} && ip netns exec {netns} sysctl -qw net.ipv4.conf.all.route_localnet=1",
                    file.display()
                ),
            ],
        )?;
        Ok(())
    }

    /// Memory of netbpf's maps (those its programs use, and the agent's
    /// own pinned beside them), from the kernel.
    pub fn map_bytes(&self) -> anyhow::Result<u64> {
        let (Some(agent), Some(setup)) = (&self.agent, &self.setup) else {
            return Ok(0);
        };
        programs::maps_memory(agent.programs()?.into_values(), Some(&maps_dir(setup)))
    }

    /// Conntrack entries in the desktop's namespace.
    pub fn conntrack_entries(&self) -> anyhow::Result<u64> {
        let count = self
            .topology
            .desktop_ns
            .exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
        count
            .trim()
            .parse()
            .with_context(|| format!("nf_conntrack_count is not a number: {count:?}"))
    }
}

/// Where the agent of `setup` pins its maps (those of this layout).
fn maps_dir(setup: &AgentSetup) -> std::path::PathBuf {
    setup.pin_dir.join(format!("maps-v{MAP_LAYOUT}"))
}

/// The servers on the gateway: TCP (one forwarded, one not), UDP echo
/// and iperf3.
fn start_servers(exe: &str, topology: &DesktopTopology) -> anyhow::Result<Vec<Process>> {
    let tcp_server = |port: u16| -> anyhow::Result<Process> {
        topology
            .spawn(
                Place::DockerHost,
                exe,
                &["tcp-server", &format!("{BRIDGE_V4}:{port}")],
            )?
            .start(&topology.file(&format!("tcp-server-{port}.log")))
    };
    let tcp = tcp_server(TCP_PORT)?;
    let unforwarded = tcp_server(UNFORWARDED_PORT)?;
    let udp = topology
        .spawn(
            Place::DockerHost,
            exe,
            &["udp-server", &format!("{BRIDGE_V4}:{UDP_PORT}")],
        )?
        .start(&topology.file("udp-server.log"))?;
    let iperf = topology
        .spawn(
            Place::DockerHost,
            "iperf3",
            &[
                "--server",
                "--bind",
                BRIDGE_V4,
                "--port",
                &IPERF_PORT.to_string(),
                "--affinity",
                &LOAD_CPU.to_string(),
            ],
        )?
        .start(&topology.file("iperf3.log"))?;
    for (port, protocol) in [
        (TCP_PORT, "tcp"),
        (UNFORWARDED_PORT, "tcp"),
        (UDP_PORT, "udp"),
        (IPERF_PORT, "tcp"),
    ] {
        wait_for_listener(&topology.host_ns, port, protocol)?;
    }
    Ok(vec![tcp, unforwarded, udp, iperf])
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netbpf_common::peer_bit;

    use super::*;

    /// A connect to the unforwarded server, and its `getpeername()`, are
    /// ruled out by the rewritten peers' filter itself: its bit there is
    /// none of the forwards' targets'.
    #[test]
    fn the_unforwarded_server_is_ruled_out_by_the_filter() {
        let gateway: Ipv4Addr = BRIDGE_V4.parse().unwrap();
        let bit = |port: u16| peer_bit(&[u32::from(gateway).to_be(), 0, 0, 0], port.to_be());
        for forwarded in [TCP_PORT, UDP_PORT, IPERF_PORT] {
            assert_ne!(bit(UNFORWARDED_PORT), bit(forwarded), "port {forwarded}");
        }
    }
}
