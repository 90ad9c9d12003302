//! Throughput with iperf3: through a forward, and across an interface
//! whose TCP handshakes are MSS-clamped (by netbpf's tc program, or by
//! `iptables -j TCPMSS`) against none. Every packet crosses the clamp, so
//! this is the cost of its fast path, for real.

use std::time::Duration;

use anyhow::Context as _;
use netbpf_testenv::{Place, run_checked};
use serde::{Deserialize, Serialize};

use crate::{
    load::LOAD_CPU,
    ways::{Prepared, Way},
};

/// The MSS the clamps set.
const CLAMP: u16 = 1200;

/// netbpf's clamp, on the handshakes that arrive at the server's bridge.
pub fn netbpf_policy() -> String {
    format!("[[mss_clamp]]\ninterface = \"br0\"\ndirection = \"ingress\"\nmss = {CLAMP}\n")
}

/// How the server's bridge clamps MSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Clamp {
    /// No clamp.
    None,
    /// netbpf's tc program on the bridge's ingress.
    Netbpf,
    /// `iptables -t mangle -A PREROUTING -i br0 ... -j TCPMSS`.
    Tcpmss,
}

impl Clamp {
    pub const ALL: [Clamp; 3] = [Clamp::None, Clamp::Netbpf, Clamp::Tcpmss];

    pub fn label(self) -> &'static str {
        match self {
            Clamp::None => "no clamp",
            Clamp::Netbpf => "netbpf tc clamp",
            Clamp::Tcpmss => "iptables TCPMSS",
        }
    }

    /// A topology whose bridge clamps this way.
    pub fn prepare(self, exe: &str) -> anyhow::Result<Prepared> {
        match self {
            Clamp::None => Prepared::new(exe, Way::Direct, "", ""),
            Clamp::Netbpf => {
                let prepared = Prepared::new(exe, Way::Netbpf, "", &netbpf_policy())?;
                let agent = prepared.agent().context("the netbpf way has an agent")?;
                agent.wait_for_status(Duration::from_secs(10), |status| {
                    status["mss_clamps"][0]["attached"]
                        .as_array()
                        .is_some_and(|attached| !attached.is_empty())
                })?;
                Ok(prepared)
            }
            Clamp::Tcpmss => {
                let prepared = Prepared::new(exe, Way::Direct, "", "")?;
                let netns = prepared.topology.host_ns.name();
                run_checked(
                    "ip",
                    [
                        "netns",
                        "exec",
                        netns,
                        "iptables",
                        "-t",
                        "mangle",
                        "-A",
                        "PREROUTING",
                        "-i",
                        "br0",
                        "-p",
                        "tcp",
                        "--tcp-flags",
                        "SYN,RST",
                        "SYN",
                        "-j",
                        "TCPMSS",
                        "--set-mss",
                        &CLAMP.to_string(),
                    ],
                )?;
                Ok(prepared)
            }
        }
    }
}

/// A round of iperf3 over `paths` (each a key, its topology and the
/// target its desktop dials): one run of `seconds` each, in `paths`'
/// order (each round starts from the next path). One run's throughput
/// here moves by several percent from the next's; the rounds' spread
/// shows it, and many short rounds keep its quartiles where they are
/// from one run of the bench to the next.
pub fn round<K: Copy>(
    paths: &[(K, &Prepared, String)],
    seconds: u32,
) -> anyhow::Result<Vec<(K, f64)>> {
    paths
        .iter()
        .map(|(key, prepared, target)| Ok((*key, iperf(prepared, target, seconds)?)))
        .collect()
}

/// One iperf3 run of `seconds` from the desktop to `target`, pinned
/// with its server to [`LOAD_CPU`] like the rest of the load; bits per
/// second received.
fn iperf(prepared: &Prepared, target: &str, seconds: u32) -> anyhow::Result<f64> {
    let (host, port) = target.rsplit_once(':').context("a target is ADDR:PORT")?;
    let output = prepared
        .topology
        .spawn(
            Place::Desktop,
            "iperf3",
            &[
                "--client",
                host,
                "--port",
                port,
                "--time",
                &seconds.to_string(),
                "--json",
                "--affinity",
                &LOAD_CPU.to_string(),
            ],
        )?
        .output(Duration::from_secs(u64::from(seconds) + 30))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3's report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 to {target} measured nothing: {report}"))
}
