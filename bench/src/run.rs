//! The order of the measurements (a run in passes, each pass every
//! measurement's share of the rounds), with a progress display, and the
//! verifier check.

use std::{cell::RefCell, collections::BTreeMap, fmt::Display, ops::RangeInclusive, path::Path};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use netbpf_common::names::program;
use netbpf_testenv::{BRIDGE_V4, Place};

use crate::{
    agent_scale::{self, AgentSize, DockerRounds},
    designs::{self, Design},
    interrupt,
    load::Measurement,
    programs::{self, BpfStats, Cost, EmptyPrograms},
    report::{self, Machine, Memory, Results, ScalePoint},
    rounds::{self, Figure, Rerun, Symptoms},
    start_window,
    stats::Better,
    throughput::{self, Clamp},
    ways::{IPERF_PORT, Load, Prepared, SCALING_CAPACITY, Way},
};

/// How much of each measurement a mode takes.
struct Plan {
    /// "full" or "quick".
    mode: &'static str,
    /// Passes of every measurement in a run, each on topologies built
    /// anew: a figure's rounds are spread over the whole run.
    passes: usize,
    /// Rounds of each measurement in a pass.
    rounds: usize,
    /// TCP connections (UDP round trips) of a way in a round. A round's
    /// rate is over all of them, and this VM's stalls move it: with 5000
    /// (a quarter of a second) the rounds' rate ratios ranged over ±15%,
    /// with 20000 still over ±10%, so the connection goals compare the
    /// rounds' median connection times instead; the longer rounds give
    /// those medians, and the per-program costs, more connections.
    connections: usize,
    datagrams: usize,
    /// Client runs a way's connections (round trips) of a round are split
    /// into, the ways taking turns run by run: with each way's 20000 in
    /// one run, this VM's slower and faster stretches (a way's median
    /// connection time moved by ±4% from one round to the next) fell on
    /// one way and not the next, and the rounds' ratios spread by ±1.5%.
    slices: usize,
    /// Seconds of each iperf3 run: one per path and round.
    iperf_seconds: u32,
    /// Rounds of each iperf3 measurement in a pass: a multiple of its
    /// three paths, each round's turn starting from the next path, so that
    /// each path runs as often in each place of a turn. One run's
    /// throughput moves by several percent from one run to the next here;
    /// with three rounds a pass of nine runs' medians, the rounds' ratios
    /// were narrower, but their quartiles (of nine rounds) fell on either
    /// side of the goals' 0.99 from one run of the bench to the next.
    /// Many rounds of one run each take as long and pin the quartiles.
    iperf_rounds: usize,
    scaling: &'static [usize],
    test_run_repeat: u32,
    /// The per-program costs' loads, in multiples of a way's (connections,
    /// round trips and binds). A round's cost is the mean over the runs of
    /// its loads, and a run here now and then takes microseconds (the
    /// hypervisor): the more runs, the less one moves the mean, and the
    /// less a run's quartiles move from one run of the bench to the next.
    /// They are cheap next to a way's rounds.
    cost_load_factor: usize,
    /// Rounds of the per-program costs in a pass: a round takes seconds,
    /// and each is a load of the programs, whose time per run moves from
    /// load to load (the unforwarded connect4's from 20 to 60 ns net, a
    /// fifth of the loads above 40). With seven a pass, the upper quartile
    /// of a run's 21 loads fell on either side of that goal from one run
    /// to the next.
    cost_rounds: usize,
    /// Rounds of the ways' TCP connections in a pass (the UDP round trips
    /// have `rounds`): the connection rate's goal is their median times'
    /// ratio, judged on where its quartiles may lie, which takes more than
    /// ten rounds a run to say more than the least and the largest do.
    connection_rounds: usize,
    /// Rounds of connect4 with and without a host service in a pass, each
    /// a load of its own with each policy: their difference's goal is
    /// judged on where its quartiles may lie, which takes more than ten
    /// rounds a run to say more than the least and the largest do.
    host_service_rounds: usize,
    /// Cgroups the agent follows, by size.
    agent_sizes: &'static [usize],
    /// Rounds of the agent's measurements over cgroups in a pass: each
    /// takes seconds, and three of a run gave quartiles that moved from
    /// one run to the next by more than the reload's goal asks to tell.
    agent_rounds: usize,
    /// Docker containers the agent follows, if measured, in one round a
    /// run (in its last pass): no goal reads it, and a round of 1,000
    /// containers takes four minutes.
    docker_containers: Option<usize>,
    /// Docker containers whose start window is measured.
    start_window_containers: usize,
    /// Live sockets the reverse path's designs are measured with.
    design_live: &'static [usize],
    /// Timed connects per measurement of a design.
    design_connects: usize,
}

const FULL: Plan = Plan {
    mode: "full",
    passes: 3,
    rounds: 3,
    connections: 20_000,
    datagrams: 40_000,
    slices: 10,
    iperf_seconds: 1,
    iperf_rounds: 21,
    scaling: &[1, 100, 1000, 10_000, 100_000],
    test_run_repeat: 1_000_000,
    cost_load_factor: 1,
    cost_rounds: 21,
    connection_rounds: 9,
    host_service_rounds: 21,
    agent_sizes: &[1000, 10_000, 20_000, 50_000],
    agent_rounds: 3,
    docker_containers: Some(1000),
    start_window_containers: 50,
    design_live: &[1, 100_000],
    design_connects: 20_000,
};

const QUICK: Plan = Plan {
    mode: "quick",
    passes: 2,
    rounds: 3,
    connections: 2000,
    datagrams: 4000,
    slices: 2,
    iperf_seconds: 1,
    iperf_rounds: 3,
    scaling: &[1, 1000, 100_000],
    test_run_repeat: 100_000,
    cost_load_factor: 2,
    cost_rounds: 3,
    connection_rounds: 3,
    host_service_rounds: 3,
    agent_sizes: &[1000],
    agent_rounds: 1,
    docker_containers: None,
    start_window_containers: 10,
    // Above what one process may hold here: the holders' split is tested.
    design_live: &[1, 20_000],
    design_connects: 5000,
};

/// The numbers in the run, from 1, of pass `pass`'s (from 0) `rounds`
/// rounds.
fn rounds_of_pass(pass: usize, rounds: usize) -> RangeInclusive<usize> {
    pass * rounds + 1..=(pass + 1) * rounds
}

impl Plan {
    /// One client run's share of `count` exchanges, split into the plan's
    /// slices: exactly, as the page says.
    fn per_slice(&self, count: usize) -> anyhow::Result<usize> {
        anyhow::ensure!(
            count.is_multiple_of(self.slices),
            "{count} exchanges do not split into {} slices",
            self.slices
        );
        Ok(count / self.slices)
    }

    /// Steps of the progress display in one pass.
    fn steps_per_pass(&self) -> usize {
        let designs = Design::ALL
            .iter()
            .map(|design| {
                if design.is_part() {
                    1
                } else {
                    self.design_live.len()
                }
            })
            .sum::<usize>();
        // Per round: the ways' UDP and their TCP at each scaling point, and
        // the designs.
        let per_round = 1 + self.scaling.len() + designs;
        // The ways' TCP, the ways' and the clamps' iperf3, the host-service
        // check's two policies.
        let own_rounds =
            self.connection_rounds + 2 * self.iperf_rounds + 2 * self.host_service_rounds;
        let agent = self.agent_rounds * self.agent_sizes.len();
        // Setting up the ways, the clamps and the host-service check, the
        // per-program costs, each scaling point's load and the costs at
        // its last.
        self.rounds * per_round + own_rounds + agent + 4 + self.scaling.len() + 1
    }
}

/// Scopes at which the maps' memory is reported.
const MEMORY_POINTS: [usize; 2] = [1000, 100_000];

/// Runs the whole bench `repeat` times in a row and writes the page of
/// the runs measured so far to `out` after each.
pub fn run(quick: bool, repeat: usize, out: &Path) -> anyhow::Result<()> {
    interrupt::catch()?;
    let plan = if quick { QUICK } else { FULL };
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("the bench's path is UTF-8")?;
    let mut runs = Vec::with_capacity(repeat);
    for run in 1..=repeat {
        runs.push(measure(&plan, exe, &format!("run {run} of {repeat}"))?);
        // Written after every run: a run that fails an hour in keeps the
        // ones before it.
        report::write(&runs, out)?;
    }
    Ok(())
}

/// One run of every measurement of `plan`, in its passes, its progress
/// shown as `run`.
fn measure(plan: &Plan, exe: &str, run: &str) -> anyhow::Result<Results> {
    let docker = usize::from(plan.docker_containers.is_some());
    let steps = plan.passes * plan.steps_per_pass() + docker + 4;
    let progress =
        ProgressBar::new(u64::try_from(steps)?).with_style(ProgressStyle::with_template(
            &format!("{run} {{elapsed_precise}} [{{bar:32}}] {{pos}}/{{len}} {{msg}}"),
        )?);
    let reruns = RefCell::new(Vec::new());
    let mut passes = (0..plan.passes).map(|pass| Pass {
        exe,
        plan,
        progress: &progress,
        reruns: &reruns,
        rounds: rounds_of_pass(pass, plan.rounds),
        cost_rounds: rounds_of_pass(pass, plan.cost_rounds),
        iperf_rounds: rounds_of_pass(pass, plan.iperf_rounds),
        connection_rounds: rounds_of_pass(pass, plan.connection_rounds),
        host_service_rounds: rounds_of_pass(pass, plan.host_service_rounds),
        agent_rounds: rounds_of_pass(pass, plan.agent_rounds),
        measures_docker: pass + 1 == plan.passes,
    });
    let first = passes.next().context("a plan of at least one pass")?;

    first.step("memory of a new agent")?;
    let at_start = Prepared::new(exe, Way::Netbpf, "", "")?.map_bytes()?;
    let mut results = first.measure()?;
    for pass in passes {
        results.append_pass(pass.measure()?);
    }
    first.step("BPF_PROG_TEST_RUN of the tc and sk_lookup programs")?;
    let test_runs = programs::test_runs(plan.test_run_repeat)?;
    first.step("verifier instruction counts")?;
    let verifier = programs::verifier_counts()?;
    first.step("the start window of Docker containers")?;
    let start_window = start_window::measure(plan.start_window_containers)?;
    progress.finish_with_message("done");
    results.memory.at_start = at_start;
    Ok(Results {
        mode: plan.mode.to_owned(),
        machine: Machine::this()?,
        connections: plan.connections,
        datagrams: plan.datagrams,
        slices: plan.slices,
        cost_slices: plan.slices,
        cost_load_factor: plan.cost_load_factor,
        rounds: plan.passes * plan.rounds,
        passes: plan.passes,
        iperf_runs: 1,
        iperf_seconds: plan.iperf_seconds,
        test_runs,
        verifier,
        start_window: Some(start_window),
        reruns: reruns.into_inner(),
        minutes: Some(progress.elapsed().as_secs_f64() / 60.0),
        ..results
    })
}

/// Rounds of one measurement per way, by way.
type Rounds<K, V> = BTreeMap<K, Vec<V>>;

/// One pass of a run: each measurement's rounds `rounds`, on topologies
/// of its own.
struct Pass<'a> {
    exe: &'a str,
    plan: &'a Plan,
    progress: &'a ProgressBar,
    /// The rounds of the run measured again so far, and why.
    reruns: &'a RefCell<Vec<Rerun>>,
    /// The numbers of this pass's rounds in the run.
    rounds: RangeInclusive<usize>,
    /// The numbers of this pass's rounds of the per-program costs.
    cost_rounds: RangeInclusive<usize>,
    /// The numbers of this pass's rounds of each iperf3 measurement.
    iperf_rounds: RangeInclusive<usize>,
    /// The numbers of this pass's rounds of the ways' TCP connections.
    connection_rounds: RangeInclusive<usize>,
    /// The numbers of this pass's rounds of the host-service check.
    host_service_rounds: RangeInclusive<usize>,
    /// The numbers of this pass's rounds of the agent's measurements.
    agent_rounds: RangeInclusive<usize>,
    /// Whether this pass measures the agent over Docker (the run's one
    /// round of it).
    measures_docker: bool,
}

impl Pass<'_> {
    /// Every measurement of the pass but the run's own (the memory of a
    /// new agent, `BPF_PROG_TEST_RUN`, the verifier).
    fn measure(&self) -> anyhow::Result<Results> {
        self.step("setting up the three ways")?;
        let mut ways = Way::ALL
            .iter()
            .map(|&way| Prepared::new(self.exe, way, SCALING_CAPACITY, ""))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let netbpf = ways
            .iter()
            .position(|prepared| prepared.way == Way::Netbpf)
            .context("a netbpf way")?;

        let (tcp, udp) = self.forwards(&ways)?;
        let conntrack = ways
            .iter()
            .map(|prepared| Ok((prepared.way, prepared.conntrack_entries()?)))
            .collect::<anyhow::Result<_>>()?;
        self.step("per-program cost")?;
        let programs = program_costs(self, &mut ways[netbpf])?;
        let host_service_check = self.host_service_check()?;
        let forward_throughput = self.forward_throughput(&ways)?;
        let clamp_throughput = self.clamp_throughput()?;
        let mut memory = Memory::default();
        let scaling = self.scaling(&mut ways, netbpf, &mut memory)?;
        drop(ways);

        let designs = self.designs()?;
        let agent = self.agent()?;
        Ok(Results {
            tcp,
            udp,
            conntrack,
            memory,
            programs,
            host_service_check,
            scaling,
            forward_throughput,
            clamp_throughput,
            designs,
            agent,
            ..Results::default()
        })
    }

    /// Shows what is measured now, one step further; fails once a signal
    /// asked the bench to stop.
    ///
    /// Without a terminal the bar is hidden: each step goes to the log
    /// instead, with the time into the run it began at.
    fn step(&self, message: impl Into<std::borrow::Cow<'static, str>>) -> anyhow::Result<()> {
        interrupt::check()?;
        let message = message.into();
        if self.progress.is_hidden() {
            let seconds = self.progress.elapsed().as_secs();
            eprintln!("{:3}:{:02} {message}", seconds / 60, seconds % 60);
        }
        self.progress.inc(1);
        self.progress.set_message(message);
        Ok(())
    }

    /// TCP connections and UDP round trips through each way's forward.
    fn forwards(
        &self,
        ways: &[Prepared],
    ) -> anyhow::Result<(Rounds<Way, Measurement>, Rounds<Way, Measurement>)> {
        let measure = |rounds: RangeInclusive<usize>, load: Load, what: &str, count: usize| {
            self.rounds_numbered(rounds, what, Way::label, &MEASUREMENT_FIGURES, |round| {
                self.step(format!("{what}, round {round}"))?;
                self.load_round(ways, round, load, count)
            })
        };
        let tcp = measure(
            self.connection_rounds.clone(),
            Load::Tcp,
            "TCP connections",
            self.plan.connections,
        )?;
        let udp = measure(
            self.rounds.clone(),
            Load::Udp,
            "UDP round trips",
            self.plan.datagrams,
        )?;
        Ok((tcp, udp))
    }

    /// A round of `count` exchanges of `load` from each way's desktop, in
    /// the plan's slices, the ways taking turns slice by slice (the round's
    /// first way first); each way's slices pooled.
    fn load_round(
        &self,
        ways: &[Prepared],
        round: usize,
        load: Load,
        count: usize,
    ) -> anyhow::Result<Vec<(Way, Measurement)>> {
        let per_slice = self.plan.per_slice(count)?;
        let ways: Vec<&Prepared> = rounds::in_turn(ways, round).collect();
        let samples = rounds::in_turns(&ways, self.plan.slices, |prepared| {
            prepared.sample(self.exe, Place::Desktop, load, per_slice)
        })?;
        ways.iter()
            .zip(samples)
            .map(|(prepared, samples)| Ok((prepared.way, Measurement::pooled(&samples)?)))
            .collect()
    }

    /// iperf3 through each way's forward.
    fn forward_throughput(&self, ways: &[Prepared]) -> anyhow::Result<Rounds<Way, f64>> {
        self.iperf_rounds("iperf3 through the forward", Way::label, |round| {
            rounds::in_turn(ways, round)
                .map(|prepared| (prepared.way, prepared, prepared.target(IPERF_PORT)))
                .collect()
        })
    }

    /// iperf3 to the gateway across each kind of MSS clamp.
    fn clamp_throughput(&self) -> anyhow::Result<Rounds<Clamp, f64>> {
        self.step("setting up the MSS clamps")?;
        let clamps = Clamp::ALL
            .iter()
            .map(|&clamp| Ok((clamp, clamp.prepare(self.exe)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let gateway = format!("{BRIDGE_V4}:{IPERF_PORT}");
        self.iperf_rounds("iperf3 across the MSS clamps", Clamp::label, |round| {
            rounds::in_turn(&clamps, round)
                .map(|(clamp, prepared)| (*clamp, prepared, gateway.clone()))
                .collect()
        })
    }

    /// The pass's iperf3 rounds of `what`, each over the paths `paths`
    /// gives it (each a key, its topology and the target its desktop
    /// dials), as the plan says; stalled rounds measured again.
    fn iperf_rounds<'p, K: Ord + Copy, L: Display>(
        &self,
        what: &str,
        label: impl Fn(K) -> L,
        paths: impl Fn(usize) -> Vec<(K, &'p Prepared, String)>,
    ) -> anyhow::Result<Rounds<K, f64>> {
        self.rounds_numbered(
            self.iperf_rounds.clone(),
            what,
            label,
            &BITS_FIGURES,
            |round| {
                self.step(format!("{what}, round {round}"))?;
                throughput::round(&paths(round), self.plan.iperf_seconds)
            },
        )
    }

    /// The pass's rounds of `measure_round`, stalled rounds measured again
    /// and noted for the page.
    fn rounds<K: Ord + Copy, V: Symptoms, L: Display>(
        &self,
        what: &str,
        label: impl Fn(K) -> L,
        figures: &[Figure<V>],
        measure_round: impl FnMut(usize) -> anyhow::Result<Vec<(K, V)>>,
    ) -> anyhow::Result<Rounds<K, V>> {
        self.rounds_numbered(self.rounds.clone(), what, label, figures, measure_round)
    }

    /// [`Pass::rounds`], in the rounds numbered `numbers`.
    fn rounds_numbered<K: Ord + Copy, V: Symptoms, L: Display>(
        &self,
        numbers: RangeInclusive<usize>,
        what: &str,
        label: impl Fn(K) -> L,
        figures: &[Figure<V>],
        measure_round: impl FnMut(usize) -> anyhow::Result<Vec<(K, V)>>,
    ) -> anyhow::Result<Rounds<K, V>> {
        rounds::measure(
            what,
            numbers,
            label,
            figures,
            &mut self.reruns.borrow_mut(),
            measure_round,
        )
    }

    /// connect4's net cost, rounds alternating a policy with no host
    /// service and one that grants the desktop a host service it never
    /// dials: what the socket-level grant check adds to a connect that
    /// involves no host service. Measured on the TCP load of a process in
    /// no scope to a server no forward reaches: connect4's shortest path,
    /// which looks nothing up, so the check's few instructions are not
    /// lost in the spread of lookups and rewrites.
    fn host_service_check(&self) -> anyhow::Result<report::HostServiceCheck> {
        self.step("setting up connect4 with and without a host service")?;
        let mut netbpf = Prepared::new(self.exe, Way::Netbpf, "", "")?;
        netbpf.hold_desktop_network()?;
        let ids = netbpf
            .agent()
            .context("the netbpf way has an agent")?
            .programs()?;
        let empty = EmptyPrograms::attach(netbpf.topology.root.path())?;
        let _stats = BpfStats::enable()?;
        let mut check = report::HostServiceCheck::default();
        let load = [(Load::TcpUnforwarded, self.plan.connections)];
        for round in self.host_service_rounds.clone() {
            let mut policies = [(false, ""), (true, HOST_SERVICE_GRANT)];
            // Each policy goes first in every other round.
            if round % 2 == 0 {
                policies.reverse();
            }
            for (granted, extra) in policies {
                self.step(format!(
                    "connect4 with and without a host service, round {round}"
                ))?;
                netbpf.repolicy(extra)?;
                let costs = sliced_costs(self, &netbpf, &ids, &empty, Place::Outside, &load)?;
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

    /// The reverse path's designs and parts, with the plan's live sockets.
    fn designs(&self) -> anyhow::Result<designs::DesignRounds> {
        let bench = designs::Bench::new()?;
        let measured = self.rounds(
            "the reverse path's designs",
            designs::stall_label,
            &designs::FIGURES,
            |round| {
                bench.round(
                    self.exe,
                    self.plan.design_live,
                    self.plan.design_connects,
                    round,
                    &|message| self.step(message),
                )
            },
        )?;
        Ok(designs::by_design(measured))
    }

    /// The agent's measurements of the plan.
    fn agent(&self) -> anyhow::Result<Vec<AgentSize>> {
        let docker = self
            .plan
            .docker_containers
            .filter(|_| self.measures_docker)
            .map(|containers| DockerRounds {
                containers,
                rounds: 1..=1,
            });
        agent_scale::measure(
            self.plan.agent_sizes,
            self.agent_rounds.clone(),
            docker,
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
            self.step(format!("loading {others} other containers"))?;
            for prepared in ways.iter_mut() {
                prepared.carry_others(others)?;
            }
            let what = format!("TCP connections with {others} other containers");
            let connections = self.rounds(&what, Way::label, &MEASUREMENT_FIGURES, |round| {
                self.step(format!("{others} other containers, round {round}"))?;
                self.load_round(ways, round, Load::Tcp, self.plan.connections)
            })?;
            let mut point = ScalePoint {
                others,
                connections,
                connect4: Vec::new(),
            };
            if MEMORY_POINTS.contains(&others) {
                memory.with_scopes.insert(others, ways[netbpf].map_bytes()?);
            }
            if Some(&others) == self.plan.scaling.last() {
                self.step(format!("per-program cost with {others} other containers"))?;
                point.connect4 = connect_costs(self, &mut ways[netbpf])?;
            }
            points.push(point);
        }
        Ok(points)
    }
}

/// Where a stall of a client's run shows: its rate falls, its median
/// latency grows.
const MEASUREMENT_FIGURES: [Figure<Measurement>; 2] = [
    Figure {
        name: "per second",
        better: Better::Higher,
        of: |measured| measured.per_second,
    },
    Figure {
        name: "µs p50",
        better: Better::Lower,
        of: |measured| measured.p50_us,
    },
];

/// Where a stall of a program's runs shows: the time per run of netbpf's
/// program, or of the empty one its cost is net of.
const COST_FIGURES: [Figure<Cost>; 2] = [
    Figure {
        name: "ns per run",
        better: Better::Lower,
        of: |cost| cost.ns_per_run,
    },
    Figure {
        name: "ns per run of the least empty program",
        better: Better::Lower,
        of: |cost| cost.empty_ns_per_run,
    },
];

/// Where a stall of an iperf3 run shows.
const BITS_FIGURES: [Figure<f64>; 1] = [Figure {
    name: "bits/s",
    better: Better::Higher,
    of: |bits| *bits,
}];

/// A host service granted to the desktop at its gateway, which the load
/// never dials: its connects pay the check, never the service.
const HOST_SERVICE_GRANT: &str = "host_services = [{ service = \"bench-service\", dial = \"10.200.1.1:18188\" }]\n\
    [[host_service]]\nname = \"bench-service\"\nlisten = \"127.0.0.1:18188\"\n";

/// What each of netbpf's programs costs, in the pass's cost rounds, each a load
/// of the desktop's sockets, one of a process in no scope, and that
/// process's connections to a server no forward reaches; the programs
/// loaded anew for each round.
fn program_costs(pass: &Pass<'_>, netbpf: &mut Prepared) -> anyhow::Result<report::ProgramCosts> {
    let plan = pass.plan;
    let (connections, datagrams) = (
        plan.connections * plan.cost_load_factor,
        plan.datagrams * plan.cost_load_factor,
    );
    let every_load = [
        (Load::Tcp, connections),
        (Load::Udp, datagrams),
        (Load::Bind, connections),
    ];
    let unforwarded = [(Load::TcpUnforwarded, connections)];
    let [scoped, unscoped, unscoped_unforwarded] = costs_under(
        pass,
        netbpf,
        Loads::EachRound,
        [
            ("a scope's sockets", Place::Desktop, &every_load[..]),
            ("sockets of no scope", Place::Outside, &every_load[..]),
            (
                "sockets of no scope to an unforwarded server",
                Place::Outside,
                &unforwarded[..],
            ),
        ],
    )?;
    Ok(report::ProgramCosts {
        scoped,
        unscoped,
        unscoped_unforwarded,
    })
}

/// connect4's cost for the desktop's TCP connects, in the pass's cost rounds:
/// the one figure a scaling point needs. The programs stay loaded: the
/// other containers' scopes are in the maps, the agent knows none of them.
fn connect_costs(pass: &Pass<'_>, netbpf: &mut Prepared) -> anyhow::Result<Vec<Cost>> {
    let [mut scoped] = costs_under(
        pass,
        netbpf,
        Loads::Kept,
        [(
            "a scope's sockets",
            Place::Desktop,
            &[(Load::Tcp, pass.plan.connections)][..],
        )],
    )?;
    Ok(scoped.remove(program::CONNECT4).unwrap_or_default())
}

/// A side of a cost measurement: its name for the page, where its
/// processes run, and the loads they make.
type Side<'a> = (&'static str, Place, &'a [(Load, usize)]);

/// How often a cost measurement has netbpf load its programs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loads {
    /// Once for the pass: what the bench wrote into the maps stays.
    Kept,
    /// Anew for each round, the agent restarted: a program's time per run
    /// moves with where a load puts it (by up to 10 ns, load to load,
    /// program by program), so a run's figure rests on as many loads as
    /// it has rounds, not on one per pass.
    EachRound,
}

/// The costs of netbpf's programs under each of `sides` (a name for the
/// page, a place and its loads), by program, round by round, each net of
/// the empty programs beside it at its hook: in each of the pass's rounds,
/// every side in turn, the programs loaded as `loading` says. A side's
/// load is split into the plan's slices, each counted on its own, and the
/// round's figure is the median slice's ([`programs::median_over`]). A round in
/// which either program's time per run stalled (an interrupt or the
/// hypervisor took the CPU in the middle of a run) is measured again.
fn costs_under<const SIDES: usize>(
    pass: &Pass<'_>,
    netbpf: &mut Prepared,
    loading: Loads,
    sides: [Side<'_>; SIDES],
) -> anyhow::Result<[BTreeMap<String, Vec<Cost>>; SIDES]> {
    let empty = EmptyPrograms::attach(netbpf.topology.root.path())?;
    let _stats = BpfStats::enable()?;
    let mut restarts = 0;
    let measured = pass.rounds_numbered(
        pass.cost_rounds.clone(),
        "per-program cost",
        |(index, program): (usize, &str)| format!("{program}, {}", sides[index].0),
        &COST_FIGURES,
        |_| {
            if loading == Loads::EachRound {
                restarts += 1;
                netbpf.restart_agent(&format!("cost-load-{restarts}"))?;
            }
            let agent = netbpf.agent().context("the netbpf way has an agent")?;
            let ids = agent.programs()?;
            let mut round = Vec::new();
            for (index, &(_, place, loads)) in sides.iter().enumerate() {
                round.extend(
                    sliced_costs(pass, netbpf, &ids, &empty, place, loads)?
                        .into_iter()
                        .map(|(program, cost)| ((index, program), cost)),
                );
            }
            Ok(round)
        },
    )?;
    let mut costs = [(); SIDES].map(|()| BTreeMap::new());
    for ((index, program), series) in measured {
        costs[index].insert(program.to_owned(), series);
    }
    Ok(costs)
}

/// The costs of netbpf's programs `ids` (net of `empty`) under `loads`
/// made from `place`, split into the plan's slices, each counted on its
/// own: each program's median slice ([`programs::median_over`]), so that a
/// burst of the machine's neighbours during one slice does not move it.
fn sliced_costs(
    pass: &Pass<'_>,
    netbpf: &Prepared,
    ids: &BTreeMap<String, u64>,
    empty: &EmptyPrograms,
    place: Place,
    loads: &[(Load, usize)],
) -> anyhow::Result<BTreeMap<&'static str, Cost>> {
    let slices = pass.plan.slices;
    let mut costs = Vec::with_capacity(slices);
    for _ in 0..slices {
        let before = programs::counts()?;
        for &(load, count) in loads {
            netbpf.sample(pass.exe, place, load, pass.plan.per_slice(count)?)?;
        }
        let after = programs::counts()?;
        costs.push(programs::costs(ids, empty, &before, &after));
    }
    Ok(programs::median_over(&costs))
}

/// Only the agent's measurements, printed as JSON.
pub fn agent_only(cgroups: &[usize], docker: Option<usize>, rounds: usize) -> anyhow::Result<()> {
    interrupt::catch()?;
    let docker = docker.map(|containers| DockerRounds {
        containers,
        rounds: 1..=rounds,
    });
    let sizes = agent_scale::measure(cgroups, 1..=rounds, docker, &|message| {
        interrupt::check()?;
        eprintln!("{message}");
        Ok(())
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cost round whose empty program stalled would read a net cost of
    /// 0, as flattering as a stall of netbpf's program is damning: both
    /// have the round measured again.
    #[test]
    fn a_cost_round_is_measured_again_when_either_program_stalled() {
        let cost = |ns_per_run, empty_ns_per_run| Cost {
            runs: 20_000,
            ns_per_run,
            empty_ns_per_run,
        };
        let mut calls = 0;
        let mut reruns = Vec::new();
        let measured = rounds::measure(
            "per-program cost",
            1..=5,
            |program: &'static str| program,
            &COST_FIGURES,
            &mut reruns,
            |round| {
                calls += 1;
                let first_time = calls <= 5;
                let value = match round {
                    2 if first_time => cost(285.0, 30.0),
                    4 if first_time => cost(40.0, 122.0),
                    _ => cost(40.0, 30.0),
                };
                Ok(vec![(program::BOUND4, value)])
            },
        )
        .unwrap();
        assert_eq!(calls, 7);
        assert!(
            measured[program::BOUND4]
                .iter()
                .all(|cost| (cost.net() - 10.0).abs() < 1e-9)
        );
        let why: Vec<_> = reruns
            .iter()
            .map(|rerun| (rerun.round, rerun.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                (2, "netbpf_bound4: 285 ns per run, median 40"),
                (
                    4,
                    "netbpf_bound4: 122 ns per run of the least empty program, median 30"
                ),
            ]
        );
    }
}
