//! The order of the measurements, with a progress display, and the
//! verifier check.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use netbpf_common::names::program;
use netbpf_testenv::{BRIDGE_V4, Place};

use crate::{
    agent_scale::{self, AgentSize},
    load::Measurement,
    programs::{self, BpfStats, Cost, EmptyPrograms},
    report::{self, Machine, Memory, Results, ScalePoint},
    throughput::{self, Clamp},
    ways::{IPERF_PORT, Load, Prepared, SCALING_CAPACITY, Way},
};

/// How much of each measurement a mode takes.
struct Plan {
    rounds: usize,
    connections: usize,
    datagrams: usize,
    iperf_seconds: u32,
    scaling: &'static [usize],
    test_run_repeat: u32,
    /// Cgroups the agent follows, by size.
    agent_sizes: &'static [usize],
    /// Rounds of the agent's measurements.
    agent_rounds: usize,
    /// Docker containers the agent follows, if measured.
    docker_containers: Option<usize>,
}

const FULL: Plan = Plan {
    rounds: 9,
    connections: 5000,
    datagrams: 10_000,
    iperf_seconds: 5,
    scaling: &[1, 100, 1000, 10_000, 100_000],
    test_run_repeat: 1_000_000,
    agent_sizes: &[1000, 10_000, 20_000, 50_000],
    agent_rounds: 3,
    docker_containers: Some(1000),
};

const QUICK: Plan = Plan {
    rounds: 5,
    connections: 2000,
    datagrams: 4000,
    iperf_seconds: 2,
    scaling: &[1, 1000, 100_000],
    test_run_repeat: 100_000,
    agent_sizes: &[1000],
    agent_rounds: 3,
    docker_containers: None,
};

/// Scopes at which the maps' memory is reported.
const MEMORY_POINTS: [usize; 2] = [1000, 100_000];

pub fn run(quick: bool, out: &Path) -> anyhow::Result<()> {
    let plan = if quick { QUICK } else { FULL };
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("the bench's path is UTF-8")?;
    let agent_steps = plan.agent_rounds
        * (plan.agent_sizes.len() + usize::from(plan.docker_containers.is_some()));
    let steps = plan.rounds * (Way::ALL.len() * (3 + plan.scaling.len()) + 1)
        + plan.scaling.len()
        + agent_steps
        + 7;
    let progress = ProgressBar::new(u64::try_from(steps)?).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} {msg}")?,
    );
    let bench = Bench {
        exe,
        plan: &plan,
        progress: &progress,
    };

    bench.step("memory of a new agent");
    let at_start = Prepared::new(exe, Way::Netbpf, "", "")?.map_bytes()?;
    bench.step("setting up the three ways");
    let mut ways = Way::ALL
        .iter()
        .map(|&way| Prepared::new(exe, way, SCALING_CAPACITY, ""))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let netbpf = ways
        .iter()
        .position(|prepared| prepared.way == Way::Netbpf)
        .context("a netbpf way")?;

    let (tcp, udp) = bench.forwards(&ways)?;
    let conntrack = ways
        .iter()
        .map(|prepared| Ok((prepared.way, prepared.conntrack_entries()?)))
        .collect::<anyhow::Result<_>>()?;
    bench.step("per-program cost");
    let costs = program_costs(exe, &ways[netbpf], &plan)?;
    let host_service_check = bench.host_service_check()?;
    let forward_throughput = bench.forward_throughput(&ways)?;
    let clamp_throughput = bench.clamp_throughput()?;
    let mut memory = Memory {
        at_start,
        ..Memory::default()
    };
    let scaling = bench.scaling(&mut ways, netbpf, &mut memory)?;
    drop(ways);

    let agent = bench.agent()?;
    bench.step("BPF_PROG_TEST_RUN of the tc and sk_lookup programs");
    let test_runs = programs::test_runs(plan.test_run_repeat)?;
    bench.step("verifier instruction counts");
    let verifier = programs::verifier_counts()?;
    progress.finish_with_message("done");

    let results = Results {
        mode: if quick { "quick" } else { "full" }.to_owned(),
        machine: Machine::this()?,
        connections: plan.connections,
        datagrams: plan.datagrams,
        rounds: plan.rounds,
        iperf_seconds: plan.iperf_seconds,
        tcp,
        udp,
        conntrack,
        memory,
        programs: costs,
        host_service_check,
        scaling,
        forward_throughput,
        clamp_throughput,
        test_runs,
        verifier,
        agent,
    };
    report::write(&results, out)
}

/// Rounds of one measurement per way, by way.
type Rounds<K, V> = BTreeMap<K, Vec<V>>;

/// One run of the bench: its plan and its progress display.
struct Bench<'a> {
    exe: &'a str,
    plan: &'a Plan,
    progress: &'a ProgressBar,
}

impl Bench<'_> {
    /// Shows what is measured now, one step further.
    fn step(&self, message: impl Into<std::borrow::Cow<'static, str>>) {
        self.progress.inc(1);
        self.progress.set_message(message);
    }

    /// TCP connections and UDP round trips through each way's forward.
    fn forwards(
        &self,
        ways: &[Prepared],
    ) -> anyhow::Result<(Rounds<Way, Measurement>, Rounds<Way, Measurement>)> {
        let (mut tcp, mut udp) = (Rounds::new(), Rounds::new());
        for round in 1..=self.plan.rounds {
            for prepared in ways {
                let way = prepared.way;
                self.step(format!("connections, round {round}: {}", way.label()));
                let measured =
                    prepared.measure(self.exe, Place::Desktop, Load::Tcp, self.plan.connections)?;
                tcp.entry(way).or_default().push(measured);
                self.step(format!("UDP round trips, round {round}: {}", way.label()));
                let measured =
                    prepared.measure(self.exe, Place::Desktop, Load::Udp, self.plan.datagrams)?;
                udp.entry(way).or_default().push(measured);
            }
        }
        Ok((tcp, udp))
    }

    /// iperf3 through each way's forward.
    fn forward_throughput(&self, ways: &[Prepared]) -> anyhow::Result<Rounds<Way, f64>> {
        let mut rounds = Rounds::new();
        for round in 1..=self.plan.rounds {
            for prepared in ways {
                let way = prepared.way;
                self.step(format!(
                    "iperf3 through the forward, round {round}: {}",
                    way.label()
                ));
                let target = prepared.target(IPERF_PORT);
                let bits = throughput::iperf(prepared, &target, self.plan.iperf_seconds)?;
                rounds.entry(way).or_default().push(bits);
            }
        }
        Ok(rounds)
    }

    /// iperf3 to the gateway across each kind of MSS clamp.
    fn clamp_throughput(&self) -> anyhow::Result<Rounds<Clamp, f64>> {
        self.step("setting up the MSS clamps");
        let clamps = Clamp::ALL
            .iter()
            .map(|&clamp| Ok((clamp, clamp.prepare(self.exe)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let gateway = format!("{BRIDGE_V4}:{IPERF_PORT}");
        let mut rounds = Rounds::new();
        for round in 1..=self.plan.rounds {
            self.step(format!("iperf3 across the MSS clamps, round {round}"));
            for (clamp, prepared) in &clamps {
                let bits = throughput::iperf(prepared, &gateway, self.plan.iperf_seconds)?;
                rounds.entry(*clamp).or_default().push(bits);
            }
        }
        Ok(rounds)
    }

    /// connect4's net cost, rounds alternating a policy with no host
    /// service and one that grants the desktop a host service it never
    /// dials: what the socket-level grant check adds to a connect that
    /// involves no host service. Measured on the TCP load of a process in
    /// no scope, dialing the server itself: connect4's shortest path, so
    /// the check's few instructions are not lost in the rewrite's spread.
    fn host_service_check(&self) -> anyhow::Result<report::HostServiceCheck> {
        self.step("setting up connect4 with and without a host service");
        let mut netbpf = Prepared::new(self.exe, Way::Netbpf, "", "")?;
        netbpf.hold_desktop_network()?;
        let ids = netbpf
            .agent()
            .context("the netbpf way has an agent")?
            .programs()?;
        let empty = EmptyPrograms::attach(netbpf.topology.root.path())?;
        let _stats = BpfStats::enable()?;
        let mut check = report::HostServiceCheck::default();
        for round in 1..=self.plan.rounds {
            for (granted, extra) in [(false, ""), (true, HOST_SERVICE_GRANT)] {
                self.step(format!(
                    "connect4 with and without a host service, round {round}"
                ));
                netbpf.repolicy(extra)?;
                let before = programs::counts()?;
                netbpf.measure(self.exe, Place::Outside, Load::Tcp, self.plan.connections)?;
                let costs = programs::costs(&ids, &empty, &before, &programs::counts()?);
                let net = costs
                    .get(program::CONNECT4)
                    .map(Cost::net)
                    .context("connect4 did not run")?;
                if granted {
                    check.with_service.push(net);
                } else {
                    check.without_service.push(net);
                }
            }
        }
        Ok(check)
    }

    /// The agent's measurements of the plan.
    fn agent(&self) -> anyhow::Result<Vec<AgentSize>> {
        agent_scale::measure(
            self.plan.agent_sizes,
            self.plan.docker_containers,
            self.plan.agent_rounds,
            &|message| self.step(message),
        )
    }

    /// TCP connections with more and more other containers loaded; the
    /// memory at [`MEMORY_POINTS`] and connect4's cost at the last point.
    fn scaling(
        &self,
        ways: &mut [Prepared],
        netbpf: usize,
        memory: &mut Memory,
    ) -> anyhow::Result<Vec<ScalePoint>> {
        let mut points = Vec::new();
        for &others in self.plan.scaling {
            self.step(format!("loading {others} other containers"));
            for prepared in ways.iter_mut() {
                prepared.carry_others(others)?;
            }
            let mut point = ScalePoint {
                others,
                connections: BTreeMap::new(),
                connect4: None,
            };
            for round in 1..=self.plan.rounds {
                for prepared in ways.iter() {
                    let way = prepared.way;
                    self.step(format!(
                        "{others} other containers, round {round}: {}",
                        way.label()
                    ));
                    let measured = prepared.measure(
                        self.exe,
                        Place::Desktop,
                        Load::Tcp,
                        self.plan.connections,
                    )?;
                    point.connections.entry(way).or_default().push(measured);
                }
            }
            if MEMORY_POINTS.contains(&others) {
                memory.with_scopes.insert(others, ways[netbpf].map_bytes()?);
            }
            if Some(&others) == self.plan.scaling.last() {
                self.step(format!("per-program cost with {others} other containers"));
                let costs = program_costs(self.exe, &ways[netbpf], self.plan)?;
                point.connect4 = costs.scoped.get(program::CONNECT4).copied();
            }
            points.push(point);
        }
        Ok(points)
    }
}

/// A host service granted to the desktop at its gateway, which the load
/// never dials: its connects pay the check, never the service.
const HOST_SERVICE_GRANT: &str = "host_services = [{ service = \"bench-service\", dial = \"10.200.1.1:18188\" }]\n\
    [[host_service]]\nname = \"bench-service\"\nlisten = \"127.0.0.1:18188\"\n";

/// Per-program costs, with an empty program beside each of netbpf's.
fn program_costs(
    exe: &str,
    netbpf: &Prepared,
    plan: &Plan,
) -> anyhow::Result<report::ProgramCosts> {
    let agent = netbpf.agent().context("the netbpf way has an agent")?;
    let ids = agent.programs()?;
    let empty = EmptyPrograms::attach(netbpf.topology.root.path())?;
    let _stats = BpfStats::enable()?;
    let pass = |place: Place| -> anyhow::Result<_> {
        let before = programs::counts()?;
        netbpf.measure(exe, place, Load::Tcp, plan.connections)?;
        netbpf.measure(exe, place, Load::Udp, plan.datagrams)?;
        netbpf.measure(exe, place, Load::Bind, plan.connections)?;
        Ok(programs::costs(&ids, &empty, &before, &programs::counts()?))
    };
    Ok(report::ProgramCosts {
        scoped: pass(Place::Desktop)?,
        unscoped: pass(Place::Outside)?,
    })
}

/// Only the agent's measurements, printed as JSON.
pub fn agent_only(cgroups: &[usize], docker: Option<usize>, rounds: usize) -> anyhow::Result<()> {
    let sizes = agent_scale::measure(cgroups, docker, rounds, &|message| eprintln!("{message}"))?;
    println!("{}", serde_json::to_string_pretty(&sizes)?);
    Ok(())
}

/// The verifier check against `baseline`, or a new baseline.
pub fn check(baseline: &Path, bless: bool) -> anyhow::Result<()> {
    let counts = programs::verifier_counts()?;
    if bless {
        std::fs::write(baseline, serde_json::to_string_pretty(&counts)? + "\n")?;
        println!("wrote {}", baseline.display());
        return Ok(());
    }
    let expected: BTreeMap<String, u64> = serde_json::from_str(
        &std::fs::read_to_string(baseline)
            .with_context(|| format!("reading {}", baseline.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is a JSON object of program -> instructions",
            baseline.display()
        )
    })?;
    let mut failures = Vec::new();
    println!(
        "{:<24} {:>10} {:>10} {:>8}",
        "program", "baseline", "now", "change"
    );
    for (name, &now) in &counts {
        let Some(&was) = expected.get(name) else {
            failures.push(format!(
                "{name} is not in the baseline (bless it with --bless)"
            ));
            continue;
        };
        #[expect(clippy::cast_precision_loss, reason = "instruction counts are small")]
        let change = now as f64 / was as f64 - 1.0;
        println!("{name:<24} {was:>10} {now:>10} {:>7.1}%", change * 100.0);
        if change > 0.20 {
            failures.push(format!(
                "{name}: the verifier processed {now} instructions, {:.0}% more than the baseline's {was}",
                change * 100.0
            ));
        }
    }
    for name in expected.keys().filter(|name| !counts.contains_key(*name)) {
        failures.push(format!(
            "{name} is in the baseline but netbpf loads no such program now (bless the baseline with --bless)"
        ));
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
