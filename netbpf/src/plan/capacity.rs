//! How much the datapath's maps hold: settings (`[capacity]` in the
//! agent's configuration), checked before a plan is applied so that a full
//! map fails the instance that would overflow it, by name.

use std::collections::BTreeMap;

use netbpf_common::names;
use serde::{Deserialize, Serialize};

use super::Plan;

/// The capacity of each map the policy fills. Each default is netbpf's
/// built-in size of that map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacity {
    /// Scopes, in `CGROUP_SCOPES` and in `NETNS_SCOPES` each. Default 4096.
    pub scopes: u32,
    /// Rules with counters (`RULE_STATS`). Default 4096.
    pub rules: u32,
    /// Exact ports forwarded, and localhost ports remapped by binds, per
    /// scope instance (`FORWARD_PORTS`). Default 65536. `CGROUP_FORWARDS`
    /// and `DERIVED_PEERS` have this capacity too and hold at most an entry
    /// per entry of `FORWARD_PORTS`, so its check is theirs.
    pub forward_ports: u32,
    /// Port prefixes of forwards of port ranges (`FORWARDS`); a range
    /// takes up to 30. Default 65536.
    pub forward_prefixes: u32,
    /// Aliases, grants' host aliases included (`ALIASES`). Default 16384.
    pub aliases: u32,
    /// Bind remaps (`BIND_REMAPS`). Default 16384.
    pub bind_remaps: u32,
    /// Container addresses granted host services (`GRANTS`), and scopes
    /// granted them (`SCOPE_GRANTS`), each. Default 16384.
    pub grants: u32,
    /// Where host services are reached: (gateway, port) pairs
    /// (`HOST_SERVICES`). Default 4096.
    pub service_addresses: u32,
    /// (scope, port) pairs bound on localhost or a wildcard address inside
    /// scopes, of ports they forward (`LOCAL_BINDS`): each scope reserves
    /// its forwarded ports there, up to `local_binds_per_scope`, so the
    /// reservations of all scopes must fit. Default 65536.
    pub local_binds: u32,
    /// How many forwarded ports one scope's own sockets may hold in
    /// `LOCAL_BINDS`: binds beyond it are not recorded (and counted as
    /// unrecorded binds), so no scope can fill the table for the others.
    /// Default 16.
    pub local_binds_per_scope: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use netbpf_common::{
            LOCAL_BINDS_PER_SCOPE, MAX_ALIASES, MAX_BIND_REMAPS, MAX_FORWARD_PORTS,
            MAX_FORWARD_PREFIXES, MAX_GRANTS, MAX_LOCAL_BINDS, MAX_RULES, MAX_SCOPES,
            MAX_SERVICE_ADDRESSES,
        };
        Self {
            scopes: MAX_SCOPES,
            rules: MAX_RULES,
            forward_ports: MAX_FORWARD_PORTS,
            forward_prefixes: MAX_FORWARD_PREFIXES,
            aliases: MAX_ALIASES,
            bind_remaps: MAX_BIND_REMAPS,
            grants: MAX_GRANTS,
            service_addresses: MAX_SERVICE_ADDRESSES,
            local_binds: MAX_LOCAL_BINDS,
            local_binds_per_scope: LOCAL_BINDS_PER_SCOPE,
        }
    }
}

impl Capacity {
    /// Whether `plan`, whose scopes reserve `reserved` entries of the
    /// local-binds table, still fits the maps with `more` added; which map
    /// is full otherwise. Entries both hold (a gateway port instances
    /// share) count once. It costs what `more` holds, not what `plan` does.
    pub fn check(&self, plan: &Plan, reserved: usize, more: &Plan) -> Result<(), String> {
        // Each scope's reservation in the local-binds table fits beside
        // the others': no scope can fill it for another.
        let local_binds = (
            names::LOCAL_BINDS.name,
            reserved + more.local_binds_reserved(self.local_binds_per_scope),
            self.local_binds,
            "local_binds",
        );
        for (map, entries, capacity, setting) in
            self.rule_maps(plan, more).into_iter().chain([local_binds])
        {
            if entries > capacity as usize {
                return Err(format!(
                    "map {map} is full: {entries} entries needed, it holds {capacity} (raise capacity.{setting})"
                ));
            }
        }
        Ok(())
    }

    /// How full the maps a plan fills are: (map, entries, capacity).
    #[must_use]
    pub fn fill(&self, plan: &Plan) -> Vec<(&'static str, usize, u32)> {
        let scopes = [
            (
                names::CGROUP_SCOPES.name,
                plan.cgroup_scopes.len(),
                self.scopes,
            ),
            (
                names::NETNS_SCOPES.name,
                plan.netns_scopes.len(),
                self.scopes,
            ),
        ];
        let rules = self
            .rule_maps(plan, &Plan::default())
            .map(|(map, entries, capacity, _)| (map, entries, capacity));
        scopes.into_iter().chain(rules).collect()
    }

    /// The maps of rules: (map, entries `plan` and `more` need together,
    /// capacity, the setting of that capacity).
    fn rule_maps(&self, plan: &Plan, more: &Plan) -> [(&'static str, usize, u32, &'static str); 7] {
        [
            (
                names::FORWARD_PORTS.name,
                together(&plan.forward_ports, &more.forward_ports),
                self.forward_ports,
                "forward_ports",
            ),
            (
                names::FORWARDS.name,
                together(&plan.forwards, &more.forwards),
                self.forward_prefixes,
                "forward_prefixes",
            ),
            (
                names::ALIASES.name,
                together(&plan.aliases, &more.aliases),
                self.aliases,
                "aliases",
            ),
            (
                names::BIND_REMAPS.name,
                together(&plan.binds, &more.binds),
                self.bind_remaps,
                "bind_remaps",
            ),
            (
                names::GRANTS.name,
                together(&plan.grants, &more.grants),
                self.grants,
                "grants",
            ),
            (
                names::SCOPE_GRANTS.name,
                plan.scope_grants.len()
                    + more
                        .scope_grants
                        .iter()
                        .filter(|grant| !plan.scope_grants.contains(grant))
                        .count(),
                self.grants,
                "grants",
            ),
            (
                names::HOST_SERVICES.name,
                together(&plan.services, &more.services),
                self.service_addresses,
                "service_addresses",
            ),
        ]
    }
}

/// The map a [`Capacity::check`] error says is full.
#[must_use]
pub fn full_map(error: &str) -> Option<&str> {
    error
        .split_once("map ")?
        .1
        .split_once(" is full")
        .map(|(map, _)| map)
}

/// How many keys `a` and `b` hold together.
fn together<K: Ord, V>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    a.len() + b.keys().filter(|key| !a.contains_key(key)).count()
}

#[cfg(test)]
mod tests {
    use netbpf_common::ServiceKey;

    use super::*;

    fn with_services(ports: &[u16]) -> Plan {
        let mut plan = Plan::default();
        for &port in ports {
            let key = ServiceKey {
                addr: [u32::from_be_bytes([10, 0, 0, 1]).to_be(), 0, 0, 0],
                port,
                family: 2,
            };
            plan.services.insert(key, 0);
        }
        plan
    }

    #[test]
    fn a_gateway_port_instances_share_counts_once() {
        let capacity = Capacity {
            service_addresses: 2,
            ..Capacity::default()
        };
        let held = with_services(&[18188, 18189]);
        assert_eq!(capacity.check(&held, 0, &with_services(&[18188])), Ok(()));
        let error = capacity
            .check(&held, 0, &with_services(&[18190]))
            .unwrap_err();
        assert!(error.contains("capacity.service_addresses"), "{error}");
        assert_eq!(full_map(&error), Some(names::HOST_SERVICES.name));
        assert_eq!(full_map("no such thing"), None);
        let fill = capacity.fill(&held);
        assert!(
            fill.contains(&(names::HOST_SERVICES.name, 2, 2)),
            "{fill:?}"
        );
    }
}
