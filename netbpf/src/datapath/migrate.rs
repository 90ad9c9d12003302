//! Moving a pinned datapath to a new map layout: each map of the old
//! layout whose key and value have the same size in the new one is copied
//! entry by entry, before the new programs replace the old ones in their
//! links. Counters are carried over instead, once the links run the new
//! programs (the old ones count until then): what the old layout counted
//! is added into the new layout's carried counts, which no program
//! writes, also where the new layout appended counters. Maps whose
//! entries changed size are not copied: those the policy fills are filled
//! from the plan, the rest (what sockets dialed) starts empty, and each is
//! named in the log. The local binds are never copied: their counts go
//! with the per-socket record of which sockets they count, which a copy
//! cannot carry, so the agent counts the sockets bound now again
//! (`sock_diag`).

use std::{fs, io, path::Path};

use aya::maps::MapInfo;
use netbpf_common::names;

use super::sys::{map_lookup, map_next_key, map_update, obj_get};

/// `BPF_MAP_TYPE_SOCKMAP`: its entries are sockets, which a copy cannot
/// carry (the host services' listeners are taken again).
const SOCKMAP: u32 = 15;
/// `BPF_MAP_TYPE_SK_STORAGE`: per-socket storage, keyed by sockets, which
/// userspace cannot walk.
const SK_STORAGE: u32 = 24;
/// Per-CPU map types, whose values are one per possible CPU, 8-aligned.
const PER_CPU: [u32; 3] = [5, 6, 10];
/// Maps counted again from the sockets open when the new agent starts:
/// the local binds, and each scope's share of them.
const RECOUNTED: &[&str] = &[names::LOCAL_BINDS.name, names::SCOPE_LOCAL_BINDS.name];

/// What became of one map of the old layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Its entries were copied.
    Copied(usize),
    /// Counters and their carried counts: carried over by
    /// [`carry_counters`] once the old programs stop.
    Later,
    /// Its entries changed size, or cannot be copied: not carried over.
    Left(String),
}

/// Copies the entries of each map pinned in `old` into the map of the
/// same name pinned in `new`, where their sizes match.
pub fn copy_maps(old: &Path, new: &Path) -> io::Result<Vec<(String, Moved)>> {
    let mut moved = Vec::new();
    for entry in fs::read_dir(old)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let target = new.join(&name);
        let result = if RECOUNTED.contains(&name.as_str()) {
            Moved::Left("counted again from the sockets bound now".to_owned())
        } else if !target.exists() {
            Moved::Left("this netbpf has no such map".to_owned())
        } else if names::COUNTERS
            .iter()
            .any(|counters| counters.live.name == name || counters.carried == name)
        {
            Moved::Later
        } else {
            copy_map(&entry.path(), &target)?
        };
        moved.push((name, result));
    }
    Ok(moved)
}

fn copy_map(from: &Path, to: &Path) -> io::Result<Moved> {
    let (old, new) = (pinned_info(from)?, pinned_info(to)?);
    if raw_type(&old) == SOCKMAP {
        return Ok(Moved::Left("sockets are taken again".to_owned()));
    }
    if raw_type(&old) == SK_STORAGE {
        return Ok(Moved::Left(
            "per-socket storage cannot be walked: sockets open now lose what they dialed"
                .to_owned(),
        ));
    }
    if !same_shape(&old, &new) {
        return Ok(Moved::Left(format!(
            "its entries changed ({} + {} bytes, now {} + {})",
            old.key_size(),
            old.value_size(),
            new.key_size(),
            new.value_size()
        )));
    }
    let value_size = if PER_CPU.contains(&raw_type(&old)) {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        (old.value_size() as usize).next_multiple_of(8) * cpus
    } else {
        old.value_size() as usize
    };
    let (from, to) = (obj_get(from)?, obj_get(to)?);
    let mut key = vec![0u8; old.key_size() as usize];
    let mut next = key.clone();
    let mut value = vec![0u8; value_size];
    let mut copied = 0;
    let mut first = true;
    while map_next_key(&from, (!first).then_some(&key[..]), &mut next)? {
        first = false;
        key.copy_from_slice(&next);
        if map_lookup(&from, &key, &mut value)? {
            map_update(&to, &key, &value)?;
            copied += 1;
        }
    }
    Ok(Moved::Copied(copied))
}

/// Whether two maps have entries of the same type and sizes.
fn same_shape(old: &MapInfo, new: &MapInfo) -> bool {
    raw_type(old) == raw_type(new)
        && old.key_size() == new.key_size()
        && old.value_size() == new.value_size()
}

/// Adds what each counter array of `old` counted (summed over CPUs) and
/// carried into the carried counts of the same counters in `new`, word by
/// word (every counter is a `u64`; counters the new layout appended keep
/// their own), once no program counts in `old` any more; returns the
/// counters carried. Only the agent writes the carried counts: no count
/// of a program running meanwhile is lost.
pub fn carry_counters(old: &Path, new: &Path) -> io::Result<Vec<&'static str>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
    let mut carried = Vec::new();
    for counters in names::COUNTERS {
        let (live, carried_into) = (old.join(counters.live.name), new.join(counters.carried));
        if !live.exists() || !carried_into.exists() {
            continue;
        }
        let (live_info, into_info) = (pinned_info(&live)?, pinned_info(&carried_into)?);
        if live_info.value_size() > into_info.value_size() {
            tracing::warn!(
                map = counters.live.name,
                "counters not carried over: this netbpf counts fewer of them"
            );
            continue;
        }
        // Layouts older than the carried counts have none.
        let before = Some(old.join(counters.carried)).filter(|path| path.exists());
        let live_stride = (live_info.value_size() as usize).next_multiple_of(8);
        let (live, carried_into) = (obj_get(&live)?, obj_get(&carried_into)?);
        let before = before.map(|path| obj_get(&path)).transpose()?;
        let mut live_value = vec![0u8; live_stride * cpus];
        let mut before_value = vec![0u8; live_info.value_size() as usize];
        let mut sums = vec![0u8; into_info.value_size() as usize];
        for slot in 0..live_info.max_entries().min(into_info.max_entries()) {
            let key = slot.to_ne_bytes();
            if !map_lookup(&carried_into, &key, &mut sums)? {
                continue;
            }
            if map_lookup(&live, &key, &mut live_value)? {
                for cpu in live_value.chunks_exact(live_stride) {
                    add_words(&mut sums, cpu);
                }
            }
            if let Some(before) = &before
                && map_lookup(before, &key, &mut before_value)?
            {
                add_words(&mut sums, &before_value);
            }
            map_update(&carried_into, &key, &sums)?;
        }
        carried.push(counters.live.name);
    }
    Ok(carried)
}

/// What the kernel says of the map pinned at `path`.
fn pinned_info(path: &Path) -> io::Result<MapInfo> {
    MapInfo::from_pin(path).map_err(|error| io::Error::other(error.to_string()))
}

/// The map type of `info`, as the kernel numbers it.
fn raw_type(info: &MapInfo) -> u32 {
    info.map_type().map_or(u32::MAX, |kind| kind as u32)
}

/// Adds the `u64` words of `more` to the first ones of `sums`.
fn add_words(sums: &mut [u8], more: &[u8]) {
    for (sum, more) in sums.chunks_exact_mut(8).zip(more.chunks_exact(8)) {
        let total = u64::from_ne_bytes(sum.try_into().expect("8 bytes"))
            .wrapping_add(u64::from_ne_bytes(more.try_into().expect("8 bytes")));
        sum.copy_from_slice(&total.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::add_words;

    #[test]
    fn words_are_added_where_both_have_them() {
        let words = |values: &[u64]| -> Vec<u8> {
            values
                .iter()
                .flat_map(|value| value.to_ne_bytes())
                .collect()
        };
        let mut sums = words(&[1, 2, 3]);
        add_words(&mut sums, &words(&[10, u64::MAX]));
        assert_eq!(sums, words(&[11, 1, 3]));
    }
}
