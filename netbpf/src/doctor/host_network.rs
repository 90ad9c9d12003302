//! Host-network containers competing for one port: instances of one
//! service (`web-1`, `web-2`) on the node's network, one holding a port
//! the others then cannot bind.

use std::collections::{BTreeMap, BTreeSet};

use netlink_packet_sock_diag::constants::IPPROTO_TCP;

use super::{
    Finding, Problem, Report, Subject, applied_scope,
    inventory::Inventory,
    snippet::{self, Proposal},
};
use crate::{api::status::Status, host::cgroup};

/// Finds host-network instances of one service that hold no port while
/// another instance holds one: their bind of it failed.
pub fn check(
    inventory: &Inventory,
    subjects: &[Subject],
    status: Option<&Status>,
    report: &mut Report,
) {
    let mut families: BTreeMap<&str, Vec<&Subject>> = BTreeMap::new();
    for subject in inventory
        .containers
        .iter()
        .filter(|subject| subject.host_network)
    {
        if let Some(stem) = family(&subject.label) {
            families.entry(stem).or_default().push(subject);
        }
    }
    let mut taken: BTreeSet<u16> = inventory
        .node_sockets
        .iter()
        .map(|socket| socket.local.port())
        .collect();
    for members in families.values().filter(|members| members.len() > 1) {
        let held: Vec<BTreeSet<u16>> = members
            .iter()
            .map(|member| listening_ports(inventory, member))
            .collect();
        for (holder, ports) in members.iter().zip(&held) {
            for &port in ports {
                let failed = members.iter().zip(&held).filter(|(member, theirs)| {
                    theirs.is_empty()
                        && !remapped(status, member, port)
                        && subjects
                            .iter()
                            .any(|subject| subject.cgroup == member.cgroup)
                });
                for (member, _) in failed {
                    let Some(free) = (port.saturating_add(1)..=u16::MAX)
                        .find(|candidate| !taken.contains(candidate))
                    else {
                        continue;
                    };
                    taken.insert(free);
                    report.findings.push(collision(holder, member, port, free));
                }
            }
        }
    }
}

/// `member` cannot bind `port`, which `holder` holds; remapped to `free`.
fn collision(holder: &Subject, member: &Subject, port: u16, free: u16) -> Finding {
    Finding {
        problem: Problem::HostNetworkPort,
        container: Some(member.label.clone()),
        port: Some(port),
        cause: format!(
            "{} and {} share the node's network, where one socket holds port {port}: {}'s bind of it fails (address in use)",
            member.label, holder.label, member.label
        ),
        evidence: vec![
            format!(
                "{} listens on port {port} of the node's network",
                holder.label
            ),
            format!(
                "{} runs on the node's network too, and listens on no port",
                member.label
            ),
        ],
        policy: None,
        steps: vec![format!(
            "restart {} if it exited: its bind of port {port} then gets port {free}",
            member.label
        )],
        proposal: Some(Proposal {
            subject: member.clone(),
            tables: Vec::new(),
            rules: vec![snippet::bind(port, free)],
        }),
    }
}

/// Whether netbpf remaps `subject`'s binds of `port` already.
fn remapped(status: Option<&Status>, subject: &Subject, port: u16) -> bool {
    applied_scope(status, subject)
        .is_some_and(|scope| scope.binds.iter().any(|bind| bind.port == port))
}

/// The name instances of one service share: `web` of `web-1`, `web_2`,
/// `web.3`; None for a name that does not end in an instance number.
fn family(label: &str) -> Option<&str> {
    let stem = label.trim_end_matches(|c: char| c.is_ascii_digit());
    (stem.len() < label.len())
        .then(|| stem.strip_suffix(['-', '_', '.']))
        .flatten()
        .filter(|stem| !stem.is_empty())
}

/// The TCP ports the sockets of `subject`'s cgroup tree listen on.
fn listening_ports(inventory: &Inventory, subject: &Subject) -> BTreeSet<u16> {
    let cgroups: BTreeSet<u64> = cgroup::subtree_ids(&subject.cgroup)
        .unwrap_or_default()
        .into_iter()
        .collect();
    inventory
        .node_sockets
        .iter()
        .filter(|socket| {
            socket.protocol == IPPROTO_TCP
                && socket.cgroup_id.is_some_and(|id| cgroups.contains(&id))
        })
        .map(|socket| socket.local.port())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::family;

    #[test]
    fn instances_of_one_service_share_a_family() {
        assert_eq!(family("web-1"), Some("web"));
        assert_eq!(family("proj_web_12"), Some("proj_web"));
        assert_eq!(family("web"), None);
        assert_eq!(family("web1"), None);
        assert_eq!(family("-1"), None);
    }
}
