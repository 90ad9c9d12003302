//! What a running netbpf reports: its programs, scopes, rules, MSS clamps
//! and their counters; rendered as tables for people or as JSON for tools.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::LoadedProgram,
    policy::{Direction, Mss, Protocols, Selector},
};

/// The state of one running `netbpf run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The cgroup the socket programs are attached to.
    pub cgroup_root: PathBuf,
    /// The policy file applied.
    pub policy: PathBuf,
    pub programs: Vec<LoadedProgram>,
    pub scopes: Vec<ScopeStatus>,
    pub host_services: Vec<HostServiceStatus>,
    pub mss_clamps: Vec<MssClampStatus>,
}

/// A `[[host_service]]`, who listens for it, and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostServiceStatus {
    pub name: String,
    pub listen: SocketAddr,
    /// The process whose socket gets the connections; None while nothing
    /// listens (connections are refused then).
    pub listener_pid: Option<u32>,
    pub steered: u64,
    pub refused: u64,
    pub down: u64,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeStatus {
    pub name: String,
    #[serde(rename = "match")]
    pub selector: Selector,
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
    pub seen: u64,
    pub clamped: u64,
    pub inserted: u64,
    pub already_small: u64,
    pub without_option: u64,
    pub malformed: u64,
    pub unparsed: u64,
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
            "policy: {}\ncgroup root: {}\nprograms: {}\n",
            self.policy.display(),
            self.cgroup_root.display(),
            programs.join(", ")
        );
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
        }
        if !self.mss_clamps.is_empty() {
            let _ = writeln!(text, "{}", self.mss_table());
        }
        text
    }

    fn forwards_table(&self) -> Table {
        let mut table = table_with(&[
            "SCOPE",
            "MATCH",
            "PROTO",
            "FROM",
            "TO",
            "CONNECTS",
            "DATAGRAMS",
            "LOCAL SKIPS",
        ]);
        for scope in &self.scopes {
            let selector = match &scope.selector {
                Selector::Cgroup { path, id } => format!("cgroup {} (id {id})", path.display()),
                Selector::Netns { path, cookie } => {
                    format!("netns {} (cookie {cookie})", path.display())
                }
            };
            if scope.forwards.is_empty() {
                table.add_row([scope.name.as_str(), &selector, "-", "-", "-", "-", "-", "-"]);
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
                    format!("{} connects, {} datagrams", alias.connects, alias.datagrams),
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
                service
                    .listener_pid
                    .map_or_else(|| "none: refused".to_owned(), |pid| format!("pid {pid}")),
                granted.join("\n"),
                service.steered.to_string(),
                service.refused.to_string(),
                service.down.to_string(),
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
                let counters = [
                    interface.seen,
                    interface.clamped,
                    interface.inserted,
                    interface.already_small,
                    interface.without_option,
                    interface.malformed,
                    interface.unparsed,
                ]
                .map(|count| count.to_string());
                table.add_row(
                    head.iter()
                        .cloned()
                        .chain([format!(
                            "{} (ifindex {})",
                            interface.name, interface.ifindex
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
