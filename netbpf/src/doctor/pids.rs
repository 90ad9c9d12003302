//! A container allowed absurdly few processes (`pids.max`): fork fails
//! inside it, which looks like a network problem when the failing program
//! is a server that forks per connection.

use std::{fs, path::PathBuf};

use super::{Finding, Problem, Report, Subject};
use crate::{containers::Runtime, host::cgroup};

/// A `pids.max` at or below this is absurdly low for any container: a
/// shell, its command and a health check already take a few.
const ABSURDLY_FEW: u64 = 16;

/// Finds the containers allowed absurdly few processes, or running into
/// their limit now.
pub fn check(subjects: &[Subject], report: &mut Report) {
    for subject in subjects {
        let Some(dir) = pids_cgroup(subject) else {
            continue;
        };
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let Some(max) = read("pids.max").and_then(|max| max.trim().parse::<u64>().ok()) else {
            continue;
        };
        let current = read("pids.current").and_then(|current| current.trim().parse::<u64>().ok());
        let refused = read("pids.events")
            .and_then(|events| {
                events
                    .lines()
                    .find_map(|line| line.strip_prefix("max ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        // Forks refused under a limit the container now stays below are
        // history: only a limit it runs into now is a finding.
        let at_limit = current.is_some_and(|current| current + 1 >= max);
        if max > ABSURDLY_FEW && !(refused > 0 && at_limit) {
            continue;
        }
        let mut evidence = vec![format!(
            "{}/pids.max is {max}{}",
            dir.display(),
            current
                .map(|current| format!(", and {current} processes run"))
                .unwrap_or_default()
        )];
        if refused > 0 {
            evidence.push(format!(
                "the kernel refused {refused} forks there (pids.events: max {refused})"
            ));
        }
        report.findings.push(Finding {
            problem: Problem::PidsLimit,
            container: Some(subject.label.clone()),
            port: None,
            cause: format!(
                "{} may run at most {max} processes, so fork() fails inside it: servers that fork per connection, shells and health checks fail with it",
                subject.label
            ),
            evidence,
            policy: None,
            steps: vec![raise(subject)],
            proposal: None,
        });
    }
}

/// The command that raises the container's limit.
fn raise(subject: &Subject) -> String {
    match subject.runtime {
        Some(Runtime::Docker) => format!(
            "docker update --pids-limit 4096 {} (and pids_limit in its compose file)",
            subject.label
        ),
        Some(Runtime::Podman) => format!("podman update --pids-limit 4096 {}", subject.label),
        _ => format!(
            "echo 4096 > {}/pids.max, and raise the limit where the container is defined",
            pids_cgroup(subject)
                .unwrap_or_else(|| subject.cgroup.clone())
                .display()
        ),
    }
}

/// The cgroup whose `pids.max` limits `subject`: its cgroup v2 directory
/// where the pids controller is on there, else (on hybrid hosts) its
/// directory of the cgroup v1 pids hierarchy, from one of its processes.
fn pids_cgroup(subject: &Subject) -> Option<PathBuf> {
    if subject.cgroup.join("pids.max").exists() {
        return Some(subject.cgroup.clone());
    }
    let path = fs::read_to_string(format!("/proc/{}/cgroup", subject.pid?))
        .ok()?
        .lines()
        .find_map(|line| {
            let (controllers, path) = line.split_once(':')?.1.split_once(':')?;
            controllers
                .split(',')
                .any(|controller| controller == "pids")
                .then(|| path.trim_start_matches('/').to_owned())
        })?;
    let mount = cgroup::v1_mount("pids")?;
    Some(mount.join(path)).filter(|dir| dir.join("pids.max").exists())
}
