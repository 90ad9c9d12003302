//! A PMTU black hole in waiting: a way out of the node (an interface its
//! routes leave through, a tunnel such as `wg0`) whose MTU is below a
//! container's, with no MSS clamp on it, neither netbpf's nor iptables'.

use aya::programs::{SchedClassifier, TcAttachType};
use netbpf_common::names::program;

use super::{Finding, Problem, Report, Subject, inventory::Inventory, iptables, snippet};
use crate::{
    api::status::Status,
    host::{
        links::{self, Interface},
        netns,
    },
    policy::Direction,
};

/// Finds the ways out of the node narrower than a container's interface
/// with no clamp on them.
pub fn check(
    inventory: &Inventory,
    subjects: &[Subject],
    status: Option<&Status>,
    report: &mut Report,
) {
    let ways_out: Vec<&Interface> = inventory
        .node_interfaces
        .iter()
        .filter(|interface| {
            inventory.node_routes.contains(&interface.index)
                && !interface.bridge
                && interface.master.is_none()
                && interface.name != "lo"
        })
        .collect();
    let containers: Vec<(&Subject, Interface)> = subjects
        .iter()
        .filter(|subject| !subject.host_network)
        .filter_map(|subject| Some((subject, widest_interface(subject)?)))
        .collect();
    let mangle = iptables::save(&inventory.node_netns, "mangle");
    for way_out in ways_out {
        let above: Vec<&(&Subject, Interface)> = containers
            .iter()
            .filter(|(_, interface)| interface.mtu > way_out.mtu)
            .collect();
        if above.is_empty() || clamped(inventory, way_out, status, &mangle) {
            continue;
        }
        let mut evidence = vec![format!(
            "{} has MTU {}, and the node's routes leave through it",
            way_out.name, way_out.mtu
        )];
        evidence.extend(above.iter().map(|(subject, interface)| {
            format!(
                "{}'s {} has MTU {}: it offers an MSS of {} bytes, more than {} carries",
                subject.label,
                interface.name,
                interface.mtu,
                interface.mtu.saturating_sub(40),
                way_out.name
            )
        }));
        evidence.push(match &mangle {
            Err(error) => format!(
                "no MSS clamp of netbpf's on {} (TCX, or the agent's status); iptables' mangle table was not read ({error})",
                way_out.name
            ),
            Ok(_) => format!(
                "no MSS clamp on {}: no {} attached there (TCX, or the agent's status), no TCPMSS rule in iptables' mangle table",
                way_out.name,
                program::MSS_OUT
            ),
        });
        let labels: Vec<&str> = above
            .iter()
            .map(|(subject, _)| subject.label.as_str())
            .collect();
        report.findings.push(Finding {
            problem: Problem::MssBlackHole,
            container: (labels.len() == 1).then(|| labels[0].to_owned()),
            port: None,
            cause: format!(
                "connections from {} through {} negotiate segments larger than its MTU of {}; where the ICMP that would shrink them is lost, they hang right after the handshake (a PMTU black hole)",
                labels.join(", "),
                way_out.name,
                way_out.mtu
            ),
            evidence,
            policy: Some(snippet::mss_clamp(&way_out.name)),
            steps: Vec::new(),
            proposal: None,
        });
    }
}

/// The container's interface with the largest MTU, loopback aside.
fn widest_interface(subject: &Subject) -> Option<Interface> {
    netns::in_netns(subject.netns.as_ref()?, links::list)
        .ok()?
        .ok()?
        .into_iter()
        .filter(|interface| interface.name != "lo")
        .max_by_key(|interface| interface.mtu)
}

/// Whether SYNs leaving through `interface` have their MSS clamped: by
/// netbpf's program on its TCX egress, by a clamp the agent reports on it
/// (on a clsact qdisc where the kernel has no TCX), or by a TCPMSS rule of
/// iptables for it (or for every interface).
fn clamped(
    inventory: &Inventory,
    interface: &Interface,
    status: Option<&Status>,
    mangle: &Result<Option<String>, String>,
) -> bool {
    let by_agent = status.is_some_and(|status| {
        status.mss_clamps.iter().any(|clamp| {
            clamp.direction != Direction::Ingress
                && clamp
                    .attached
                    .iter()
                    .any(|attached| attached.name == interface.name)
        })
    });
    let by_netbpf = netns::in_netns(&inventory.node_netns, || {
        SchedClassifier::query_tcx(&interface.name, TcAttachType::Egress)
    })
    .ok()
    .and_then(Result::ok)
    .is_some_and(|(_, programs)| {
        programs
            .iter()
            .any(|loaded| loaded.name_as_str() == Some(program::MSS_OUT))
    });
    let by_iptables =
        matches!(mangle, Ok(Some(text)) if iptables::clamps_mss(text, &interface.name));
    by_agent || by_netbpf || by_iptables
}
