//! The MSS clamp on tc: per-interface configuration and counters, and the
//! program attached to an interface's ingress or egress (TCX on 6.6+, a
//! clsact qdisc before).

use aya::{maps::HashMap, programs::TcAttachType};
use netbpf_common::{
    MssConfig, MssStats,
    names::{self, program},
};

use super::{
    Datapath, DatapathError, map_error,
    tc::{TcAttachment, TcLink},
};
use crate::policy::Direction;

/// The attachments of the clamp to one interface; detached when handed
/// back to [`Datapath::detach_mss`], or when the interface goes.
#[derive(Debug)]
pub struct MssLinks(Vec<TcLink>);

impl MssLinks {
    /// How the clamp is attached (every way of one interface alike).
    #[must_use]
    pub fn attachment(&self) -> Option<TcAttachment> {
        self.0.first().map(TcLink::attachment)
    }
}

impl Datapath {
    /// Configures the clamp of interface `ifindex`, with counters from
    /// zero in `config.slot` unless it is configured so already (adopted
    /// from a pinned datapath). Call before [`Self::attach_mss`].
    pub fn set_mss_interface(
        &mut self,
        ifindex: u32,
        config: MssConfig,
    ) -> Result<(), DatapathError> {
        if self.mss_interface(ifindex)? == Some(config) {
            return Ok(());
        }
        self.reset_counters::<MssStats>(names::MSS_COUNTERS, [config.slot])?;
        let mut interfaces: HashMap<_, u32, MssConfig> =
            self.map_mut(names::MSS_INTERFACES.name)?;
        interfaces
            .insert(ifindex, config, 0)
            .map_err(map_error(names::MSS_INTERFACES.name))
    }

    /// Forgets the clamp of interface `ifindex`.
    pub fn remove_mss_interface(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut interfaces: HashMap<_, u32, MssConfig> =
            self.map_mut(names::MSS_INTERFACES.name)?;
        match interfaces.remove(&ifindex) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(error) => Err(map_error(names::MSS_INTERFACES.name)(error)),
        }
    }

    /// Attaches the clamp to `interface` of the calling thread's network
    /// namespace, in `direction`.
    pub fn attach_mss(
        &mut self,
        interface: &str,
        direction: Direction,
    ) -> Result<MssLinks, DatapathError> {
        let ways = [
            (
                direction.egress(),
                program::MSS_OUT,
                TcAttachType::Egress,
                "egress",
            ),
            (
                direction.ingress(),
                program::MSS_IN,
                TcAttachType::Ingress,
                "ingress",
            ),
        ];
        let mut links = Vec::new();
        for (wanted, name, attach_type, way) in ways {
            if !wanted {
                continue;
            }
            match self.attach_tc(
                name,
                interface,
                attach_type,
                &format!("mss-{{ifindex}}-{way}"),
            ) {
                Ok(link) => links.push(link),
                Err(error) => {
                    // Leave nothing half attached.
                    self.detach_mss(MssLinks(links));
                    return Err(error);
                }
            }
        }
        Ok(MssLinks(links))
    }

    /// Detaches the clamp from an interface. An interface that went away
    /// took its attachments with it: nothing to report then.
    pub fn detach_mss(&mut self, links: MssLinks) {
        for link in links.0 {
            self.detach_tc(link);
        }
    }

    /// The clamp configured for interface `ifindex`, if one is: what a
    /// new agent adopts (its counter slot among it).
    pub fn mss_interface(&self, ifindex: u32) -> Result<Option<MssConfig>, DatapathError> {
        let interfaces: HashMap<_, u32, MssConfig> = self.map(names::MSS_INTERFACES.name)?;
        match interfaces.get(&ifindex, 0) {
            Ok(config) => Ok(Some(config)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(map_error(names::MSS_INTERFACES.name)(error)),
        }
    }

    /// Every interface the clamp is configured for, with its configuration.
    pub fn mss_interfaces(&self) -> Result<Vec<(u32, MssConfig)>, DatapathError> {
        let interfaces: HashMap<_, u32, MssConfig> = self.map(names::MSS_INTERFACES.name)?;
        interfaces
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(names::MSS_INTERFACES.name))
    }

    /// The counters in `slot`, summed over CPUs.
    pub fn mss_stats(&self, slot: u32) -> Result<MssStats, DatapathError> {
        self.summed_counters(names::MSS_COUNTERS, slot)
    }
}
