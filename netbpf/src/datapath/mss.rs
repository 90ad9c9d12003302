//! The MSS clamp on tc: per-interface configuration and counters, and the
//! program attached to an interface's ingress or egress (TCX on 6.6+, a
//! clsact qdisc before).

use aya::{
    maps::HashMap,
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{SchedClassifierLinkId, TcError, qdisc_add_clsact},
    },
    util::KernelVersion,
};
use netbpf_common::{MssConfig, MssStats};

use super::{Datapath, DatapathError, map_error};
use crate::policy::Direction;

/// The tc program that clamps MSS on egress.
pub const MSS_OUT_PROGRAM: &str = "netbpf_mss_out";
/// The tc program that clamps MSS on ingress.
pub const MSS_IN_PROGRAM: &str = "netbpf_mss_in";

/// The attachments of the clamp to one interface; detached when handed
/// back to [`Datapath::detach_mss`], or when the interface goes.
#[derive(Debug)]
pub enum MssLinks {
    /// Links the programs hold: they go with this datapath.
    Owned(Vec<(&'static str, SchedClassifierLinkId)>),
    /// TCX links pinned under these names: they outlive the agent.
    Pinned(Vec<String>),
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
        self.reset_counters::<MssStats>("MSS_STATS", [config.slot])?;
        let mut interfaces: HashMap<_, u32, MssConfig> = self.map_mut("MSS_INTERFACES")?;
        interfaces
            .insert(ifindex, config, 0)
            .map_err(map_error("MSS_INTERFACES"))
    }

    /// Forgets the clamp of interface `ifindex`.
    pub fn remove_mss_interface(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut interfaces: HashMap<_, u32, MssConfig> = self.map_mut("MSS_INTERFACES")?;
        match interfaces.remove(&ifindex) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(error) => Err(map_error("MSS_INTERFACES")(error)),
        }
    }

    /// Attaches the clamp to `interface` of the calling thread's network
    /// namespace, in `direction`.
    pub fn attach_mss(
        &mut self,
        interface: &str,
        direction: Direction,
    ) -> Result<MssLinks, DatapathError> {
        let attach_error = |source: ProgramError| DatapathError::TcAttach {
            interface: interface.to_owned(),
            source: Box::new(source),
        };
        // Before TCX (6.6) tc programs hang off a clsact qdisc; one that
        // exists already is as good, and stays when netbpf goes. Only TCX
        // links can be pinned.
        let tcx =
            KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0));
        if !tcx {
            match qdisc_add_clsact(interface) {
                Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
                }
                other => other.map_err(|error| attach_error(error.into()))?,
            }
        }
        let attach_types = [
            (
                direction.egress(),
                MSS_OUT_PROGRAM,
                TcAttachType::Egress,
                "egress",
            ),
            (
                direction.ingress(),
                MSS_IN_PROGRAM,
                TcAttachType::Ingress,
                "ingress",
            ),
        ];
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(|errno| attach_error(TcError::IoError(errno.into()).into()))?;
        let mut owned = Vec::new();
        let mut pinned = Vec::new();
        for (wanted, name, attach_type, way) in attach_types {
            if !wanted {
                continue;
            }
            let attached = if self.pins.is_some() && tcx {
                let link_name = format!("mss-{ifindex}-{way}");
                self.attach_linked(name, link_name.clone(), |program| {
                    let program: &mut SchedClassifier = program
                        .try_into()
                        .map_err(|_| DatapathError::MissingProgram(name))?;
                    let id = program
                        .attach(interface, attach_type)
                        .map_err(attach_error)?;
                    let link = program.take_link(id).map_err(attach_error)?;
                    FdLink::try_from(link).map_err(|error| DatapathError::Link {
                        name: name.to_owned(),
                        source: std::io::Error::other(error.to_string()),
                    })
                })
                .map(|()| pinned.push(link_name))
            } else {
                self.classifier(name)?
                    .attach(interface, attach_type)
                    .map(|link| owned.push((name, link)))
                    .map_err(attach_error)
            };
            if let Err(error) = attached {
                // Leave nothing half attached.
                self.detach_mss(MssLinks::Owned(owned));
                self.detach_mss(MssLinks::Pinned(pinned));
                return Err(error);
            }
        }
        Ok(if pinned.is_empty() {
            MssLinks::Owned(owned)
        } else {
            MssLinks::Pinned(pinned)
        })
    }

    /// Detaches the clamp from an interface. An interface that went away
    /// took its attachments with it: nothing to report then.
    pub fn detach_mss(&mut self, links: MssLinks) {
        match links {
            MssLinks::Owned(links) => {
                for (name, link) in links {
                    if let Ok(program) = self.classifier(name) {
                        let _ = program.detach(link);
                    }
                }
            }
            MssLinks::Pinned(names) => {
                for name in names {
                    self.unpin_link(&name);
                }
            }
        }
    }

    /// The clamp configured for interface `ifindex`, if one is: what a
    /// new agent adopts (its counter slot among it).
    pub fn mss_interface(&self, ifindex: u32) -> Result<Option<MssConfig>, DatapathError> {
        let interfaces: HashMap<_, u32, MssConfig> = self.map("MSS_INTERFACES")?;
        match interfaces.get(&ifindex, 0) {
            Ok(config) => Ok(Some(config)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(map_error("MSS_INTERFACES")(error)),
        }
    }

    /// Every interface the clamp is configured for, with its configuration.
    pub fn mss_interfaces(&self) -> Result<Vec<(u32, MssConfig)>, DatapathError> {
        let interfaces: HashMap<_, u32, MssConfig> = self.map("MSS_INTERFACES")?;
        interfaces
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error("MSS_INTERFACES"))
    }

    /// The counters in `slot`, summed over CPUs.
    pub fn mss_stats(&self, slot: u32) -> Result<MssStats, DatapathError> {
        self.summed_counters("MSS_STATS", slot)
    }

    /// The loaded clamp program of one way: [`MSS_OUT_PROGRAM`] or
    /// [`MSS_IN_PROGRAM`].
    pub fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DatapathError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        program
            .try_into()
            .map_err(|_| DatapathError::MissingProgram(name))
    }
}
