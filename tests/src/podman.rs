//! `podman run` as the tests run it: with runc and cgroupfs (no systemd
//! to ask in the kernel VMs), below a test's cgroup, on a network
//! namespace of the test's own, within this sandbox's ulimits.

use crate::{Cgroup, Netns};

/// The arguments of `podman` that start `image` running `command` as
/// `name`, detached, in `cgroup`, on `netns`'s network; `global` go
/// before `run`, `options` after it.
pub fn podman_run_args(
    name: &str,
    cgroup: &Cgroup,
    netns: &Netns,
    global: &[&str],
    options: &[&str],
    image: &str,
    command: &[&str],
) -> anyhow::Result<Vec<String>> {
    // --cgroup-parent is a path from the cgroup v2 root.
    let parent = cgroup.runtime_parent()?;
    let network = format!("ns:{}", netns.path().display());
    let run = [
        "run",
        "--detach",
        "--name",
        name,
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--cgroup-parent",
        &parent,
        "--network",
        &network,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    Ok(global
        .iter()
        .chain(&run)
        .chain(options)
        .chain(&[image])
        .chain(command)
        .map(|&argument| argument.to_owned())
        .collect())
}
