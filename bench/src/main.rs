//! netbpf's benchmarks, run by `cargo xtask bench`: netbpf against no
//! program and against the iptables way, side by side in one run, on
//! throw-away topologies of the bench's own. Writes a page of results,
//! its plots and a JSON file of every raw figure; `check` compares the
//! verifier's instruction counts with a committed baseline.

mod agent_scale;
mod designs;
mod interrupt;
mod load;
mod plot;
mod programs;
mod report;
mod rounds;
mod run;
mod start_window;
mod stats;
mod sys;
mod throughput;
mod ways;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "netbpf's benchmarks (run by `cargo xtask bench`)")]
struct Bench {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure everything; write the page, its plots and the raw figures.
    Run {
        /// Fewer rounds, shorter runs and three scaling points: for CI.
        #[arg(long)]
        quick: bool,
        /// Run the whole bench this many times in a row; the page shows
        /// each run's verdicts and whether they agree.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
        /// Where the page (`benchmarks.md`), `bench/*.svg` and
        /// `bench/results.json` go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure nothing: write the page and its plots again from
    /// `OUT/bench/results.json`.
    Report {
        #[arg(long)]
        out: PathBuf,
    },
    /// Fail when a program's verifier instruction count grew by more than
    /// 20% over the baseline.
    Check {
        /// The committed baseline (JSON: program -> instructions).
        #[arg(long)]
        baseline: PathBuf,
        /// Write the counts measured now as the new baseline instead.
        #[arg(long)]
        bless: bool,
    },
    /// Only the agent's measurements, printed as JSON (no page).
    Agent {
        /// Cgroups the agent follows, one size per value.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        cgroups: Vec<usize>,
        /// Docker containers the agent follows, after the cgroups.
        #[arg(long)]
        docker: Option<usize>,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Only the window Docker containers wait for their scope, printed as
    /// JSON (no page).
    StartWindow {
        /// Containers started.
        #[arg(long, default_value_t = 50)]
        containers: usize,
    },
    #[command(hide = true)]
    TcpServer { listen: String },
    #[command(hide = true)]
    UdpServer { listen: String },
    #[command(hide = true)]
    TcpClient { target: String, count: usize },
    #[command(hide = true)]
    UdpClient { target: String, count: usize },
    #[command(hide = true)]
    BindClient { count: usize },
    #[command(hide = true)]
    DesignClient { live: usize, connects: usize },
    #[command(hide = true)]
    DesignHolder { index: u8, count: usize },
}

fn main() -> anyhow::Result<()> {
    match Bench::parse().command {
        Command::Run { quick, repeat, out } => run::run(quick, repeat.into(), &out),
        Command::Report { out } => report::rewrite(&out),
        Command::Check { baseline, bless } => run::check(&baseline, bless),
        Command::Agent {
            cgroups,
            docker,
            rounds,
        } => run::agent_only(&cgroups, docker, rounds),
        Command::StartWindow { containers } => {
            let window = start_window::measure(containers)?;
            println!("{}", serde_json::to_string_pretty(&window)?);
            Ok(())
        }
        Command::TcpServer { listen } => load::tcp_server(&listen),
        Command::UdpServer { listen } => load::udp_server(&listen),
        Command::TcpClient { target, count } => load::tcp_client(&target, count),
        Command::UdpClient { target, count } => load::udp_client(&target, count),
        Command::BindClient { count } => load::bind_client(count),
        Command::DesignClient { live, connects } => designs::client(live, connects),
        Command::DesignHolder { index, count } => designs::holder(index, count),
    }
}
