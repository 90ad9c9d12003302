//! Numbers that stay the same while what they number lives: scope ids
//! (what the kernel keys a scope's state by) and counter slots of rules.

use netbpf_common::names;
use std::collections::{BTreeMap, BTreeSet};

use super::ScopeKey;
use crate::policy::Scope;

/// Scope ids, one per cgroup or network namespace matched. An id stays
/// its key's for as long as the key is matched, so what the kernel keyed
/// by it (the local binds of a scope) stays right across plans; ids are
/// not reused soon after their key goes.
#[derive(Debug, Default, Clone)]
pub struct ScopeIds {
    ids: BTreeMap<ScopeKey, u32>,
    next: u32,
}

impl ScopeIds {
    /// Ids adopted from a running datapath: `ids` as its maps hold them.
    #[must_use]
    pub fn adopt(ids: BTreeMap<ScopeKey, u32>) -> Self {
        let next = ids.values().max().map_or(0, |max| max.wrapping_add(1));
        Self { ids, next }
    }

    /// The id of `key`, if it has one.
    #[must_use]
    pub fn get(&self, key: ScopeKey) -> Option<u32> {
        self.ids.get(&key).copied()
    }

    /// The id of `key`, a new one if it has none; an error when `capacity`
    /// scopes of its kind exist already.
    pub fn get_or_assign(&mut self, key: ScopeKey, capacity: u32) -> Result<u32, String> {
        if let Some(id) = self.get(key) {
            return Ok(id);
        }
        let same_kind = |other: &ScopeKey| {
            matches!(
                (other, key),
                (ScopeKey::Cgroup(_), ScopeKey::Cgroup(_))
                    | (ScopeKey::Netns(_), ScopeKey::Netns(_))
            )
        };
        if self.ids.keys().filter(|other| same_kind(other)).count() >= capacity as usize {
            let map = match key {
                ScopeKey::Cgroup(_) => names::CGROUP_SCOPES.name,
                ScopeKey::Netns(_) => names::NETNS_SCOPES.name,
            };
            return Err(format!(
                "map {map} is full ({capacity} scopes): raise capacity.scopes"
            ));
        }
        while self.ids.values().any(|&id| id == self.next) {
            self.next = self.next.wrapping_add(1);
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.ids.insert(key, id);
        Ok(id)
    }

    /// Forgets the ids of keys not in `keys`.
    pub fn retain(&mut self, keys: impl IntoIterator<Item = ScopeKey>) {
        let keys: BTreeSet<ScopeKey> = keys.into_iter().collect();
        self.ids.retain(|key, _| keys.contains(key));
    }
}

/// The counter slot of each rule of each scope instance. A rule keeps its
/// slot (and its counters) while its instance has it unchanged; a new or
/// changed rule gets a free slot, whose counters start from zero.
#[derive(Debug, Default, Clone)]
pub struct RuleSlots {
    /// (scope id, a stable hash of what the rule is) -> its slot.
    slots: BTreeMap<(u32, u64), u32>,
    /// Slots handed out since the last [`Self::take_fresh`].
    fresh: Vec<u32>,
}

impl RuleSlots {
    /// Slots adopted from a running datapath, as its pinned table holds
    /// them.
    #[must_use]
    pub fn adopt(slots: BTreeMap<(u32, u64), u32>) -> Self {
        Self {
            slots,
            fresh: Vec::new(),
        }
    }

    /// (scope id, rule) -> slot: what the pinned table must hold.
    #[must_use]
    pub fn entries(&self) -> &BTreeMap<(u32, u64), u32> {
        &self.slots
    }

    /// Gives each rule of `scope` (of scope `id`) its slot, in place of its
    /// index in the scope; the slots used go to `used`.
    pub fn assign(
        &mut self,
        id: u32,
        mut scope: Scope,
        used: &mut BTreeSet<u32>,
        capacity: u32,
    ) -> Result<Scope, String> {
        let mut rules: Vec<(String, &mut u32)> = Vec::new();
        for forward in &mut scope.forwards {
            rules.push((
                format!(
                    "forward {:?} {} {}",
                    forward.protocols, forward.from, forward.to
                ),
                &mut forward.rule,
            ));
        }
        for grant in &mut scope.grants {
            rules.push((
                format!("grant {} {} {}", grant.service, grant.dial, grant.gateway),
                &mut grant.rule,
            ));
        }
        for bind in &mut scope.binds {
            rules.push((
                format!(
                    "bind {:?} {} {} {:?}",
                    bind.protocols, bind.port, bind.to, bind.address
                ),
                &mut bind.rule,
            ));
        }
        for alias in &mut scope.aliases {
            rules.push((
                format!("alias {:?} {} {}", alias.protocols, alias.from, alias.to),
                &mut alias.rule,
            ));
        }
        for (what, rule) in rules {
            let what = stable_hash(&what);
            let slot = if let Some(&slot) = self.slots.get(&(id, what)) {
                slot
            } else {
                let taken: BTreeSet<u32> =
                    self.slots.values().chain(used.iter()).copied().collect();
                let slot = (0..capacity)
                    .find(|slot| !taken.contains(slot))
                    .ok_or_else(|| {
                        format!("map RULE_STATS is full ({capacity} rules): raise capacity.rules")
                    })?;
                self.slots.insert((id, what), slot);
                self.fresh.push(slot);
                slot
            };
            used.insert(slot);
            *rule = slot;
        }
        Ok(scope)
    }

    /// Frees every slot but those in `used`.
    pub fn release_all_but(&mut self, used: &BTreeSet<u32>) {
        self.slots.retain(|_, slot| used.contains(slot));
        self.fresh.retain(|slot| used.contains(slot));
    }

    /// The slots handed out since the last call: their counters must be
    /// set to zero before the maps point at them.
    pub fn take_fresh(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.fresh)
    }
}

/// FNV-1a of `text`: the same in every build, so that a new agent finds
/// the slots an older one gave.
fn stable_hash(text: &str) -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(text.as_bytes());
    hasher.finish()
}
