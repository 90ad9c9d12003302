//! The datapath pinned in bpffs, so that it outlives the agent: its maps
//! and the links that attach its programs, under one directory.
//!
//! ```text
//! PIN_DIR/maps-vLAYOUT/NAME    every map, by name; LAYOUT is MAP_LAYOUT
//!                              (also the agent's own: RULE_SLOTS, *_CARRIED)
//! PIN_DIR/links/NAME           every link: cgroup-ID-PROGRAM, hostsvc-INODE
//! ```
//!
//! The map layout version ([`netbpf_common::MAP_LAYOUT`]) is part of the
//! maps' directory (bpffs allows no dots in names): an agent adopts the maps of its own layout, refuses
//! those of another, and checks each pinned map's type, key, value and
//! capacity against its own before using it.

use std::{
    fs, io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;

use super::sys::{link_detach, obj_get};
use netbpf_common::MAP_LAYOUT;

/// The pinned datapath's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

/// Why the pinned datapath cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{dir} holds maps of layout {found} (in {found_dir}), this netbpf uses layout {MAP_LAYOUT}: \
         {advice}"
    )]
    OtherLayout {
        dir: String,
        found: u32,
        found_dir: String,
        advice: &'static str,
    },
    #[error(
        "map {name} pinned at {path} is not the map this netbpf uses ({what}): \
         remove the datapath with `netbpf uninstall` (its containers lose their rules until the agent starts again)"
    )]
    Mismatch {
        name: String,
        path: String,
        what: String,
    },
    #[error("{call} on {path}")]
    Syscall {
        call: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl Pins {
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where this netbpf's maps are pinned: `maps-vLAYOUT`, or while it
    /// migrates from an older layout, until its links run on them,
    /// `maps-vLAYOUT-staged`.
    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        let settled = self.settled_maps_dir();
        let staged = self.staged_maps_dir();
        if !settled.exists() && staged.exists() {
            staged
        } else {
            settled
        }
    }

    fn settled_maps_dir(&self) -> PathBuf {
        self.dir.join(format!("maps-v{MAP_LAYOUT}"))
    }

    fn staged_maps_dir(&self) -> PathBuf {
        self.dir.join(format!("maps-v{MAP_LAYOUT}-staged"))
    }

    /// Settles the staged maps of a migration: called once the links run
    /// on them, it makes them this layout's maps, and the older layout's
    /// stale.
    pub fn settle_maps(&self) -> io::Result<()> {
        let staged = self.staged_maps_dir();
        if staged.exists() {
            fs::rename(&staged, self.settled_maps_dir())?;
        }
        Ok(())
    }

    /// Where the link `name` is pinned.
    #[must_use]
    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    /// Makes the directories. Returns the directory of maps of an older
    /// layout to migrate from, if there is one; refuses maps of a newer
    /// layout (and of more than one older).
    pub fn prepare(&self) -> Result<Option<PathBuf>, PinError> {
        let syscall = |call, path: &Path| {
            let path = path.display().to_string();
            move |source| PinError::Syscall { call, path, source }
        };
        let mut older = None;
        for entry in fs::read_dir(&self.dir).into_iter().flatten() {
            let entry = entry.map_err(syscall("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(found) = name
                .to_str()
                .and_then(|name| name.strip_prefix("maps-v"))
                .and_then(|version| version.parse::<u32>().ok())
            else {
                continue;
            };
            let refuse = |advice| PinError::OtherLayout {
                dir: self.dir.display().to_string(),
                found,
                found_dir: entry.path().display().to_string(),
                advice,
            };
            if found > MAP_LAYOUT {
                return Err(refuse(
                    "it was pinned by a newer netbpf; run that one, or remove the datapath with `netbpf uninstall`",
                ));
            }
            if found < MAP_LAYOUT {
                if older.is_some() {
                    return Err(refuse(
                        "maps of more than one older layout are pinned there; remove the datapath with `netbpf uninstall`",
                    ));
                }
                older = Some(entry.path());
            }
        }
        // Maps of this layout are settled only once the links run on them:
        // a migration interrupted after that leaves older maps that are
        // stale, only to be removed.
        if let Some(stale) = older.take_if(|_| self.settled_maps_dir().exists()) {
            fs::remove_dir_all(&stale).map_err(syscall("removing", &stale))?;
        }
        let maps = if older.is_some() {
            // Staged maps of a migration interrupted before its links ran
            // on them: copied again from the older ones, still in use.
            let staged = self.staged_maps_dir();
            if staged.exists() {
                fs::remove_dir_all(&staged).map_err(syscall("removing", &staged))?;
            }
            staged
        } else {
            self.settled_maps_dir()
        };
        for dir in [maps, self.dir.join("links")] {
            fs::create_dir_all(&dir).map_err(syscall("mkdir", &dir))?;
        }
        Ok(older)
    }

    /// Checks that the map pinned for `name`, if any, is `expected`.
    pub fn check_map(&self, name: &str, expected: &aya_obj::Map) -> Result<(), PinError> {
        let path = self.maps_dir().join(name);
        if !path.exists() {
            return Ok(());
        }
        let info = MapInfo::from_pin(&path).map_err(|error| PinError::Syscall {
            call: "reading the pinned map",
            path: path.display().to_string(),
            source: io::Error::other(error.to_string()),
        })?;
        let found_type = info.map_type().map_or(u32::MAX, |kind| kind as u32);
        let pairs = [
            ("type", found_type, expected.map_type()),
            ("key size", info.key_size(), expected.key_size()),
            ("value size", info.value_size(), expected.value_size()),
            ("capacity", info.max_entries(), expected.max_entries()),
            ("flags", info.map_flags(), expected.map_flags()),
        ];
        if let Some((what, found, wanted)) =
            pairs.into_iter().find(|(_, found, wanted)| found != wanted)
        {
            return Err(PinError::Mismatch {
                name: name.to_owned(),
                path: path.display().to_string(),
                what: format!("its {what} is {found}, this netbpf's is {wanted}"),
            });
        }
        Ok(())
    }

    /// The link pinned as `name`, if there is one.
    pub fn open_link(&self, name: &str) -> Result<Option<OwnedFd>, PinError> {
        let path = self.link(name);
        if !path.exists() {
            return Ok(None);
        }
        obj_get(&path)
            .map(Some)
            .map_err(|source| PinError::Syscall {
                call: "BPF_OBJ_GET",
                path: path.display().to_string(),
                source,
            })
    }

    /// The names of the pinned links.
    #[must_use]
    pub fn links(&self) -> Vec<String> {
        fs::read_dir(self.dir.join("links"))
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect()
    }

    /// Detaches every pinned link and removes every pin and directory.
    pub fn remove_all(&self) -> Result<(), PinError> {
        for name in self.links() {
            if let Some(link) = self.open_link(&name)? {
                // A link whose target went (a deleted cgroup) is detached.
                let _ = link_detach(link.as_fd());
            }
        }
        fs::remove_dir_all(&self.dir).map_err(|source| PinError::Syscall {
            call: "removing",
            path: self.dir.display().to_string(),
            source,
        })
    }
}
