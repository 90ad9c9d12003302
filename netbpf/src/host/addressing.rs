//! The networks of a network namespace's interfaces and the interfaces its
//! routes leave through, from rtnetlink, in the calling thread's
//! namespace.

use std::{collections::BTreeSet, io, net::IpAddr};

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    route::{RouteAttribute, RouteMessage, RouteType},
};

use crate::host::rtnetlink;

/// An address of an interface, with the length of its network's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Whether its scope is global (not host or link).
    pub global: bool,
}

impl InterfaceAddress {
    /// Whether `address` is in this address's network.
    #[must_use]
    pub fn network_contains(&self, address: IpAddr) -> bool {
        let bits = |address: IpAddr| match address {
            IpAddr::V4(v4) => (u128::from(v4.to_bits()) << 96, 32),
            IpAddr::V6(v6) => (v6.to_bits(), 128),
        };
        let ((mine, width), (theirs, other)) = (bits(self.address), bits(address));
        if width != other {
            return false;
        }
        let prefix = u32::from(self.prefix_len.min(width));
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        mine & mask == theirs & mask
    }
}

/// Every address of every interface.
pub fn addresses() -> io::Result<Vec<InterfaceAddress>> {
    let mut found = Vec::new();
    for message in rtnetlink::dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        if let RouteNetlinkMessage::NewAddress(message) = message {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
            // peer's on point-to-point links, and the same elsewhere.
            let attribute = |local: bool| {
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Local(address) if local => Some(*address),
                        AddressAttribute::Address(address) if !local => Some(*address),
                        _ => None,
                    })
            };
            if let Some(address) = attribute(true).or_else(|| attribute(false)) {
                found.push(InterfaceAddress {
                    interface: message.header.index,
                    address,
                    prefix_len: message.header.prefix_len,
                    global: message.header.scope == AddressScope::Universe,
                });
            }
        }
    }
    Ok(found)
}

/// The interfaces the unicast routes of the main table leave through.
pub fn route_interfaces() -> io::Result<BTreeSet<u32>> {
    let mut interfaces = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in rtnetlink::dump(RouteNetlinkMessage::GetRoute(request))? {
            if let RouteNetlinkMessage::NewRoute(route) = message
                && route.header.kind == RouteType::Unicast
                && route.header.table == libc::RT_TABLE_MAIN
            {
                interfaces.extend(
                    route
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            RouteAttribute::Oif(index) => Some(*index),
                            _ => None,
                        }),
                );
            }
        }
    }
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_contains_its_own_addresses_only() {
        let bridge = InterfaceAddress {
            interface: 3,
            address: "10.203.0.1".parse().unwrap(),
            prefix_len: 24,
            global: true,
        };
        assert!(bridge.network_contains("10.203.0.77".parse().unwrap()));
        assert!(!bridge.network_contains("10.203.1.1".parse().unwrap()));
        assert!(!bridge.network_contains("fd00::1".parse().unwrap()));
        let v6 = InterfaceAddress {
            interface: 3,
            address: "fd00:200:1::1".parse().unwrap(),
            prefix_len: 64,
            global: true,
        };
        assert!(v6.network_contains("fd00:200:1::2".parse().unwrap()));
        assert!(!v6.network_contains("fd00:200:2::2".parse().unwrap()));
    }
}
