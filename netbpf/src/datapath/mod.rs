//! Loads netbpf's kernel programs, fills their maps, attaches them and
//! reads their counters. A datapath pinned in bpffs outlives the process
//! (its links and maps stay); an unpinned one is detached and unloaded
//! when dropped.
//!
//! One file per concern: the socket programs on a cgroup (`sockets`), the
//! MSS clamp (`mss`) and tc attachment (`tc`), host services and the grant
//! guard (`host_services`), pins (`pins`), adoption of a pinned datapath
//! (`adopt`), layout migration (`migrate`), counters (`counters`) and the
//! raw `bpf()` calls aya does not offer (`sys`).

mod adopt;
mod clsact;
mod counters;
#[cfg(test)]
pub mod fake;
pub mod features;
mod host_services;
pub mod migrate;
mod mss;
#[cfg(test)]
mod object_names;
pub mod pins;
mod plan_maps;
mod sockets;
pub mod sys;
mod tc;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::MapError,
    programs::{Program, ProgramError},
};
use netbpf_common::names::{self, program};

use crate::plan::Capacity;

pub use self::{
    clsact::remove_clsact_filters,
    mss::MssLinks,
    pins::Pins,
    plan_maps::{PlanMaps, SlotEntries},
    sockets::{BoundSocket, CgroupHook, cgroup_hooks, cgroup_link_name},
    tc::{TcAttachment, TcLink},
};

/// The kernel programs, built by `build.rs` for `bpfel-unknown-none`.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netbpf"));

/// Why the datapath could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading netbpf's eBPF object")]
    Object(#[source] Box<EbpfError>),
    #[error("loading program {name} into the kernel")]
    Load {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching program {name} to cgroup {}", cgroup.display())]
    Attach {
        name: String,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("opening cgroup {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("netbpf's eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("netbpf's eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {0} of netbpf's eBPF object has no place in the attach order")]
    UnorderedProgram(String),
    #[error("attaching the host service program to network namespace {}", netns.display())]
    SkLookupAttach {
        netns: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("counting the CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("the pinned datapath")]
    Pins(#[from] pins::PinError),
    #[error("migrating the maps pinned in {}", from.display())]
    Migrate {
        from: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning or adopting the link of program {name}")]
    Link {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching a tc program (MSS clamp or grant guard) to interface {interface}")]
    TcAttach {
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
}

/// A program of the datapath, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedProgram {
    pub name: String,
    /// The kernel's id of the program (`bpftool prog show id ID`).
    pub id: u32,
    /// Instructions the verifier processed to load it (kernel 5.16+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_instructions: Option<u32>,
}

/// The programs a policy may not need: each is loaded only when asked
/// for (the MSS clamp takes the verifier the longest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Optional {
    /// The tc program of `[[mss_clamp]]` on egress.
    pub mss_egress: bool,
    /// The tc program of `[[mss_clamp]]` on ingress.
    pub mss_ingress: bool,
    /// The `sk_lookup` program of `[[host_service]]`, and its grant guard.
    pub host_services: bool,
}

impl Optional {
    /// The programs `policy` needs.
    #[must_use]
    pub fn for_policy(policy: &crate::policy::Policy) -> Self {
        let clamps = |direction: fn(crate::policy::Direction) -> bool| {
            policy
                .mss_clamps
                .iter()
                .any(|clamp| direction(clamp.direction))
        };
        Self {
            mss_egress: clamps(crate::policy::Direction::egress),
            mss_ingress: clamps(crate::policy::Direction::ingress),
            host_services: !policy.host_services.is_empty(),
        }
    }
}

/// netbpf's programs and maps, loaded into the kernel.
pub struct Datapath {
    ebpf: Ebpf,
    programs: Vec<LoadedProgram>,
    /// Where maps and links are pinned; None: nothing outlives this value.
    pins: Option<Pins>,
    /// The links this datapath attached through, by name (pinned ones not
    /// among them are stale).
    claimed_links: Vec<String>,
    /// The links it holds when nothing is pinned: they go with it.
    owned_links: Vec<(String, aya::programs::links::FdLink)>,
    /// The maps of an older layout this datapath was migrated from, in
    /// use by the old programs until the links run the new ones.
    older_layout: Option<PathBuf>,
    /// Each counter array's carried counts, when pinned.
    carried: Vec<(names::Counters, aya::maps::Map)>,
}

/// The capacity of each map that has a setting.
fn capacities(capacity: &Capacity) -> [(&'static str, u32); 15] {
    [
        (names::CGROUP_SCOPES.name, capacity.scopes),
        (names::NETNS_SCOPES.name, capacity.scopes),
        (names::RULE_STATS.name, capacity.rules),
        (names::FORWARD_PORTS.name, capacity.forward_ports),
        (names::CGROUP_FORWARDS.name, capacity.forward_ports),
        // At most one derived peer per forward of one port.
        (names::DERIVED_PEERS.name, capacity.forward_ports),
        (names::FORWARDS.name, capacity.forward_prefixes),
        (names::ALIASES.name, capacity.aliases),
        (names::ALIASED_ADDRS.name, capacity.aliases),
        (names::BIND_REMAPS.name, capacity.bind_remaps),
        (names::GRANTS.name, capacity.grants),
        (names::SCOPE_GRANTS.name, capacity.grants),
        (names::HOST_SERVICES.name, capacity.service_addresses),
        (names::LOCAL_BINDS.name, capacity.local_binds),
        (names::SCOPE_LOCAL_BINDS.name, capacity.scopes),
    ]
}

impl Datapath {
    /// Loads the socket programs into the kernel (the verifier runs here),
    /// and those of the `optional` features asked for, with empty maps and
    /// nothing attached.
    ///
    /// With `pins`, the maps are those pinned there (checked to be this
    /// netbpf's), or new ones pinned there.
    pub fn load(
        optional: Optional,
        capacity: &Capacity,
        pins: Option<&Pins>,
    ) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        for (name, size) in capacities(capacity) {
            loader.map_max_entries(name, size);
        }
        let pin_paths;
        let mut older_layout = None;
        if let Some(pins) = pins {
            older_layout = pins.prepare()?;
            pin_paths = pinned_maps(pins, capacity)?;
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let ebpf = loader
            .load(PROGRAMS_OBJECT)
            .map_err(|error| DatapathError::Object(Box::new(error)))?;

        let mut datapath = Self {
            ebpf,
            programs: Vec::new(),
            pins: pins.cloned(),
            claimed_links: Vec::new(),
            owned_links: Vec::new(),
            older_layout,
            carried: Vec::new(),
        };
        if let Some(pins) = pins {
            datapath.open_carried(pins)?;
        }
        if let (Some(pins), Some(older)) = (pins, &datapath.older_layout) {
            // The agent's own map first, so that its slots move too.
            datapath.rule_slots()?;
            migrate_from(older, &pins.maps_dir())?;
        }
        datapath.load_programs(optional)?;
        Ok(datapath)
    }

    /// Loads the programs of the `optional` features asked for that are
    /// not loaded yet (and, at first, the socket programs).
    pub fn load_programs(&mut self, optional: Optional) -> Result<(), DatapathError> {
        for (name, program) in self.ebpf.programs_mut() {
            let wanted = match name {
                program::MSS_OUT => optional.mss_egress,
                program::MSS_IN => optional.mss_ingress,
                program::HOST_SERVICE | program::GRANT_GUARD => optional.host_services,
                _ if sockets::cgroup_hooks().any(|hook| hook.program == name) => true,
                _ => return Err(DatapathError::UnorderedProgram(name.to_owned())),
            };
            if !wanted || self.programs.iter().any(|loaded| loaded.name == name) {
                continue;
            }
            let load = |error| DatapathError::Load {
                name: name.to_owned(),
                source: Box::new(error),
            };
            match program {
                Program::CgroupSockAddr(program) => program.load(),
                Program::CgroupSock(program) => program.load(),
                Program::SchedClassifier(program) => program.load(),
                Program::SkLookup(program) => program.load(),
                other => unreachable!("netbpf has no {:?} program", other.prog_type()),
            }
            .map_err(load)?;
            let info = program.info().map_err(load)?;
            self.programs.push(LoadedProgram {
                name: name.to_owned(),
                id: info.id(),
                verified_instructions: info.verified_instruction_count(),
            });
        }
        self.programs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Settles the maps this datapath migrated to (their staged directory
    /// becomes this layout's), carries over what the older maps counted
    /// and unpins those: call once every link runs the new
    /// programs.
    pub fn finish_migration(&mut self) {
        if let Some(older) = self.older_layout.take() {
            if let Some(pins) = &self.pins
                && let Err(error) = pins.settle_maps()
            {
                tracing::warn!(%error, dir = %pins.dir().display(), "settling the migrated maps: the older ones stay");
                return;
            }
            let maps = self.pins.as_ref().map(Pins::maps_dir).unwrap_or_default();
            match migrate::carry_counters(&older, &maps) {
                Ok(carried) => tracing::info!(?carried, "counters migrated"),
                Err(error) => tracing::warn!(%error, "counters not migrated: they start from zero"),
            }
            match std::fs::remove_dir_all(&older) {
                Ok(()) => {
                    tracing::info!(from = %older.display(), "migrated to map layout {}", netbpf_common::MAP_LAYOUT);
                }
                Err(error) => {
                    tracing::warn!(%error, dir = %older.display(), "removing the maps of the older layout");
                }
            }
        }
    }

    /// Where the datapath is pinned, if it is.
    #[must_use]
    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }

    /// The loaded programs, by name.
    #[must_use]
    pub fn programs(&self) -> &[LoadedProgram] {
        &self.programs
    }

    /// The descriptor of the loaded program `name` (to run it with
    /// `BPF_PROG_TEST_RUN`).
    pub fn program_fd(
        &self,
        name: &'static str,
    ) -> Result<&aya::programs::ProgramFd, DatapathError> {
        let program = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        program.fd().map_err(|error| DatapathError::Load {
            name: name.to_owned(),
            source: Box::new(error),
        })
    }

    /// The map `name`, typed, for reading.
    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        T::try_from(map).map_err(map_error(name))
    }

    /// The map `name`, typed, for writing.
    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        T::try_from(map).map_err(map_error(name))
    }
}

/// Copies what can be copied of the maps pinned in `older` (an older
/// layout) into this netbpf's, and says what could not.
fn migrate_from(older: &Path, maps: &Path) -> Result<(), DatapathError> {
    let moved = migrate::copy_maps(older, maps).map_err(|source| DatapathError::Migrate {
        from: older.to_owned(),
        source,
    })?;
    for (map, moved) in moved {
        match moved {
            migrate::Moved::Copied(entries) => {
                tracing::info!(map, entries, from = %older.display(), "map migrated");
            }
            migrate::Moved::Later => {}
            migrate::Moved::Left(why) => {
                tracing::warn!(map, why, "map not migrated: filled anew");
            }
        }
    }
    Ok(())
}

/// Each map of the object and where it is pinned, after checking that a
/// map pinned there already is the one this netbpf would make.
fn pinned_maps(pins: &Pins, capacity: &Capacity) -> Result<Vec<(String, PathBuf)>, DatapathError> {
    let object = aya_obj::Object::parse(PROGRAMS_OBJECT)
        .map_err(|error| DatapathError::Object(Box::new(error.into())))?;
    let mut maps = Vec::new();
    for (name, mut map) in object.maps {
        if !matches!(
            map.section_kind(),
            aya_obj::EbpfSectionKind::Maps | aya_obj::EbpfSectionKind::BtfMaps
        ) {
            continue;
        }
        if let Some((_, size)) = capacities(capacity)
            .into_iter()
            .find(|(map_name, _)| *map_name == name)
        {
            map.set_max_entries(size);
        }
        pins.check_map(&name, &map)?;
        let path = pins.maps_dir().join(&name);
        maps.push((name, path));
    }
    Ok(maps)
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The error of pinning the map `name`, which the agent made.
fn pin_error(name: &'static str) -> impl Fn(aya::pin::PinError) -> DatapathError {
    move |error| {
        map_error(name)(MapError::PinError {
            name: Some(name.to_owned()),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map indexed by a rule's counter slot must hold every slot the
    /// capacity of rules hands out: a slot past its end fails the update.
    #[test]
    fn the_map_indexed_by_counter_slot_holds_the_rules_capacity() {
        let capacity = Capacity {
            rules: 131_072,
            ..Capacity::default()
        };
        let sized: std::collections::HashMap<_, _> = capacities(&capacity).into_iter().collect();
        assert_eq!(sized.get(names::RULE_STATS.name), Some(&131_072));
    }
}
