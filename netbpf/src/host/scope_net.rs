//! The network of a scope as the host sees it: the global addresses and
//! default gateways of the network namespaces its processes live in, and
//! of the one that is its own.

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};

use crate::host::{addressing, links, netns, rtnetlink};

/// What the host knows of a scope's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeNetwork {
    /// Whether the scope lives in the node's own network namespace.
    pub node: bool,
    /// Its default gateways, one per family at most.
    pub gateways: Vec<IpAddr>,
    /// Its global addresses.
    pub addresses: Vec<IpAddr>,
    /// The global addresses of the interfaces its default routes leave
    /// through: the only ones a grant admits (an address added to another
    /// interface, or in another namespace, is not the container's).
    pub route_addresses: Vec<IpAddr>,
    /// The node-side peer (an interface index in the node's namespace) of
    /// the veth its default route leaves through.
    pub host_interface: Option<u32>,
    /// The interface the node receives its packets on: the bridge
    /// `host_interface` is a port of, or `host_interface` itself. Found
    /// from the node's side ([`receiving_interface`]).
    pub ingress_interface: Option<u32>,
}

/// The addresses and gateways of the namespace at `path`.
pub fn of_netns(path: &Path) -> io::Result<ScopeNetwork> {
    netns::in_netns(path, || -> io::Result<ScopeNetwork> {
        let global: Vec<_> = addressing::addresses()?
            .into_iter()
            .filter(|address| address.global)
            .collect();
        let mut network = ScopeNetwork {
            addresses: global.iter().map(|address| address.address).collect(),
            ..ScopeNetwork::default()
        };
        let mut default_interface = None;
        let mut route_interfaces = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            for message in rtnetlink::dump(RouteNetlinkMessage::GetRoute(request))? {
                if let RouteNetlinkMessage::NewRoute(route) = message
                    && route.header.destination_prefix_length == 0
                    && let Some(gateway) = route.attributes.iter().find_map(gateway)
                    && !network
                        .gateways
                        .iter()
                        .any(|known| known.is_ipv4() == gateway.is_ipv4())
                {
                    network.gateways.push(gateway);
                    let interface = route
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            RouteAttribute::Oif(index) => Some(*index),
                            _ => None,
                        });
                    route_interfaces.extend(interface);
                    default_interface = default_interface.or(interface);
                }
            }
        }
        network.route_addresses = global
            .iter()
            .filter(|address| route_interfaces.contains(&address.interface))
            .map(|address| address.address)
            .collect();
        if let Some(index) = default_interface {
            network.host_interface = peer_in_other_namespace(index)?;
        }
        Ok(network)
    })?
}

/// The index, in its own namespace, of the peer of the veth `index` of
/// the calling thread's namespace, when its peer is in another namespace.
fn peer_in_other_namespace(index: u32) -> io::Result<Option<u32>> {
    let links = rtnetlink::dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(links.iter().find_map(|message| match message {
        RouteNetlinkMessage::NewLink(link) if link.header.index == index => {
            let elsewhere = link
                .attributes
                .iter()
                .any(|attribute| matches!(attribute, LinkAttribute::LinkNetNsId(_)));
            link.attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Link(peer) if elsewhere => Some(*peer),
                    _ => None,
                })
        }
        _ => None,
    }))
}

/// The interface of the calling thread's namespace that receives what
/// arrives through `port`: the bridge it is a port of, or `port` itself;
/// None when there is no such interface.
pub fn receiving_interface(port: u32) -> io::Result<Option<u32>> {
    Ok(links::list()?
        .into_iter()
        .find(|interface| interface.index == port)
        .map(|interface| interface.master.unwrap_or(port)))
}

/// Whether two paths name the same network namespace.
#[must_use]
pub fn same_namespace(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// One `/proc/PID/ns/net` per network namespace that processes of the
/// cgroup tree at `dir` live in.
pub fn process_namespaces(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut namespaces = Vec::new();
    for pid in cgroup_processes(dir)? {
        // A process may exit while we look: skip it.
        let namespace = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(meta) = fs::metadata(&namespace)
            && seen.insert((meta.dev(), meta.ino()))
        {
            namespaces.push(namespace);
        }
    }
    Ok(namespaces)
}

/// The `/proc/PID/ns/net` of the oldest process of the cgroup tree at
/// `dir`: the container's own network namespace, where its runtime put its
/// first process. Namespaces its processes made later (`unshare -n`) are
/// not the container's. None while it has no process but runc's first
/// stages, which join the cgroup still in the node's namespaces.
pub fn own_namespace(dir: &Path) -> io::Result<Option<PathBuf>> {
    Ok(own_process(dir)?.map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))))
}

/// The oldest process of the cgroup tree at `dir` that is in the
/// container's own namespaces (see [`own_namespace`]).
pub fn own_process(dir: &Path) -> io::Result<Option<u32>> {
    let oldest = cgroup_processes(dir)?
        .into_iter()
        .filter(|&pid| !command_name(pid).is_some_and(|name| is_runc_bootstrap(&name)))
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .min();
    Ok(oldest.map(|(_, pid)| pid))
}

/// Whether the network namespace of process `pid` has a default route,
/// IPv4 or IPv6: its runtime has set up its network. Read from
/// `/proc/PID/net`, without entering the namespace.
#[must_use]
pub fn has_default_route(pid: u32) -> bool {
    let table = |name: &str| fs::read_to_string(format!("/proc/{pid}/net/{name}"));
    table("route").is_ok_and(|routes| routes.lines().skip(1).any(is_default_v4))
        || table("ipv6_route").is_ok_and(|routes| routes.lines().any(is_default_v6))
}

/// A line of `/proc/net/route` (interface, destination, gateway, flags,
/// ..., mask) that is a default route.
fn is_default_v4(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000")
}

/// A line of `/proc/net/ipv6_route` (destination, its prefix length, ...,
/// interface last) that is a default route through an interface other
/// than loopback (a namespace's unreachable default is on `lo`).
fn is_default_v6(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields
        .first()
        .is_some_and(|dest| dest.bytes().all(|byte| byte == b'0'))
        && fields.get(1) == Some(&"00")
        && fields.last().is_some_and(|interface| *interface != "lo")
}

/// Whether `name` (a process's command name) is one of the stages runc
/// goes through before the container's namespaces exist: `runc:[0:PARENT]`
/// and `runc:[1:CHILD]`. The third, `runc:[2:INIT]`, is in them.
fn is_runc_bootstrap(name: &str) -> bool {
    name.starts_with("runc:[0:") || name.starts_with("runc:[1:")
}

/// The command name of process `pid`; None when it is gone.
fn command_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_owned())
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`); None when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after its last ')'.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The processes of the cgroup tree at `dir`.
fn cgroup_processes(dir: &Path) -> io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            pids.extend(cgroup_processes(&entry.path())?);
        }
    }
    Ok(pids)
}

fn gateway(attribute: &RouteAttribute) -> Option<IpAddr> {
    match attribute {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{is_default_v4, is_default_v6, is_runc_bootstrap};

    #[test]
    fn default_routes_are_read_from_procs_tables() {
        assert!(is_default_v4(
            "eth0\t00000000\t0100CB0A\t0003\t0\t0\t0\t00000000\t0\t0\t0"
        ));
        assert!(!is_default_v4(
            "eth0\t0000CB0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"
        ));
        let v6_default = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                          fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0";
        assert!(is_default_v6(v6_default));
        assert!(!is_default_v6(&v6_default.replace("eth0", "lo")));
        assert!(!is_default_v6(
            "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
             00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0"
        ));
    }

    #[test]
    fn runc_stages_before_the_container_namespaces_are_not_its_processes() {
        assert!(is_runc_bootstrap("runc:[0:PARENT]"));
        assert!(is_runc_bootstrap("runc:[1:CHILD]"));
        assert!(!is_runc_bootstrap("runc:[2:INIT]"));
        assert!(!is_runc_bootstrap("sleep"));
        assert!(!is_runc_bootstrap("runc"));
    }
}
