//! The agent at scale: N cgroups appear below its cgroup root and go,
//! all selected by one scope with a forward (what N instances of one
//! template look like to it); a policy of N scopes, one per cgroup, is
//! reloaded and checked; real Docker containers are started and removed.
//! When the work is done is read from the kernel's scope map (its pin),
//! never from the agent's word; its CPU time from a cgroup of its own,
//! its memory from /proc.

use std::{
    fmt::Write as _,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as KernelHashMap, Map, MapData};
use netbpf::{agent::policy_watch, api::control, datapath::pins::Pins};
use netbpf_common::{ScopeEntry, names};
use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, DockerNode, NODE_IMAGE, NetbpfRun, netbpf_binary, unique_name,
};
use serde::{Deserialize, Serialize};

use crate::ways::SCALING_CAPACITY;

/// Reloads of the policy of one scope per cgroup in each round, each
/// after the template's: a round takes seconds to set up, a reload less
/// than one, and the reload's goal sits where the quartiles of one reload
/// a round (nine a run) fell on either side of it from one run to the
/// next.
pub const RELOADS_PER_ROUND: usize = 3;

/// The forward every scope gives: map entries only, never dialed.
const FORWARD: &str = "forward = [{ from = \"localhost:8082\", to = \"192.0.2.1:8082\" }]\n";

/// How long the agent may take over one step before the bench gives up.
const PATIENCE: Duration = Duration::from_mins(5);

/// How often the scope map is read while waiting.
const POLL: Duration = Duration::from_millis(10);

/// What the workloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Workloads {
    /// Bare cgroups, made and removed by the bench.
    Cgroups,
    /// Docker containers (`--network none`), started and removed through
    /// a daemon of the bench's own.
    Docker,
}

/// One round of one size: what the agent took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRound {
    /// Seconds from the last workload's appearance until every one is in
    /// the kernel's scope map.
    pub applied_s: f64,
    /// Seconds from the last workload's removal until the scope map is
    /// empty.
    pub gone_s: f64,
    /// The agent's CPU time (user and system) per appearance and per
    /// removal, in microseconds.
    pub cpu_per_event_us: f64,
    /// The agent's resident memory when ready, with every workload
    /// applied, and a second after they all went, in bytes.
    pub rss_start: u64,
    pub rss_loaded: u64,
    pub rss_after: u64,
    /// Seconds each `netbpf reload` of the round took to put a policy of
    /// one scope per workload in force, every workload present (cgroups
    /// only): [`RELOADS_PER_ROUND`] of them (raw figures from before have
    /// one).
    #[serde(deserialize_with = "one_or_more")]
    pub reload_s: Vec<f64>,
    /// Seconds `netbpf check` took over that policy (cgroups only).
    pub check_s: Option<f64>,
}

/// A round's reload times: raw figures from before hold one, or none.
fn one_or_more<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reloads {
        One(Option<f64>),
        More(Vec<f64>),
    }
    Ok(match Reloads::deserialize(from)? {
        Reloads::One(one) => one.into_iter().collect(),
        Reloads::More(more) => more,
    })
}

/// The rounds of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSize {
    pub workloads: Workloads,
    pub count: usize,
    pub rounds: Vec<AgentRound>,
    /// Why rounds were measured again: the runtime failed them (a command
    /// stuck past its timeout), not the agent.
    #[serde(default)]
    pub retried: Vec<String>,
}

impl AgentSize {
    #[must_use]
    pub fn new(workloads: Workloads, count: usize) -> Self {
        Self {
            workloads,
            count,
            rounds: Vec::new(),
            retried: Vec::new(),
        }
    }
}

/// The agent following cgroups of each of `sizes`, sizes taking turns
/// round by round, then `docker` containers, in the rounds `rounds`
/// (numbered as in the run); `step` says what is measured now.
pub fn measure(
    sizes: &[usize],
    rounds: RangeInclusive<usize>,
    docker: Option<DockerRounds>,
    step: &dyn Fn(String) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<AgentSize>> {
    let mut measured: Vec<AgentSize> = sizes
        .iter()
        .map(|&count| AgentSize::new(Workloads::Cgroups, count))
        .collect();
    for round in rounds.clone() {
        for size in &mut measured {
            step(format!(
                "the agent with {} cgroups, round {round}",
                size.count
            ))?;
            size.rounds.push(cgroups_round(size.count)?);
        }
    }
    if let Some(DockerRounds {
        containers: count,
        rounds,
    }) = docker
    {
        let mut size = AgentSize::new(Workloads::Docker, count);
        for round in rounds {
            step(format!(
                "the agent with {count} Docker containers, round {round}"
            ))?;
            let round = docker_round(count).or_else(|error| {
                // A daemon that hangs on one container fails the round,
                // not the bench: a new daemon measures it again.
                size.retried.push(format!("{error:#}"));
                docker_round(count)
            })?;
            size.rounds.push(round);
        }
        measured.push(size);
    }
    Ok(measured)
}

/// The agent's rounds over Docker containers: fewer than over cgroups,
/// a thousand containers taking minutes to start and remove.
#[derive(Debug, Clone)]
pub struct DockerRounds {
    /// Containers the agent follows.
    pub containers: usize,
    /// The numbers of the rounds in the run.
    pub rounds: RangeInclusive<usize>,
}

/// Measures the agent over `count` bare cgroups.
fn cgroups_round(count: usize) -> anyhow::Result<AgentRound> {
    let root = Cgroup::new_test_root(&unique_name("nbag"))?;
    let work = tempfile::Builder::new()
        .prefix("netbpf-agent-bench-")
        .tempdir()?;
    let setup = AgentSetup::new(work.path(), root.path(), AgentOptions::default())?;
    let template = format!(
        "version = 1\n[[scope]]\nname = \"apps\"\nmatch = {{ cgroup = \"{}/c*\" }}\n{FORWARD}",
        root.path().display()
    );
    let agent = Agent::start(&setup, &template)?;
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| root.path().join(format!("c{i}")))
        .collect();

    let per_cgroup =
        paths
            .iter()
            .enumerate()
            .fold(String::from("version = 1\n"), |mut policy, (i, path)| {
                let _ = write!(
                    policy,
                    "[[scope]]\nname = \"c{i}\"\nmatch = {{ cgroup = \"{}\" }}\n{FORWARD}",
                    path.display()
                );
                policy
            });
    agent.round(
        count,
        || {
            for path in &paths {
                std::fs::create_dir(path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            Ok(())
        },
        |agent| {
            let check_s = check(&work.path().join("per-cgroup.toml"), &per_cgroup)?;
            let mut reloads_s = Vec::with_capacity(RELOADS_PER_ROUND);
            for _ in 0..RELOADS_PER_ROUND {
                reloads_s.push(agent.reload(&setup, &per_cgroup)?);
                anyhow::ensure!(
                    agent.scopes()? == count,
                    "after the reload, {} of {count} cgroups have a scope",
                    agent.scopes()?
                );
                agent.reload(&setup, &template)?;
            }
            Ok((reloads_s, Some(check_s)))
        },
        || {
            for path in &paths {
                std::fs::remove_dir(path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            Ok(())
        },
    )
}

/// Measures the agent over `count` Docker containers of a daemon of the
/// bench's own, started four at a time and removed [`REMOVED_AT_ONCE`]
/// per `docker rm`, one after the other: the client removes a call's
/// containers all at once, and 50 at once (200 before) wedged dockerd on
/// this 2-CPU machine (kills unanswered after 10 s, shims cleaned up under
/// the daemon, the last containers never reported gone).
fn docker_round(count: usize) -> anyhow::Result<AgentRound> {
    const PARALLEL: usize = 4;
    let node = DockerNode::new();
    let setup = node.agent_setup();
    let policy = format!(
        "version = 1\n[[scope]]\nname = \"apps\"\nmatch = {{ container = \"bench-*\" }}\n{FORWARD}"
    );
    let agent = Agent::start(&setup, &policy)?;
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i}")).collect();

    let batches: Vec<Vec<String>> = names
        .chunks(REMOVED_AT_ONCE)
        .map(<[String]>::to_vec)
        .collect();
    agent.round(
        count,
        || {
            in_parallel(&names, PARALLEL, |name| {
                node.daemon
                    .docker(&[
                        "run",
                        "--detach",
                        "--network",
                        "none",
                        "--name",
                        name,
                        NODE_IMAGE,
                        "sleep",
                        "3600",
                    ])
                    .map(drop)
            })
        },
        |_| Ok((Vec::new(), None)),
        || {
            batches.iter().try_for_each(|batch| {
                let mut args = vec!["rm", "--force"];
                args.extend(batch.iter().map(String::as_str));
                node.daemon.docker_within(&args, REMOVAL_LIMIT).map(drop)
            })
        },
    )
}

/// Containers one `docker rm` removes: the client removes them in parallel.
const REMOVED_AT_ONCE: usize = 10;

/// How long one `docker rm` of [`REMOVED_AT_ONCE`] containers may take
/// (a few seconds here): longer, the daemon wedged on one of them (it did
/// once in three runs, for good), and the round is measured again on a new
/// daemon rather than after the client's five minutes.
const REMOVAL_LIMIT: Duration = Duration::from_mins(1);

/// Runs `job` over `items`, `parallel` at a time; the first error.
pub fn in_parallel<T: Sync>(
    items: &[T],
    parallel: usize,
    job: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let chunk = items.len().div_ceil(parallel).max(1);
    thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().try_for_each(&job)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("a worker does not panic"))
    })
}

/// `netbpf check` of `policy`, written to `file`: its wall-clock seconds.
fn check(file: &Path, policy: &str) -> anyhow::Result<f64> {
    std::fs::write(file, policy)?;
    let started = Instant::now();
    let output = Command::new(netbpf_binary())
        .arg("check")
        .arg("--policy")
        .arg(file)
        .output()?;
    let took = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        output.status.success(),
        "netbpf check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(took)
}

/// Microseconds of CPU per event over `phases` (from, to) of `count`
/// events each.
fn per_event(count: usize, phases: &[(Usage, Usage)]) -> f64 {
    let cpu: Duration = phases
        .iter()
        .map(|(from, to)| to.cpu.saturating_sub(from.cpu))
        .sum();
    #[expect(clippy::cast_precision_loss, reason = "event counts are small")]
    let events = (count * phases.len()).max(1) as f64;
    cpu.as_secs_f64() * 1e6 / events
}

/// What the agent used so far.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// User and system time, all threads (its cgroup's `cpu.stat`).
    cpu: Duration,
    /// Resident memory, bytes.
    rss: u64,
}

/// A running agent with its scope map.
struct Agent {
    run: NetbpfRun,
    scopes: KernelHashMap<MapData, u64, ScopeEntry>,
    /// A cgroup of the agent's own, beside the one it follows, whose
    /// `cpu.stat` counts its CPU time to the microsecond: `/proc/PID/stat`
    /// counts clock ticks (10 ms), which made the 1,000-cgroup figure
    /// (some 70 ms over 2,000 events) jump by a seventh from one tick to
    /// the next. Dropped after `run`, whose agent has then exited.
    cpu: Cgroup,
}

impl Agent {
    /// Starts the agent of `setup` with `policy`, its maps sized for the
    /// largest size (those of the datapath's scaling measurement).
    fn start(setup: &AgentSetup, policy: &str) -> anyhow::Result<Self> {
        setup.configure(SCALING_CAPACITY)?;
        setup.policy("bench.toml", policy)?;
        let run = setup.start("agent")?;
        let pin = Pins::new(&setup.pin_dir)
            .maps_dir()
            .join(names::CGROUP_SCOPES.name);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let scopes = KernelHashMap::try_from(Map::HashMap(data))?;
        let cpu = Cgroup::new_test_root(&unique_name("nbagcpu"))?;
        cpu.adopt(run.pid())?;
        Ok(Self { run, scopes, cpu })
    }

    /// One round over `count` workloads: `appear` makes them, `loaded`
    /// measures what it does with every one applied (the reload and check
    /// times, if any), `remove` takes them away. Stops the agent.
    fn round(
        self,
        count: usize,
        appear: impl FnOnce() -> anyhow::Result<()>,
        loaded: impl FnOnce(&Self) -> anyhow::Result<(Vec<f64>, Option<f64>)>,
        remove: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<AgentRound> {
        let appearing = self.usage()?;
        appear()?;
        let applied_s = self.until_scopes(count)?;
        let applied = self.usage()?;
        let (reload_s, check_s) = loaded(&self)?;
        let removing = self.usage()?;
        remove()?;
        let gone_s = self.until_scopes(0)?;
        let gone = self.usage()?;
        thread::sleep(Duration::from_secs(1));
        let after = self.usage()?;
        self.run.stop()?;
        Ok(AgentRound {
            applied_s,
            gone_s,
            cpu_per_event_us: per_event(count, &[(appearing, applied), (removing, gone)]),
            rss_start: appearing.rss,
            rss_loaded: applied.rss,
            rss_after: after.rss,
            reload_s,
            check_s,
        })
    }

    /// How many scope instances the kernel's map holds.
    fn scopes(&self) -> anyhow::Result<usize> {
        let mut count = 0;
        for key in self.scopes.keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    /// Waits until the kernel's map holds `count` scopes; the seconds it
    /// took.
    fn until_scopes(&self, count: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let held = self.scopes()?;
            if held == count {
                return Ok(started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "the scope map holds {held} entries after {PATIENCE:?}, not {count}:\n{}",
                self.run.log()
            );
            thread::sleep(POLL);
        }
    }

    /// Puts `policy` in place and has the agent reload it; the seconds
    /// `netbpf reload` took. Returns once the agent is idle again: it
    /// reloads a second time when its policy directory settles.
    fn reload(&self, setup: &AgentSetup, policy: &str) -> anyhow::Result<f64> {
        let staged = setup.policy_dir.with_extension("staged");
        std::fs::write(&staged, policy)?;
        std::fs::rename(&staged, setup.policy_dir.join("bench.toml"))?;
        let started = Instant::now();
        let reloaded = control::reload(self.run.run_dir())?;
        let took = started.elapsed().as_secs_f64();
        anyhow::ensure!(reloaded.error.is_none(), "the reload failed: {reloaded:?}");
        thread::sleep(policy_watch::SETTLE * 2);
        // Answered once the loop is done with the second reload.
        control::query(self.run.run_dir())?;
        Ok(took)
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        let pid = self.run.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("/proc/PID/status has VmRSS")?
            .parse()?;
        Ok(Usage {
            cpu: self.cpu.cpu_time()?,
            rss: rss_kib * 1024,
        })
    }
}
