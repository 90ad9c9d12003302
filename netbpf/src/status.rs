//! What a running netbpf reports: its programs, scopes, rules and their
//! counters; rendered as a table for people or as JSON for tools.

use std::path::PathBuf;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Datapath, DatapathError, LoadedProgram},
    policy::{Policy, Protocols, Selector},
};

/// The state of one running `netbpf run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The cgroup the programs are attached to.
    pub cgroup_root: PathBuf,
    /// The policy file applied.
    pub policy: PathBuf,
    pub programs: Vec<LoadedProgram>,
    pub scopes: Vec<ScopeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeStatus {
    pub name: String,
    #[serde(rename = "match")]
    pub selector: Selector,
    pub forwards: Vec<ForwardStatus>,
}

/// A localhost forward and its counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub rule: u32,
    pub proto: Protocols,
    pub from: String,
    pub to: String,
    pub connects: u64,
    pub datagrams: u64,
    pub local_skips: u64,
}

impl Status {
    /// Reads the counters of `policy`'s rules from `datapath`.
    pub fn collect(
        datapath: &Datapath,
        policy: &Policy,
        policy_file: PathBuf,
        cgroup_root: PathBuf,
    ) -> Result<Self, DatapathError> {
        let scopes = policy
            .scopes
            .iter()
            .map(|scope| {
                let forwards = scope
                    .forwards
                    .iter()
                    .map(|forward| {
                        let stats = datapath.rule_stats(forward.rule)?;
                        Ok(ForwardStatus {
                            rule: forward.rule,
                            proto: forward.protocols,
                            from: format!("localhost:{}", forward.from),
                            to: forward.to.to_string(),
                            connects: stats.connects,
                            datagrams: stats.datagrams,
                            local_skips: stats.local_skips,
                        })
                    })
                    .collect::<Result<_, DatapathError>>()?;
                Ok(ScopeStatus {
                    name: scope.name.clone(),
                    selector: scope.selector.clone(),
                    forwards,
                })
            })
            .collect::<Result<_, DatapathError>>()?;
        Ok(Self {
            cgroup_root,
            policy: policy_file,
            programs: datapath.programs().to_vec(),
            scopes,
        })
    }

    /// The status as people read it: a header and one table row per rule.
    #[must_use]
    pub fn render(&self) -> String {
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|program| format!("{} (id {})", program.name, program.id))
            .collect();
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "SCOPE",
            "MATCH",
            "PROTO",
            "FROM",
            "TO",
            "CONNECTS",
            "DATAGRAMS",
            "LOCAL SKIPS",
        ]);
        for scope in &self.scopes {
            let selector = match &scope.selector {
                Selector::Cgroup { path, id } => format!("cgroup {} (id {id})", path.display()),
                Selector::Netns { path, cookie } => {
                    format!("netns {} (cookie {cookie})", path.display())
                }
            };
            if scope.forwards.is_empty() {
                table.add_row([scope.name.as_str(), &selector, "-", "-", "-", "-", "-", "-"]);
            }
            for forward in &scope.forwards {
                table.add_row([
                    scope.name.clone(),
                    selector.clone(),
                    format!("{:?}", forward.proto).to_lowercase(),
                    forward.from.clone(),
                    forward.to.clone(),
                    forward.connects.to_string(),
                    forward.datagrams.to_string(),
                    forward.local_skips.to_string(),
                ]);
            }
        }
        format!(
            "policy: {}\ncgroup root: {}\nprograms: {}\n{table}\n",
            self.policy.display(),
            self.cgroup_root.display(),
            programs.join(", ")
        )
    }
}
