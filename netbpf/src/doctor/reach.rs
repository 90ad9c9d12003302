//! Why a container cannot reach `HOST:PORT`: localhost that is its own,
//! a node address where the service listens on the node's loopback only,
//! or another Docker network that isolation rules cut off.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::Context as _;
use netlink_packet_sock_diag::constants::IPPROTO_TCP;

use super::snippet::Proposal;
use super::{
    Area, Finding, Problem, Report, State, Subject, applied_scope, inventory::Inventory, iptables,
    snippet,
};
use crate::{api::status::Status, host::sock_diag::DiagSocket, policy::Protocols};

/// Why `subject` cannot reach `host:port`: a finding, or a check that
/// says it can or what doctor cannot tell.
pub fn check(
    inventory: &Inventory,
    subject: &Subject,
    (host, port): (&str, u16),
    status: Option<&Status>,
    report: &mut Report,
) {
    let name = format!("{} to {host}:{port}", subject.label);
    let mut note = |state: State, detail: String| report.check(Area::Reach, &name, state, detail);
    let address = match resolve(subject, host) {
        Ok(address) => address,
        Err(error) => {
            note(State::Failed, format!("{error:#}"));
            return;
        }
    };
    let dialed = SocketAddr::new(address, port);
    if subject.host_network {
        if let Some(listener) = listening(&inventory.node_sockets, dialed).next() {
            note(
                State::Ok,
                format!(
                    "shares the node's network, where {} listens",
                    listener.local
                ),
            );
        } else {
            note(
                State::Warning,
                format!("shares the node's network, where nothing listens on {dialed}"),
            );
        }
        return;
    }
    let own = inventory.sockets_of(subject);
    if let Some(listener) = listening(&own, dialed).next() {
        note(
            State::Ok,
            format!("{} listens inside its network namespace", listener.local),
        );
        return;
    }
    if let Some(rule) = netbpf_rule(status, subject, dialed) {
        note(State::Ok, rule);
        return;
    }
    let finding = if address.is_loopback() {
        localhost_forward(inventory, subject, dialed)
    } else if inventory
        .node_addresses
        .iter()
        .any(|known| known.address == address)
    {
        host_service(inventory, subject, dialed, status)
    } else {
        docker_isolation(inventory, subject, dialed, status)
    };
    match finding {
        Ok(finding) => report.findings.push(finding),
        Err(detail) => note(State::Warning, detail),
    }
}

/// `host` as the container resolves it: `localhost`, an address, or a
/// name of its `/etc/hosts`.
fn resolve(subject: &Subject, host: &str) -> anyhow::Result<IpAddr> {
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if let Ok(address) = host.trim_matches(['[', ']']).parse() {
        return Ok(address);
    }
    let pid = subject
        .pid
        .with_context(|| format!("{} has no process to resolve {host} as", subject.label))?;
    let hosts = format!("/proc/{pid}/root/etc/hosts");
    let text = fs::read_to_string(&hosts).with_context(|| format!("reading {hosts}"))?;
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?.parse().ok()?;
            fields.any(|name| name == host).then_some(address)
        })
        .with_context(|| {
            format!(
                "{host} is not in {}'s /etc/hosts ({hosts}): give its address",
                subject.label
            )
        })
}

/// The TCP listeners among `sockets` that take connections to `dialed`.
fn listening(sockets: &[DiagSocket], dialed: SocketAddr) -> impl Iterator<Item = &DiagSocket> {
    sockets.iter().filter(move |socket| {
        socket.protocol == IPPROTO_TCP
            && socket.local.port() == dialed.port()
            && (socket.local.ip() == dialed.ip()
                || (socket.local.ip().is_unspecified()
                    && (socket.local.is_ipv6() || dialed.is_ipv4())))
    })
}

/// What netbpf already does for `dialed` from `subject`'s scope, if its
/// agent applies a rule for it.
fn netbpf_rule(status: Option<&Status>, subject: &Subject, dialed: SocketAddr) -> Option<String> {
    let scope = applied_scope(status, subject)?;
    let instance = format!("{}/{}", scope.scope, scope.instance);
    if dialed.ip().is_loopback() {
        let forward = scope.forwards.iter().find(|forward| {
            forward.proto != Protocols::Udp && covers(&forward.from, dialed.port())
        })?;
        return Some(format!(
            "netbpf forwards {} to {} (scope {instance})",
            forward.from, forward.to
        ));
    }
    if let Some(grant) = scope.grants.iter().find(|grant| grant.dial == dialed) {
        return Some(format!(
            "netbpf grants host service {} at {} (scope {instance})",
            grant.service, grant.dial
        ));
    }
    let alias = scope.aliases.iter().find(|alias| {
        alias.proto != Protocols::Udp
            && alias.from.ip() == dialed.ip()
            && (alias.from.port() == 0 || alias.from.port() == dialed.port())
    })?;
    Some(format!(
        "netbpf sends {} to {} (scope {instance})",
        alias.from, alias.to
    ))
}

/// Whether a forward's `from` (`localhost:PORT`, `localhost:LOW-HIGH`,
/// `localhost:*`) takes `port`.
fn covers(from: &str, port: u16) -> bool {
    let ports = from.rsplit(':').next().unwrap_or_default();
    if ports == "*" {
        return true;
    }
    let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
    matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(low), Ok(high)) if (low..=high).contains(&port))
}

/// `nothing listens on localhost:PORT in the container`, and the node
/// listens on that port elsewhere.
fn localhost_forward(
    inventory: &Inventory,
    subject: &Subject,
    dialed: SocketAddr,
) -> Result<Finding, String> {
    let port = dialed.port();
    let published: Vec<&DiagSocket> = inventory
        .node_sockets
        .iter()
        .filter(|socket| {
            socket.protocol == IPPROTO_TCP
                && socket.local.port() == port
                && !socket.local.ip().is_loopback()
                && (socket.local.is_ipv4() == dialed.is_ipv4()
                    || socket.local.ip().is_unspecified())
        })
        .collect();
    let gateway = subject
        .network
        .gateways
        .iter()
        .find(|gateway| gateway.is_ipv4() == dialed.is_ipv4());
    let target = published
        .iter()
        .map(|socket| socket.local.ip())
        .filter(|address| !address.is_unspecified())
        .max_by_key(|address| Some(address) == gateway)
        .or_else(|| {
            published
                .iter()
                .any(|socket| socket.local.ip().is_unspecified())
                .then_some(gateway.copied())
                .flatten()
        })
        .ok_or_else(|| {
            format!(
                "nothing listens on port {port} inside the container or on the node (a port published by DNAT alone has no listener): start or publish the service, or give the address it is published at"
            )
        })?;
    let holders = Inventory::holders(&published);
    let mut evidence = vec![format!(
        "nothing listens on {dialed} in {}'s network namespace{}",
        subject.label,
        subject
            .pid
            .map(|pid| format!(" (of pid {pid})"))
            .unwrap_or_default()
    )];
    evidence.extend(listeners(&published, &holders));
    if Some(&target) == gateway {
        evidence.push(format!("{target} is {}'s gateway", subject.label));
    }
    let to = SocketAddr::new(target, port);
    Ok(Finding {
        problem: Problem::LocalhostForward,
        container: Some(subject.label.clone()),
        port: Some(port),
        cause: format!(
            "{}'s localhost is its own network namespace's, where nothing listens on port {port}; the service is published on the node at {to}",
            subject.label
        ),
        evidence,
        policy: None,
        steps: Vec::new(),
        proposal: Some(Proposal {
            subject: subject.clone(),
            tables: Vec::new(),
            rules: vec![snippet::forward(port, to, None)],
        }),
    })
}

/// The container dials a node address where the service does not listen:
/// it listens on the node's loopback only.
fn host_service(
    inventory: &Inventory,
    subject: &Subject,
    dialed: SocketAddr,
    status: Option<&Status>,
) -> Result<Finding, String> {
    let port = dialed.port();
    if let Some(listener) = listening(&inventory.node_sockets, dialed).next() {
        return Err(format!(
            "the node listens on {} for {dialed}: if connections still fail, a firewall rule drops them",
            listener.local
        ));
    }
    let loopback = loopback_listeners(inventory, dialed);
    let service = loopback.first().map(|socket| socket.local).ok_or_else(|| {
        format!("nothing listens on port {port} on the node, not even on its loopback")
    })?;
    let holders = Inventory::holders(&loopback);
    let interface = inventory
        .node_addresses
        .iter()
        .find(|known| known.address == dialed.ip())
        .and_then(|known| inventory.node_interface(known.interface))
        .map_or_else(String::new, |interface| format!(" on {}", interface.name));
    let mut evidence = listeners(&loopback, &holders);
    evidence.push(format!(
        "{dialed} is the node's address{interface}, where nothing listens on port {port}"
    ));
    Ok(Finding {
        problem: Problem::HostService,
        container: Some(subject.label.clone()),
        port: Some(port),
        cause: format!(
            "the service listens only on the node's loopback ({service}), which no other network namespace reaches; {} dials the node at {dialed}",
            subject.label
        ),
        evidence,
        policy: None,
        steps: Vec::new(),
        proposal: Some(grant_proposal(subject, service, dialed, status)),
    })
}

/// The host service at `service` declared (unless it is) and granted to
/// `subject` at `dialed`.
fn grant_proposal(
    subject: &Subject,
    service: SocketAddr,
    dialed: SocketAddr,
    status: Option<&Status>,
) -> Proposal {
    let (name, table) = snippet::host_service(service, status);
    Proposal {
        subject: subject.clone(),
        tables: table.into_iter().collect(),
        rules: vec![snippet::grant(&name, dialed)],
    }
}

/// The container dials an address on another Docker network, whose
/// isolation rules drop the traffic between the two.
fn docker_isolation(
    inventory: &Inventory,
    subject: &Subject,
    dialed: SocketAddr,
    status: Option<&Status>,
) -> Result<Finding, String> {
    let port = dialed.port();
    let bridge_of = |index: u32| {
        inventory.node_interface(index).and_then(|interface| {
            interface
                .master
                .map_or(Some(interface), |master| inventory.node_interface(master))
        })
    };
    let theirs = inventory
        .node_addresses
        .iter()
        .find(|known| known.network_contains(dialed.ip()))
        .and_then(|known| bridge_of(known.interface))
        .ok_or_else(|| {
            format!(
                "{} is on none of the node's networks: doctor has nothing to say about it",
                dialed.ip()
            )
        })?;
    let ours = subject
        .network
        .host_interface
        .and_then(bridge_of)
        .ok_or_else(|| {
            format!(
                "{}'s network does not start at a node interface",
                subject.label
            )
        })?;
    if ours.index == theirs.index {
        return Err(format!(
            "{} and {} share {}: if connections fail, the service or a firewall of its own refuses them",
            subject.label,
            dialed.ip(),
            ours.name
        ));
    }
    let rules = iptables::save(&inventory.node_netns, "filter")
        .ok()
        .flatten()
        .map(|text| iptables::isolation_drops(&text, &ours.name, &theirs.name))
        .unwrap_or_default();
    if rules.is_empty() {
        return Err(format!(
            "no isolation rule between {} and {} drops the traffic: if connections fail, look at the firewall's other rules",
            ours.name, theirs.name
        ));
    }
    let mut evidence = vec![format!(
        "{} is on {}; {} is on {}",
        subject.label,
        ours.name,
        dialed.ip(),
        theirs.name
    )];
    evidence.extend(
        rules
            .iter()
            .map(|rule| format!("iptables -t filter: {rule}")),
    );
    let loopback = loopback_listeners(inventory, dialed);
    let service = loopback.first().map_or_else(
        || SocketAddr::new(snippet::loopback_like(dialed.ip()), port),
        |socket| socket.local,
    );
    let mut steps = Vec::new();
    if loopback.is_empty() {
        steps.push(format!(
            "publish port {port} of the container at {} on the node's loopback first (docker run -p 127.0.0.1:{port}:{port} ...)",
            dialed.ip()
        ));
    } else {
        let holders = Inventory::holders(&loopback);
        evidence.extend(listeners(&loopback, &holders));
    }
    Ok(Finding {
        problem: Problem::DockerIsolation,
        container: Some(subject.label.clone()),
        port: Some(port),
        cause: format!(
            "Docker's isolation rules drop traffic between its networks {} and {}, so {} cannot reach {dialed} however the routes run; reach it through the node's loopback instead",
            ours.name, theirs.name, subject.label
        ),
        evidence,
        policy: None,
        steps,
        proposal: Some(grant_proposal(subject, service, dialed, status)),
    })
}

/// The node's TCP listeners on its loopback at the port of `dialed`, of
/// its family (a grant is of one family).
fn loopback_listeners(inventory: &Inventory, dialed: SocketAddr) -> Vec<&DiagSocket> {
    inventory
        .node_sockets
        .iter()
        .filter(|socket| {
            socket.protocol == IPPROTO_TCP
                && socket.local.port() == dialed.port()
                && socket.local.ip().is_loopback()
                && socket.local.is_ipv4() == dialed.is_ipv4()
        })
        .collect()
}

/// `on the node, pid N (COMMAND) listens on ADDR:PORT`, for each.
fn listeners(sockets: &[&DiagSocket], holders: &HashMap<u32, String>) -> Vec<String> {
    sockets
        .iter()
        .map(|socket| {
            let holder = holders
                .get(&socket.inode)
                .map_or_else(|| "a process".to_owned(), Clone::clone);
            format!("on the node, {holder} listens on {}", socket.local)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_forward_covers_its_ports_only() {
        assert!(covers("localhost:8082", 8082));
        assert!(!covers("localhost:8082", 8083));
        assert!(covers("localhost:9000-9010", 9005));
        assert!(!covers("localhost:9000-9010", 9011));
        assert!(covers("localhost:*", 1));
    }
}
