//! Keeps the MSS clamp on exactly the interfaces the policy names: those
//! present at start, and those that appear, are renamed or go while
//! netbpf runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use netbpf_common::{MAX_MSS_INTERFACES, MSS_PATH_MTU, MssConfig};

use crate::api::status::MssInterfaceStatus;
use crate::{
    datapath::{Datapath, DatapathError, MssLinks},
    host::{
        links::{self, Interface, LinkEvent},
        netns,
    },
    policy::{Direction, Mss, MssClamp},
};

/// Why an interface could not be clamped.
#[derive(Debug, thiserror::Error)]
pub enum ClampError {
    #[error("interface {0} carries packets netbpf cannot parse (neither Ethernet nor plain IP)")]
    UnsupportedLink(String),
    #[error("more than {MAX_MSS_INTERFACES} interfaces to clamp")]
    TooManyInterfaces,
    #[error("entering network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} changed while the MSS clamp was attached to it")]
    Renamed(String),
    #[error("listing the interfaces again")]
    Listing(#[source] std::io::Error),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// An interface the clamp is attached to.
#[derive(Debug)]
struct Clamped {
    name: String,
    /// Index of the policy's clamp that matched it.
    clamp: usize,
    slot: u32,
    links: MssLinks,
}

/// The clamps of a policy and the interfaces they are attached to.
pub struct MssClamper {
    clamps: Vec<MssClamp>,
    /// Where the interfaces are; None: netbpf's own namespace.
    netns: Option<PathBuf>,
    /// ifindex -> what is attached there.
    clamped: BTreeMap<u32, Clamped>,
    free_slots: BTreeSet<u32>,
}

impl MssClamper {
    #[must_use]
    pub fn new(clamps: Vec<MssClamp>, netns: Option<&Path>) -> Self {
        Self {
            clamps,
            netns: netns.map(Path::to_owned),
            clamped: BTreeMap::new(),
            free_slots: (0..MAX_MSS_INTERFACES).collect(),
        }
    }

    /// Whether the policy clamps anything at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.clamps.is_empty()
    }

    /// Follows one change: attaches to an interface that a clamp now
    /// matches, detaches from one that none matches any more.
    pub fn handle(&mut self, datapath: &mut Datapath, event: &LinkEvent) -> Result<(), ClampError> {
        match event {
            LinkEvent::Present(interface) => self.interface_present(datapath, interface),
            LinkEvent::Gone(index) => {
                self.release(datapath, *index)?;
                Ok(())
            }
            // A clamp follows interfaces by name, whatever their addresses.
            LinkEvent::Readdressed(_) => Ok(()),
        }
    }

    fn interface_present(
        &mut self,
        datapath: &mut Datapath,
        interface: &Interface,
    ) -> Result<(), ClampError> {
        let wanted = self
            .clamps
            .iter()
            .position(|clamp| clamp.matches(&interface.name));
        if let Some(current) = self.clamped.get_mut(&interface.index) {
            if Some(current.clamp) == wanted {
                current.name.clone_from(&interface.name);
                return Ok(());
            }
            self.release(datapath, interface.index)?;
        }
        let Some(clamp) = wanted else {
            return Ok(());
        };
        let l3_offset = interface
            .l3_offset
            .ok_or_else(|| ClampError::UnsupportedLink(interface.name.clone()))?;
        let mss = match self.clamps[clamp].mss {
            Mss::Fixed(mss) => mss,
            Mss::PathMtu => MSS_PATH_MTU,
        };
        // An interface clamped so already (by the agent before this one)
        // keeps its slot, and its counters.
        let adopted = datapath
            .mss_interface(interface.index)?
            .filter(|config| config.mss == mss && config.l3_offset == l3_offset)
            .map(|config| config.slot)
            .filter(|slot| self.free_slots.remove(slot));
        let slot = match adopted {
            Some(slot) => slot,
            None => self
                .free_slots
                .pop_first()
                .ok_or(ClampError::TooManyInterfaces)?,
        };
        let config = MssConfig {
            mss,
            l3_offset,
            slot,
        };
        let direction = self.clamps[clamp].direction;
        let attached = self.attach(datapath, interface, config, direction);
        match attached {
            Ok(links) => {
                tracing::info!(interface = %interface.name, %direction, mss = %self.clamps[clamp].mss, "clamping MSS");
                self.clamped.insert(
                    interface.index,
                    Clamped {
                        name: interface.name.clone(),
                        clamp,
                        slot,
                        links,
                    },
                );
                Ok(())
            }
            Err(error) => {
                let _ = datapath.remove_mss_interface(interface.index);
                self.free_slots.insert(slot);
                Err(error)
            }
        }
    }

    /// Configures and attaches the clamp on `interface`, in the namespace
    /// of the interfaces.
    fn attach(
        &self,
        datapath: &mut Datapath,
        interface: &Interface,
        config: MssConfig,
        direction: Direction,
    ) -> Result<MssLinks, ClampError> {
        datapath.set_mss_interface(interface.index, config)?;
        netns::in_netns_or_here(self.netns.as_deref(), || {
            let links = datapath.attach_mss(&interface.name, direction)?;
            // The program went to the interface of that name: if the name
            // moved to another interface meanwhile, undo it.
            let now = nix::net::if_::if_nametoindex(interface.name.as_str()).ok();
            if now != Some(interface.index) {
                datapath.detach_mss(links);
                return Err(ClampError::Renamed(interface.name.clone()));
            }
            Ok(links)
        })
        .map_err(|source| ClampError::Netns {
            path: self.netns.clone().unwrap_or_default(),
            source,
        })?
    }

    /// Detaches from interface `index`, if attached.
    fn release(&mut self, datapath: &mut Datapath, index: u32) -> Result<(), DatapathError> {
        let Some(clamped) = self.clamped.remove(&index) else {
            return Ok(());
        };
        // Before TCX, detaching speaks netlink: from inside the namespace.
        let detached =
            netns::in_netns_or_here(self.netns.as_deref(), || datapath.detach_mss(clamped.links));
        if let Err(error) = detached {
            tracing::warn!(%error, interface = %clamped.name, "detaching the MSS clamp");
        }
        self.free_slots.insert(clamped.slot);
        tracing::info!(interface = %clamped.name, "no longer clamping MSS");
        datapath.remove_mss_interface(index)
    }

    /// Lists the interfaces again and applies what changed: after the
    /// kernel dropped interface events (ENOBUFS), the view may be stale.
    pub fn resync(&mut self, datapath: &mut Datapath) -> Result<(), ClampError> {
        let interfaces = netns::in_netns_or_here(self.netns.as_deref(), links::list)
            .and_then(|listed| listed)
            .map_err(ClampError::Listing)?;
        let gone: Vec<u32> = self
            .clamped
            .keys()
            .copied()
            .filter(|index| !interfaces.iter().any(|interface| interface.index == *index))
            .collect();
        for index in gone {
            self.release(datapath, index)?;
        }
        for interface in interfaces {
            if let Err(error) = self.interface_present(datapath, &interface) {
                tracing::warn!(error = format!("{error:#}"), "MSS clamp not applied");
            }
        }
        Ok(())
    }

    /// Forgets what a datapath adopted from pins configures for interfaces
    /// this clamper did not take (gone, renamed, or no longer matched),
    /// with their pinned links.
    pub fn prune(&self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        for (ifindex, _) in datapath.mss_interfaces()? {
            if !self.clamped.contains_key(&ifindex) {
                datapath.remove_mss_interface(ifindex)?;
            }
        }
        datapath.prune_links("mss-");
        Ok(())
    }

    /// Detaches from every interface, from inside their namespace.
    pub fn release_all(&mut self, datapath: &mut Datapath) {
        let indexes: Vec<u32> = self.clamped.keys().copied().collect();
        for index in indexes {
            let _ = self.release(datapath, index);
        }
    }

    /// Each clamp of the policy with the interfaces it is attached to and
    /// their counters.
    pub fn status(
        &self,
        datapath: &Datapath,
    ) -> Result<Vec<(MssClamp, Vec<MssInterfaceStatus>)>, DatapathError> {
        self.clamps
            .iter()
            .enumerate()
            .map(|(index, clamp)| {
                let interfaces = self
                    .clamped
                    .iter()
                    .filter(|(_, clamped)| clamped.clamp == index)
                    .map(|(ifindex, clamped)| {
                        Ok(MssInterfaceStatus {
                            name: clamped.name.clone(),
                            ifindex: *ifindex,
                            attachment: clamped.links.attachment(),
                            stats: datapath.mss_stats(clamped.slot)?,
                        })
                    })
                    .collect::<Result<_, DatapathError>>()?;
                Ok((clamp.clone(), interfaces))
            })
            .collect()
    }
}
