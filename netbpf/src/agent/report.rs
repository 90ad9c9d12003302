//! The status document of a running netbpf, read from what it applied
//! and from the datapath's counters.

use super::{
    Agent,
    mss_clamp::ClampedInterface,
    status::{
        AliasStatus, BindStatus, ForwardStatus, GrantStatus, HostServiceStatus, MssClampStatus,
        MssInterfaceStatus, ScopeStatus, Status,
    },
};
use crate::policy::Scope;

impl Agent {
    /// The status of everything this agent applied, with its counters.
    pub fn status(&self) -> anyhow::Result<Status> {
        let agent = self;
        let datapath = &agent.datapath;
        let scopes = agent
            .policy
            .scopes
            .iter()
            .map(|scope| scope_status(agent, scope))
            .collect::<anyhow::Result<_>>()?;
        let mss_clamps = agent
            .clamper
            .status(datapath)?
            .into_iter()
            .map(|(clamp, interfaces)| MssClampStatus {
                interface: clamp.interface,
                direction: clamp.direction,
                mss: clamp.mss,
                attached: interfaces.into_iter().map(interface_status).collect(),
            })
            .collect();
        let host_services = agent
            .host_services
            .status(datapath)?
            .into_iter()
            .map(|(service, listener, stats)| HostServiceStatus {
                name: service.name,
                listen: service.listen,
                listener_pid: listener.map(|listener| listener.pid),
                steered: stats.steered,
                refused: stats.refused,
                down: stats.down,
            })
            .collect();
        Ok(Status {
            cgroup_root: agent.cgroup_root.clone(),
            policy: agent.policy_file.clone(),
            programs: datapath.programs().to_vec(),
            scopes,
            host_services,
            mss_clamps,
        })
    }
}

fn interface_status(
    ClampedInterface {
        name,
        ifindex,
        stats,
    }: ClampedInterface,
) -> MssInterfaceStatus {
    MssInterfaceStatus {
        name,
        ifindex,
        seen: stats.seen,
        clamped: stats.clamped,
        inserted: stats.inserted,
        already_small: stats.already_small,
        without_option: stats.without_option,
        malformed: stats.malformed,
        unparsed: stats.unparsed,
    }
}

/// A scope's rules and their counters.
fn scope_status(agent: &Agent, scope: &Scope) -> anyhow::Result<ScopeStatus> {
    let datapath = &agent.datapath;
    let forwards = scope
        .forwards
        .iter()
        .map(|forward| {
            let stats = datapath.rule_stats(forward.rule)?;
            Ok(ForwardStatus {
                rule: forward.rule,
                proto: forward.protocols,
                from: format!("localhost:{}", forward.from),
                to: forward.to.to_string(),
                connects: stats.connects,
                datagrams: stats.datagrams,
                local_skips: stats.local_skips,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let grants = scope
        .grants
        .iter()
        .map(|grant| {
            Ok(GrantStatus {
                rule: grant.rule,
                service: agent.policy.host_services[grant.service].name.clone(),
                dial: grant.dial,
                gateway: grant.gateway,
                connects: datapath.rule_stats(grant.rule)?.connects,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let binds = scope
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
    let aliases = scope
        .aliases
        .iter()
        .map(|alias| {
            let stats = datapath.rule_stats(alias.rule)?;
            Ok(AliasStatus {
                rule: alias.rule,
                proto: alias.protocols,
                from: alias.from,
                to: alias.to,
                connects: stats.connects,
                datagrams: stats.datagrams,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ScopeStatus {
        name: scope.name.clone(),
        selector: scope.selector.clone(),
        forwards,
        grants,
        binds,
        aliases,
    })
}
