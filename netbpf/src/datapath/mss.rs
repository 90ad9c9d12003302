//! The MSS clamp on tc: per-interface configuration and counters, and the
//! program attached to an interface's ingress or egress (TCX on 6.6+, a
//! clsact qdisc before).

use aya::{
    maps::HashMap,
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
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
pub struct MssLinks(Vec<(&'static str, SchedClassifierLinkId)>);

impl Datapath {
    /// Configures the clamp of interface `ifindex`, with counters from
    /// zero in `config.slot`. Call before [`Self::attach_mss`].
    pub fn set_mss_interface(
        &mut self,
        ifindex: u32,
        config: MssConfig,
    ) -> Result<(), DatapathError> {
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
        // exists already is as good, and stays when netbpf goes.
        if KernelVersion::current().is_ok_and(|version| version < KernelVersion::new(6, 6, 0)) {
            match qdisc_add_clsact(interface) {
                Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
                }
                other => other.map_err(|error| attach_error(error.into()))?,
            }
        }
        let mut links = MssLinks(Vec::new());
        let attach_types = [
            (direction.egress(), MSS_OUT_PROGRAM, TcAttachType::Egress),
            (direction.ingress(), MSS_IN_PROGRAM, TcAttachType::Ingress),
        ];
        for (wanted, name, attach_type) in attach_types {
            if !wanted {
                continue;
            }
            match self.classifier(name)?.attach(interface, attach_type) {
                Ok(link) => links.0.push((name, link)),
                Err(error) => {
                    // Leave nothing half attached.
                    self.detach_mss(links);
                    return Err(attach_error(error));
                }
            }
        }
        Ok(links)
    }

    /// Detaches the clamp from an interface. An interface that went away
    /// took its attachments with it: nothing to report then.
    pub fn detach_mss(&mut self, links: MssLinks) {
        for (name, link) in links.0 {
            if let Ok(program) = self.classifier(name) {
                let _ = program.detach(link);
            }
        }
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
