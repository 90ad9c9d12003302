//! The `netbpf` command line: one module per verb.

mod agent;
mod assets;
mod check;
mod doctor;
mod hook;
mod node;
mod reload;
mod run;
mod serve;
mod status;
mod status_table;
mod uninstall;

use clap::{Parser, Subcommand};

/// netbpf: container-to-host networking fixed in the kernel, with eBPF.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// How log lines are written to stderr: `human` (one line per event,
    /// colours only on a terminal) or `json` (one object per line, for a
    /// log collector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node agent: follow the containers, apply the policy directory
    /// to them, serve status until SIGINT or SIGTERM.
    Agent(agent::AgentArgs),
    /// The agent with a policy of one file, in the foreground.
    Run(run::RunArgs),
    /// Show the programs, scopes, rules and counters of a running netbpf.
    Status(status::StatusArgs),
    /// Validate a policy file or directory, loading nothing.
    Check(check::CheckArgs),
    /// OCI runtime hook (`createRuntime`): apply the policy to a container
    /// before its first process runs.
    Hook(hook::HookArgs),
    /// Remove the pinned datapath: every program, link and map (the agent
    /// must be stopped).
    Uninstall(uninstall::UninstallArgs),
    /// Name what is wrong with this node's container networking, and the
    /// policy that fixes it (read-only).
    Doctor(doctor::DoctorArgs),
    /// Have a running netbpf reload its policy file (as SIGHUP does), and
    /// wait until it has.
    Reload(reload::ReloadArgs),
    /// Write the man pages and shell completions (for packagers).
    #[command(hide = true)]
    Assets(assets::AssetsArgs),
}

impl Cli {
    /// Runs the verb the command line asked for.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Agent(args) => agent::agent(&args),
            Command::Run(args) => run::run(&args),
            Command::Status(args) => status::status(&args),
            Command::Check(args) => check::check(&args),
            Command::Reload(args) => reload::reload(&args),
            Command::Uninstall(args) => uninstall::uninstall(&args),
            Command::Hook(args) => hook::hook(&args),
            Command::Doctor(args) => doctor::doctor(&args),
            Command::Assets(args) => assets::assets(&args),
        }
    }
}
