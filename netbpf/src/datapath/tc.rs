//! Programs on tc: attached to an interface through a TCX link, pinned
//! where the datapath is (Linux 6.6+), or through a clsact qdisc before.
//! Which one is probed on the interface, not guessed from the version.

use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, LinkOrder},
    tc::{SchedClassifierLinkId, TcAttachOptions, TcError},
};
use serde::{Deserialize, Serialize};

use super::{
    Datapath, DatapathError,
    clsact::{ClsactFilter, attach_clsact_filter},
};

/// How tc programs attach to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcAttachment {
    /// A TCX link (Linux 6.6): pinned, it outlives the agent.
    Tcx,
    /// A filter on a clsact qdisc. No pin holds it, and no process: it
    /// stays until netbpf removes it (an unpinned agent when it stops,
    /// `netbpf uninstall` for a pinned one). The next agent replaces its
    /// program in place.
    Clsact,
}

impl TcAttachment {
    /// How programs attach to `interface` of the calling thread's network
    /// namespace: a kernel with TCX answers a TCX query on it, one without
    /// refuses the query's attach type.
    #[must_use]
    pub fn probe(interface: &str) -> Self {
        if SchedClassifier::query_tcx(interface, TcAttachType::Ingress).is_ok() {
            Self::Tcx
        } else {
            Self::Clsact
        }
    }
}

impl std::fmt::Display for TcAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcx => "TCX link",
            Self::Clsact => "clsact qdisc",
        })
    }
}

/// One program attached to one interface; detached when handed back to
/// [`Datapath::detach_tc`], or when the interface goes.
#[derive(Debug)]
pub enum TcLink {
    /// A TCX link the program holds: it goes with this datapath.
    Owned(&'static str, SchedClassifierLinkId),
    /// A TCX link pinned under this name: it outlives the agent.
    Pinned(String),
    /// A filter of a clsact qdisc: it stays until detached.
    Filter(ClsactFilter),
}

impl TcLink {
    /// How the program is attached.
    #[must_use]
    pub fn attachment(&self) -> TcAttachment {
        match self {
            Self::Owned(..) | Self::Pinned(_) => TcAttachment::Tcx,
            Self::Filter(_) => TcAttachment::Clsact,
        }
    }
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
        // Before TCX (6.6) tc programs run in filters of a clsact qdisc,
        // which no pin holds. Only TCX links can be pinned.
        let attachment = TcAttachment::probe(interface);
        if attachment == TcAttachment::Clsact {
            return attach_clsact_filter(self.classifier(name)?, name, interface, attach_type)
                .map(TcLink::Filter)
                .map_err(attach_error);
        }
        let options = || TcAttachOptions::TcxOrder(LinkOrder::default());
        if self.pins.is_none() {
            return self
                .classifier(name)?
                .attach_with_options(interface, attach_type, options())
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
                .attach_with_options(interface, attach_type, options())
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
            TcLink::Filter(filter) => {
                let _ = filter.remove();
            }
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
