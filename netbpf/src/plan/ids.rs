//! Numbers that stay the same while what they number lives: scope ids
//! (what the kernel keys a scope's state by) and counter slots of rules.

use netbpf_common::names;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::ScopeKey;
use crate::policy::Scope;

/// Scope ids, one per cgroup or network namespace matched. An id stays
/// its key's for as long as the key is matched, so what the kernel keyed
/// by it (the local binds of a scope) stays right across plans; ids are
/// not reused soon after their key goes.
#[derive(Debug, Default, Clone)]
pub struct ScopeIds {
    ids: BTreeMap<ScopeKey, u32>,
    /// The ids given, to skip when the next one comes round again.
    taken: HashSet<u32>,
    /// How many keys are cgroups; the others are network namespaces.
    cgroups: usize,
    next: u32,
}

impl ScopeIds {
    /// Ids adopted from a running datapath: `ids` as its maps hold them.
    #[must_use]
    pub fn adopt(ids: BTreeMap<ScopeKey, u32>) -> Self {
        let next = ids.values().max().map_or(0, |max| max.wrapping_add(1));
        let mut adopted = Self {
            ids,
            next,
            ..Self::default()
        };
        adopted.count();
        adopted
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
        let (same_kind, map) = match key {
            ScopeKey::Cgroup(_) => (self.cgroups, names::CGROUP_SCOPES.name),
            ScopeKey::Netns(_) => (self.ids.len() - self.cgroups, names::NETNS_SCOPES.name),
        };
        if same_kind >= capacity as usize {
            return Err(format!(
                "map {map} is full ({capacity} scopes): raise capacity.scopes"
            ));
        }
        while self.taken.contains(&self.next) {
            self.next = self.next.wrapping_add(1);
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.ids.insert(key, id);
        self.taken.insert(id);
        if let ScopeKey::Cgroup(_) = key {
            self.cgroups += 1;
        }
        Ok(id)
    }

    /// Forgets the ids of keys not in `keys`.
    pub fn retain(&mut self, keys: impl IntoIterator<Item = ScopeKey>) {
        let keys: HashSet<ScopeKey> = keys.into_iter().collect();
        self.ids.retain(|key, _| keys.contains(key));
        self.count();
    }

    /// Counts the ids taken and the cgroups among their keys.
    fn count(&mut self) {
        self.taken = self.ids.values().copied().collect();
        self.cgroups = self
            .ids
            .keys()
            .filter(|key| matches!(key, ScopeKey::Cgroup(_)))
            .count();
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
    /// Free slots below `high`.
    free: BTreeSet<u32>,
    /// No slot at or above it is taken.
    high: u32,
}

impl RuleSlots {
    /// Slots adopted from a running datapath, as its pinned table holds
    /// them.
    #[must_use]
    pub fn adopt(slots: BTreeMap<(u32, u64), u32>) -> Self {
        let high = slots.values().max().map_or(0, |max| max + 1);
        let taken: HashSet<u32> = slots.values().copied().collect();
        Self {
            free: (0..high).filter(|slot| !taken.contains(slot)).collect(),
            high,
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
                let slot = self.take_free(capacity).ok_or_else(|| {
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

    /// The lowest free slot below `capacity`, taken.
    fn take_free(&mut self, capacity: u32) -> Option<u32> {
        if let Some(&slot) = self.free.first()
            && slot < capacity
        {
            self.free.remove(&slot);
            return Some(slot);
        }
        (self.high < capacity).then(|| {
            self.high += 1;
            self.high - 1
        })
    }

    /// Frees every slot but those in `used`.
    pub fn release_all_but(&mut self, used: &BTreeSet<u32>) {
        let free = &mut self.free;
        self.slots.retain(|_, slot| {
            let keep = used.contains(slot);
            if !keep {
                free.insert(*slot);
            }
            keep
        });
        self.fresh.retain(|slot| used.contains(slot));
        while self.high > 0 && self.free.remove(&(self.high - 1)) {
            self.high -= 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan::tests::NoFacts, policy};

    /// A scope of `rules` forwards, each a rule of its own.
    fn scope(rules: u16) -> Scope {
        let text = (0..rules)
            .map(|port| {
                format!(
                    "{{ from = \"localhost:{}\", to = \"192.0.2.1:80\" }}",
                    port + 1
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let policy = policy::parse(
            std::path::Path::new("p.toml"),
            &format!("version = 1\n[[scope]]\nname = \"s\"\nmatch = {{ cgroup = \"*\" }}\nforward = [{text}]\n"),
        )
        .unwrap();
        let captures = policy::Captures::new();
        let instance = policy::Instance {
            name: "s",
            captures: &captures,
            labels: &std::collections::BTreeMap::new(),
        };
        policy.scopes[0]
            .instantiate(&policy.host_services, instance, &NoFacts)
            .unwrap()
    }

    #[test]
    fn ids_are_counted_by_kind_and_not_reused_at_once() {
        let mut ids = ScopeIds::default();
        assert_eq!(ids.get_or_assign(ScopeKey::Cgroup(1), 2), Ok(0));
        assert_eq!(ids.get_or_assign(ScopeKey::Cgroup(2), 2), Ok(1));
        assert_eq!(ids.get_or_assign(ScopeKey::Netns(9), 1), Ok(2));
        assert!(
            ids.get_or_assign(ScopeKey::Cgroup(3), 2)
                .unwrap_err()
                .contains("CGROUP_SCOPES is full")
        );
        assert!(
            ids.get_or_assign(ScopeKey::Netns(8), 1)
                .unwrap_err()
                .contains("NETNS_SCOPES is full")
        );
        ids.retain([ScopeKey::Cgroup(2), ScopeKey::Netns(9)]);
        // Cgroup 1's id is free again, but the next one is newer.
        assert_eq!(ids.get_or_assign(ScopeKey::Cgroup(3), 2), Ok(3));
        let mut adopted = ScopeIds::adopt(BTreeMap::from([
            (ScopeKey::Cgroup(5), 7),
            (ScopeKey::Cgroup(6), 0),
        ]));
        assert!(adopted.get_or_assign(ScopeKey::Cgroup(7), 2).is_err());
        assert_eq!(adopted.get_or_assign(ScopeKey::Netns(1), 2), Ok(8));
    }

    #[test]
    fn freed_slots_are_given_again_and_a_full_table_refuses() {
        let mut slots = RuleSlots::default();
        let mut used = BTreeSet::new();
        let first = slots.assign(1, scope(3), &mut used, 4).unwrap();
        assert_eq!(
            first.forwards.iter().map(|f| f.rule).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let error = slots.assign(2, scope(2), &mut used, 4).unwrap_err();
        assert!(error.contains("RULE_STATS is full (4 rules)"), "{error}");
        // Scope 1 goes: its slots are free for scope 2.
        let mut used = BTreeSet::new();
        slots.release_all_but(&used);
        assert_eq!(slots.take_fresh(), Vec::<u32>::new());
        let second = slots.assign(2, scope(2), &mut used, 4).unwrap();
        assert_eq!(
            second.forwards.iter().map(|f| f.rule).collect::<Vec<_>>(),
            [0, 1]
        );
        // Adopted slots stay; the holes between them are given first.
        let mut adopted = RuleSlots::adopt(BTreeMap::from([((1, 10), 0), ((1, 11), 2)]));
        let third = adopted
            .assign(3, scope(2), &mut BTreeSet::new(), 4)
            .unwrap();
        assert_eq!(
            third.forwards.iter().map(|f| f.rule).collect::<Vec<_>>(),
            [1, 3]
        );
    }
}
