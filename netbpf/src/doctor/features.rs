//! Can netbpf run here: the kernel, BTF, cgroup v2, bpffs, the
//! capabilities held, and each kernel feature netbpf uses, probed by
//! loading a trivial program for it (never attached), not guessed from the
//! kernel's version.

use std::{fs::File, io, os::fd::AsFd as _, path::Path};

use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::{Area, Report, Scene, State};
use crate::{
    datapath::{TcAttachment, cgroup_hooks, sys},
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
    for probe in PROBES {
        let (state, detail) = match (probe.run)() {
            Ok(()) => (State::Ok, format!("available: {}", probe.serves)),
            Err(error) => (
                State::Failed,
                format!("unavailable ({error}): {}", probe.lost),
            ),
        };
        add(probe.feature, state, detail);
    }
    let tcx = netns::in_netns(&scene.node.netns, || TcAttachment::probe("lo"));
    let (state, detail) = match tcx {
        Ok(TcAttachment::Tcx) => (
            State::Ok,
            "available (Linux 6.6): MSS clamps attach with TCX links".to_owned(),
        ),
        Ok(TcAttachment::Clsact) => (
            State::Warning,
            "unavailable: MSS clamps attach to a clsact qdisc instead, and go when the agent stops"
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

/// A kernel feature, how to probe it, and what netbpf does with it.
struct Probe {
    feature: &'static str,
    run: fn() -> io::Result<()>,
    /// What netbpf does with it.
    serves: &'static str,
    /// What netbpf cannot do without it.
    lost: &'static str,
}

const PROBES: [Probe; 5] = [
    Probe {
        feature: "socket address hooks",
        run: || load_for("netbpf_connect4"),
        serves: "connect, sendmsg, recvmsg and bind rewrite destinations and ports (Linux 4.17)",
        lost: "netbpf cannot run here",
    },
    Probe {
        feature: "getpeername hooks",
        run: || load_for("netbpf_getpeer4"),
        serves: "getpeername() shows the address a forwarded socket dialed (Linux 5.8)",
        lost: "netbpf cannot run here",
    },
    Probe {
        feature: "socket release hook",
        run: || load_for("netbpf_release"),
        serves: "a scope's own listeners are counted until they close (Linux 5.9)",
        lost: "netbpf cannot run here",
    },
    Probe {
        feature: "sk_lookup",
        run: || {
            sys::load_trivial(
                "nb_probe",
                bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP as u32,
                bpf_attach_type::BPF_SK_LOOKUP as u32,
            )
            .map(drop)
        },
        serves: "host services: connections handed to loopback-only listeners (Linux 5.9)",
        lost: "host services are unavailable",
    },
    Probe {
        feature: "cgroup bpf links",
        run: probe_cgroup_links,
        serves: "the socket programs attach with links, pinned to outlive the agent (Linux 5.7)",
        lost: "netbpf cannot pin its attachments",
    },
];

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
