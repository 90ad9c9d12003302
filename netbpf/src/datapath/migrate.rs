//! Moving a pinned datapath to a new map layout: each map of the old
//! layout whose key and value have the same size in the new one is copied
//! entry by entry, before the new programs replace the old ones in their
//! links. Counters are added instead, once the links run the new programs
//! (the old ones count until then), also where the new layout appended
//! counters. Maps whose entries changed size are not copied: those the
//! policy fills are filled from the plan, the rest (what sockets dialed)
//! starts empty, and each is named in the log. The local binds are never
//! copied: their counts go with the per-socket record of which sockets
//! they count, which a copy cannot carry, so the agent counts the sockets
//! bound now again (`sock_diag`).

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
/// `BPF_MAP_TYPE_PERCPU_ARRAY`: netbpf's counters, all `u64` fields.
const COUNTERS: u32 = 6;
/// Maps counted again from the sockets open when the new agent starts:
/// the local binds, and each scope's share of them.
const RECOUNTED: &[&str] = &[names::LOCAL_BINDS.name, names::SCOPE_LOCAL_BINDS.name];

/// What became of one map of the old layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Its entries were copied.
    Copied(usize),
    /// Counters: added by [`add_counters`] once the old programs stop.
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
        } else if target.exists() {
            copy_map(&entry.path(), &target)?
        } else {
            Moved::Left("this netbpf has no such map".to_owned())
        };
        moved.push((name, result));
    }
    Ok(moved)
}

fn copy_map(from: &Path, to: &Path) -> io::Result<Moved> {
    let info =
        |path: &Path| MapInfo::from_pin(path).map_err(|error| io::Error::other(error.to_string()));
    let (old, new) = (info(from)?, info(to)?);
    let raw_type = |info: &MapInfo| info.map_type().map_or(u32::MAX, |kind| kind as u32);
    if raw_type(&old) == SOCKMAP {
        return Ok(Moved::Left("sockets are taken again".to_owned()));
    }
    if raw_type(&old) == SK_STORAGE {
        return Ok(Moved::Left(
            "per-socket storage cannot be walked: sockets open now lose what they dialed"
                .to_owned(),
        ));
    }
    if counters_carry_over(&old, &new) {
        return Ok(Moved::Later);
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
    let raw_type = |info: &MapInfo| info.map_type().map_or(u32::MAX, |kind| kind as u32);
    raw_type(old) == raw_type(new)
        && old.key_size() == new.key_size()
        && old.value_size() == new.value_size()
}

/// Whether the counters of `old` can be added to `new`'s: both are
/// counter arrays, and `new`'s counters are `old`'s, perhaps with more
/// appended.
fn counters_carry_over(old: &MapInfo, new: &MapInfo) -> bool {
    let raw_type = |info: &MapInfo| info.map_type().map_or(u32::MAX, |kind| kind as u32);
    raw_type(old) == COUNTERS
        && raw_type(new) == COUNTERS
        && old.key_size() == new.key_size()
        && old.value_size() <= new.value_size()
}

/// Adds the counters of each per-CPU array of `old` to the one of the
/// same name in `new` (word by word: every counter is a `u64`; counters
/// the new layout appended keep their own), once no program counts in
/// `old` any more; returns the maps added.
pub fn add_counters(old: &Path, new: &Path) -> io::Result<Vec<String>> {
    let info =
        |path: &Path| MapInfo::from_pin(path).map_err(|error| io::Error::other(error.to_string()));
    let mut added = Vec::new();
    for entry in fs::read_dir(old)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let target = new.join(&name);
        if !target.exists() {
            continue;
        }
        let (from_info, to_info) = (info(&entry.path())?, info(&target)?);
        if !counters_carry_over(&from_info, &to_info) {
            continue;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        let old_stride = (from_info.value_size() as usize).next_multiple_of(8);
        let new_stride = (to_info.value_size() as usize).next_multiple_of(8);
        let (from, to) = (obj_get(&entry.path())?, obj_get(&target)?);
        let (mut old_value, mut new_value) =
            (vec![0u8; old_stride * cpus], vec![0u8; new_stride * cpus]);
        for slot in 0..from_info.max_entries().min(to_info.max_entries()) {
            let key = slot.to_ne_bytes();
            if !map_lookup(&from, &key, &mut old_value)? || !map_lookup(&to, &key, &mut new_value)?
            {
                continue;
            }
            for (sums, more) in new_value
                .chunks_exact_mut(new_stride)
                .zip(old_value.chunks_exact(old_stride))
            {
                for (sum, more) in sums.chunks_exact_mut(8).zip(more.chunks_exact(8)) {
                    let total = u64::from_ne_bytes(sum.try_into().expect("8 bytes"))
                        .wrapping_add(u64::from_ne_bytes(more.try_into().expect("8 bytes")));
                    sum.copy_from_slice(&total.to_ne_bytes());
                }
            }
            map_update(&to, &key, &new_value)?;
        }
        added.push(name);
    }
    Ok(added)
}
