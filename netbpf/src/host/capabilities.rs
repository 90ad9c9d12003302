//! The capabilities the agent needs, each with what needs it, checked at
//! start: a node that withholds one gets an error naming it, not a failure
//! deep in a later step.

use caps::{CapSet, Capability};

/// Each capability the agent uses, and the operations that need it.
pub const REQUIRED: [(Capability, &str); 5] = [
    (
        Capability::CAP_BPF,
        "loading the eBPF programs and creating, pinning and updating their maps",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "loading and attaching the socket, tc and sk_lookup programs, and adding the clsact qdisc of an MSS clamp (netlink)",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "entering containers' network namespaces (setns) to read their cookies, addresses and sockets",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "reading other processes' namespaces and descriptor links (/proc/PID/ns, /proc/PID/fd) and taking the sockets they bound before netbpf started (pidfd_getfd)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "listing /proc/PID/fd of processes of other users, to find the sockets they hold",
    ),
];

/// Each of [`REQUIRED`], what needs it, and whether this process holds
/// it in its effective set.
pub fn held() -> anyhow::Result<Vec<(Capability, &'static str, bool)>> {
    let effective = caps::read(None, CapSet::Effective)
        .map_err(|error| anyhow::anyhow!("reading this process's capabilities: {error}"))?;
    Ok(REQUIRED
        .iter()
        .map(|(capability, needed_for)| (*capability, *needed_for, effective.contains(capability)))
        .collect())
}

/// Fails, naming each missing capability and what needs it, unless this
/// process holds all of [`REQUIRED`] in its effective set.
pub fn check() -> anyhow::Result<()> {
    let missing: Vec<String> = held()?
        .into_iter()
        .filter(|(_, _, held)| !held)
        .map(|(capability, needed_for, _)| format!("{capability} (for {needed_for})"))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "netbpf lacks {}: grant it (systemd: AmbientCapabilities= and CapabilityBoundingSet=; Kubernetes: securityContext.capabilities.add; see docs/deploy.md)",
        missing.join(" and ")
    );
    Ok(())
}
