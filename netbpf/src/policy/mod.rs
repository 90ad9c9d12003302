//! The policy file (TOML, version 1): which scopes exist and what each one
//! gets. A policy is validated whole, scopes resolved to kernel keys
//! included, before anything is written to the kernel; every error names
//! its file, line, column and field. `docs/policy.md` is the reference.

mod endpoint;
mod error;
mod host;
mod mss;
mod remap;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use netbpf_common::{
    MAX_ALIASES, MAX_BIND_REMAPS, MAX_FORWARD_PREFIXES, MAX_GRANTS, MAX_RULES, MAX_SCOPES,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use self::{
    endpoint::{Ports, Target},
    error::{Locator, PolicyError},
    host::{Grant, HostService, ScopeNetwork},
    mss::{Direction, MIN_MSS, Mss, MssClamp},
    remap::{Alias, BindRemap},
};

/// The only policy version this netbpf reads.
pub const VERSION: u32 = 1;

/// A validated policy whose scopes are resolved to kernel keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub scopes: Vec<Scope>,
    pub host_services: Vec<HostService>,
    pub mss_clamps: Vec<MssClamp>,
    /// How many rules (forwards, grants, remaps, aliases) it has: rule ids
    /// are `0..rules`.
    pub rules: u32,
}

/// A set of sockets that share rules: a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub name: String,
    pub selector: Selector,
    pub forwards: Vec<Forward>,
    pub grants: Vec<Grant>,
    pub binds: Vec<BindRemap>,
    pub aliases: Vec<Alias>,
}

/// What makes a socket part of a scope, resolved to the key the kernel
/// programs look up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Sockets of processes in this cgroup v2 directory or below it.
    Cgroup { path: PathBuf, id: u64 },
    /// Sockets of this network namespace.
    Netns { path: PathBuf, cookie: u64 },
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

/// Localhost on `from` ports goes to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Index of the rule across the policy: its counters' slot.
    pub rule: u32,
    pub protocols: Protocols,
    pub from: Ports,
    pub to: Target,
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

/// Turns the paths a policy names into the keys the kernel looks up; a
/// path that names nothing is an error in the policy.
pub trait Resolver {
    /// The cgroup v2 id of a cgroup path as written in the policy.
    fn cgroup(&self, path: &str) -> Result<(PathBuf, u64), String>;
    /// The cgroups a glob of cgroup paths matches, with their ids.
    fn cgroup_glob(&self, pattern: &str) -> Result<Vec<(PathBuf, u64)>, String>;
    /// The cookie of the network namespace at `path`.
    fn netns(&self, path: &str) -> Result<(PathBuf, u64), String>;
    /// The gateways and addresses of a scope's network, for its grants.
    fn network(&self, selector: &Selector) -> Result<ScopeNetwork, String>;
    /// The addresses of the node's network namespace: where a grant's
    /// connections must arrive to meet netbpf's `sk_lookup` program.
    fn node_addresses(&self) -> Result<Vec<IpAddr>, String>;
    /// The (protocol, port) bound by processes outside the scope in the
    /// scope's network namespaces, or the node's where the scope has no
    /// process yet: bind remaps must not land on them. (Its own sockets
    /// are its remapped services, kept across a restart of netbpf.)
    fn bound_ports(&self, selector: &Selector) -> Result<Vec<(u8, u16)>, String>;
}

/// Reads, validates and resolves the policy at `file`.
pub fn load(file: &Path, resolver: &impl Resolver) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|error| PolicyError {
        file: file.to_owned(),
        line: 1,
        column: 1,
        field: String::new(),
        message: format!("cannot read the policy: {error}"),
    })?;
    parse(file, &text, resolver)
}

/// Validates and resolves a policy text; `file` is only used in errors.
pub fn parse(file: &Path, text: &str, resolver: &impl Resolver) -> Result<Policy, PolicyError> {
    let locator = Locator::new(file, text);
    let raw: RawPolicy = toml::from_str(text).map_err(|error| locator.toml_error(&error))?;
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
    let host_services = host::validate_services(&locator, raw.host_service)?;
    let mut validator = Validator {
        locator: &locator,
        resolver,
        host_services: &host_services,
        service_addresses: HashMap::new(),
        remapped_ports: HashMap::new(),
        next_rule: 0,
        prefixes: 0,
        scopes: 0,
        counted: Counted::default(),
        names: HashMap::new(),
        keys: HashMap::new(),
    };
    let scopes = raw
        .scope
        .into_iter()
        .enumerate()
        .map(|(index, scope)| validator.scope(index, scope))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let mss_clamps = mss::validate(&locator, raw.mss_clamp)?;
    let rules = validator.next_rule;
    Ok(Policy {
        scopes,
        host_services,
        mss_clamps,
        rules,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    scope: Vec<Spanned<RawScope>>,
    #[serde(default)]
    host_service: Vec<Spanned<host::RawHostService>>,
    #[serde(default)]
    mss_clamp: Vec<Spanned<mss::RawMssClamp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    name: Spanned<String>,
    #[serde(rename = "match")]
    selector: Spanned<RawSelector>,
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
    #[serde(default)]
    host_services: Vec<Spanned<host::RawGrant>>,
    #[serde(default)]
    bind: Vec<Spanned<remap::RawBind>>,
    #[serde(default)]
    alias: Vec<Spanned<remap::RawAlias>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    cgroup: Option<Spanned<String>>,
    netns: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    proto: Protocols,
}

/// Entries of the fixed-size kernel tables a policy needs.
#[derive(Default)]
struct Counted {
    aliases: usize,
    binds: usize,
    grants: usize,
}

impl Counted {
    fn aliases(&mut self) -> &mut usize {
        &mut self.aliases
    }

    fn binds(&mut self) -> &mut usize {
        &mut self.binds
    }

    fn grants(&mut self) -> &mut usize {
        &mut self.grants
    }
}

/// Checks one policy, scope by scope, keeping what must be unique.
struct Validator<'a, R> {
    locator: &'a Locator<'a>,
    resolver: &'a R,
    host_services: &'a [HostService],
    /// (gateway, dialed port) -> the service handed connections there.
    service_addresses: HashMap<SocketAddr, usize>,
    /// (protocol, port a bind is remapped to) -> the scope that took it.
    remapped_ports: HashMap<(u8, u16), String>,
    next_rule: u32,
    /// Forward trie entries the scopes so far need.
    prefixes: usize,
    /// Scopes so far, instances of globs counted one by one.
    scopes: usize,
    /// Entries of the fixed-size kernel tables so far.
    counted: Counted,
    /// Scope name -> index of the scope that took it.
    names: HashMap<String, usize>,
    /// Resolved selector -> index of the scope that took it.
    keys: HashMap<(bool, u64), usize>,
}

impl<R: Resolver> Validator<'_, R> {
    /// Validates a `[[scope]]`: one scope, or one per cgroup its glob
    /// matches.
    fn scope(&mut self, index: usize, raw: Spanned<RawScope>) -> Result<Vec<Scope>, PolicyError> {
        let raw = raw.into_inner();
        let field = format!("scope[{index}]");
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.error(
                raw.name.span(),
                format!("{field}.name"),
                "a scope needs a non-empty name",
            ));
        }
        if let Some(first) = self.names.insert(name.clone(), index) {
            return Err(self.error(
                raw.name.span(),
                format!("{field}.name"),
                format!(
                    "scope name {name:?} is already taken by scope[{first}]: names must be unique"
                ),
            ));
        }
        let selectors = self.selectors(index, &raw.selector)?;
        let mut scopes = Vec::with_capacity(selectors.len());
        for (selector, instance) in selectors {
            self.scopes += 1;
            if self.scopes > MAX_SCOPES as usize {
                return Err(self.error(
                    raw.name.span(),
                    format!("{field}.name"),
                    format!("too many scopes: this netbpf holds at most {MAX_SCOPES}"),
                ));
            }
            let forwards = self.forwards(&field, &raw.forward)?;
            let grants = self.grants(&field, &selector, &raw.host_services)?;
            let scope_name = instance
                .as_ref()
                .map_or_else(|| name.clone(), |instance| format!("{name}/{instance}"));
            let binds = self.binds(
                &scope_name,
                &field,
                &selector,
                instance.as_deref(),
                &raw.bind,
            )?;
            let aliases = self.aliases(&field, &raw.alias, &grants)?;
            scopes.push(Scope {
                name: scope_name,
                selector,
                forwards,
                grants,
                binds,
                aliases,
            });
        }
        Ok(scopes)
    }

    fn forwards(
        &mut self,
        field: &str,
        raw: &[Spanned<RawForward>],
    ) -> Result<Vec<Forward>, PolicyError> {
        let mut forwards: Vec<Forward> = Vec::new();
        for (rule, raw) in raw.iter().enumerate() {
            let rule_field = format!("{field}.forward[{rule}]");
            let forward = self.forward(&rule_field, raw)?;
            if let Some(earlier) = forwards
                .iter()
                .position(|earlier| overlaps(earlier, &forward))
            {
                return Err(self.error(
                    raw.get_ref().from.span(),
                    format!("{rule_field}.from"),
                    format!(
                        "localhost:{} overlaps {field}.forward[{earlier}] (localhost:{}) on the same protocol: \
                         each localhost port of a scope goes to one place",
                        forward.from, forwards[earlier].from
                    ),
                ));
            }
            forwards.push(forward);
        }
        Ok(forwards)
    }

    fn binds(
        &mut self,
        scope: &str,
        field: &str,
        selector: &Selector,
        instance: Option<&str>,
        raw: &[Spanned<remap::RawBind>],
    ) -> Result<Vec<BindRemap>, PolicyError> {
        let Some(first) = raw.first() else {
            return Ok(Vec::new());
        };
        let bound = self
            .resolver
            .bound_ports(selector)
            .map_err(|message| self.error(first.span(), format!("{field}.bind"), message))?;
        let mut binds: Vec<BindRemap> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let bind_field = format!("{field}.bind[{index}]");
            let rule = self.take_rule(raw.span(), &bind_field)?;
            let bind =
                remap::validate_bind(self.locator, &bind_field, raw.get_ref(), rule, instance)?;
            let locator = self.locator;
            let to_error = |message: String| {
                locator.error(
                    raw.get_ref().target_span(),
                    format!("{bind_field}.to"),
                    message,
                )
            };
            self.count(Counted::binds, 1, MAX_BIND_REMAPS, raw.span(), &bind_field)?;
            for &protocol in bind.protocols.numbers() {
                if let Some(earlier) = binds.iter().find(|earlier| {
                    earlier.to == bind.to && earlier.protocols.numbers().contains(&protocol)
                }) {
                    return Err(to_error(format!(
                        "port {} already gets the remap of port {} in this scope",
                        bind.to, earlier.port
                    )));
                }
                if binds.iter().any(|earlier| {
                    earlier.port == bind.port && earlier.protocols.numbers().contains(&protocol)
                }) {
                    return Err(to_error(format!(
                        "port {} is remapped twice in this scope",
                        bind.port
                    )));
                }
                if bound.contains(&(protocol, bind.to)) {
                    return Err(to_error(format!(
                        "port {} is already bound in the scope's network namespace: a remap onto it would fail",
                        bind.to
                    )));
                }
                if let Some(other) = self
                    .remapped_ports
                    .insert((protocol, bind.to), scope.to_owned())
                    && other != scope
                {
                    return Err(to_error(format!(
                        "scope {other:?} is already remapped to port {}: two scopes cannot get the same port",
                        bind.to
                    )));
                }
            }
            binds.push(bind);
        }
        Ok(binds)
    }

    fn aliases(
        &mut self,
        field: &str,
        raw: &[Spanned<remap::RawAlias>],
        grants: &[Grant],
    ) -> Result<Vec<Alias>, PolicyError> {
        let mut aliases: Vec<Alias> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let alias_field = format!("{field}.alias[{index}]");
            let rule = self.take_rule(raw.span(), &alias_field)?;
            let alias = remap::validate_alias(self.locator, &alias_field, raw.get_ref(), rule)?;
            self.count(Counted::aliases, 1, MAX_ALIASES, raw.span(), &alias_field)?;
            let takes_grant = grants.iter().position(|grant| {
                let address =
                    alias.from.ip() == grant.dial.ip() || alias.from.ip() == grant.gateway;
                let port = alias.from.port() == 0 || alias.from.port() == grant.dial.port();
                alias
                    .protocols
                    .numbers()
                    .contains(&netbpf_common::PROTO_TCP)
                    && address
                    && port
            });
            if let Some(grant) = takes_grant {
                return Err(self.locator.error(
                    raw.get_ref().source_span(),
                    format!("{alias_field}.from"),
                    format!(
                        "{} would take the connections {field}.host_services[{grant}] grants",
                        alias.from
                    ),
                ));
            }
            let from_error = |message: String| {
                self.locator.error(
                    raw.get_ref().source_span(),
                    format!("{alias_field}.from"),
                    message,
                )
            };
            let shares_protocol = |other: &Alias| {
                other
                    .protocols
                    .numbers()
                    .iter()
                    .any(|protocol| alias.protocols.numbers().contains(protocol))
            };
            let covers = |from: SocketAddr, to: SocketAddr| {
                from.ip() == to.ip()
                    && (from.port() == 0 || from.port() == to.port() || to.port() == 0)
            };
            if let Some(earlier) = aliases
                .iter()
                .position(|other| shares_protocol(other) && other.from == alias.from)
            {
                return Err(from_error(format!(
                    "{} is aliased twice in this scope (see alias[{earlier}])",
                    alias.from
                )));
            }
            if let Some(earlier) = aliases.iter().position(|other| {
                shares_protocol(other)
                    && (covers(other.from, alias.to) || covers(alias.from, other.to))
            }) {
                return Err(from_error(format!(
                    "alias[{earlier}] and this alias lead into each other: aliases do not chain, point both at the final address"
                )));
            }
            if covers(alias.from, alias.to) {
                return Err(from_error("an alias to itself".to_owned()));
            }
            aliases.push(alias);
        }
        Ok(aliases)
    }

    fn grants(
        &mut self,
        scope: &str,
        selector: &Selector,
        raw: &[Spanned<host::RawGrant>],
    ) -> Result<Vec<Grant>, PolicyError> {
        let Some(first) = raw.first() else {
            return Ok(Vec::new());
        };
        let field = format!("{scope}.host_services");
        let network = self
            .resolver
            .network(selector)
            .map_err(|message| self.error(first.span(), field.clone(), message))?;
        let node_addresses = self
            .resolver
            .node_addresses()
            .map_err(|message| self.error(first.span(), field, message))?;
        let mut grants: Vec<Grant> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let field = format!("{scope}.host_services[{index}]");
            let rule = self.take_rule(raw.span(), &field)?;
            let grant = host::validate_grant(
                self.locator,
                self.host_services,
                &network,
                &node_addresses,
                &field,
                raw.get_ref(),
                rule,
            )?;
            self.count(
                Counted::grants,
                grant.sources.len(),
                MAX_GRANTS,
                raw.span(),
                &field,
            )?;
            let locator = self.locator;
            let dial_error = |message: String| {
                locator.error(raw.get_ref().dial_span(), format!("{field}.dial"), message)
            };
            if grants.iter().any(|earlier| earlier.dial == grant.dial) {
                return Err(dial_error(format!(
                    "{} is granted twice in this scope",
                    grant.dial
                )));
            }
            let arrival = SocketAddr::new(grant.gateway, grant.dial.port());
            match self.service_addresses.insert(arrival, grant.service) {
                Some(other) if other != grant.service => {
                    return Err(dial_error(format!(
                        "{arrival} already leads to host service {:?}: one port of a gateway serves one service",
                        self.host_services[other].name
                    )));
                }
                _ => {}
            }
            grants.push(grant);
        }
        Ok(grants)
    }

    /// Counts one more entry of a kind whose kernel table holds `capacity`.
    fn count(
        &mut self,
        kind: fn(&mut Counted) -> &mut usize,
        amount: usize,
        capacity: u32,
        span: Range<usize>,
        field: &str,
    ) -> Result<(), PolicyError> {
        let used = kind(&mut self.counted);
        *used += amount;
        if *used > capacity as usize {
            return Err(self.error(
                span,
                field.to_owned(),
                format!("more than the {capacity} entries of this kind the datapath holds"),
            ));
        }
        Ok(())
    }

    /// The next rule id, for a forward or a grant at `span`.
    fn take_rule(&mut self, span: Range<usize>, field: &str) -> Result<u32, PolicyError> {
        if self.next_rule >= MAX_RULES {
            return Err(self.error(
                span,
                field.to_owned(),
                format!("too many rules: this netbpf holds at most {MAX_RULES}"),
            ));
        }
        self.next_rule += 1;
        Ok(self.next_rule - 1)
    }

    /// What a scope's `match` selects: one cgroup or namespace, or every
    /// cgroup a glob matches (an instance each, named by its directory).
    fn selectors(
        &mut self,
        index: usize,
        raw: &Spanned<RawSelector>,
    ) -> Result<Vec<(Selector, Option<String>)>, PolicyError> {
        let span = raw.span();
        let field = format!("scope[{index}].match");
        let selected = match raw.get_ref() {
            RawSelector {
                cgroup: Some(path),
                netns: None,
            } if path.get_ref().contains(['*', '?', '[']) => {
                let matches = self
                    .resolver
                    .cgroup_glob(path.get_ref())
                    .map_err(|message| {
                        self.error(path.span(), format!("{field}.cgroup"), message)
                    })?;
                if matches.is_empty() {
                    return Err(self.error(
                        path.span(),
                        format!("{field}.cgroup"),
                        format!("{:?} matches no cgroup", path.get_ref()),
                    ));
                }
                matches
                    .into_iter()
                    .map(|(resolved, id)| {
                        let instance = resolved
                            .file_name()
                            .map(|name| name.to_string_lossy().into_owned());
                        (Selector::Cgroup { path: resolved, id }, instance)
                    })
                    .collect()
            }
            RawSelector {
                cgroup: Some(path),
                netns: None,
            } => {
                let (resolved, id) = self.resolver.cgroup(path.get_ref()).map_err(|message| {
                    self.error(path.span(), format!("{field}.cgroup"), message)
                })?;
                vec![(Selector::Cgroup { path: resolved, id }, None)]
            }
            RawSelector {
                cgroup: None,
                netns: Some(path),
            } => {
                let (resolved, cookie) =
                    self.resolver.netns(path.get_ref()).map_err(|message| {
                        self.error(path.span(), format!("{field}.netns"), message)
                    })?;
                vec![(
                    Selector::Netns {
                        path: resolved,
                        cookie,
                    },
                    None,
                )]
            }
            _ => {
                return Err(self.error(
                    span,
                    field,
                    "a scope matches exactly one of: cgroup = \"PATH\" (or a glob) or netns = \"PATH\"",
                ));
            }
        };
        for (selector, _) in &selected {
            let key = match selector {
                Selector::Cgroup { id, .. } => (true, *id),
                Selector::Netns { cookie, .. } => (false, *cookie),
            };
            if let Some(first) = self.keys.insert(key, index) {
                return Err(self.error(
                    span.clone(),
                    field.clone(),
                    format!("scope[{first}] already matches this cgroup or network namespace"),
                ));
            }
        }
        Ok(selected)
    }

    fn forward(&mut self, field: &str, raw: &Spanned<RawForward>) -> Result<Forward, PolicyError> {
        let raw = raw.get_ref();
        let from = endpoint::parse_from(raw.from.get_ref())
            .map_err(|message| self.error(raw.from.span(), format!("{field}.from"), message))?;
        let to = endpoint::parse_to(raw.to.get_ref())
            .map_err(|message| self.error(raw.to.span(), format!("{field}.to"), message))?;
        let to_error = |message: String| self.error(raw.to.span(), format!("{field}.to"), message);
        if to.addr.is_unspecified() || to.addr.is_multicast() {
            return Err(to_error(format!(
                "{} cannot be dialed: give a unicast address",
                to.addr
            )));
        }
        if let IpAddr::V6(v6) = to.addr
            && v6.is_unicast_link_local()
        {
            return Err(to_error(format!(
                "{v6} is link-local, which needs an interface that a forward cannot name: give a global or ULA address"
            )));
        }
        check_port_mapping(from, to.ports).map_err(to_error)?;
        self.prefixes += from.prefixes().len() * raw.proto.numbers().len();
        if self.prefixes > MAX_FORWARD_PREFIXES as usize {
            return Err(self.error(
                raw.from.span(),
                format!("{field}.from"),
                format!(
                    "the forwards so far take {} port prefixes, more than the {MAX_FORWARD_PREFIXES} the \
                     datapath holds: merge or align port ranges",
                    self.prefixes
                ),
            ));
        }
        Ok(Forward {
            rule: self.take_rule(raw.from.span(), field)?,
            protocols: raw.proto,
            from,
            to,
        })
    }

    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        self.locator.error(span, field, message)
    }
}

/// Checks that `from` ports map onto `to` ports one to one.
fn check_port_mapping(from: Ports, to: Ports) -> Result<(), String> {
    match (from, to) {
        (_, Ports::Every) => Ok(()),
        (Ports::Every, _) => Err(
            "every port forwards to the port that was dialed: write the address alone (\"ADDR\" or \"ADDR:*\")"
                .to_owned(),
        ),
        (from, to) if from.count() == to.count() => Ok(()),
        (from, to) => Err(format!(
            "{from} ({} ports) maps onto {to} ({} ports): a range maps onto a range of the same length \
             (or onto \"ADDR\" to keep the ports)",
            from.count(),
            to.count()
        )),
    }
}

/// Whether two forwards of one scope claim a port on the same protocol.
fn overlaps(a: &Forward, b: &Forward) -> bool {
    let shares_protocol = a
        .protocols
        .numbers()
        .iter()
        .any(|protocol| b.protocols.numbers().contains(protocol));
    let (a, b) = (a.from.range(), b.from.range());
    shares_protocol && a.start() <= b.end() && b.start() <= a.end()
}

#[cfg(test)]
mod tests;
