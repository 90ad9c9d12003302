//! How much the datapath's maps hold: settings (`[capacity]` in the
//! agent's configuration), checked before a plan is applied so that a full
//! map fails the instance that would overflow it, by name.

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
    /// Port prefixes of forwards (`FORWARDS`); a port range takes up to
    /// 30. Default 65536.
    pub forward_prefixes: u32,
    /// Aliases, grants' host aliases included (`ALIASES`). Default 16384.
    pub aliases: u32,
    /// Bind remaps (`BIND_REMAPS`). Default 16384.
    pub bind_remaps: u32,
    /// Container addresses granted host services (`GRANTS`). Default 16384.
    pub grants: u32,
    /// Where host services are reached: (gateway, port) pairs
    /// (`HOST_SERVICES`). Default 4096.
    pub service_addresses: u32,
    /// Sockets bound on localhost inside scopes (`LOCAL_BINDS`,
    /// `BOUND_SOCKETS`). Default 65536.
    pub local_binds: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use netbpf_common::{
            MAX_ALIASES, MAX_BIND_REMAPS, MAX_FORWARD_PREFIXES, MAX_GRANTS, MAX_LOCAL_BINDS,
            MAX_RULES, MAX_SCOPES, MAX_SERVICE_ADDRESSES,
        };
        Self {
            scopes: MAX_SCOPES,
            rules: MAX_RULES,
            forward_prefixes: MAX_FORWARD_PREFIXES,
            aliases: MAX_ALIASES,
            bind_remaps: MAX_BIND_REMAPS,
            grants: MAX_GRANTS,
            service_addresses: MAX_SERVICE_ADDRESSES,
            local_binds: MAX_LOCAL_BINDS,
        }
    }
}

impl Capacity {
    /// Whether `plan` with `more` added still fits the maps; which map is
    /// full otherwise.
    pub fn check(&self, plan: &Plan, more: &Plan) -> Result<(), String> {
        let maps = [
            (
                "FORWARDS",
                plan.forwards.len() + more.forwards.len(),
                self.forward_prefixes,
                "forward_prefixes",
            ),
            (
                "ALIASES",
                plan.aliases.len() + more.aliases.len(),
                self.aliases,
                "aliases",
            ),
            (
                "BIND_REMAPS",
                plan.binds.len() + more.binds.len(),
                self.bind_remaps,
                "bind_remaps",
            ),
            (
                "GRANTS",
                plan.grants.len() + more.grants.len(),
                self.grants,
                "grants",
            ),
        ];
        for (map, entries, capacity, setting) in maps {
            if entries > capacity as usize {
                return Err(format!(
                    "map {map} is full: {entries} entries needed, it holds {capacity} (raise capacity.{setting})"
                ));
            }
        }
        Ok(())
    }
}
