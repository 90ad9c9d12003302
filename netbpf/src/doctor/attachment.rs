//! Is netbpf really working: its socket programs attached at the cgroup
//! root as the kernel reports them (`BPF_PROG_QUERY`), whatever the
//! agent's own records say, and the agent answering.

use std::{collections::HashMap, fs::File, os::fd::AsFd as _};

use super::{Area, Check, Finding, Problem, Report, Scene, State};
use crate::{
    agent::{control, status::Status},
    datapath::{Pins, cgroup_hooks, cgroup_link_name, sys},
    host::cgroup,
};

/// Adds the checks; returns the agent's status when it answers.
pub fn check(scene: &Scene<'_>, report: &mut Report) -> Option<Status> {
    let root = &scene.node.cgroup_root;
    let mut add = |name: &str, state: State, detail: String| {
        report.checks.push(Check {
            area: Area::Netbpf,
            name: name.to_owned(),
            state,
            detail,
        });
    };
    let status = control::query(&scene.run_dir);
    let pinned = scene.pin_dir.exists();
    let attached = match attached_programs(root) {
        Ok(attached) => attached,
        Err(error) => {
            add("socket programs", State::Failed, format!("{error:#}"));
            return status.ok();
        }
    };
    if !pinned && status.is_err() && attached.iter().all(|(_, id)| id.is_none()) {
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
    match &status {
        Ok(status) => add(
            "agent",
            State::Ok,
            format!(
                "netbpf {} answering at {} ({} scope instances, policy {})",
                status.version,
                scene.run_dir.display(),
                status.scopes.len(),
                status.policy.display()
            ),
        ),
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
    for (program, id) in &attached {
        if let Some(id) = id {
            add(
                program,
                State::Ok,
                format!("attached at {} (program id {id})", root.display()),
            );
        } else {
            add(
                program,
                State::Failed,
                format!(
                    "not attached at {}: sockets below it miss this hook",
                    root.display()
                ),
            );
            missing.push(*program);
        }
    }
    if !missing.is_empty() {
        report.findings.push(not_attached(scene, &missing));
    }
    status.ok()
}

/// Each of netbpf's socket programs, and the id it runs under at `root`
/// if the kernel runs it there.
fn attached_programs(root: &std::path::Path) -> anyhow::Result<Vec<(&'static str, Option<u32>)>> {
    use anyhow::Context as _;
    let directory = File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    cgroup_hooks()
        .map(|hook| {
            let ids = sys::prog_query(directory.as_fd(), hook.attach_type as u32)
                .with_context(|| format!("BPF_PROG_QUERY on {}", root.display()))?;
            let id = ids
                .into_iter()
                .find(|id| names.get(id).is_some_and(|name| name == hook.program));
            Ok((hook.program, id))
        })
        .collect()
}

fn not_attached(scene: &Scene<'_>, missing: &[&str]) -> Finding {
    let root = &scene.node.cgroup_root;
    let pins = Pins::new(&scene.pin_dir);
    let root_id = cgroup::cgroup_id(root).unwrap_or_default();
    let defunct: Vec<String> = missing
        .iter()
        .map(|program| pins.link(&cgroup_link_name(root_id, program)))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    let mut evidence = vec![format!(
        "the kernel runs none of {} at {} (BPF_PROG_QUERY)",
        missing.join(", "),
        root.display()
    )];
    let mut then = Vec::new();
    if defunct.is_empty() {
        then.push(
            "restart the agent (systemctl restart netbpf): it attaches the programs".to_owned(),
        );
    } else {
        evidence.push(format!(
            "their links are still pinned, detached: {}",
            defunct.join(", ")
        ));
        then.push(format!("rm {}", defunct.join(" ")));
        then.push(
            "restart the agent (systemctl restart netbpf): it attaches new links in their place"
                .to_owned(),
        );
    }
    Finding {
        problem: Problem::NotAttached,
        container: None,
        port: None,
        cause: format!(
            "netbpf's {} {} not attached where the kernel runs socket programs, so its rules do not act at {}",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            if missing.len() == 1 {
                "that hook"
            } else {
                "those hooks"
            }
        ),
        evidence,
        policy: None,
        then,
    }
}
