//! Filters of a clsact qdisc: how tc programs attach to an interface
//! before TCX (Linux 6.6). No pin holds them and no process: netbpf finds
//! its own by program name, puts a new program in them in place, and
//! removes them itself.

use std::io;

use aya::programs::{
    Link, ProgramError, SchedClassifier, TcAttachType,
    tc::{
        NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
        qdisc_detach_program,
    },
};
use netbpf_common::names::program;
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{self, TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
};

use crate::host::rtnetlink;

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

/// A filter of a clsact qdisc that runs one of netbpf's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClsactFilter {
    interface: String,
    attach_type: TcAttachType,
    priority: u16,
    handle: u32,
}

impl ClsactFilter {
    /// The filters that run netbpf's program `name` on the `attach_type`
    /// hook of `interface`'s clsact qdisc, in the calling thread's network
    /// namespace.
    fn running(interface: &str, attach_type: TcAttachType, name: &str) -> io::Result<Vec<Self>> {
        let mut request = TcMessage::default();
        let ifindex = nix::net::if_::if_nametoindex(interface)?;
        request.header.index = i32::try_from(ifindex).map_err(io::Error::other)?;
        request.header.parent = tc::TcHandle {
            major: tc::TcHandle::CLSACT.major,
            minor: match attach_type {
                TcAttachType::Ingress => tc::TcHandle::MIN_INGRESS,
                _ => tc::TcHandle::MIN_EGRESS,
            },
        };
        let runs_name = |message: &TcMessage| {
            message.attributes.iter().any(|attribute| {
                let TcAttribute::Options(options) = attribute else {
                    return false;
                };
                options.iter().any(|option| {
                    matches!(option, TcOption::Bpf(TcFilterBpfOption::ProgName(running)) if running == name)
                })
            })
        };
        Ok(
            rtnetlink::dump(RouteNetlinkMessage::GetTrafficFilter(request))?
                .into_iter()
                .filter_map(|message| match message {
                    RouteNetlinkMessage::NewTrafficFilter(filter) if runs_name(&filter) => {
                        Some(Self {
                            interface: interface.to_owned(),
                            attach_type,
                            // `tcm_info`: the priority, then the protocol.
                            priority: (filter.header.info >> 16) as u16,
                            handle: filter.header.handle.into(),
                        })
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// Takes the filter out of aya's hands: aya deletes a filter when its
    /// link drops, by index in whatever namespace the dropping thread is
    /// in, so a pinned datapath's filters would go when the agent stops,
    /// and one attached in another namespace would be looked for in this
    /// one. netbpf removes its filters itself, where they are.
    fn taken_from(interface: &str, link: SchedClassifierLink) -> Result<Self, ProgramError> {
        let filter = Self {
            interface: interface.to_owned(),
            attach_type: link.attach_type()?,
            priority: link.priority()?,
            handle: link.handle()?.into(),
        };
        // A netlink link holds no descriptor, only the numbers copied
        // above: forgetting it leaks nothing and skips the deletion.
        std::mem::forget(link);
        Ok(filter)
    }

    /// The filter as aya knows attachments: what a program can be put in.
    fn link(&self) -> Result<SchedClassifierLink, TcError> {
        SchedClassifierLink::attached(
            &self.interface,
            self.attach_type,
            self.priority,
            TcHandle::from(self.handle),
            None,
        )
        .map_err(TcError::IoError)
    }

    /// Deletes the filter from its interface in the calling thread's
    /// network namespace.
    pub fn remove(&self) -> Result<(), ProgramError> {
        self.link()?.detach()
    }
}

/// Runs tc `program` (called `name`) in a filter of `interface`'s clsact
/// qdisc, on `attach_type`. A filter of this program's that is there
/// already (left by the agent before) gets the program in place,
/// atomically: no packet passes between the old program and the new.
/// Removing it and adding another would let some through unclamped.
pub(super) fn attach_clsact_filter(
    program: &mut SchedClassifier,
    name: &str,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<ClsactFilter, ProgramError> {
    match qdisc_add_clsact(interface) {
        Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let existing = ClsactFilter::running(interface, attach_type, name).map_err(TcError::IoError)?;
    let id = match existing.first() {
        Some(filter) => program.attach_to_link(filter.link()?)?,
        None => program.attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::Netlink(NlOptions::default()),
        )?,
    };
    let filter = ClsactFilter::taken_from(interface, program.take_link(id)?)?;
    // A program run twice would count every handshake twice.
    for stale in existing.iter().skip(1) {
        stale.remove()?;
    }
    Ok(filter)
}
