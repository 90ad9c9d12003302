//! The set of localhost ports some scope forwards or remaps, as the
//! datapath's `LOCALHOST_PORTS` holds it: a bit per port, 64 to a word.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
};

use netbpf_common::port_set_bit;

/// The words of the set that have a bit set, by index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortSet(BTreeMap<u32, u64>);

impl PortSet {
    /// The set of `words`' bits, by word index (zero words left out).
    pub fn from_words(words: impl IntoIterator<Item = (u32, u64)>) -> Self {
        Self(words.into_iter().filter(|&(_, bits)| bits != 0).collect())
    }

    /// Adds `ports`, a word at a time: a forward of every port sets 1,024.
    pub fn insert(&mut self, ports: RangeInclusive<u16>) {
        if ports.is_empty() {
            return;
        }
        let (first, first_bit) = port_set_bit(*ports.start());
        let (last, last_bit) = port_set_bit(*ports.end());
        for word in first..=last {
            // The bits from the first port's on, up to the last port's.
            let from = if word == first {
                !(first_bit - 1)
            } else {
                u64::MAX
            };
            let to = if word == last {
                last_bit | (last_bit - 1)
            } else {
                u64::MAX
            };
            *self.0.entry(word).or_default() |= from & to;
        }
    }

    /// Whether `port` is in the set (the tests' witness; the programs
    /// test the bit themselves).
    #[cfg(test)]
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        let (word, bit) = port_set_bit(port);
        self.word(word) & bit != 0
    }

    /// Word `index`'s bits.
    #[must_use]
    pub fn word(&self, index: u32) -> u64 {
        self.0.get(&index).copied().unwrap_or_default()
    }

    /// Adds `other`'s ports.
    pub fn extend(&mut self, other: &Self) {
        for (&index, &bits) in &other.0 {
            *self.0.entry(index).or_default() |= bits;
        }
    }

    /// The words of `self` that differ from `before`'s, with their new
    /// bits: what turns a map holding `before` into one holding `self`.
    pub fn changed_since<'a>(&'a self, before: &'a Self) -> impl Iterator<Item = (u32, u64)> + 'a {
        let indices: BTreeSet<u32> = self.0.keys().chain(before.0.keys()).copied().collect();
        indices
            .into_iter()
            .map(|index| (index, self.word(index)))
            .filter(|&(index, bits)| bits != before.word(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_changes_only_the_words_whose_ports_changed() {
        let mut before = PortSet::default();
        before.insert(80..=80);
        before.insert(8000..=8100);
        let mut after = PortSet::default();
        after.insert(8000..=8100);
        after.insert(5432..=5432);
        assert!((8000..=8100).all(|port| after.contains(port)));
        assert!(after.contains(5432) && !after.contains(7999) && !after.contains(8101));
        assert!(!after.contains(80));
        let changed: Vec<_> = after.changed_since(&before).collect();
        let (port_80, _) = port_set_bit(80);
        let (port_5432, bit_5432) = port_set_bit(5432);
        assert_eq!(changed, [(port_80, 0), (port_5432, bit_5432)]);
        let mut both = before.clone();
        both.extend(&after);
        assert!(both.contains(80) && both.contains(5432));
        assert_eq!(
            PortSet::from_words(both.changed_since(&PortSet::default())),
            both
        );
    }

    #[test]
    fn every_port_is_1024_full_words() {
        let mut every = PortSet::default();
        every.insert(0..=u16::MAX);
        assert_eq!(every.0.len(), 1024);
        assert!(every.0.values().all(|&bits| bits == u64::MAX));
        let mut last = PortSet::default();
        last.insert(u16::MAX..=u16::MAX);
        assert!(last.contains(u16::MAX) && !last.contains(u16::MAX - 1));
    }
}
