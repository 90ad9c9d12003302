//! Where a test process runs: a cgroup and a network namespace, and the
//! clients and servers the tests start there.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{Cgroup, Netns, Process, Spawn};

/// A cgroup and a network namespace that processes are started in.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub cgroup: &'a Cgroup,
    pub netns: &'a Netns,
}

impl Site<'_> {
    /// A command run here.
    pub fn spawn(&self, program: &str, args: &[&str]) -> anyhow::Result<Spawn> {
        Spawn::new(self.cgroup.path(), Some(&self.netns.path()), program, args)
    }

    /// `tests/scripts/probe.py` with `args` here: one connection or
    /// exchange of the mode the script names, reported as JSON.
    pub fn spawn_probe(&self, args: &[&str]) -> anyhow::Result<Spawn> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/probe.py");
        let mut full = vec![script.to_str().context("the probe's path is UTF-8")?];
        full.extend_from_slice(args);
        self.spawn("python3", &full)
    }

    /// curl here: its exit code and the body it got.
    pub fn curl(&self, url: &str) -> anyhow::Result<(i32, String)> {
        let output = self
            .spawn(
                "curl",
                &["--silent", "--show-error", "--max-time", "5", url],
            )?
            .output(Duration::from_secs(15))?;
        let body = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok((output.status.code().unwrap_or(-1), body))
    }

    /// Starts `program` here and waits until it listens on `port`
    /// (`protocol` tcp or udp); its output goes to `log`.
    pub fn start_server(
        &self,
        program: &str,
        args: &[&str],
        port: u16,
        protocol: &str,
        log: &Path,
    ) -> anyhow::Result<Process> {
        let server = self.spawn(program, args)?.start(log)?;
        wait_for_listener(self.netns, port, protocol)
            .with_context(|| format!("{program} did not start; its log:\n{}", server.log()))?;
        Ok(server)
    }

    /// Starts an HTTP server (Python's http.server) here on `addr`:`port`
    /// that answers `GET /` with `body`; its web root and log go in `work`.
    pub fn start_http_server(
        &self,
        work: &Path,
        addr: &str,
        port: u16,
        body: &str,
    ) -> anyhow::Result<Process> {
        let root = work.join(format!("www-{port}"));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), body)?;
        let port_text = port.to_string();
        let root_text = root.to_str().context("the work directory path is UTF-8")?;
        let args = [
            "-m",
            "http.server",
            "--bind",
            addr,
            &port_text,
            "--directory",
            root_text,
        ];
        let log = work.join(format!("http-{port}.log"));
        self.start_server("python3", &args, port, "tcp", &log)
    }

    /// Starts dnsmasq here on `addr`, port 53 (UDP and TCP), answering
    /// `name`'s A record with `answer` and nothing else; returns once it
    /// answers. Its pid file and log go in `work`.
    pub fn start_dns_server(
        &self,
        work: &Path,
        addr: &str,
        name: &str,
        answer: &str,
    ) -> anyhow::Result<Process> {
        let listen = format!("--listen-address={addr}");
        let record = format!("--address=/{name}/{answer}");
        let pid_file = format!(
            "--pid-file={}",
            work.join(format!("dnsmasq-{addr}.pid")).display()
        );
        let args = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--port=53",
            &record,
            "--user=root",
            &pid_file,
            "--log-queries",
            "--log-facility=-",
        ];
        let server = self
            .spawn("dnsmasq", &args)?
            .start(&work.join(format!("dnsmasq-{addr}.log")))?;
        // Another server may listen on port 53 already: ask this one.
        for _ in 0..50 {
            let asked = self
                .spawn_probe(&["dns-udp", addr, "53", name])?
                .output(Duration::from_secs(10))?;
            if asked.status.success() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "dnsmasq on {addr} did not answer; its log:\n{}",
            server.log()
        )
    }
}

/// Waits until something listens on `port` (tcp or udp) in `netns`.
pub fn wait_for_listener(netns: &Netns, port: u16, protocol: &str) -> anyhow::Result<()> {
    let flag = if protocol == "udp" { "-uln" } else { "-tln" };
    for _ in 0..250 {
        let sport = format!(":{port}");
        let listening = netns.exec(&["ss", "-H", flag, "sport", "=", &sport])?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "nothing listens on {protocol} port {port} in {} after 5 s",
        netns.name()
    )
}
