//! `netbpf doctor`: what is wrong with a node's container networking. Each
//! finding carries its evidence, its cause in one sentence and its fix: a
//! policy snippet naming the container, or the command that fixes it.
//!
//! Read-only: it loads probe programs it never attaches, reads the cgroup
//! tree, sockets, interfaces, routes, iptables rules and sysctls of the
//! node's and the containers' network namespaces, and asks the agent.

mod attachment;
mod features;
mod host_network;
mod inventory;
mod iptables;
mod mtu;
mod pids;
mod reach;
mod render;
mod snippet;

use std::path::PathBuf;

use serde::Serialize;

pub use self::inventory::Subject;
use crate::{
    api::status::{ScopeStatus, Status},
    containers::Runtimes,
    host::Node,
};

/// Where doctor looks: the node as the agent's configuration describes it.
pub struct Scene<'a> {
    pub node: &'a Node,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    pub runtimes: &'a Runtimes,
}

/// What the user asks about; nothing: the whole node.
#[derive(Debug, Default)]
pub struct Focus {
    /// A container by name, id (or a prefix of it) or the PID of one of
    /// its processes.
    pub container: Option<String>,
    /// `HOST:PORT` the container cannot reach: an address, `localhost`, or
    /// a name of its `/etc/hosts` (`host.docker.internal`).
    pub to: Option<(String, u16)>,
    /// Only findings about this port.
    pub port: Option<u16>,
}

/// What doctor found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// What was checked, and how it stands.
    pub checks: Vec<Check>,
    /// The problems, each with its evidence and fix.
    pub findings: Vec<Finding>,
}

/// One fact checked: a feature, a program, the agent.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub area: Area,
    pub name: String,
    pub state: State,
    pub detail: String,
}

/// The part of the report a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    /// Can netbpf run on this kernel and host.
    Host,
    /// Is netbpf running, and attached where it must be.
    Netbpf,
    /// What the focus container reaches.
    Reach,
}

/// How a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    /// Works, with a limit the detail names.
    Warning,
    /// Missing or broken: the detail says what netbpf loses.
    Failed,
    /// A fact, neither good nor bad.
    Info,
}

/// A problem, as `--json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// A netbpf program is not attached where the datapath needs it.
    NotAttached,
    /// A container dials localhost for a port published elsewhere.
    LocalhostForward,
    /// A container dials a node address for a service on the node's
    /// loopback only.
    HostService,
    /// A way out with a smaller MTU than a container's, and no MSS clamp.
    MssBlackHole,
    /// DNAT to or from localhost without `route_localnet` or MASQUERADE.
    HalfDoneIptables,
    /// Host-network containers competing for one port.
    HostNetworkPort,
    /// A container cgroup allowed absurdly few processes.
    PidsLimit,
    /// Docker's isolation rules drop the traffic between two networks.
    DockerIsolation,
}

/// A problem, why, and what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub problem: Problem,
    /// The container it is about (its name, or short id, or cgroup).
    pub container: Option<String>,
    /// The port it is about, where it is about one.
    pub port: Option<u16>,
    /// The cause, in one sentence.
    pub cause: String,
    /// What doctor saw that shows it.
    pub evidence: Vec<String>,
    /// netbpf policy that fixes it (TOML, for a file of the policy
    /// directory).
    pub policy: Option<String>,
    /// What to do besides (or, without a policy, instead), in order:
    /// commands to run, rules to delete or to add to a scope.
    pub steps: Vec<String>,
    /// What it proposes for a container's scope, merged with the other
    /// findings' of that container into `policy` once all are in.
    #[serde(skip)]
    proposal: Option<snippet::Proposal>,
}

/// Examines the node, or what `focus` asks about.
pub fn examine(scene: &Scene<'_>, focus: &Focus) -> anyhow::Result<Report> {
    let mut report = Report::default();
    features::check(scene, &mut report);
    let status = attachment::check(scene, &mut report);
    let inventory = inventory::Inventory::take(scene)?;
    let subjects = match &focus.container {
        Some(wanted) => vec![inventory.find(wanted)?],
        None => inventory.containers.clone(),
    };
    // A container and a port alone ask why it cannot reach localhost:PORT.
    let target = focus.to.clone().or_else(|| {
        focus
            .port
            .filter(|_| focus.container.is_some())
            .map(|port| ("localhost".to_owned(), port))
    });
    if let (Some(_), Some(subject), Some((host, port))) =
        (&focus.container, subjects.first(), target)
    {
        reach::check(
            &inventory,
            subject,
            (&host, port),
            status.as_ref(),
            &mut report,
        );
    }
    iptables::check(&inventory, &subjects, &mut report);
    mtu::check(&inventory, &subjects, status.as_ref(), &mut report);
    host_network::check(&inventory, &subjects, status.as_ref(), &mut report);
    pids::check(&subjects, &mut report);
    if let Some(port) = focus.port {
        report
            .findings
            .retain(|finding| finding.port.is_none_or(|about| about == port));
    }
    snippet::write(&mut report.findings, status.as_ref());
    Ok(report)
}

impl Report {
    /// Adds the check `name` of `area`.
    fn check(&mut self, area: Area, name: &str, state: State, detail: String) {
        self.checks.push(Check {
            area,
            name: name.to_owned(),
            state,
            detail,
        });
    }

    /// The report as people read it.
    #[must_use]
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// The scope instance the agent applies to `subject`, where one is in
/// force: of its cgroup or the deepest ancestor that has one, else of its
/// network namespace.
fn applied_scope<'a>(status: Option<&'a Status>, subject: &Subject) -> Option<&'a ScopeStatus> {
    let scopes: Vec<&ScopeStatus> = status?
        .scopes
        .iter()
        .filter(|scope| scope.error.is_none())
        .collect();
    let by_cgroup = subject
        .cgroup
        .ancestors()
        .map_while(|dir| crate::host::cgroup::cgroup_id(dir).ok())
        .find_map(|id| scopes.iter().find(|scope| scope.cgroup_id == Some(id)));
    let by_netns = || {
        let cookie = crate::host::netns::netns_cookie(subject.netns.as_ref()?).ok()?;
        scopes
            .iter()
            .find(|scope| scope.netns_cookie == Some(cookie))
    };
    by_cgroup.or_else(by_netns).copied()
}
