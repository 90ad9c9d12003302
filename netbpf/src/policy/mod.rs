//! The policy (TOML, version 1): which scopes exist and what each one
//! gets. A policy is one file or a directory of files merged into one;
//! it is valid on its own, whether or not any container matches it now:
//! what can be checked without a container is checked when it is read,
//! with errors naming file, line, column and field; the rest is checked
//! for each instance as it matches ([`ScopeDef::instantiate`]).
//! `docs/policy.md` is the reference.

mod endpoint;
mod error;
mod host;
mod index;
mod labels;
mod mss;
mod pattern;
mod remap;
mod scope;
mod selector;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use self::{
    endpoint::{Ports, Target},
    error::{Locator, PolicyError},
    host::{Grant, HostService, Owner, ScopeNetwork},
    labels::{LabelKind, digest as label_digest, ours as netbpf_labels},
    mss::{Direction, MIN_MSS, Mss, MssClamp},
    pattern::{Captures, Pattern},
    remap::{Alias, BindRemap},
    scope::{Instance, ScopeDef},
    selector::{Candidate, ContainerView, Selector, WorkloadSelector},
};

/// The only policy version this netbpf reads.
pub const VERSION: u32 = 1;

/// A validated policy: scopes to match, host services, MSS clamps.
#[derive(Debug, Clone)]
pub struct Policy {
    /// In the order of their files' names, then of the files.
    pub scopes: Vec<ScopeDef>,
    pub host_services: Vec<HostService>,
    pub mss_clamps: Vec<MssClamp>,
    /// The workload scopes filed by what their matches need.
    index: index::ScopeIndex,
}

impl Policy {
    /// The first scope (in policy order) whose `match` selects
    /// `candidate`: its index, what the match captured, and whether it
    /// selects pods. Tries only the scopes the candidate's name, id, pod,
    /// cgroup and labels may match.
    #[must_use]
    pub fn first_selecting(&self, candidate: &Candidate<'_>) -> Option<(usize, Captures, bool)> {
        self.index.first_selecting(&self.scopes, candidate)
    }
}

/// One scope instance's rules, resolved for what it matched: a container,
/// a cgroup or a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub forwards: Vec<Forward>,
    pub grants: Vec<Grant>,
    pub binds: Vec<BindRemap>,
    pub aliases: Vec<Alias>,
}

impl Scope {
    /// How many rules it has: rule ids are `0..rules`.
    #[must_use]
    pub fn rules(&self) -> u32 {
        let count = self.forwards.len() + self.grants.len() + self.binds.len() + self.aliases.len();
        u32::try_from(count).expect("a scope's rules are few")
    }
}

/// Transport protocols a forward applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocols {
    /// TCP only, as `docker run -p` publishes by default.
    #[default]
    Tcp,
    Udp,
    /// TCP and UDP.
    Both,
}

impl Protocols {
    /// The IP protocol numbers, as the kernel programs see them.
    #[must_use]
    pub fn numbers(self) -> &'static [u8] {
        use netbpf_common::{PROTO_TCP, PROTO_UDP};
        match self {
            Self::Tcp => &[PROTO_TCP],
            Self::Udp => &[PROTO_UDP],
            Self::Both => &[PROTO_TCP, PROTO_UDP],
        }
    }
}

/// What a change of a rule's target does to the TCP connections the rule
/// made (its connected UDP sockets are always disconnected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMove {
    /// They stay with the old target until they close.
    #[default]
    Keep,
    /// They are reset: their applications connect again, to the new one.
    Reset,
}

/// A rule's `on_move`: only a rule with TCP has connections to reset.
fn on_move(
    locator: &Locator<'_>,
    field: &str,
    protocols: Protocols,
    raw: Option<&toml::Spanned<OnMove>>,
) -> Result<OnMove, PolicyError> {
    let Some(raw) = raw else {
        return Ok(OnMove::Keep);
    };
    if *raw.get_ref() == OnMove::Reset && protocols == Protocols::Udp {
        return Err(locator.error(
            raw.span(),
            format!("{field}.on_move"),
            "a UDP rule has no connection to reset (its connected UDP sockets are always disconnected when its target moves): \
             remove on_move, or give the rule proto = \"both\"",
        ));
    }
    Ok(*raw.get_ref())
}

/// Localhost on `from` ports goes to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Index of the rule in its scope instance.
    pub rule: u32,
    pub protocols: Protocols,
    pub from: Ports,
    pub to: Target,
    pub on_move: OnMove,
}

impl Forward {
    /// What to add (wrapping) to a dialed port to get the target port.
    #[must_use]
    pub fn port_delta(&self) -> u16 {
        match (self.from, self.to.ports) {
            (_, Ports::Every) => 0,
            (from, to) => to.range().start().wrapping_sub(*from.range().start()),
        }
    }
}

/// What [`Facts::network`] says of an instance none of whose processes
/// runs yet (a container created, not started): not a fault, the instance
/// is applied when its first process runs.
pub const NO_PROCESS_YET: &str = "no process of the instance runs yet: its network is unknown";

/// Whether an instance's error only says that it waits for its first
/// process ([`NO_PROCESS_YET`]).
#[must_use]
pub fn waits_for_a_process(error: &str) -> bool {
    error.ends_with(NO_PROCESS_YET)
}

/// What a grant says of an instance whose namespace has no default route
/// to find its gateway by: lasting for a container without a network, or
/// for a moment while its runtime sets its network up.
pub const NO_DEFAULT_ROUTE: &str =
    "the container's network namespace has no default route of this family to find its gateway";

/// Whether an instance's error may only say that its network is not set
/// up yet: it waits for its first process, or has no default route.
#[must_use]
pub fn waits_for_its_network(error: &str) -> bool {
    waits_for_a_process(error) || error.contains(NO_DEFAULT_ROUTE)
}

/// What the host knows of one scope instance, for the rules that depend
/// on it: grants need its network, bind remaps the ports others hold.
pub trait Facts {
    /// The gateways and addresses of the instance's network.
    fn network(&self) -> Result<ScopeNetwork, String>;
    /// The addresses of the node's network namespace: where a grant's
    /// connections must arrive to meet netbpf's `sk_lookup` program.
    fn node_addresses(&self) -> Result<Vec<IpAddr>, String>;
    /// The (protocol, port) bound by processes outside the instance in its
    /// network namespaces (the node's where it has no process yet): bind
    /// remaps must not land on them.
    fn bound_ports(&self) -> Result<Vec<(u8, u16)>, String>;
}

/// A policy file's path and text, kept for locating the errors found
/// when its scopes are instantiated.
#[derive(Debug)]
pub(crate) struct Source {
    path: PathBuf,
    text: String,
    /// Where each line of `text` starts, found once.
    line_starts: Vec<usize>,
}

impl Source {
    fn new(path: PathBuf, text: String) -> Self {
        Self {
            line_starts: error::line_starts(&text),
            path,
            text,
        }
    }

    fn locator(&self) -> Locator<'_> {
        Locator::indexed(&self.path, &self.line_starts)
    }
}

/// Reads and validates the policy file at `file`.
pub fn load(file: &Path) -> Result<Policy, PolicyError> {
    parse_sources(vec![read(file)?])
}

/// Reads and validates every `*.toml` file of `dir`, merged in the order
/// of their names. A name defined twice is an error naming both places.
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    let unreadable = |error: std::io::Error| PolicyError {
        file: dir.to_owned(),
        line: 1,
        column: 1,
        field: String::new(),
        message: format!("cannot read the policy directory: {error}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();
    parse_sources(
        files
            .iter()
            .map(|file| read(file))
            .collect::<Result<_, _>>()?,
    )
}

fn read(file: &Path) -> Result<Source, PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|error| PolicyError {
        file: file.to_owned(),
        line: 1,
        column: 1,
        field: String::new(),
        message: format!("cannot read the policy: {error}"),
    })?;
    Ok(Source::new(file.to_owned(), text))
}

/// Validates one policy text; `file` is only used in errors.
pub fn parse(file: &Path, text: &str) -> Result<Policy, PolicyError> {
    parse_sources(vec![Source::new(file.to_owned(), text.to_owned())])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    scope: Vec<Spanned<scope::RawScope>>,
    #[serde(default)]
    host_service: Vec<Spanned<host::RawHostService>>,
    #[serde(default)]
    mss_clamp: Vec<Spanned<mss::RawMssClamp>>,
}

/// Merges and validates the files of one policy.
fn parse_sources(sources: Vec<Source>) -> Result<Policy, PolicyError> {
    let sources: Vec<Arc<Source>> = sources.into_iter().map(Arc::new).collect();
    let mut raws = Vec::new();
    for source in &sources {
        let locator = source.locator();
        let raw: RawPolicy =
            toml::from_str(&source.text).map_err(|error| locator.toml_error(&error))?;
        if *raw.version.get_ref() != VERSION {
            return Err(locator.error(
                raw.version.span(),
                "version",
                format!(
                    "unsupported policy version {}: this netbpf reads version {VERSION}",
                    raw.version.get_ref()
                ),
            ));
        }
        raws.push(raw);
    }
    // Host services first: a scope may grant one defined in another file.
    let mut services: Vec<(HostService, String)> = Vec::new();
    for (source, raw) in sources.iter().zip(&mut raws) {
        let raw_services = std::mem::take(&mut raw.host_service);
        host::validate_services(&source.locator(), raw_services, &mut services)?;
    }
    let host_services: Vec<HostService> =
        services.into_iter().map(|(service, _)| service).collect();
    let mut scopes: Vec<ScopeDef> = Vec::new();
    let mut clamps: Vec<(MssClamp, String)> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (source, raw) in sources.iter().zip(raws) {
        for (index, raw) in raw.scope.into_iter().enumerate() {
            let def = ScopeDef::validate(source, index, raw, &host_services)?;
            if let Some(first) = names.insert(def.name.clone(), def.origin.clone()) {
                return Err(def.error(format!(
                    "scope name {:?} is defined twice: at {first} and at {}; names must be unique",
                    def.name, def.origin
                )));
            }
            scopes.push(def);
        }
        mss::validate(&source.locator(), raw.mss_clamp, &mut clamps)?;
    }
    let mss_clamps = clamps.into_iter().map(|(clamp, _)| clamp).collect();
    Ok(Policy {
        index: index::ScopeIndex::new(&scopes),
        scopes,
        host_services,
        mss_clamps,
    })
}

/// `file:line` of a span, for messages that name two places.
pub(crate) fn place(locator: &Locator<'_>, span: std::ops::Range<usize>) -> String {
    let error = locator.error(span, "", "");
    format!("{}:{}", error.file.display(), error.line)
}

#[cfg(test)]
mod tests;
