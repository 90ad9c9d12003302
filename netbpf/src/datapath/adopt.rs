//! The datapath as it outlives the agent: links pinned and adopted (their
//! programs replaced atomically), and what the pinned maps hold read back,
//! so that a new agent continues where the last one stopped.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError},
    programs::{Program, links::FdLink},
};
use netbpf_common::{
    AliasKey, AliasedAddr, BindTarget, DerivedPeer, DerivedPeerKey, ForwardKey, ForwardTarget,
    GrantKey, GrantPath, Lookups, RuleSlotKey, ScopeGrant, ScopePort, ServiceKey, names,
};

use super::{Datapath, DatapathError, map_error, pin_error};
use crate::plan::{Plan, PortSet};

/// The map of the agent's counter slots, beside the datapath's maps.
const RULE_SLOTS: &str = "RULE_SLOTS";

impl Datapath {
    /// Attaches program `name` through the link pinned as `link_name`,
    /// whose program is replaced by this one atomically; or, where none
    /// is pinned (or nothing is), through a new link from `attach`,
    /// pinned as `link_name`. Without pins the program keeps the link.
    pub(super) fn attach_linked(
        &mut self,
        name: &'static str,
        link_name: String,
        attach: impl FnOnce(&mut Program) -> Result<FdLink, DatapathError>,
    ) -> Result<(), DatapathError> {
        let link_error = |source| DatapathError::Link {
            name: name.to_owned(),
            source,
        };
        let pins = self.pins.clone();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let Some(pins) = pins else {
            // Held here: it goes with this datapath.
            let link = attach(program)?;
            self.owned_links.push((link_name.clone(), link));
            self.claimed_links.push(link_name);
            return Ok(());
        };
        if let Some(link) = pins.open_link(&link_name)? {
            let fd = program
                .fd()
                .map_err(|error| link_error(std::io::Error::other(error.to_string())))?;
            super::sys::link_update(link.as_fd(), fd.as_fd()).map_err(link_error)?;
            tracing::info!(program = name, link = %link_name, "adopted the pinned link: its program replaced");
        } else {
            attach(program)?
                .pin(pins.link(&link_name))
                .map_err(|error| link_error(std::io::Error::other(error.to_string())))?;
        }
        self.claimed_links.push(link_name);
        Ok(())
    }

    /// Detaches and unpins the pinned links of `prefix` this datapath did
    /// not attach through: those of a cgroup root or a network namespace
    /// no longer used.
    pub fn prune_links(&mut self, prefix: &str) {
        let Some(pins) = &self.pins else {
            return;
        };
        for name in pins.links() {
            if !name.starts_with(prefix) || self.claimed_links.contains(&name) {
                continue;
            }
            self.unpin_link(&name);
            tracing::info!(link = %name, "removed a stale pinned link");
        }
    }

    /// Detaches the link `name`: removes its pin, or drops it.
    pub(super) fn unpin_link(&mut self, name: &str) {
        self.owned_links.retain(|(owned, _)| owned != name);
        self.claimed_links.retain(|claimed| claimed != name);
        let Some(pins) = &self.pins else {
            return;
        };
        if let Ok(Some(link)) = pins.open_link(name) {
            let _ = super::sys::link_detach(link.as_fd());
        }
        let _ = std::fs::remove_file(pins.link(name));
    }

    /// Detaches every link whose name starts with `prefix`.
    pub(super) fn detach_links(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .claimed_links
            .iter()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect();
        for name in names {
            self.unpin_link(&name);
        }
    }

    /// What the maps the policy fills hold now: a new agent's starting
    /// point, so that entries whose container went while no agent ran are
    /// removed.
    pub fn read_plan(&self) -> Result<Plan, DatapathError> {
        let forwards: LpmTrie<_, ForwardKey, ForwardTarget> = self.map(names::FORWARDS.name)?;
        let forwards = forwards
            .iter()
            .map(|entry| entry.map(|(key, target)| ((key.prefix_len(), key.data()), target)))
            .collect::<Result<_, _>>()
            .map_err(map_error(names::FORWARDS.name))?;
        Ok(Plan {
            cgroup_scopes: self.entries(names::CGROUP_SCOPES.name)?,
            netns_scopes: self.entries(names::NETNS_SCOPES.name)?,
            forward_ports: self.entries(names::FORWARD_PORTS.name)?,
            cgroup_forwards: self.entries(names::CGROUP_FORWARDS.name)?,
            forwards,
            aliases: self.entries::<AliasKey, ForwardTarget>(names::ALIASES.name)?,
            aliased_addrs: self.keys::<AliasedAddr, u8>(names::ALIASED_ADDRS.name)?,
            services: self.entries::<ServiceKey, u32>(names::HOST_SERVICES.name)?,
            grants: self.entries::<GrantKey, GrantPath>(names::GRANTS.name)?,
            scope_grants: self.keys::<ScopeGrant, u8>(names::SCOPE_GRANTS.name)?,
            local_binds_per_scope: self.lookups()?.local_binds_per_scope,
            binds: self.entries::<ScopePort, BindTarget>(names::BIND_REMAPS.name)?,
            derived_peers: self
                .entries::<DerivedPeerKey, DerivedPeer>(names::DERIVED_PEERS.name)?,
            localhost_ports: self.localhost_ports()?,
        })
    }

    /// The localhost ports the programs look further for now.
    fn localhost_ports(&self) -> Result<PortSet, DatapathError> {
        let map: Array<_, u64> = self.map(names::LOCALHOST_PORTS.name)?;
        let words = (0..map.len())
            .map(|index| Ok((index, map.get(&index, 0)?)))
            .collect::<Result<Vec<_>, MapError>>()
            .map_err(map_error(names::LOCALHOST_PORTS.name))?;
        Ok(PortSet::from_words(words))
    }

    /// What the programs were told last (nothing, in new maps).
    pub(super) fn lookups(&self) -> Result<Lookups, DatapathError> {
        let map: Array<_, Lookups> = self.map(names::LOOKUPS.name)?;
        map.get(&0, 0).map_err(map_error(names::LOOKUPS.name))
    }

    /// Every entry of the hash map `name`.
    fn entries<K: Pod + Ord, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<BTreeMap<K, V>, DatapathError> {
        let map: HashMap<_, K, V> = self.map(name)?;
        map.iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(name))
    }

    /// Every key of the hash map `name`.
    fn keys<K: Pod + Ord, V: Pod>(&self, name: &'static str) -> Result<BTreeSet<K>, DatapathError> {
        Ok(self.entries::<K, V>(name)?.into_keys().collect())
    }

    /// The agent's counter slots, as the last agent left them: (scope id,
    /// rule) -> slot. Empty without pins.
    pub fn read_rule_slots(&self) -> Result<BTreeMap<(u32, u64), u32>, DatapathError> {
        let Some(slots) = self.rule_slots()? else {
            return Ok(BTreeMap::new());
        };
        slots
            .iter()
            .map(|entry| entry.map(|(key, slot)| ((key.scope, key.rule), slot)))
            .collect::<Result<_, _>>()
            .map_err(map_error(RULE_SLOTS))
    }

    /// Keeps the pinned counter slots equal to `slots`.
    pub fn write_rule_slots(
        &mut self,
        old: &BTreeMap<(u32, u64), u32>,
        new: &BTreeMap<(u32, u64), u32>,
    ) -> Result<(), DatapathError> {
        let Some(mut map) = self.rule_slots()? else {
            return Ok(());
        };
        for (&(scope, rule), slot) in new {
            if old.get(&(scope, rule)) != Some(slot) {
                map.insert(RuleSlotKey::new(scope, rule), slot, 0)
                    .map_err(map_error(RULE_SLOTS))?;
            }
        }
        for &(scope, rule) in old.keys().filter(|key| !new.contains_key(key)) {
            let _ = map.remove(&RuleSlotKey::new(scope, rule));
        }
        Ok(())
    }

    /// The pinned map of counter slots, made the first time.
    pub(super) fn rule_slots(
        &self,
    ) -> Result<Option<HashMap<MapData, RuleSlotKey, u32>>, DatapathError> {
        let Some(pins) = &self.pins else {
            return Ok(None);
        };
        let path = pins.maps_dir().join(RULE_SLOTS);
        if !path.exists() {
            let capacity = self
                .map::<aya::maps::PerCpuArray<_, netbpf_common::RuleStats>>(names::RULE_STATS.name)?
                .len();
            HashMap::<MapData, RuleSlotKey, u32>::create(capacity, 0)
                .map_err(map_error(RULE_SLOTS))?
                .pin(&path)
                .map_err(pin_error(RULE_SLOTS))?;
        }
        let data = MapData::from_pin(&path).map_err(map_error(RULE_SLOTS))?;
        HashMap::try_from(Map::HashMap(data))
            .map(Some)
            .map_err(map_error(RULE_SLOTS))
    }
}
