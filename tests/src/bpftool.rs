//! bpftool's JSON listings. A listing that meets an object going away (a
//! link another test detaches while bpftool walks them) comes out broken:
//! it is read again.

use std::time::Duration;

use crate::run_checked;

/// `bpftool -j ARGS`, parsed; an empty list when it prints nothing (as
/// `cgroup show` does for a cgroup without programs).
pub fn bpftool_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut tries = 0;
    loop {
        let listing = run_checked("bpftool", ["-j"].iter().chain(args))?;
        if listing.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        match serde_json::from_str(&listing) {
            Ok(value) => return Ok(value),
            Err(error) if tries == 4 => {
                anyhow::bail!(
                    "bpftool -j {} printed no JSON five times: {error}",
                    args.join(" ")
                )
            }
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
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
