//! `netbpf doctor` as a test runs it: against the test's own cgroup root,
//! node namespace and netbpf, its report parsed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{netbpf_binary, unique_name};

/// A configuration for doctor on a node of a test's own that no agent
/// configuration describes: pins nowhere, no runtime API. The node's
/// cgroup root and network namespace are given as arguments.
pub fn doctor_config(work: &Path) -> anyhow::Result<PathBuf> {
    let config = work.join("doctor.toml");
    std::fs::write(
        &config,
        format!(
            "pin_dir = \"/sys/fs/bpf/{}\"\n[runtimes]\ndocker = \"\"\npodman = \"\"\ncontainerd = \"\"\n",
            unique_name("nbnopin")
        ),
    )?;
    Ok(config)
}

/// Runs `netbpf doctor --json --config CONFIG ARGS`: its exit code and
/// report. Panics, with what doctor said, where it printed no report.
#[must_use]
pub fn doctor(config: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(netbpf_binary())
        .arg("doctor")
        .arg("--json")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("running netbpf doctor");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "doctor {args:?} printed no report ({error}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

/// The findings of `report` about `problem`.
#[must_use]
pub fn findings<'a>(report: &'a serde_json::Value, problem: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|finding| finding["problem"] == problem)
        .collect()
}

/// The policy the only finding of `report` about `problem` proposes.
#[must_use]
pub fn proposed_policy(report: &serde_json::Value, problem: &str) -> String {
    let found = findings(report, problem);
    assert_eq!(found.len(), 1, "one {problem} finding in {report:#}");
    found[0]["policy"]
        .as_str()
        .unwrap_or_else(|| panic!("{problem} proposes no policy: {report:#}"))
        .to_owned()
}
