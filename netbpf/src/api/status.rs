//! The status document a running netbpf answers `status` with: its
//! programs, scopes, rules, MSS clamps, host services and their counters,
//! as JSON on the control socket. The tables people read are the command
//! line's (`cli::status_table`).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use netbpf_common::MssStats;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{LoadedProgram, TcAttachment, features::Unavailable},
    policy::{Direction, LabelKind, Mss, Protocols},
};

/// The state of one running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's version.
    pub version: String,
    /// The map layout of its datapath (see `netbpf_common::MAP_LAYOUT`).
    pub map_layout: u32,
    /// Where its datapath is pinned; None: it goes when the agent stops.
    pub pinned: Option<PathBuf>,
    /// The cgroup the socket programs are attached to.
    pub cgroup_root: PathBuf,
    /// The policy file or directory applied.
    pub policy: PathBuf,
    pub programs: Vec<LoadedProgram>,
    pub discovery: DiscoveryStatus,
    /// The last reload of the policy, if there was one.
    pub last_reload: Option<ReloadStatus>,
    /// Every scope instance: applied, or with the reason it is not.
    pub scopes: Vec<ScopeStatus>,
    pub host_services: Vec<HostServiceStatus>,
    /// The interfaces the grant guard is on (the host sides of the bridges
    /// granted containers are on).
    pub grant_guard: Vec<String>,
    pub mss_clamps: Vec<MssClampStatus>,
    /// The kernel features missing here, and what netbpf cannot do.
    #[serde(default)]
    pub unavailable: Vec<Unavailable>,
}

/// How the agent follows the node's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// Cgroups followed below the cgroup root.
    pub cgroups: usize,
    /// Median delay from a cgroup appearing to its scope being in the
    /// maps, in microseconds, over the last ones measured.
    pub delay_p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub delay_p99_us: Option<u64>,
    pub delays_measured: usize,
    /// Times cgroup events were lost (the kernel's inotify queue
    /// overflowed) and the cgroup tree was listed again.
    #[serde(default)]
    pub resyncs: u64,
}

/// The last reload of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// Why the policy was not reloaded (the running one stayed); None
    /// when it was.
    pub error: Option<String>,
}

/// A `[[host_service]]`, who listens for it, and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostServiceStatus {
    pub name: String,
    pub listen: SocketAddr,
    /// Who may listen for it, as the policy says; None: anyone.
    #[serde(default)]
    pub owner: Option<String>,
    /// Whether containers' labels may grant it.
    #[serde(default)]
    pub grantable_by_label: bool,
    /// The process whose socket gets the connections; None while nothing
    /// listens (connections are refused then).
    pub listener_pid: Option<u32>,
    /// A listener on the service's address that is not its owner's: it
    /// gets no connection (they are refused).
    #[serde(default)]
    pub unowned_listener: Option<UnownedListener>,
    pub steered: u64,
    pub refused: u64,
    pub down: u64,
    /// Packets with a granted source address that came through another
    /// container's interface, or arrived on another interface than the
    /// granted container's, dropped.
    pub forged: u64,
    /// `connect()` calls from a scope without a grant of the service (a
    /// process sharing a granted container's network namespace), refused.
    #[serde(default)]
    pub borrowed: u64,
    /// Packets toward the service's address the grant guard could not
    /// parse, dropped.
    #[serde(default)]
    pub unparsed: u64,
}

/// A process listening on a host service's address that the policy does
/// not name as its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnownedListener {
    pub pid: u32,
    pub uid: u32,
    pub unit: Option<String>,
}

/// A scope's grant of a host service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStatus {
    pub rule: u32,
    pub service: String,
    pub dial: SocketAddr,
    pub gateway: IpAddr,
    /// Connections to `dial` sent to `gateway`.
    pub connects: u64,
}

/// One scope instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeStatus {
    /// `SCOPE/INSTANCE`.
    pub name: String,
    /// The scope's name in the policy.
    pub scope: String,
    /// What it matched: a container's name, a cgroup's, a pod's.
    pub instance: String,
    /// The container's runtime and id, when it is a container.
    pub runtime: Option<String>,
    pub container_id: Option<String>,
    #[serde(rename = "match")]
    pub selector: serde_json::Value,
    /// The cgroup it is keyed by, and that cgroup's id; or
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: Option<u64>,
    /// the network namespace, and its cookie.
    pub netns: Option<PathBuf>,
    pub netns_cookie: Option<u64>,
    /// Its scope id in the maps, when applied.
    pub id: Option<u32>,
    /// Why its rules are not applied; nothing else is affected.
    pub error: Option<String>,
    /// The kinds of rules its scope takes from its container's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelKind>,
    pub forwards: Vec<ForwardStatus>,
    pub grants: Vec<GrantStatus>,
    pub binds: Vec<BindStatus>,
    pub aliases: Vec<AliasStatus>,
}

/// A bind remap and how many binds it remapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindStatus {
    pub rule: u32,
    pub proto: Protocols,
    pub port: u16,
    pub to: u16,
    pub address: Option<IpAddr>,
    pub binds: u64,
}

/// An alias and what it rewrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasStatus {
    pub rule: u32,
    pub proto: Protocols,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub connects: u64,
    pub datagrams: u64,
    /// Rewrites whose reverse path was lost (see `RuleStats::unremembered`).
    pub unremembered: u64,
}

/// A localhost forward and its counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub rule: u32,
    pub proto: Protocols,
    pub from: String,
    pub to: String,
    pub connects: u64,
    pub datagrams: u64,
    pub local_skips: u64,
    /// Rewrites whose reverse path was lost: replies and `getpeername()`
    /// of those sockets show the target instead of the address dialed.
    pub unremembered: u64,
    /// Binds of the forwarded port inside the scope that the local-binds
    /// table could not record: connections to it may be forwarded away
    /// from the scope's own service.
    #[serde(default)]
    pub unrecorded_binds: u64,
}

/// An `[[mss_clamp]]` of the policy and the interfaces it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MssClampStatus {
    pub interface: String,
    pub direction: Direction,
    pub mss: Mss,
    pub attached: Vec<MssInterfaceStatus>,
}

/// One interface the clamp is attached to, and its counters summed over
/// CPUs (see `MssStats` for what each counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MssInterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// How the clamp is attached there: a TCX link or a clsact qdisc.
    pub attachment: Option<TcAttachment>,
    #[serde(flatten)]
    pub stats: MssStats,
}
