//! Is netbpf really working: its programs attached where they must be as
//! the kernel reports it (`BPF_PROG_QUERY` on the cgroup root and the
//! node's network namespace, TCX on the clamped interfaces), whatever the
//! agent's own records say, and the agent answering.

use std::{collections::HashMap, fs::File, os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TcAttachType};
use aya_obj::generated::bpf_attach_type;
use netbpf_common::names::program;

use super::{Area, Finding, Problem, Report, Scene, State};
use crate::{
    api::{control, status::Status},
    datapath::{Pins, cgroup_hooks, cgroup_link_name, sys},
    host::{cgroup, netns},
    policy::Direction,
};

/// A program the kernel should run, and where.
struct Expected {
    program: &'static str,
    /// Where, as people read it: `at /sys/fs/cgroup`, `on wg0`.
    place: String,
    /// Its id there, if the kernel runs it there; None where it does not.
    id: Option<u32>,
}

/// Adds the checks; returns the agent's status when it answers.
pub fn check(scene: &Scene<'_>, report: &mut Report) -> Option<Status> {
    let root = &scene.node.cgroup_root;
    let mut add =
        |name: &str, state: State, detail: String| report.check(Area::Netbpf, name, state, detail);
    let status = control::query(&scene.run_dir);
    let names = program_names();
    let socket_programs = match socket_programs(root, &names) {
        Ok(expected) => expected,
        Err(error) => {
            add("socket programs", State::Failed, format!("{error:#}"));
            return status.ok();
        }
    };
    let pinned = scene.pin_dir.exists();
    if !pinned && status.is_err() && socket_programs.iter().all(|expected| expected.id.is_none()) {
        add(
            "netbpf",
            State::Info,
            format!(
                "not installed: no datapath pinned at {}, no agent answering at {}, none of its programs attached at {}",
                scene.pin_dir.display(),
                scene.run_dir.display(),
                root.display()
            ),
        );
        return None;
    }
    let mut expected = socket_programs;
    match &status {
        Ok(status) => {
            add(
                "agent",
                State::Ok,
                format!(
                    "netbpf {} answering at {} ({} scope instances, policy {})",
                    status.version,
                    scene.run_dir.display(),
                    status.scopes.len(),
                    status.policy.display()
                ),
            );
            expected.extend(node_programs(scene, status, &names, &mut add));
        }
        Err(error) => add(
            "agent",
            State::Warning,
            format!(
                "not answering at {} ({error:#}): the pinned datapath stays in force, but new containers and policy changes are not followed",
                scene.run_dir.display()
            ),
        ),
    }
    let mut missing = Vec::new();
    for program in &expected {
        if let Some(id) = program.id {
            add(
                program.program,
                State::Ok,
                format!("attached {} (program id {id})", program.place),
            );
        } else {
            add(
                program.program,
                State::Failed,
                format!("not attached {}", program.place),
            );
            missing.push(program);
        }
    }
    if !missing.is_empty() {
        report.findings.push(not_attached(scene, &missing));
    }
    status.ok()
}

/// The name of every loaded program, by id.
fn program_names() -> HashMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect()
}

/// The id among `ids` of the program named `program`.
fn find(ids: Vec<u32>, names: &HashMap<u32, String>, program: &str) -> Option<u32> {
    ids.into_iter()
        .find(|id| names.get(id).is_some_and(|name| name == program))
}

/// Each of netbpf's socket programs at `root`.
fn socket_programs(root: &Path, names: &HashMap<u32, String>) -> anyhow::Result<Vec<Expected>> {
    let directory = File::open(root).with_context(|| format!("opening {}", root.display()))?;
    cgroup_hooks()
        .map(|hook| {
            let ids = sys::prog_query(directory.as_fd(), hook.attach_type as u32)
                .with_context(|| format!("BPF_PROG_QUERY on {}", root.display()))?;
            Ok(Expected {
                program: hook.program,
                place: format!("at {}", root.display()),
                id: find(ids, names, hook.program),
            })
        })
        .collect()
}

/// The programs the agent's status says run in the node's network
/// namespace: the host services' `sk_lookup`, the MSS clamps on TCX.
fn node_programs(
    scene: &Scene<'_>,
    status: &Status,
    names: &HashMap<u32, String>,
    add: &mut impl FnMut(&str, State, String),
) -> Vec<Expected> {
    let node = &scene.node.netns;
    let mut expected = Vec::new();
    if !status.host_services.is_empty() {
        let ids = File::open(node).and_then(|namespace| {
            sys::prog_query(namespace.as_fd(), bpf_attach_type::BPF_SK_LOOKUP as u32)
        });
        match ids {
            Ok(ids) => expected.push(Expected {
                program: program::HOST_SERVICE,
                place: "in the node's network namespace".to_owned(),
                id: find(ids, names, program::HOST_SERVICE),
            }),
            Err(error) => add(
                program::HOST_SERVICE,
                State::Warning,
                format!("BPF_PROG_QUERY on {}: {error}", node.display()),
            ),
        }
    }
    for clamp in &status.mss_clamps {
        let hooks = match clamp.direction {
            Direction::Egress => vec![(TcAttachType::Egress, program::MSS_OUT)],
            Direction::Ingress => vec![(TcAttachType::Ingress, program::MSS_IN)],
            Direction::Both => vec![
                (TcAttachType::Egress, program::MSS_OUT),
                (TcAttachType::Ingress, program::MSS_IN),
            ],
        };
        for interface in &clamp.attached {
            for (attach_type, program) in &hooks {
                let query = netns::in_netns(node, || {
                    SchedClassifier::query_tcx(&interface.name, *attach_type)
                });
                match query {
                    Ok(Ok((_, programs))) => expected.push(Expected {
                        program,
                        place: format!("on {}", interface.name),
                        id: programs
                            .iter()
                            .find(|info| info.name_as_str() == Some(program))
                            .map(aya::programs::ProgramInfo::id),
                    }),
                    // Without TCX the clamp sits on a clsact qdisc, which
                    // this version does not read.
                    _ => add(
                        program,
                        State::Info,
                        format!("on {} (clsact): not verified", interface.name),
                    ),
                }
            }
        }
    }
    expected
}

fn not_attached(scene: &Scene<'_>, missing: &[&Expected]) -> Finding {
    let pins = Pins::new(&scene.pin_dir);
    let root_id = cgroup::cgroup_id(&scene.node.cgroup_root).unwrap_or_default();
    let defunct: Vec<String> = missing
        .iter()
        .map(|expected| pins.link(&cgroup_link_name(root_id, expected.program)))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    let named: Vec<String> = missing
        .iter()
        .map(|expected| format!("{} {}", expected.program, expected.place))
        .collect();
    let mut evidence = vec![format!(
        "the kernel runs none of: {} (BPF_PROG_QUERY)",
        named.join(", ")
    )];
    let mut steps = Vec::new();
    if !defunct.is_empty() {
        evidence.push(format!(
            "their links are still pinned, detached: {}",
            defunct.join(", ")
        ));
        steps.push(format!("rm {}", defunct.join(" ")));
    }
    steps.push(
        "restart the agent (systemctl restart netbpf): it attaches what is not attached".to_owned(),
    );
    Finding {
        problem: Problem::NotAttached,
        container: None,
        port: None,
        cause: format!(
            "netbpf's {} {} not attached where the kernel would run {}, so its rules do not act there",
            missing
                .iter()
                .map(|expected| expected.program)
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            if missing.len() == 1 { "it" } else { "them" }
        ),
        evidence,
        policy: None,
        steps,
        proposal: None,
    }
}
