//! Keeps the grant guard on the host side of every container that could
//! forge a granted container's address: every port of the bridges that
//! granted containers' interfaces are ports of (or the granted interface
//! itself, when it is no bridge port). A packet for a host service from a
//! granted address that arrives through another port is dropped there.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{
    datapath::{Datapath, DatapathError, TcLink},
    host::{links::Interface, netns},
};

/// The interfaces the guard is on.
pub struct GrantGuard {
    /// The node's network namespace; None: the agent's own.
    netns: Option<PathBuf>,
    /// ifindex -> its name and the attachment there.
    guarded: BTreeMap<u32, (String, TcLink)>,
}

impl GrantGuard {
    #[must_use]
    pub fn new(netns: Option<&Path>) -> Self {
        Self {
            netns: netns.map(Path::to_owned),
            guarded: BTreeMap::new(),
        }
    }

    /// Guards what `vias` (the host-side interfaces of granted containers)
    /// call for among `interfaces`, and no more.
    pub fn apply(
        &mut self,
        datapath: &mut Datapath,
        vias: &BTreeSet<u32>,
        interfaces: &BTreeMap<u32, Interface>,
    ) {
        let bridges: BTreeSet<u32> = vias
            .iter()
            .filter_map(|via| interfaces.get(via)?.master)
            .collect();
        let wanted: BTreeMap<u32, &Interface> = interfaces
            .iter()
            .filter(|(index, interface)| {
                interface
                    .master
                    .is_some_and(|master| bridges.contains(&master))
                    || (vias.contains(index) && interface.master.is_none())
            })
            .map(|(index, interface)| (*index, interface))
            .collect();
        let gone: Vec<u32> = self
            .guarded
            .iter()
            .filter(|(index, (name, _))| {
                wanted
                    .get(index)
                    .is_none_or(|interface| interface.name != *name)
            })
            .map(|(index, _)| *index)
            .collect();
        for index in gone {
            if let Some((name, link)) = self.guarded.remove(&index) {
                self.detach(datapath, link);
                tracing::info!(interface = %name, "grant guard removed");
            }
        }
        for (index, interface) in wanted {
            if self.guarded.contains_key(&index) {
                continue;
            }
            match self.attach(datapath, &interface.name) {
                Ok(link) => {
                    tracing::info!(interface = %interface.name, "grant guard attached");
                    self.guarded.insert(index, (interface.name.clone(), link));
                }
                // Gone meanwhile, or of a kind tc cannot take: the next
                // interface event tries again.
                Err(error) => {
                    tracing::warn!(interface = %interface.name, error = format!("{error:#}"), "grant guard not attached");
                }
            }
        }
    }

    /// Detaches from every interface.
    pub fn release_all(&mut self, datapath: &mut Datapath) {
        for (_, (_, link)) in std::mem::take(&mut self.guarded) {
            self.detach(datapath, link);
        }
    }

    /// The names of the interfaces guarded.
    #[must_use]
    pub fn interfaces(&self) -> Vec<String> {
        self.guarded
            .values()
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn attach(&self, datapath: &mut Datapath, interface: &str) -> Result<TcLink, DatapathError> {
        netns::in_netns_or_here(self.netns.as_deref(), || {
            datapath.attach_grant_guard(interface)
        })
        .map_err(|source| DatapathError::TcAttach {
            interface: interface.to_owned(),
            source: Box::new(source.into()),
        })?
    }

    /// Detaches, from inside the namespace (clsact speaks netlink there).
    fn detach(&self, datapath: &mut Datapath, link: TcLink) {
        let _ = netns::in_netns_or_here(self.netns.as_deref(), || datapath.detach_tc(link));
    }
}
