//! Can netbpf run here: the kernel, BTF, cgroup v2, bpffs, the
//! capabilities held, and each kernel feature netbpf uses, probed
//! (`host::features`), not guessed from the kernel's version.

use std::path::Path;

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::{Area, Report, Scene, State};
use crate::{
    datapath::{TcAttachment, features::FEATURES},
    host::{capabilities, cgroup, netns},
};

pub fn check(scene: &Scene<'_>, report: &mut Report) {
    let mut add =
        |name: &str, state: State, detail: String| report.check(Area::Host, name, state, detail);
    let kernel = nix::sys::utsname::uname().map_or_else(
        |error| format!("unknown ({error})"),
        |name| name.release().to_string_lossy().into_owned(),
    );
    add("kernel", State::Info, format!("Linux {kernel}"));
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        add("BTF", State::Ok, "/sys/kernel/btf/vmlinux".to_owned());
    } else {
        add(
            "BTF",
            State::Info,
            "the kernel carries no BTF (/sys/kernel/btf/vmlinux): netbpf does not need it, bpftool's views of its maps do".to_owned(),
        );
    }
    let layout = match cgroup::is_hybrid() {
        Ok(true) => "hybrid: cgroup v1 controllers beside it",
        Ok(false) => "unified: cgroup v2 alone",
        Err(_) => "layout unknown",
    };
    add(
        "cgroup v2",
        State::Ok,
        format!("mounted at {} ({layout})", scene.node.mount.display()),
    );
    add(
        "cgroup root",
        State::Info,
        format!(
            "{}: netbpf acts on sockets below it",
            scene.node.cgroup_root.display()
        ),
    );
    add_bpffs(scene, &mut add);
    match capabilities::held() {
        Ok(held) => {
            for (capability, needed_for, held) in held {
                let (state, detail) = if held {
                    (State::Ok, format!("held: {needed_for}"))
                } else {
                    (
                        State::Failed,
                        format!("missing: the agent needs it for {needed_for}"),
                    )
                };
                add(&capability.to_string(), state, detail);
            }
        }
        Err(error) => add("capabilities", State::Failed, format!("{error:#}")),
    }
    for feature in &FEATURES {
        let (state, detail) = match feature.probe() {
            Ok(()) => (State::Ok, format!("available: {}", feature.serves)),
            Err(error) => (
                State::Failed,
                format!("unavailable ({error}): {}", feature.lost),
            ),
        };
        add(feature.name, state, detail);
    }
    let tcx = netns::in_netns(&scene.node.netns, || TcAttachment::probe("lo"));
    let (state, detail) = match tcx {
        Ok(TcAttachment::Tcx) => (
            State::Ok,
            "available (Linux 6.6): MSS clamps attach with TCX links".to_owned(),
        ),
        Ok(TcAttachment::Clsact) => (
            State::Warning,
            "unavailable: MSS clamps attach to a clsact qdisc instead, which no pin holds"
                .to_owned(),
        ),
        Err(error) => (
            State::Failed,
            format!(
                "cannot enter the node's network namespace {}: {error}",
                scene.node.netns.display()
            ),
        ),
    };
    add("TCX", state, detail);
}

/// Whether the pin directory is on a bpffs mount, or would be created on
/// one.
fn add_bpffs(scene: &Scene<'_>, add: &mut impl FnMut(&str, State, String)) {
    let existing = scene
        .pin_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    match statfs(existing) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => add(
            "bpffs",
            State::Ok,
            format!(
                "{} is on bpffs: the datapath outlives the agent",
                scene.pin_dir.display()
            ),
        ),
        Ok(_) => add(
            "bpffs",
            State::Failed,
            format!(
                "{} is not on a bpffs mount: mount one (`mount -t bpf bpf /sys/fs/bpf`) or the agent cannot pin its datapath",
                existing.display()
            ),
        ),
        Err(error) => add(
            "bpffs",
            State::Failed,
            format!("{}: {error}", existing.display()),
        ),
    }
}
