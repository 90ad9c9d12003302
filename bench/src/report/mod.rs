//! The results: every raw figure as JSON, and the page `benchmarks.md`
//! with its tables (medians, spreads, ratios against the baseline of the
//! same run), the goals and whether they are met, and plots.

mod agent;
mod designs;
mod goals;
mod runs;

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context as _;
use netbpf_common::names::program;
use serde::{Deserialize, Serialize};

use crate::{
    agent_scale::AgentSize,
    designs::DesignRounds,
    load::Measurement,
    plot,
    programs::{Cost, TestRun},
    rounds::Rerun,
    start_window::StartWindow,
    stats::{self, Summary},
    throughput::Clamp,
    ways::Way,
};

/// Every figure of one run of the bench.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// "full" or "quick".
    pub mode: String,
    pub machine: Machine,
    /// Connections per TCP measurement.
    pub connections: usize,
    /// Round trips per UDP measurement.
    pub datagrams: usize,
    /// Client runs a way's connections (round trips) of a round were
    /// split into, the ways taking turns run by run (raw figures from
    /// before ran one).
    #[serde(default = "one")]
    pub slices: usize,
    /// Client runs a per-program cost round's load was split into, each
    /// counted on its own (raw figures from before counted it whole).
    #[serde(default = "one")]
    pub cost_slices: usize,
    /// The per-program costs' loads, in multiples of `connections` and
    /// `datagrams`.
    #[serde(default = "one")]
    pub cost_load_factor: usize,
    /// Measurements per way; the ways take turns round by round.
    pub rounds: usize,
    /// Passes the rounds were spread over, each on topologies built anew.
    #[serde(default = "one")]
    pub passes: usize,
    /// iperf3 runs per path and round (raw figures from before they were
    /// counted ran one).
    #[serde(default = "one")]
    pub iperf_runs: usize,
    pub iperf_seconds: u32,
    /// TCP connections through the forward, round by round.
    pub tcp: BTreeMap<Way, Vec<Measurement>>,
    /// UDP round trips through the forward, round by round.
    pub udp: BTreeMap<Way, Vec<Measurement>>,
    /// Conntrack entries each way left in the desktop's namespace.
    pub conntrack: BTreeMap<Way, u64>,
    pub memory: Memory,
    pub programs: ProgramCosts,
    /// connect4's net cost with and without a host service on the node.
    pub host_service_check: HostServiceCheck,
    pub scaling: Vec<ScalePoint>,
    /// iperf3 bits per second through the forward, round by round.
    pub forward_throughput: BTreeMap<Way, Vec<f64>>,
    /// iperf3 bits per second across the MSS clamp, round by round.
    pub clamp_throughput: BTreeMap<Clamp, Vec<f64>>,
    /// `BPF_PROG_TEST_RUN` times, by case.
    pub test_runs: BTreeMap<String, TestRun>,
    /// Instructions the verifier processed, by program.
    pub verifier: BTreeMap<String, u64>,
    /// The reverse path's designs, each alone at connect4.
    #[serde(default)]
    pub designs: DesignRounds,
    /// The agent following workloads, by kind and count.
    pub agent: Vec<AgentSize>,
    /// The rounds measured again because a way stalled in them.
    #[serde(default)]
    pub reruns: Vec<Rerun>,
    /// How long Docker containers' first processes wait for their scope.
    #[serde(default)]
    pub start_window: Option<StartWindow>,
    /// How long the run took, in minutes (raw figures from before were
    /// not timed).
    #[serde(default)]
    pub minutes: Option<f64>,
}

/// The default of a count the oldest raw figures lack (passes, the
/// per-program costs' load factor): one.
fn one() -> usize {
    1
}

impl Results {
    /// Adds the rounds of a later pass of the same run to each
    /// measurement's, in order. A figure measured once per pass (memory
    /// at a scaling point, conntrack entries) keeps the first pass's; the
    /// rounds measured again are the run's, kept apart from its passes.
    pub fn append_pass(&mut self, pass: Self) {
        append(&mut self.tcp, pass.tcp);
        append(&mut self.udp, pass.udp);
        append(&mut self.programs.scoped, pass.programs.scoped);
        append(&mut self.programs.unscoped, pass.programs.unscoped);
        append(
            &mut self.programs.unscoped_unforwarded,
            pass.programs.unscoped_unforwarded,
        );
        let check = &mut self.host_service_check;
        check
            .without_service
            .extend(pass.host_service_check.without_service);
        check
            .with_service
            .extend(pass.host_service_check.with_service);
        for (point, later) in self.scaling.iter_mut().zip(pass.scaling) {
            append(&mut point.connections, later.connections);
            point.connect4.extend(later.connect4);
        }
        append(&mut self.forward_throughput, pass.forward_throughput);
        append(&mut self.clamp_throughput, pass.clamp_throughput);
        for (design, by_live) in pass.designs {
            append(self.designs.entry(design).or_default(), by_live);
        }
        for later in pass.agent {
            match self
                .agent
                .iter_mut()
                .find(|size| size.workloads == later.workloads && size.count == later.count)
            {
                Some(size) => {
                    size.rounds.extend(later.rounds);
                    size.retried.extend(later.retried);
                }
                None => self.agent.push(later),
            }
        }
    }
}

/// Each of `from`'s rounds after `into`'s of the same key.
fn append<K: Ord, V>(into: &mut BTreeMap<K, Vec<V>>, from: BTreeMap<K, Vec<V>>) {
    for (key, rounds) in from {
        into.entry(key).or_default().extend(rounds);
    }
}

/// Where the figures were measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// When the run ended (UTC, `date -u`).
    pub date: String,
    /// The kernel's mitigations that put a cost on calls and returns, by
    /// vulnerability, as `/sys/devices/system/cpu/vulnerabilities` says:
    /// those the CPU is affected by.
    #[serde(default)]
    pub call_mitigations: BTreeMap<String, String>,
}

/// The vulnerabilities whose mitigations make the kernel's calls and
/// returns (a program's helper calls, its own call and return) dearer.
const CALL_VULNERABILITIES: [&str; 3] = ["spectre_v2", "retbleed", "spec_rstack_overflow"];

impl Machine {
    pub fn this() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_default();
        let command = |program: &str, args: &[&str]| -> anyhow::Result<String> {
            let output = std::process::Command::new(program).args(args).output()?;
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        Ok(Self {
            cpu,
            cpus: std::thread::available_parallelism()?.get(),
            memory_gib: kib / (1024.0 * 1024.0),
            kernel: command("uname", &["-r"])?,
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?,
            call_mitigations: CALL_VULNERABILITIES
                .into_iter()
                .filter_map(|name| {
                    let path = Path::new("/sys/devices/system/cpu/vulnerabilities").join(name);
                    let state = std::fs::read_to_string(path).ok()?;
                    let state = state.trim();
                    (state != "Not affected").then(|| (name.to_owned(), state.to_owned()))
                })
                .collect(),
        })
    }
}

/// What the page says of `machine`'s mitigations that make calls and
/// returns dearer: nothing when it has none (or they were not recorded).
fn call_mitigations(machine: &Machine) -> String {
    if machine.call_mitigations.is_empty() {
        return String::new();
    }
    let mitigations: Vec<String> = machine
        .call_mitigations
        .iter()
        .map(|(name, state)| format!("{name}: {state}"))
        .collect();
    format!(
        "The CPU's mitigations that make the kernel's calls and returns dearer (from \
         `/sys/devices/system/cpu/vulnerabilities`): {}. Every program's time per run, the empty \
         program's too, holds its helper calls and its own call and return: the per-program \
         figures are of this CPU and these mitigations, and move with them.\n\n",
        mitigations.join("; ")
    )
}

/// Memory of netbpf's maps, from the kernel (`bytes_memlock`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    /// A new agent with the default capacities and one scope.
    pub at_start: u64,
    /// The scaling agent (capacities raised to 131,072) carrying this many
    /// other containers.
    pub with_scopes: BTreeMap<usize, u64>,
}

/// Per-program costs over a TCP, a UDP and a bind measurement, by
/// program, round by round.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProgramCosts {
    /// Of the desktop's sockets: a scope with forwards, rewritten.
    pub scoped: BTreeMap<String, Vec<Cost>>,
    /// Of a process below the same cgroup root in no scope.
    pub unscoped: BTreeMap<String, Vec<Cost>>,
    /// Of that process's TCP connections to a server no forward reaches:
    /// what most connects of a node are.
    #[serde(default)]
    pub unscoped_unforwarded: BTreeMap<String, Vec<Cost>>,
}

impl ProgramCosts {
    /// The rounds the costs were measured in: connect4's of the desktop's
    /// sockets (every round has it).
    #[must_use]
    pub fn rounds(&self) -> usize {
        self.scoped.get(program::CONNECT4).map_or(0, Vec::len)
    }
}

/// The net cost of `costs`' rounds.
#[must_use]
pub fn net(costs: &[Cost]) -> Summary {
    Summary::of(&costs.iter().map(Cost::net).collect::<Vec<_>>())
}

/// connect4's net ns per run on the TCP load of a process in no scope to
/// a server no forward reaches, round by round, with a policy that has no
/// host service and with one that grants the desktop a host service no
/// connect goes to.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HostServiceCheck {
    pub without_service: Vec<f64>,
    pub with_service: Vec<f64>,
}

/// One point of the scaling curve.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Other containers' scopes and rules loaded.
    pub others: usize,
    pub connections: BTreeMap<Way, Vec<Measurement>>,
    /// connect4's cost at this point, round by round, where measured (the
    /// last point).
    pub connect4: Vec<Cost>,
}

/// Writes `runs` (one or more runs of the bench, in a row) as
/// `OUT/bench/results.json`, `OUT/benchmarks.md` and the plots of the
/// last run in `OUT/bench/`.
pub fn write(runs: &[Results], out: &Path) -> anyhow::Result<()> {
    let last = runs.last().context("the bench made no run")?;
    let bench = out.join("bench");
    std::fs::create_dir_all(&bench)?;
    std::fs::write(
        bench.join("results.json"),
        serde_json::to_string_pretty(runs)? + "\n",
    )?;
    plot::connections(&bench.join("connect-rate.svg"), last)?;
    plot::scaling(&bench.join("scaling.svg"), last)?;
    plot::program_costs(&bench.join("program-cost.svg"), &last.programs)?;
    plot::agent(&bench.join("agent.svg"), &last.agent)?;
    let page = page(runs, last);
    std::fs::write(out.join("benchmarks.md"), &page)?;
    println!("{page}");
    Ok(())
}

/// Writes the page and plots of `OUT/bench/results.json` again, from its
/// runs as they are.
pub fn rewrite(out: &Path) -> anyhow::Result<()> {
    let path = out.join("bench/results.json");
    let json = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run the bench first", path.display()))?;
    let runs: Vec<Results> =
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
    write(&runs, out)
}

/// The per-round values of `field` of `measurements`.
fn series(measurements: &[Measurement], field: fn(&Measurement) -> f64) -> Vec<f64> {
    measurements.iter().map(field).collect()
}

fn per_second(measurement: &Measurement) -> f64 {
    measurement.per_second
}

fn p50_us(measurement: &Measurement) -> f64 {
    measurement.p50_us
}

fn mib(bytes: u64) -> String {
    #[expect(
        clippy::cast_precision_loss,
        reason = "memory sizes are far below 2^52"
    )]
    let mib = bytes as f64 / f64::from(1 << 20);
    format!("{mib:.1} MiB")
}

/// The page of `runs`; its detailed sections are of `last`.
fn page(runs: &[Results], results: &Results) -> String {
    let mut text = String::new();
    let machine = &results.machine;
    let _ = write!(
        text,
        "# Benchmarks\n\n\
         Produced by `cargo xtask bench` ({mode} mode, {count} in a row) on {date}: {cpus} × \
         {cpu}, {memory:.0} GiB, Linux {kernel}. The page, its plots and [the raw \
         figures](bench/results.json) are rewritten by each run; nothing here is typed by \
         hand.\n\n",
        mode = results.mode,
        count = if runs.len() == 1 {
            "one run".to_owned()
        } else {
            format!("{} runs", runs.len())
        },
        date = machine.date,
        cpus = machine.cpus,
        cpu = machine.cpu,
        memory = machine.memory_gib,
        kernel = machine.kernel,
    );
    text.push_str(&call_mitigations(machine));
    text.push_str(METHOD);
    let factor = match results.cost_load_factor {
        1 => "a way's load".to_owned(),
        factor => format!("{factor} times a way's load"),
    };
    let figure = match results.cost_slices {
        1 => "the mean of that many runs of each program, so a run that the hypervisor delays \
              by microseconds moves it little"
            .to_owned(),
        slices => format!(
            "the median over {slices} client runs, counted each on its own, of each program's \
             mean time per run (and the empty ones'): a run that the hypervisor delays by \
             microseconds moves it little, and a burst of the machine's neighbours during one \
             client run does not move it"
        ),
    };
    let _ = write!(
        text,
        "Each side of a per-program cost measures, in each round, {connections} TCP \
         connections, {datagrams} UDP round trips and {connections} binds ({factor}): a round's \
         figure is {figure}. The costs have {cost_rounds} rounds a run (a round takes seconds), \
         so that a few slow loads of the programs do not move their quartiles.\n\n",
        connections = results.connections * results.cost_load_factor,
        datagrams = results.datagrams * results.cost_load_factor,
        cost_rounds = results.programs.rounds(),
    );
    if results.passes > 1 {
        let _ = write!(
            text,
            "A run measures in {passes} passes, {per_pass} rounds of each measurement per pass (the \
             TCP connections, the per-program costs, the host-service check, iperf3 and the \
             agent have counts of their own, given with them), \
             and each pass builds everything anew: the ways' topologies, the clamps, the other \
             containers' entries, the agent's cgroups and its Docker daemon. So a figure's rounds \
             are spread over the whole run: its range holds the slower and faster stretches of \
             this machine during the run, and what a setup leaves to chance (such as where an \
             entry falls among its hash's buckets), not only the noise of one moment.\n\n",
            passes = results.passes,
            per_pass = results.rounds / results.passes,
        );
    }
    goals::section(&mut text, runs);
    runs::reruns_section(&mut text, runs);
    runs::program_costs_section(&mut text, runs);
    if runs.len() > 1 {
        let _ = write!(
            text,
            "The sections below are of the last run ({count} of {count}); every run's figures \
             are in the raw figures.\n\n",
            count = runs.len()
        );
    }
    connections_section(&mut text, results);
    programs_section(&mut text, results);
    designs::section(&mut text, results);
    scaling_section(&mut text, results);
    memory_section(&mut text, results);
    agent::section(&mut text, results);
    throughput_section(&mut text, results);
    verifier_section(&mut text, results);
    text.push_str(REPRODUCE);
    text
}

const METHOD: &str = "## Method\n\n\
A desktop container (a cgroup and a network namespace) reaches servers published on another \
bridge's gateway (a namespace of the bench's own) three ways: **no program** (it dials the \
gateway itself: the floor), **netbpf** (it dials `localhost`, netbpf's agent forwards it in \
`connect()`/`sendmsg()`), and **iptables** (it dials `localhost`, forwarded by DNAT + \
`route_localnet` + MASQUERADE in its namespace: what users do today). Each way runs on a topology \
of its own, so none meets another's TIME_WAIT or conntrack entries. Every client and server of \
the load runs pinned to one CPU: on two, each exchange wakes the other CPU, which in this VM goes \
through the hypervisor and made some rounds many times slower than the rest. In each round the ways \
take turns run by run of their clients (a way's round is several runs, its figures those of all \
their exchanges), so a slow stretch of this noisy VM falls on all of them, and each run of a \
round starts from the next way, so that going first (after a pause) or after a given way \
favours none; each figure is the median of \
the rounds with their interquartile range (the middle half of the rounds), and each ratio is \
taken round by round against the baseline of the same round; a ratio of median connection \
times is the median of the ratios of the two ways' runs of each turn, which ran next to each \
other, so that a slow stretch moves only the turns it straddles. A round in which some way \
stalled (its rate, or its median latency, worse than that way's median by more than 1.5 times) \
is measured again, every way of it, up to three times: a ratio never pairs a stalled side with \
a normal one. Each round measured again is noted with what it showed: the TCP segments the \
stalled client's namespace retransmitted, the CPU time the hypervisor gave to other machines \
(*steal*, from `/proc/stat`), and this machine's busiest processes (from `/proc/PID/stat`).\n\n\
Per-program costs come from the kernel's own statistics: the bench turns them on for that \
measurement only (`BPF_ENABLE_STATS`, which the kernel undoes when the bench exits; the same \
figures `kernel.bpf_stats_enabled` gives, without touching the sysctl), and attaches three empty \
programs (`r0 = 1; exit`) beside each of netbpf's at the same hook; *net* is netbpf's time per run \
minus the least of the empty programs', which takes out what calling a program and the statistics \
themselves cost. The least, because the empty program right after netbpf's at connect4, \
getpeername or recvmsg took up to 12 ns per run more than the two after it, in some loads and not \
in others: beside a single empty program the net figures moved by that much from one run to the \
next, and counted against the empty program what netbpf's program leaves to whatever runs after \
it. netbpf's agent is restarted before each round of this measurement, and loads its programs \
anew into its pinned links (first at each hook, as before): a program's time per run moved by up \
to 10 ns from one load to the next, each program on its own, so each round is a load of its own \
and the interquartile range covers where a load puts the program. A round in which \
either program's time per run was more than 1.5 times its median (an interrupt or the \
hypervisor took the CPU in the middle of a run) is measured again, as above. The tc and \
`sk_lookup` programs are timed with `BPF_PROG_TEST_RUN`.\n\n";

const REPRODUCE: &str = "## Reproduce\n\n\
`cargo xtask bench` rewrites this page, `docs/bench/*.svg` and `docs/bench/results.json`; \
`cargo xtask bench --repeat 3` runs the whole bench three times in a row and compares the \
runs' verdicts (about two and a half hours here: a full run takes 44 to 50 minutes, as busy as the \
machine's neighbours keep it); `cargo xtask bench --quick` measures less and writes to `target/bench/` (CI runs it); `cargo xtask bench --report` measures nothing and writes the page \
again from the raw figures; `cargo xtask bench --check` fails when a program's verifier \
instruction count grew by more than 20% over `bench/verifier-baseline.json` (CI runs it; \
`--bless` writes a new baseline). Ctrl-C stops a run at its next step and removes what it made \
(namespaces, cgroups, pinned maps); the page keeps the runs finished before it. Every figure above comes from the JSON file, a list of the \
runs: their `tcp`, `udp`, `scaling`, `programs`, `test_runs`, `forward_throughput`, \
`clamp_throughput`, `memory`, `verifier`, `designs`, `agent`, `start_window` and `reruns` fields.\n";

pub(super) fn median_ratio(results: &BTreeMap<Way, Vec<Measurement>>, way: Way) -> Summary {
    Summary::of_ratios(
        &way_series(results, way, per_second),
        &way_series(results, Way::Direct, per_second),
    )
}

/// `way`'s speed over no program's at the median connection, round by
/// round: no program's median connection time over `way`'s. A round's
/// rate (its connections over its time) moves with this VM's stalls,
/// which land in the slowest connections of any way: in a full run the
/// rounds' rate ratios ranged over ±10%, their median times' ratios
/// mostly within 2%. What a way adds to every connection shows at the
/// median.
///
/// A round's ratio is the median of its client runs' ratios, each run of
/// `way` against no program's run of the same turn: a slow stretch of the
/// VM that fell on several runs of one way and fewer of the other moved
/// the ratio of the two ways' pooled medians by up to 12% in a round
/// (the full runs of 2026-12-07), and moves only the turns it straddles
/// here. Rounds measured before the runs were kept give the pooled ratio.
pub(super) fn median_time_ratios(results: &BTreeMap<Way, Vec<Measurement>>, way: Way) -> Vec<f64> {
    let rounds = |way| results.get(&way).map_or(&[][..], Vec::as_slice);
    rounds(Way::Direct)
        .iter()
        .zip(rounds(way))
        .filter_map(|(direct, measured)| median_time_ratio(direct, measured))
        .collect()
}

/// [`median_time_ratios`]' ratio of one round: `direct`'s median time over
/// `measured`'s, turn by turn where both kept their runs'.
fn median_time_ratio(direct: &Measurement, measured: &Measurement) -> Option<f64> {
    let turns = &direct.runs_p50_us;
    if turns.is_empty() || turns.len() != measured.runs_p50_us.len() {
        return (measured.p50_us > 0.0).then(|| direct.p50_us / measured.p50_us);
    }
    let ratios = stats::ratios(turns, &measured.runs_p50_us);
    (!ratios.is_empty()).then(|| Summary::of(&ratios).median)
}

/// `way`'s rounds' `field`.
fn way_series(
    results: &BTreeMap<Way, Vec<Measurement>>,
    way: Way,
    field: fn(&Measurement) -> f64,
) -> Vec<f64> {
    results
        .get(&way)
        .map(|rounds| series(rounds, field))
        .unwrap_or_default()
}

pub(super) fn throughput_ratio<K: Ord>(
    rounds: &BTreeMap<K, Vec<f64>>,
    baseline: &K,
    way: &K,
) -> Summary {
    Summary::of_ratios(
        rounds.get(way).map_or(&[][..], Vec::as_slice),
        rounds.get(baseline).map_or(&[][..], Vec::as_slice),
    )
}

/// How many rounds a way of `measured` had.
fn rounds_of<K, V>(measured: &BTreeMap<K, Vec<V>>) -> usize {
    measured.values().next().map_or(0, Vec::len)
}

fn connections_section(text: &mut String, results: &Results) {
    let _ = write!(
        text,
        "## Connections and datagrams through a forward\n\n\
         ![connections per second](bench/connect-rate.svg)\n\n\
         TCP: {} connections per round and way (connect, `getpeername()`, read one byte, close), {} \
         rounds. UDP: one socket, bound, sending {} datagrams one after the other to the forwarded \
         port, each waiting for its echo (sendmsg and recvmsg rewritten), {} rounds. A way's round is {} runs \
         of its client, the ways taking turns run by run; its figures are of all its runs' \
         exchanges.\n\n\
         | way | TCP connections/s | vs. no program | p50 | p99 | TCP retransmits, all rounds | UDP round trips/s | vs. no program | conntrack entries after |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        results.connections,
        rounds_of(&results.tcp),
        results.datagrams,
        rounds_of(&results.udp),
        results.slices
    );
    for way in Way::ALL {
        let (Some(tcp), Some(udp)) = (results.tcp.get(&way), results.udp.get(&way)) else {
            continue;
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.0} µs | {:.0} µs | {} | {} | {} | {} |",
            way.label(),
            Summary::of(&series(tcp, per_second)).show(0),
            median_ratio(&results.tcp, way).show(3),
            Summary::of(&series(tcp, p50_us)).median,
            Summary::of(&series(tcp, |m| m.p99_us)).median,
            tcp.iter().map(|m| m.retransmits).sum::<u64>(),
            Summary::of(&series(udp, per_second)).show(0),
            median_ratio(&results.udp, way).show(3),
            results.conntrack.get(&way).copied().unwrap_or_default(),
        );
    }
    text.push_str(
        "\nnetbpf rewrites the destination once, in `connect()` (or per datagram in `sendmsg()`), and \
         the traffic is then direct: no NAT, no conntrack entry. The iptables way sends every \
         connection through NAT and conntrack and leaves an entry per connection behind.\n\n",
    );
}

fn programs_section(text: &mut String, results: &Results) {
    let _ = write!(
        text,
        "## Cost of each program\n\n![net ns per run](bench/program-cost.svg)\n\n\
         Kernel time per run during one TCP, one UDP and one bind measurement (as many sockets \
         bound to the wildcard address and closed as connections), for the desktop's sockets (a \
         scope whose connections are rewritten) and for a process below the same cgroup root in no \
         scope, in {rounds} rounds. *runs*: in all rounds; *ns/run* and *empty* (the least of three empty \
         programs at the same hook): medians of the rounds; *net*: the difference, median (interquartile range) \
         of the rounds.\n\n\
         | program | runs (scope) | ns/run (scope) | empty | **net (scope)** | runs (no scope) | ns/run (no scope) | empty | **net (no scope)** |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        rounds = results.programs.rounds(),
    );
    let names: std::collections::BTreeSet<&String> = results
        .programs
        .scoped
        .keys()
        .chain(results.programs.unscoped.keys())
        .collect();
    let cells = |costs: Option<&Vec<Cost>>| {
        costs.map_or_else(
            || "- | - | - | -".to_owned(),
            |costs| {
                let median = |field: fn(&Cost) -> f64| {
                    Summary::of(&costs.iter().map(field).collect::<Vec<_>>()).median
                };
                format!(
                    "{} | {:.0} | {:.0} | **{}**",
                    costs.iter().map(|cost| cost.runs).sum::<u64>(),
                    median(|cost| cost.ns_per_run),
                    median(|cost| cost.empty_ns_per_run),
                    net(costs).show(0)
                )
            },
        )
    };
    for name in names {
        let _ = writeln!(
            text,
            "| {name} | {} | {} |",
            cells(results.programs.scoped.get(name)),
            cells(results.programs.unscoped.get(name))
        );
    }
    text.push_str("\n`BPF_PROG_TEST_RUN` (the kernel's average over its repetitions, ns per run; *empty*: an empty program of the same type on the same input):\n\n| case | ns/run | empty | **net** |\n| --- | ---: | ---: | ---: |\n");
    for (name, run) in &results.test_runs {
        let _ = writeln!(
            text,
            "| {name} | {:.0} | {:.0} | **{:.0}** |",
            run.ns_per_run,
            run.empty_ns_per_run,
            run.net()
        );
    }
    text.push('\n');
}

fn scaling_section(text: &mut String, results: &Results) {
    text.push_str(
        "## Scaling with other containers\n\n![connections per second by other containers](bench/scaling.svg)\n\n\
         The same TCP measurement with other containers' rules loaded: for netbpf, a scope (a \
         cgroup at the desktop's depth) and a forward per container in its maps, written as the \
         agent writes them; for iptables, one DNAT rule per container in the chain the desktop's \
         packets walk, before the desktop's own.\n\n\
         | other containers | no program | netbpf | netbpf / no program | iptables | iptables / no program | connect4 net ns |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for point in &results.scaling {
        let rate = |way| {
            point
                .connections
                .get(&way)
                .map(|rounds| Summary::of(&series(rounds, per_second)).show(0))
                .unwrap_or_default()
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} |",
            point.others,
            rate(Way::Direct),
            rate(Way::Netbpf),
            median_ratio(&point.connections, Way::Netbpf).show(3),
            rate(Way::Iptables),
            median_ratio(&point.connections, Way::Iptables).show(3),
            if point.connect4.is_empty() {
                "-".to_owned()
            } else {
                net(&point.connect4).show(0)
            },
        );
    }
    text.push('\n');
    let fallen = results.scaling.iter().find(|point| {
        point.connections.contains_key(&Way::Iptables)
            && median_ratio(&point.connections, Way::Iptables).q3 < RATIO_EXPLAINED_BELOW
    });
    if let (Some(first), Some(last)) = (fallen, results.scaling.last()) {
        let _ = write!(
            text,
            "The iptables way falls below {RATIO_EXPLAINED_BELOW} of no program from {} other \
             containers on, and to {:.3} at {}: the first packet of each connection walks the \
             chain's DNAT rules one by one, one per container, before it reaches the desktop's. \
             netbpf looks its forward up in a hash, whatever the number of containers.\n\n",
            first.others,
            median_ratio(&last.connections, Way::Iptables).median,
            last.others
        );
    }
}

/// A ratio to no program below this is explained where it is shown.
const RATIO_EXPLAINED_BELOW: f64 = 0.5;

fn memory_section(text: &mut String, results: &Results) {
    let _ = write!(
        text,
        "## Memory\n\n\
         The maps' memory as the kernel counts it (`bytes_memlock` of every map of netbpf's \
         programs, and of the agent's own pinned beside them). Hash maps allocate their entries \
         as they fill (only their buckets are reserved at capacity); the per-CPU counter arrays are reserved at capacity; what each socket dialed \
         lives in the socket's own storage and is freed with it. Capacities are settings \
         (`[capacity]` in the agent's configuration, see [agent.md](agent.md#capacity)).\n\n\
         | agent | memory |\n| --- | ---: |\n\
         | a new agent, default capacities, one scope | {} |\n",
        mib(results.memory.at_start)
    );
    for (others, bytes) in &results.memory.with_scopes {
        let _ = writeln!(
            text,
            "| capacities raised to 131,072 scopes, rules and forward ports, carrying {others} other containers | {} |",
            mib(*bytes)
        );
    }
    text.push('\n');
}

/// What one round of iperf3 runs on each path.
fn runs_of_a_round(runs: usize, seconds: u32) -> String {
    if runs == 1 {
        format!("Each round runs it once for {seconds} s on each path")
    } else {
        format!(
            "Each round runs it {runs} times for {seconds} s on each path, a path's figure being \
             the median of its runs"
        )
    }
}

fn throughput_section(text: &mut String, results: &Results) {
    let rounds = results
        .forward_throughput
        .values()
        .next()
        .map_or(0, Vec::len);
    let _ = write!(
        text,
        "## Throughput\n\n\
         iperf3 from the desktop, its client and server pinned to the load's CPU: through the \
         forward, and straight to the gateway across a bridge that clamps the MSS of handshakes \
         (every packet crosses the clamp, so this measures its fast path). {}, the paths \
         taking turns run by run (each round starting from the next path, so that none always \
         runs first or after the same one); {rounds} rounds a run, {} a pass. One run's \
         throughput here moves by several percent from the next's: the interquartile range of \
         the rounds' ratios shows that spread, and many short rounds keep its quartiles where \
         they are from one run of the bench to the next (with nine rounds a run, each of nine \
         runs a path, the range was narrower but fell on either side of the goals from one run \
         to the next).\n\n| path | way | Gbit/s | vs. none |\n| --- | --- | ---: | ---: |\n",
        runs_of_a_round(results.iperf_runs, results.iperf_seconds),
        rounds / results.passes.max(1),
    );
    throughput_rows(
        text,
        "forward",
        &results.forward_throughput,
        &Way::ALL,
        Way::label,
    );
    throughput_rows(
        text,
        "MSS clamp",
        &results.clamp_throughput,
        &Clamp::ALL,
        Clamp::label,
    );
    text.push('\n');
}

/// One row per way of `rounds` (bits per second), with its ratio to the
/// first of `ways`.
fn throughput_rows<K: Ord + Copy>(
    text: &mut String,
    path: &str,
    rounds: &BTreeMap<K, Vec<f64>>,
    ways: &[K],
    label: fn(K) -> &'static str,
) {
    let Some(baseline) = ways.first() else {
        return;
    };
    for way in ways {
        if let Some(bits) = rounds.get(way) {
            let gbits: Vec<f64> = bits.iter().map(|bits| bits / 1e9).collect();
            let _ = writeln!(
                text,
                "| {path} | {} | {} | {} |",
                label(*way),
                Summary::of(&gbits).show(2),
                throughput_ratio(rounds, baseline, way).show(3)
            );
        }
    }
}

fn verifier_section(text: &mut String, results: &Results) {
    text.push_str("## Verifier\n\nInstructions the verifier processed to load each program (`verified_insns`):\n\n| program | instructions |\n| --- | ---: |\n");
    for (name, count) in &results.verifier {
        let _ = writeln!(text, "| {name} | {count} |");
    }
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_scale::Workloads;

    /// A pass whose TCP rounds ran at `rate` and `rate + 1`, whose other
    /// rounds ran at `rate`, and which left `conntrack` entries.
    fn pass(rate: f64, conntrack: u64, retried: &[&str]) -> Results {
        let mut agent = AgentSize::new(Workloads::Cgroups, 1000);
        agent.retried = retried.iter().map(|&why| why.to_owned()).collect();
        let point = ScalePoint {
            others: 1,
            connections: BTreeMap::from([(Way::Netbpf, vec![rate_of(rate)])]),
            connect4: Vec::new(),
        };
        Results {
            tcp: BTreeMap::from([(Way::Netbpf, vec![rate_of(rate), rate_of(rate + 1.0)])]),
            host_service_check: HostServiceCheck {
                without_service: vec![rate],
                with_service: vec![rate],
            },
            conntrack: BTreeMap::from([(Way::Iptables, conntrack)]),
            scaling: vec![point],
            agent: vec![agent],
            ..Results::default()
        }
    }

    fn rate_of(per_second: f64) -> Measurement {
        Measurement {
            per_second,
            p50_us: 1.0,
            p99_us: 1.0,
            retransmits: 0,
            runs_p50_us: Vec::new(),
        }
    }

    /// A round's ratio pairs the ways' runs of the same turn: a slow
    /// stretch over two of netbpf's runs and one of no program's moves
    /// the pooled medians apart, and only the one turn it straddles here.
    #[test]
    fn a_rounds_median_time_ratio_pairs_the_runs_of_each_turn() {
        let round = |runs_p50_us: &[f64]| Measurement {
            runs_p50_us: runs_p50_us.to_vec(),
            p50_us: runs_p50_us[runs_p50_us.len() / 2],
            ..rate_of(1000.0)
        };
        let direct = round(&[50.0, 50.0, 60.0, 60.0, 50.0]);
        let netbpf = round(&[50.5, 60.6, 60.6, 60.6, 50.5]);
        let results = BTreeMap::from([(Way::Direct, vec![direct]), (Way::Netbpf, vec![netbpf])]);
        let ratios = median_time_ratios(&results, Way::Netbpf);
        assert_eq!(ratios.len(), 1);
        assert!((ratios[0] - 50.0 / 50.5).abs() < 1e-9, "{ratios:?}");
        // Rounds measured before the runs were kept: the pooled medians.
        let pooled = |p50_us| Measurement {
            p50_us,
            ..rate_of(1000.0)
        };
        let results = BTreeMap::from([
            (Way::Direct, vec![pooled(50.0)]),
            (Way::Netbpf, vec![pooled(62.5)]),
        ]);
        assert_eq!(median_time_ratios(&results, Way::Netbpf), [0.8]);
    }

    #[test]
    fn the_page_names_the_mitigations_only_of_a_machine_that_has_them() {
        let mut machine = Machine::default();
        assert_eq!(call_mitigations(&machine), "");
        machine.call_mitigations = BTreeMap::from([
            (
                "spec_rstack_overflow".to_owned(),
                "Vulnerable: Safe RET".to_owned(),
            ),
            ("spectre_v2".to_owned(), "Mitigation: Retpolines".to_owned()),
        ]);
        let text = call_mitigations(&machine);
        assert!(
            text.contains(
                "vulnerabilities`): spec_rstack_overflow: Vulnerable: Safe RET; spectre_v2: \
                 Mitigation: Retpolines."
            ),
            "{text}"
        );
    }

    /// A later pass's rounds follow the first's in every measurement; a
    /// figure measured once per pass keeps the first pass's.
    #[test]
    fn a_pass_adds_its_rounds_after_the_earlier_ones() {
        let mut run = pass(10.0, 7, &[]);
        run.append_pass(pass(20.0, 8, &["stuck"]));
        let rates = |rounds: &[Measurement]| series(rounds, per_second);
        assert_eq!(rates(&run.tcp[&Way::Netbpf]), [10.0, 11.0, 20.0, 21.0]);
        assert_eq!(
            rates(&run.scaling[0].connections[&Way::Netbpf]),
            [10.0, 20.0]
        );
        assert_eq!(run.host_service_check.with_service, [10.0, 20.0]);
        assert_eq!(run.conntrack[&Way::Iptables], 7);
        assert_eq!(run.agent.len(), 1);
        assert_eq!(run.agent[0].retried, ["stuck"]);
    }
}
