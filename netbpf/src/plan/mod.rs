//! Compiles a validated policy into the entries of the kernel maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netbpf_common::{
    AF_INET, AF_INET6, AliasKey, AliasedAddr, BindTarget, FORWARD_KEY_PORT_OFFSET_BITS, ForwardKey,
    ForwardTarget, GrantKey, PROTO_TCP, ScopePort, ServiceKey,
};

use crate::policy::{Alias, Grant, Policy, Selector};

/// Everything the kernel maps hold for one policy, keyed as the maps are,
/// so that two plans can be compared entry by entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// cgroup id -> scope id.
    pub cgroup_scopes: BTreeMap<u64, u32>,
    /// netns cookie -> scope id.
    pub netns_scopes: BTreeMap<u64, u32>,
    /// (prefix length in bits, key) -> target, for the forward trie.
    pub forwards: BTreeMap<(u32, ForwardKey), ForwardTarget>,
    /// Exact addresses dialed in a scope -> where they go instead.
    pub aliases: BTreeMap<AliasKey, ForwardTarget>,
    /// Every address and port some alias names.
    pub aliased_addrs: BTreeSet<AliasedAddr>,
    /// Where connections for a host service arrive -> the service's index.
    pub services: BTreeMap<ServiceKey, u32>,
    /// The container addresses granted each service.
    pub grants: BTreeSet<GrantKey>,
    /// Bind remaps: (scope, port, protocol) -> the port given instead.
    pub binds: BTreeMap<ScopePort, BindTarget>,
}

/// Scope ids that stay the same across policies: a cgroup or network
/// namespace keeps its id for as long as netbpf runs, so that what the
/// kernel keyed by it (the local binds of a scope) stays right when the
/// policy is reloaded.
#[derive(Debug, Default)]
pub struct ScopeIds {
    /// (is a cgroup, cgroup id or netns cookie) -> scope id.
    ids: BTreeMap<(bool, u64), u32>,
    next: u32,
}

impl ScopeIds {
    /// The id of the scope `selector` selects, new ones numbered on.
    pub fn of(&mut self, selector: &Selector) -> u32 {
        let key = match selector {
            Selector::Cgroup { id, .. } => (true, *id),
            Selector::Netns { cookie, .. } => (false, *cookie),
        };
        *self.ids.entry(key).or_insert_with(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// The map entries of `policy`, with scope ids from `ids`.
#[must_use]
pub fn compile(policy: &Policy, ids: &mut ScopeIds) -> Plan {
    let mut plan = Plan::default();
    for scope in &policy.scopes {
        let scope_id = ids.of(&scope.selector);
        match scope.selector {
            Selector::Cgroup { id, .. } => plan.cgroup_scopes.insert(id, scope_id),
            Selector::Netns { cookie, .. } => plan.netns_scopes.insert(cookie, scope_id),
        };
        for grant in &scope.grants {
            plan.add_grant(scope_id, grant);
        }
        for alias in &scope.aliases {
            plan.add_alias(scope_id, alias);
        }
        for bind in &scope.binds {
            let (addr, family) = bind.address.map_or(([0; 4], 0), target_words);
            let target = BindTarget {
                addr,
                family,
                port: bind.to,
                rule: bind.rule,
            };
            for &protocol in bind.protocols.numbers() {
                plan.binds
                    .insert(ScopePort::new(scope_id, bind.port, protocol), target);
            }
        }
        for forward in &scope.forwards {
            let (addr, family) = target_words(forward.to.addr);
            let target = ForwardTarget {
                addr,
                family,
                port_delta: forward.port_delta(),
                rule: forward.rule,
            };
            for &protocol in forward.protocols.numbers() {
                for (port, port_bits) in forward.from.prefixes() {
                    let key = ForwardKey::new(scope_id, protocol, port);
                    plan.forwards
                        .insert((FORWARD_KEY_PORT_OFFSET_BITS + port_bits, key), target);
                }
            }
        }
    }
    plan
}

impl Plan {
    /// An alias: the exact address (port 0: every port) -> its target.
    fn add_alias(&mut self, scope: u32, alias: &Alias) {
        let (from, family) = target_words(alias.from.ip());
        let (to, _) = target_words(alias.to.ip());
        let port = alias.from.port();
        let target = ForwardTarget {
            addr: to,
            family,
            port_delta: if port == 0 {
                0
            } else {
                alias.to.port().wrapping_sub(port)
            },
            rule: alias.rule,
        };
        for &protocol in alias.protocols.numbers() {
            self.aliases
                .insert(AliasKey::new(scope, from, family, port, protocol), target);
        }
        self.aliased_addrs.insert(AliasedAddr {
            addr: from,
            port,
            family,
        });
    }
    /// A grant: an alias from the dialed address to the gateway (unless
    /// the container dials its gateway itself), the service where
    /// connections arrive there, and the container's addresses allowed.
    fn add_grant(&mut self, scope: u32, grant: &Grant) {
        let (gateway, family) = target_words(grant.gateway);
        let (dial, _) = target_words(grant.dial.ip());
        let port = grant.dial.port();
        if grant.dial.ip() != grant.gateway {
            let target = ForwardTarget {
                addr: gateway,
                family,
                port_delta: 0,
                rule: grant.rule,
            };
            self.aliases
                .insert(AliasKey::new(scope, dial, family, port, PROTO_TCP), target);
            self.aliased_addrs.insert(AliasedAddr {
                addr: dial,
                port,
                family,
            });
        }
        let service = u32::try_from(grant.service).expect("services are few");
        self.services.insert(
            ServiceKey {
                addr: gateway,
                port,
                family,
            },
            service,
        );
        for source in &grant.sources {
            let (addr, family) = target_words(*source);
            self.grants.insert(GrantKey::new(service, addr, family));
        }
    }
}

/// An address as the kernel programs store it: network-order words, IPv4
/// in the first.
fn target_words(addr: IpAddr) -> ([u32; 4], u16) {
    match addr {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            let word = |at: usize| {
                u32::from_ne_bytes([octets[at], octets[at + 1], octets[at + 2], octets[at + 3]])
            };
            ([word(0), word(4), word(8), word(12)], AF_INET6)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_stored_in_network_order() {
        let (words, family) = target_words("10.200.1.1".parse().unwrap());
        assert_eq!(family, AF_INET);
        assert_eq!(words[0].to_ne_bytes(), [10, 200, 1, 1]);
        let (words, family) = target_words("fd00::53".parse().unwrap());
        assert_eq!(family, AF_INET6);
        assert_eq!(words[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(words[3].to_ne_bytes(), [0, 0, 0, 0x53]);
    }
}
