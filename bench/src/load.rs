//! The load the bench puts through a forward: a TCP client that opens
//! connections one after the other, a UDP client that sends a datagram
//! and waits for its echo, and their servers. Each is a subcommand of the
//! bench binary, started in a namespace and cgroup of the topology, and
//! pinned to [`LOAD_CPU`].

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

/// One run of a client: its rate and latencies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measurement {
    /// Connections (TCP) or round trips (UDP) per second.
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// TCP segments the client's network namespace retransmitted during
    /// the run (a SYN nobody answered in time among them): 0 on a healthy
    /// path, so a stalled round that has some lost packets.
    #[serde(default)]
    pub retransmits: u64,
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
/// and closing; prints a [`Measurement`] as JSON.
pub fn tcp_client(target: &str, count: usize) -> anyhow::Result<()> {
    pin()?;
    let retransmitted = || -> anyhow::Result<u64> { Ok(procfs::net::snmp()?.tcp_retrans_segs) };
    let before = retransmitted()?;
    let mut measurement = timed(count, || {
        let mut stream = TcpStream::connect(target)?;
        stream.peer_addr()?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        Ok(())
    })?;
    measurement.retransmits = retransmitted()? - before;
    print(&measurement)
}

/// `udp-client ADDR COUNT`: one socket, bound explicitly (as servers that
/// also dial do), sending COUNT datagrams to ADDR, each waiting for its
/// echo; prints a [`Measurement`] as JSON.
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
/// and clients that bind do); prints a [`Measurement`] as JSON.
pub fn bind_client(count: usize) -> anyhow::Result<()> {
    pin()?;
    print(&timed(count, || {
        UdpSocket::bind("0.0.0.0:0")?;
        Ok(())
    })?)
}

/// Prints `measurement` as JSON, for the bench that started the client.
fn print(measurement: &Measurement) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(measurement)?);
    Ok(())
}

/// Runs `once` `count` times; the rate and latencies.
fn timed(
    count: usize,
    mut once: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Measurement> {
    let mut latencies = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let began = Instant::now();
        once()?;
        latencies.push(began.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let micros =
        |percent: usize| latencies[(latencies.len() - 1) * percent / 100].as_secs_f64() * 1e6;
    Ok(Measurement {
        per_second: f64::from(u32::try_from(count)?) / elapsed,
        p50_us: micros(50),
        p99_us: micros(99),
        retransmits: 0,
    })
}
