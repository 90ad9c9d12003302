//! bpftool's JSON listings. A listing that meets an object going away (a
//! link another test detaches while bpftool walks them) comes out broken,
//! or bpftool gives up on it with an error: it is read again.

use std::{process::Command, time::Duration};

use anyhow::Context as _;

/// How many times a listing is read before its failure counts.
const TRIES: usize = 5;

/// `bpftool -j ARGS`, parsed; an empty list when it prints nothing (as
/// `cgroup show` does for a cgroup without programs).
pub fn bpftool_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut last_failure = String::new();
    for _ in 0..TRIES {
        let output = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .context("running bpftool (is it installed? `cargo xtask setup` installs it)")?;
        // With -j, bpftool prints its errors as JSON on stdout.
        let listing = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            if listing.trim().is_empty() {
                return Ok(serde_json::Value::Array(Vec::new()));
            }
            match serde_json::from_str(&listing) {
                Ok(value) => return Ok(value),
                Err(error) => last_failure = format!("printed no JSON: {error}"),
            }
        } else {
            last_failure = format!(
                "failed ({}): {} {}",
                output.status,
                listing.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "bpftool -j {} {TRIES} times; the last {last_failure}",
        args.join(" ")
    )
}

/// How many bpf links of program `id` the kernel holds (of every
/// namespace: bpftool 7.1 shows TCX links without their interface).
pub fn links_of(id: u64) -> anyhow::Result<usize> {
    let links = bpftool_json(&["link", "show"])?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["prog_id"].as_u64() == Some(id))
        .count())
}
