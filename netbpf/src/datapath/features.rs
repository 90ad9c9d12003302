//! The kernel features netbpf uses, each probed by loading a trivial
//! program for it (never attached), not guessed from the kernel's version:
//! the agent probes them at start, `netbpf doctor` reports them. (TCX is
//! probed on each interface a tc program attaches to: `TcAttachment`.)

use std::{fs::File, io, os::fd::AsFd as _};

use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use netbpf_common::names::program;

use super::{cgroup_hooks, sys};

/// A kernel feature, how to probe it, and what netbpf does with it.
pub struct Feature {
    pub name: &'static str,
    probe: fn() -> io::Result<()>,
    /// What netbpf does with it, and the kernel that brought it.
    pub serves: &'static str,
    /// What netbpf cannot do without it.
    pub lost: &'static str,
    /// Whether netbpf cannot run at all without it.
    pub required: bool,
}

impl Feature {
    /// Whether this kernel has the feature; why not, if it has not.
    pub fn probe(&self) -> io::Result<()> {
        (self.probe)()
    }
}

/// The feature host services need.
pub const SK_LOOKUP: &str = "sk_lookup";

pub const FEATURES: [Feature; 5] = [
    Feature {
        name: "socket address hooks",
        probe: || load_for(program::CONNECT4),
        serves: "connect, sendmsg, recvmsg and bind rewrite destinations and ports (Linux 4.17)",
        lost: "netbpf cannot run here",
        required: true,
    },
    Feature {
        name: "getpeername hooks",
        probe: || load_for(program::GETPEER4),
        serves: "getpeername() shows the address a forwarded socket dialed (Linux 5.8)",
        lost: "netbpf cannot run here",
        required: true,
    },
    Feature {
        name: "socket release hook",
        probe: || load_for(program::RELEASE),
        serves: "a scope's own listeners are counted until they close (Linux 5.9)",
        lost: "netbpf cannot run here",
        required: true,
    },
    Feature {
        name: SK_LOOKUP,
        probe: || {
            sys::load_trivial(
                "nb_probe",
                bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP as u32,
                bpf_attach_type::BPF_SK_LOOKUP as u32,
            )
            .map(drop)
        },
        serves: "host services: connections handed to loopback-only listeners (Linux 5.9; 5.17 for the ingress interface the grants check)",
        lost: "host services are unavailable",
        required: false,
    },
    Feature {
        name: "cgroup bpf links",
        probe: probe_cgroup_links,
        serves: "the socket programs attach with links, pinned to outlive the agent (Linux 5.7)",
        lost: "netbpf cannot pin its attachments",
        required: true,
    },
];

/// A feature this kernel lacks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unavailable {
    pub feature: String,
    /// Why the probe failed.
    pub error: String,
    /// What netbpf cannot do here.
    pub lost: String,
}

/// Probes every feature. Fails, naming the first, when one netbpf cannot
/// run without is missing; otherwise the ones missing.
pub fn probe_all() -> Result<Vec<Unavailable>, FeatureError> {
    let mut unavailable = Vec::new();
    for feature in &FEATURES {
        if let Err(error) = feature.probe() {
            if feature.required {
                return Err(FeatureError {
                    feature: feature.name,
                    serves: feature.serves,
                    source: error,
                });
            }
            unavailable.push(Unavailable {
                feature: feature.name.to_owned(),
                error: error.to_string(),
                lost: feature.lost.to_owned(),
            });
        }
    }
    Ok(unavailable)
}

/// A feature netbpf cannot run without is missing.
#[derive(Debug, thiserror::Error)]
#[error("this kernel lacks {feature}, which netbpf cannot run without: {serves}")]
pub struct FeatureError {
    feature: &'static str,
    serves: &'static str,
    #[source]
    source: io::Error,
}

/// Loads a trivial program for the hook of netbpf's socket `program`.
fn load_for(program: &str) -> io::Result<()> {
    let hook = cgroup_hooks()
        .find(|hook| hook.program == program)
        .ok_or_else(|| io::Error::other(format!("netbpf has no program {program}")))?;
    sys::load_trivial("nb_probe", hook.prog_type(), hook.attach_type as u32).map(drop)
}

/// Asks for a link of a trivial connect program to a file that is no
/// cgroup: a kernel with cgroup links refuses the target (`EBADF`), one
/// without refuses the command (`EINVAL`). Nothing is attached.
fn probe_cgroup_links() -> io::Result<()> {
    let attach_type = bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32;
    let program = sys::load_trivial(
        "nb_probe",
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32,
        attach_type,
    )?;
    let not_a_cgroup = File::open("/dev/null")?;
    match sys::link_create(program.as_fd(), not_a_cgroup.as_fd(), attach_type) {
        Err(error) if error.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(error) => Err(error),
        Ok(_) => Err(io::Error::other("the kernel linked a program to /dev/null")),
    }
}
