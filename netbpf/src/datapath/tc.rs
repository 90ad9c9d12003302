//! Programs on tc: attached to an interface through a TCX link, pinned
//! where the datapath is (Linux 6.6+), or through a clsact qdisc before.
//! Which one is probed on the interface, not guessed from the version.

use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, LinkOrder},
    tc::{
        NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, qdisc_add_clsact,
        qdisc_detach_program,
    },
};
use netbpf_common::names::program;
use serde::{Deserialize, Serialize};

use super::{Datapath, DatapathError};

/// How tc programs attach to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcAttachment {
    /// A TCX link (Linux 6.6): pinned, it outlives the agent.
    Tcx,
    /// A filter on a clsact qdisc. No pin holds it: a pinned datapath
    /// leaves it attached when the agent stops (the next agent replaces
    /// it, `netbpf uninstall` removes it); an unpinned one takes it along.
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

/// netbpf's tc programs and the hooks they attach to.
const TC_PROGRAMS: [(&str, TcAttachType); 3] = [
    (program::MSS_OUT, TcAttachType::Egress),
    (program::MSS_IN, TcAttachType::Ingress),
    (program::GRANT_GUARD, TcAttachType::Ingress),
];

/// Removes every clsact filter of netbpf's from `interfaces` of the calling
/// thread's network namespace: what a pinned datapath leaves attached
/// before TCX, which no pin holds. Returns how many interfaces had one.
pub fn remove_clsact_filters<'a>(
    interfaces: impl IntoIterator<Item = &'a str>,
) -> Result<usize, TcError> {
    let mut cleaned = 0;
    for interface in interfaces {
        let mut found = false;
        for (program, attach_type) in TC_PROGRAMS {
            found |= detach_filters(interface, attach_type, program)?;
        }
        cleaned += usize::from(found);
    }
    Ok(cleaned)
}

/// Removes the clsact filters of program `name` from `interface`'s
/// `attach_type` hook; whether there were any.
fn detach_filters(interface: &str, attach_type: TcAttachType, name: &str) -> Result<bool, TcError> {
    match qdisc_detach_program(interface, attach_type, name) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(error)) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// One program attached to one interface; detached when handed back to
/// [`Datapath::detach_tc`], or when the interface goes.
#[derive(Debug)]
pub enum TcLink {
    /// An attachment the program holds: it goes with this datapath.
    Owned(&'static str, SchedClassifierLinkId, TcAttachment),
    /// A TCX link pinned under this name: it outlives the agent.
    Pinned(String),
}

impl TcLink {
    /// How the program is attached.
    #[must_use]
    pub fn attachment(&self) -> TcAttachment {
        match self {
            Self::Owned(_, _, attachment) => *attachment,
            Self::Pinned(_) => TcAttachment::Tcx,
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
        // Before TCX (6.6) tc programs hang off a clsact qdisc; one that
        // exists already is as good, and stays when netbpf goes. Only TCX
        // links can be pinned.
        let attachment = TcAttachment::probe(interface);
        let options = || match attachment {
            TcAttachment::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            TcAttachment::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
        };
        if attachment == TcAttachment::Clsact {
            match qdisc_add_clsact(interface) {
                Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
                }
                other => other.map_err(|error| attach_error(error.into()))?,
            }
            // A filter outlives the process that added it: one of this
            // program's left by an agent that was killed is replaced, not
            // run twice.
            detach_filters(interface, attach_type, name)
                .map_err(|error| attach_error(error.into()))?;
        }
        if self.pins.is_none() || attachment == TcAttachment::Clsact {
            return self
                .classifier(name)?
                .attach_with_options(interface, attach_type, options())
                .map(|link| TcLink::Owned(name, link, attachment))
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
            TcLink::Owned(name, link, _) => {
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
