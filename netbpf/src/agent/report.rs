//! The status document of a running netbpf, read from what it applied
//! and from the datapath's counters.

use std::collections::BTreeMap;

use super::{Agent, metrics};
use crate::{
    api::status::{
        AliasStatus, BindStatus, DiscoveryStatus, ForwardStatus, GrantStatus, HostServiceStatus,
        MssClampStatus, ReloadStatus, ScopeStatus, Status, UnownedListener,
    },
    plan::{Outcome, ScopeKey},
    policy::Scope,
};

impl Agent {
    /// The metrics text of a scrape: the counters of the status, and what
    /// the agent follows and holds.
    pub(super) fn metrics_text(&self) -> String {
        let status = match self.status() {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the counters for metrics failed"
                );
                return String::new();
            }
        };
        let mut containers = BTreeMap::new();
        for container in self
            .inventory
            .workloads()
            .into_iter()
            .filter_map(|workload| workload.container)
        {
            *containers
                .entry(super::inventory::runtime_name(container.runtime))
                .or_insert(0) += 1;
        }
        let snapshot = metrics::Snapshot {
            status,
            containers,
            maps: self.core.capacity().fill(&self.core.plan),
        };
        metrics::render(&self.events, &snapshot)
    }

    /// The status of everything this agent applied, with its counters.
    pub fn status(&self) -> anyhow::Result<Status> {
        let agent = self;
        let datapath = &agent.datapath;
        let scopes = agent
            .core
            .outcomes
            .iter()
            .map(|outcome| instance_status(agent, outcome))
            .collect::<anyhow::Result<_>>()?;
        let mss_clamps = agent
            .network
            .clamper
            .status(datapath)?
            .into_iter()
            .map(|(clamp, interfaces)| MssClampStatus {
                interface: clamp.interface,
                direction: clamp.direction,
                mss: clamp.mss,
                attached: interfaces,
            })
            .collect();
        let host_services = agent
            .network
            .host_services
            .status(datapath)?
            .into_iter()
            .map(|state| HostServiceStatus {
                name: state.service.name,
                listen: state.service.listen,
                owner: state.service.owner.map(|owner| owner.to_string()),
                grantable_by_label: state.service.grantable_by_label,
                listener_pid: state.listener.map(|listener| listener.pid),
                unowned_listener: state.unowned.map(|unowned| UnownedListener {
                    pid: unowned.pid,
                    uid: unowned.uid,
                    unit: unowned.unit,
                }),
                steered: state.stats.steered,
                refused: state.stats.refused,
                down: state.stats.down,
                forged: state.stats.forged,
                borrowed: state.stats.borrowed,
                unparsed: state.stats.unparsed,
            })
            .collect();
        let micros = |percent| {
            agent
                .delays
                .percentile(percent)
                .map(|delay| u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
        };
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            map_layout: netbpf_common::MAP_LAYOUT,
            pinned: datapath.pins().map(|pins| pins.dir().to_owned()),
            cgroup_root: agent.node.cgroup_root.clone(),
            policy: agent.source.path().to_owned(),
            programs: datapath.programs().to_vec(),
            discovery: DiscoveryStatus {
                cgroups: agent.workloads_known(),
                delay_p50_us: micros(50),
                delay_p99_us: micros(99),
                delays_measured: agent.delays.len(),
                resyncs: agent.events.resyncs(),
            },
            last_reload: agent.last_reload.as_ref().map(|reload| ReloadStatus {
                at_unix: reload
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs()),
                error: reload.error.clone(),
            }),
            scopes,
            host_services,
            grant_guard: agent.network.guard.interfaces(),
            mss_clamps,
            unavailable: agent.unavailable.clone(),
        })
    }
}

/// A scope instance: what it matched, its rules and their counters, or
/// why it has none.
fn instance_status(agent: &Agent, outcome: &Outcome) -> anyhow::Result<ScopeStatus> {
    let def = &agent.core.policy.scopes[outcome.assignment.scope];
    let place = Some(outcome.assignment.place.clone());
    let (cgroup, cgroup_id, netns, netns_cookie) = match outcome.assignment.key {
        ScopeKey::Cgroup(id) => (place, Some(id), None, None),
        ScopeKey::Netns(cookie) => (None, None, place, Some(cookie)),
    };
    let mut status = ScopeStatus {
        name: outcome.assignment.name(&agent.core.policy),
        scope: def.name.clone(),
        instance: outcome.assignment.instance.clone(),
        runtime: outcome
            .assignment
            .container
            .as_ref()
            .and_then(|container| container.runtime)
            .map(|runtime| runtime.to_string()),
        container_id: outcome
            .assignment
            .container
            .as_ref()
            .map(|container| container.id.clone()),
        selector: serde_json::to_value(&def.selector)?,
        cgroup,
        cgroup_id,
        netns,
        netns_cookie,
        id: None,
        error: None,
        labels: def.label_kinds().to_vec(),
        forwards: Vec::new(),
        grants: Vec::new(),
        binds: Vec::new(),
        aliases: Vec::new(),
    };
    match &outcome.applied {
        Ok((id, scope)) => {
            status.id = Some(*id);
            rules_status(agent, scope, &mut status)?;
        }
        Err(error) => status.error = Some(error.clone()),
    }
    Ok(status)
}

/// The rules of an applied instance and their counters.
fn rules_status(agent: &Agent, scope: &Scope, status: &mut ScopeStatus) -> anyhow::Result<()> {
    let datapath = &agent.datapath;
    status.forwards = scope
        .forwards
        .iter()
        .map(|forward| {
            let counters = datapath.rule_stats(forward.rule)?;
            Ok(ForwardStatus {
                rule: forward.rule,
                proto: forward.protocols,
                from: format!("localhost:{}", forward.from),
                to: forward.to.to_string(),
                connects: counters.connects,
                datagrams: counters.datagrams,
                local_skips: counters.local_skips,
                unremembered: counters.unremembered,
                unrecorded_binds: counters.unrecorded_binds,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    status.grants = scope
        .grants
        .iter()
        .map(|grant| {
            Ok(GrantStatus {
                rule: grant.rule,
                service: agent.core.policy.host_services[grant.service].name.clone(),
                dial: grant.dial,
                gateway: grant.gateway,
                connects: datapath.rule_stats(grant.rule)?.connects,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    status.binds = scope
        .binds
        .iter()
        .map(|bind| {
            Ok(BindStatus {
                rule: bind.rule,
                proto: bind.protocols,
                port: bind.port,
                to: bind.to,
                address: bind.address,
                binds: datapath.rule_stats(bind.rule)?.binds,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    status.aliases = scope
        .aliases
        .iter()
        .map(|alias| {
            let counters = datapath.rule_stats(alias.rule)?;
            Ok(AliasStatus {
                rule: alias.rule,
                proto: alias.protocols,
                from: alias.from,
                to: alias.to,
                connects: counters.connects,
                datagrams: counters.datagrams,
                unremembered: counters.unremembered,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(())
}
