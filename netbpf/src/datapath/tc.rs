//! Programs on tc: attached to an interface through a TCX link, pinned
//! where the datapath is (Linux 6.6+), or through a clsact qdisc before.

use aya::{
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{SchedClassifierLinkId, TcError, qdisc_add_clsact},
    },
    util::KernelVersion,
};

use super::{Datapath, DatapathError};

/// One program attached to one interface; detached when handed back to
/// [`Datapath::detach_tc`], or when the interface goes.
#[derive(Debug)]
pub enum TcLink {
    /// A link the program holds: it goes with this datapath.
    Owned(&'static str, SchedClassifierLinkId),
    /// A TCX link pinned under this name: it outlives the agent.
    Pinned(String),
}

impl Datapath {
    /// Attaches the tc program `name` to `interface` of the calling thread's
    /// network namespace, on `attach_type`. Pinned as `link_name` (where
    /// `{ifindex}` is the interface's index) when the datapath is.
    pub(super) fn attach_tc(
        &mut self,
        name: &'static str,
        interface: &str,
        attach_type: TcAttachType,
        link_name: &str,
    ) -> Result<TcLink, DatapathError> {
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
        if self.pins.is_none() || !tcx {
            return self
                .classifier(name)?
                .attach(interface, attach_type)
                .map(|link| TcLink::Owned(name, link))
                .map_err(attach_error);
        }
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(|errno| attach_error(TcError::IoError(errno.into()).into()))?;
        let link_name = link_name.replace("{ifindex}", &ifindex.to_string());
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
        })?;
        Ok(TcLink::Pinned(link_name))
    }

    /// Detaches a tc program from its interface. An interface that went
    /// away took its attachments with it: nothing to report then.
    pub fn detach_tc(&mut self, link: TcLink) {
        match link {
            TcLink::Owned(name, link) => {
                if let Ok(program) = self.classifier(name) {
                    let _ = program.detach(link);
                }
            }
            TcLink::Pinned(name) => self.unpin_link(&name),
        }
    }

    /// The loaded tc program `name`.
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
