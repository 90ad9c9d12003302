//! The load the bench puts through a forward: a TCP client that opens
//! connections one after the other, a UDP client that sends a datagram
//! and waits for its echo, and their servers. Each is a subcommand of the
//! bench binary, started in a namespace and cgroup of the topology, and
//! pinned to [`LOAD_CPU`]. A client prints each exchange's time (a
//! [`Sample`]); the bench pools a way's samples of a round into its
//! [`Measurement`].

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// The CPU every client and server of the load runs on. Together on one
/// CPU, a client and its server hand it to each other at each exchange;
/// on two, each exchange wakes the other CPU, which in this VM is a
/// hypervisor exit that now and then waits for a scheduler tick: rounds
/// many times slower than the rest, on any way. Every way runs pinned
/// alike, iperf3 too.
pub const LOAD_CPU: usize = 0;

/// Pins this process (a client or a server of the load) to [`LOAD_CPU`].
pub fn pin() -> anyhow::Result<()> {
    let mut cpus = CpuSet::new();
    cpus.set(LOAD_CPU)?;
    sched_setaffinity(Pid::from_raw(0), &cpus)
        .with_context(|| format!("pinning the load to CPU {LOAD_CPU}"))
}

/// One run of a client, as it measured it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// The run's time, from its first exchange to the end of its last.
    pub seconds: f64,
    /// Each exchange's time, in order, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// TCP segments the client's network namespace retransmitted during
    /// the run.
    pub retransmits: u64,
}

/// A way's load in a round (one or more client runs, pooled): its rate and
/// latencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Connections (TCP) or round trips (UDP) per second.
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// TCP segments the client's network namespace retransmitted during
    /// the runs (a SYN nobody answered in time among them): 0 on a healthy
    /// path, so a stalled round that has some lost packets.
    #[serde(default)]
    pub retransmits: u64,
    /// Each client run's median exchange time, in µs, in the order the
    /// runs took their turns: two ways' runs of the same turn ran next to
    /// each other, so their ratio is free of the slower and faster
    /// stretches of the round that fell on one way's runs and not the
    /// other's.
    #[serde(default)]
    pub runs_p50_us: Vec<f64>,
}

impl Measurement {
    /// `samples` pooled: all their exchanges over all their time, and the
    /// percentiles of all their exchanges.
    pub fn pooled(samples: &[Sample]) -> anyhow::Result<Self> {
        let mut latencies: Vec<u64> = samples
            .iter()
            .flat_map(|sample| sample.latencies_ns.iter().copied())
            .collect();
        anyhow::ensure!(!latencies.is_empty(), "a load measured no exchange");
        latencies.sort_unstable();
        let seconds: f64 = samples.iter().map(|sample| sample.seconds).sum();
        Ok(Self {
            per_second: f64::from(u32::try_from(latencies.len())?) / seconds,
            p50_us: percentile_us(&latencies, 50),
            p99_us: percentile_us(&latencies, 99),
            retransmits: samples.iter().map(|sample| sample.retransmits).sum(),
            runs_p50_us: samples
                .iter()
                .map(|sample| {
                    let mut latencies = sample.latencies_ns.clone();
                    latencies.sort_unstable();
                    percentile_us(&latencies, 50)
                })
                .collect(),
        })
    }
}

/// The `percent` percentile of `sorted` nanoseconds, in µs (0 for none).
fn percentile_us(sorted: &[u64], percent: usize) -> f64 {
    sorted
        .get(sorted.len().saturating_sub(1) * percent / 100)
        .map_or(0.0, |&ns| Duration::from_nanos(ns).as_secs_f64() * 1e6)
}

/// `tcp-server ADDR`: answers every connection with one byte and closes.
pub fn tcp_server(listen: &str) -> anyhow::Result<()> {
    pin()?;
    let listener = TcpListener::bind(listen)?;
    for stream in listener.incoming() {
        let _ = stream?.write_all(b"x");
    }
    Ok(())
}

/// `udp-server ADDR`: echoes every datagram to its sender.
pub fn udp_server(listen: &str) -> anyhow::Result<()> {
    pin()?;
    let socket = UdpSocket::bind(listen)?;
    let mut buffer = [0u8; 64];
    loop {
        let (length, from) = socket.recv_from(&mut buffer)?;
        socket.send_to(&buffer[..length], from)?;
    }
}

/// `tcp-client ADDR COUNT`: COUNT connections, each asking its peer's
/// address (`getpeername`, as clients that log it do), reading the byte
/// and closing; prints a [`Sample`] as JSON.
pub fn tcp_client(target: &str, count: usize) -> anyhow::Result<()> {
    pin()?;
    let retransmitted = || -> anyhow::Result<u64> { Ok(procfs::net::snmp()?.tcp_retrans_segs) };
    let before = retransmitted()?;
    let mut sample = timed(count, || {
        let mut stream = TcpStream::connect(target)?;
        stream.peer_addr()?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        Ok(())
    })?;
    sample.retransmits = retransmitted()? - before;
    print(&sample)
}

/// `udp-client ADDR COUNT`: one socket, bound explicitly (as servers that
/// also dial do), sending COUNT datagrams to ADDR, each waiting for its
/// echo; prints a [`Sample`] as JSON.
pub fn udp_client(target: &str, count: usize) -> anyhow::Result<()> {
    pin()?;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buffer = [0u8; 64];
    print(&timed(count, || {
        socket.send_to(b"ping", target)?;
        socket.recv_from(&mut buffer)?;
        Ok(())
    })?)
}

/// `bind-client COUNT`: COUNT UDP sockets, each bound explicitly to the
/// wildcard address on a port the kernel picks, then closed (as servers
/// and clients that bind do); prints a [`Sample`] as JSON.
pub fn bind_client(count: usize) -> anyhow::Result<()> {
    pin()?;
    print(&timed(count, || {
        UdpSocket::bind("0.0.0.0:0")?;
        Ok(())
    })?)
}

/// Prints `sample` as JSON, for the bench that started the client.
fn print(sample: &Sample) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(sample)?);
    Ok(())
}

/// Runs `once` `count` times, timing each.
fn timed(count: usize, mut once: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Sample> {
    let mut latencies_ns = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let began = Instant::now();
        once()?;
        latencies_ns.push(u64::try_from(began.elapsed().as_nanos())?);
    }
    Ok(Sample {
        seconds: start.elapsed().as_secs_f64(),
        latencies_ns,
        retransmits: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_pool_into_one_measurement() {
        let sample = |seconds, latencies_ns: &[u64], retransmits| Sample {
            seconds,
            latencies_ns: latencies_ns.to_vec(),
            retransmits,
        };
        let pooled = Measurement::pooled(&[
            sample(0.5, &[3000, 1000, 2000], 1),
            sample(1.5, &[5000, 4000], 2),
        ])
        .unwrap();
        // Five exchanges in two seconds; the median of all five.
        assert!((pooled.per_second - 2.5).abs() < 1e-9);
        assert!((pooled.p50_us - 3.0).abs() < 1e-9);
        assert!((pooled.p99_us - 4.0).abs() < 1e-9);
        assert_eq!(pooled.retransmits, 3);
        // Each run's own median, in the order they ran.
        assert_eq!(pooled.runs_p50_us, [2.0, 4.0]);
        assert!(Measurement::pooled(&[sample(1.0, &[], 0)]).is_err());
    }
}
