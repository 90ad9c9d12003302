//! What a running netbpf reports: its programs, scopes, rules, MSS clamps
//! and their counters; rendered as tables for people or as JSON for tools.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use netbpf_common::MssStats;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{LoadedProgram, TcAttachment},
    host::features::Unavailable,
    policy::{Direction, Mss, Protocols},
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

impl Status {
    /// The status as people read it: a header, one table row per forward,
    /// one per interface an MSS clamp is on.
    #[must_use]
    pub fn render(&self) -> String {
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|program| format!("{} (id {})", program.name, program.id))
            .collect();
        let mut text = format!(
            "netbpf {} (map layout {}), {}\npolicy: {}\ncgroup root: {} ({} cgroups followed)\nprograms: {}\n",
            self.version,
            self.map_layout,
            self.pinned.as_ref().map_or_else(
                || "not pinned: the datapath goes when netbpf stops".to_owned(),
                |dir| format!("pinned at {}", dir.display())
            ),
            self.policy.display(),
            self.cgroup_root.display(),
            self.discovery.cgroups,
            programs.join(", ")
        );
        if let (Some(p50), Some(p99)) = (self.discovery.delay_p50_us, self.discovery.delay_p99_us) {
            let _ = writeln!(
                text,
                "from a cgroup appearing to its scope in the maps: p50 {p50} us, p99 {p99} us ({} measured)",
                self.discovery.delays_measured
            );
        }
        for missing in &self.unavailable {
            let _ = writeln!(
                text,
                "kernel feature unavailable: {} ({}): {}",
                missing.feature, missing.error, missing.lost
            );
        }
        if let Some(ReloadStatus {
            error: Some(error), ..
        }) = &self.last_reload
        {
            let _ = writeln!(
                text,
                "last reload failed, the policy before it stays: {error}"
            );
        }
        for scope in &self.scopes {
            if let Some(error) = &scope.error {
                let _ = writeln!(text, "not applied: {}: {error}", scope.name);
            }
        }
        if self.scopes.iter().any(|scope| !scope.forwards.is_empty()) {
            let _ = writeln!(text, "{}", self.forwards_table());
        }
        if self
            .scopes
            .iter()
            .any(|scope| !scope.binds.is_empty() || !scope.aliases.is_empty())
        {
            let _ = writeln!(text, "{}", self.remaps_table());
        }
        if !self.host_services.is_empty() {
            let _ = writeln!(text, "{}", self.host_services_table());
            let _ = writeln!(text, "grant guard on: {}", self.grant_guard.join(", "));
        }
        if !self.mss_clamps.is_empty() {
            let _ = writeln!(text, "{}", self.mss_table());
        }
        text
    }

    fn forwards_table(&self) -> Table {
        let mut table = table_with(&[
            "SCOPE",
            "KEYED BY",
            "PROTO",
            "FROM",
            "TO",
            "CONNECTS",
            "DATAGRAMS",
            "LOCAL SKIPS",
            "REVERSE LOST",
        ]);
        for scope in self.scopes.iter().filter(|scope| scope.error.is_none()) {
            let selector = match (&scope.container_id, &scope.cgroup, &scope.netns) {
                (Some(id), _, _) => format!(
                    "{} container {}",
                    scope.runtime.as_deref().unwrap_or("a"),
                    id.get(..12).unwrap_or(id)
                ),
                (None, Some(cgroup), _) => format!("cgroup {}", cgroup.display()),
                (None, _, Some(netns)) => format!("netns {}", netns.display()),
                _ => String::new(),
            };
            if scope.forwards.is_empty() {
                table.add_row([
                    scope.name.as_str(),
                    &selector,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ]);
            }
            for forward in &scope.forwards {
                table.add_row([
                    scope.name.clone(),
                    selector.clone(),
                    format!("{:?}", forward.proto).to_lowercase(),
                    forward.from.clone(),
                    forward.to.clone(),
                    forward.connects.to_string(),
                    forward.datagrams.to_string(),
                    forward.local_skips.to_string(),
                    forward.unremembered.to_string(),
                ]);
            }
        }
        table
    }

    fn remaps_table(&self) -> Table {
        let mut table = table_with(&["SCOPE", "REMAP", "PROTO", "FROM", "TO", "REWRITTEN"]);
        for scope in &self.scopes {
            for bind in &scope.binds {
                let on = bind
                    .address
                    .map_or_else(|| "*".to_owned(), |address| address.to_string());
                table.add_row([
                    scope.name.clone(),
                    "bind".to_owned(),
                    format!("{:?}", bind.proto).to_lowercase(),
                    format!("{on} port {}", bind.port),
                    format!("port {}", bind.to),
                    format!("{} binds", bind.binds),
                ]);
            }
            for alias in &scope.aliases {
                table.add_row([
                    scope.name.clone(),
                    "alias".to_owned(),
                    format!("{:?}", alias.proto).to_lowercase(),
                    alias.from.to_string(),
                    alias.to.to_string(),
                    format!(
                        "{} connects, {} datagrams, {} reverse lost",
                        alias.connects, alias.datagrams, alias.unremembered
                    ),
                ]);
            }
        }
        table
    }

    fn host_services_table(&self) -> Table {
        let mut table = table_with(&[
            "HOST SERVICE",
            "LISTEN",
            "LISTENER",
            "GRANTED TO",
            "STEERED",
            "REFUSED",
            "DOWN",
            "FORGED",
            "BORROWED",
            "UNPARSED",
        ]);
        for service in &self.host_services {
            let granted: Vec<String> = self
                .scopes
                .iter()
                .flat_map(|scope| {
                    scope
                        .grants
                        .iter()
                        .filter(|grant| grant.service == service.name)
                        .map(|grant| {
                            format!(
                                "{} dials {} (via {}, {} connects)",
                                scope.name, grant.dial, grant.gateway, grant.connects
                            )
                        })
                })
                .collect();
            table.add_row([
                service.name.clone(),
                service.listen.to_string(),
                listener_cell(service),
                granted.join("\n"),
                service.steered.to_string(),
                service.refused.to_string(),
                service.down.to_string(),
                service.forged.to_string(),
                service.borrowed.to_string(),
                service.unparsed.to_string(),
            ]);
        }
        table
    }

    fn mss_table(&self) -> Table {
        let mut table = table_with(&[
            "MSS CLAMP",
            "DIRECTION",
            "MSS",
            "INTERFACE",
            "SEEN",
            "CLAMPED",
            "INSERTED",
            "ALREADY SMALL",
            "WITHOUT OPTION",
            "MALFORMED",
            "UNPARSED",
        ]);
        for clamp in &self.mss_clamps {
            let head = [
                clamp.interface.clone(),
                clamp.direction.to_string(),
                clamp.mss.to_string(),
            ];
            if clamp.attached.is_empty() {
                let waiting = ["(none yet)", "-", "-", "-", "-", "-", "-", "-"].map(str::to_owned);
                table.add_row(head.iter().cloned().chain(waiting));
            }
            for interface in &clamp.attached {
                let MssStats {
                    seen,
                    clamped,
                    inserted,
                    already_small,
                    without_option,
                    malformed,
                    unparsed,
                } = interface.stats;
                let counters = [
                    seen,
                    clamped,
                    inserted,
                    already_small,
                    without_option,
                    malformed,
                    unparsed,
                ]
                .map(|count| count.to_string());
                table.add_row(
                    head.iter()
                        .cloned()
                        .chain([format!(
                            "{} (ifindex {}{})",
                            interface.name,
                            interface.ifindex,
                            interface
                                .attachment
                                .map(|attachment| format!(", {attachment}"))
                                .unwrap_or_default()
                        )])
                        .chain(counters),
                );
            }
        }
        table
    }
}

/// An empty table in the look every section of the status shares.
fn table_with(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    table
}

/// Who gets a host service's connections, as its table says.
fn listener_cell(service: &HostServiceStatus) -> String {
    match (&service.listener_pid, &service.unowned_listener) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(unowned)) => format!(
            "none: refused, pid {} (uid {}{}) listens but is not the owner ({})",
            unowned.pid,
            unowned.uid,
            unowned
                .unit
                .as_deref()
                .map_or_else(String::new, |unit| format!(", {unit}")),
            service.owner.as_deref().unwrap_or("anyone")
        ),
        (None, None) => "none: refused".to_owned(),
    }
}
