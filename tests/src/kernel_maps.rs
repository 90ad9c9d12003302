//! The kernel's own record of a netbpf's maps, the witness for "nothing is
//! left" and "this entry is there": found through the maps its loaded
//! programs use (by map id, as `bpftool` finds them) and read entry by
//! entry, never through netbpf's status.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{NetbpfRun, bpftool_json};

/// The kernel keeps 15 characters of a map's name.
const NAME_LEN: usize = 15;

/// netbpf's maps in the kernel: name -> map id and capacity.
pub struct KernelMaps {
    ids: BTreeMap<String, u64>,
    capacities: BTreeMap<String, u64>,
}

impl KernelMaps {
    /// The maps of the programs `netbpf` reports loaded.
    pub fn of(netbpf: &NetbpfRun) -> anyhow::Result<Self> {
        let (mut ids, mut capacities) = (BTreeMap::new(), BTreeMap::new());
        for program in netbpf.programs()?.values() {
            let shown = bpftool_json(&["prog", "show", "id", &program.to_string()])?;
            for map in shown["map_ids"].as_array().into_iter().flatten() {
                let id = map.as_u64().context("a map id is a number")?;
                let map = bpftool_json(&["map", "show", "id", &id.to_string()])?;
                let name = map["name"].as_str().context("a map has a name")?;
                ids.insert(name.to_owned(), id);
                let capacity = map["max_entries"].as_u64().context("a map has a size")?;
                capacities.insert(name.to_owned(), capacity);
            }
        }
        Ok(Self { ids, capacities })
    }

    /// Whether the programs use map `name` (as netbpf names it).
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.ids.contains_key(short_name(name))
    }

    /// How many entries map `name` can hold (its `max_entries`).
    pub fn capacity(&self, name: &str) -> anyhow::Result<u64> {
        self.capacities
            .get(short_name(name))
            .copied()
            .with_context(|| format!("no map {name} among {:?}", self.ids.keys()))
    }

    /// The keys of map `name` (as netbpf names it), each as its bytes.
    pub fn keys(&self, name: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let Some(id) = self.ids.get(short_name(name)) else {
            bail!("no map {name} among {:?}", self.ids.keys());
        };
        let dump = bpftool_json(&["map", "dump", "id", &id.to_string()])?;
        dump.as_array()
            .into_iter()
            .flatten()
            .map(|entry| bytes(&entry["key"]).with_context(|| format!("a key of {name}: {entry}")))
            .collect()
    }

    /// How many entries map `name` holds.
    pub fn entries(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self.keys(name)?.len())
    }

    /// The names of these maps the kernel still holds, polled for up to
    /// `patience` while any is left (a map is freed after its last
    /// reference goes, from a work queue).
    pub fn remaining(&self, patience: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + patience;
        loop {
            let listed = bpftool_json(&["map", "show"])?;
            let held: BTreeSet<u64> = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|map| map["id"].as_u64())
                .collect();
            let remaining: Vec<String> = self
                .ids
                .iter()
                .filter(|(_, id)| held.contains(id))
                .map(|(name, _)| name.clone())
                .collect();
            if remaining.is_empty() || Instant::now() > deadline {
                return Ok(remaining);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The keys of a map keyed by cgroup id (`CGROUP_SCOPES`), as ids.
    pub fn cgroup_keys(&self, name: &str) -> anyhow::Result<Vec<u64>> {
        let mut ids = self
            .keys(name)?
            .into_iter()
            .map(|key| {
                let key: [u8; 8] = key[..].try_into().context("a cgroup id is 8 bytes")?;
                Ok(u64::from_ne_bytes(key))
            })
            .collect::<anyhow::Result<Vec<u64>>>()?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// The values of the map pinned at `path`, each as its bytes (a map the
/// agent made itself, which no program uses).
pub fn pinned_values(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = path.to_str().context("a pin's path is UTF-8")?;
    let dump = bpftool_json(&["map", "dump", "pinned", path])?;
    dump.as_array()
        .into_iter()
        .flatten()
        .map(|entry| bytes(&entry["value"]).with_context(|| format!("a value of {path}: {entry}")))
        .collect()
}

/// The id the kernel gives the cgroup at `path` (its directory's inode).
pub fn cgroup_id(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino())
}

/// A map's name as the kernel keeps it.
fn short_name(name: &str) -> &str {
    &name[..name.len().min(NAME_LEN)]
}

/// bpftool's bytes: `["0x01", "0x00", ...]`.
fn bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    value
        .as_array()?
        .iter()
        .map(|byte| u8::from_str_radix(byte.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect()
}
