//! Throw-away network topologies for netbpf's privileged tests and demo:
//! network namespaces, veth pairs, bridges, cgroups and processes placed in
//! them. Every guard removes what it created when dropped, also when a test
//! panics; every name is unique, so tests run in parallel.
//!
//! Nothing here touches the host's own network namespace beyond creating
//! veth pairs that move straight into test namespaces, and nothing attaches
//! anywhere but under the cgroup subtree of a [`Cgroup`] made here.

mod agent;
mod agent_setup;
mod bpftool;
mod cgroup;
mod containerd;
mod docker;
mod docker_node;
mod doctor;
mod images;
pub mod kernel;
mod kernel_maps;
mod metrics;
mod netns;
pub mod packet;
mod packet_socket;
pub mod pod_spec;
mod podman;
mod process;
mod site;
mod topology;

pub use self::{
    agent::{AgentProcess, NetbpfRun, applied, netbpf_binary, netbpf_next_binary},
    agent_setup::{AgentOptions, AgentSetup},
    bpftool::{bpftool_json, links_of},
    cgroup::Cgroup,
    containerd::Containerd,
    docker::DockerDaemon,
    docker_node::{DockerNode, NODE_BRIDGE, NODE_IMAGE, NODE_PUBLISHED},
    doctor::{doctor, doctor_config, findings, proposed_policy},
    images::{busybox_rootfs, ensure_podman_image, ensure_podman_infra_image},
    kernel_maps::{KernelMaps, cgroup_id, pinned_values},
    metrics::Scrape,
    netns::Netns,
    packet_socket::{PacketSocket, mac_address},
    podman::podman_run_args,
    process::{Process, Spawn, run_checked},
    site::{Site, wait_for_listener},
    topology::{BRIDGE_V4, BRIDGE_V6, DesktopTopology, Place},
};

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test of any process on this machine uses at the same
/// time: `prefix`, this process id and a counter, at most 15 characters
/// (the limit of interface names).
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Base 36 keeps a 7-character prefix within the limit for any pid.
    let name = format!(
        "{prefix}{}x{}",
        base36(std::process::id()),
        base36(NEXT.fetch_add(1, Ordering::Relaxed))
    );
    assert!(
        name.len() <= 15,
        "{name} is longer than an interface name may be"
    );
    name
}

/// `number` in base 36 (digits, then lowercase letters).
fn base36(mut number: u32) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit(number % 36, 36).expect("a base-36 digit"));
        number /= 36;
        if number == 0 {
            return digits.iter().rev().collect();
        }
    }
}

/// Unmounts, lazily and deepest first, whatever is mounted below `dir`
/// (what a container runtime of a test left: layers, namespace files).
pub(crate) fn unmount_below(dir: &std::path::Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| std::path::Path::new(point).starts_with(dir))
        .collect();
    mounts.sort_unstable_by_key(|point| std::cmp::Reverse(point.len()));
    for point in mounts {
        let _ = std::process::Command::new("umount")
            .args(["-l", point])
            .status();
    }
}

/// How many random cases each differential fuzz test runs: 100,000, or
/// `NETBPF_FUZZ_CASES` (fewer in the emulated kernel VMs, more for a long
/// local run).
#[must_use]
pub fn fuzz_cases() -> u32 {
    std::env::var("NETBPF_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(100_000)
}

/// Fails with a clear message unless this process may do what the
/// privileged tests do (load BPF programs, create namespaces and cgroups).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "netbpf's privileged tests load eBPF programs and create network namespaces and cgroups: \
         run them as root (`sudo cargo xtask test`)"
    );
}
