//! A `[[scope]]`: checked alone when the policy is read, and resolved into
//! the rules of one instance each time something matches it. Both go
//! through the same checks; values an instance supplies (`{port}`, `@`)
//! and facts of the host are only known per instance.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Alias, BindRemap, Captures, Facts, Forward, Grant, HostService, Locator, PolicyError, Ports,
    Scope, Selector, Source, endpoint, host,
    labels::{self, LabelKind},
    on_move, pattern, remap, selector,
};

/// A validated `[[scope]]`: a selector and the rules of its instances.
#[derive(Debug, Clone)]
pub struct ScopeDef {
    pub name: String,
    pub selector: Selector,
    /// Where it is defined, `FILE:LINE`.
    pub origin: String,
    source: Arc<Source>,
    /// Its index among the scopes of its file: `scope[INDEX]` in errors.
    index: usize,
    /// Where its name is written.
    name_span: std::ops::Range<usize>,
    rules: RawRules,
    /// The kinds of rules its instances take from their labels instead.
    labels: Vec<LabelKind>,
}

/// What one instance brings to a scope's rules.
#[derive(Debug, Clone, Copy)]
pub struct Instance<'a> {
    /// Its name: the container's, or the matched cgroup's directory.
    pub name: &'a str,
    /// What the selector's `{NAME}` patterns captured.
    pub captures: &'a Captures,
    /// Its container's labels (none for a cgroup, a pod, a namespace).
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    name: Spanned<String>,
    #[serde(rename = "match")]
    selector: Spanned<selector::RawSelector>,
    #[serde(default)]
    forward: Vec<Spanned<remap::RawRedirect>>,
    #[serde(default)]
    host_services: Vec<Spanned<host::RawGrant>>,
    #[serde(default)]
    bind: Vec<Spanned<remap::RawBind>>,
    #[serde(default)]
    alias: Vec<Spanned<remap::RawRedirect>>,
    /// The kinds of rules its instances take from their labels.
    #[serde(default)]
    labels: Option<Spanned<Vec<LabelKind>>>,
}

/// The rules of a scope, or of an instance's labels, as written.
#[derive(Debug, Clone, Default)]
pub(super) struct RawRules {
    pub(super) forward: Vec<Spanned<remap::RawRedirect>>,
    pub(super) host_services: Vec<Spanned<host::RawGrant>>,
    pub(super) bind: Vec<Spanned<remap::RawBind>>,
    pub(super) alias: Vec<Spanned<remap::RawRedirect>>,
}

impl RawRules {
    fn is_empty(&self) -> bool {
        self.forward.is_empty()
            && self.host_services.is_empty()
            && self.bind.is_empty()
            && self.alias.is_empty()
    }
}

impl ScopeDef {
    /// Validates `raw`, the `index`th scope of `source`, on its own: all
    /// that does not depend on an instance.
    pub(super) fn validate(
        source: &Arc<Source>,
        index: usize,
        raw: Spanned<RawScope>,
        services: &[HostService],
    ) -> Result<Self, PolicyError> {
        let raw = raw.into_inner();
        let locator = source.locator();
        let field = format!("scope[{index}]");
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() || name.contains('/') {
            return Err(locator.error(
                raw.name.span(),
                format!("{field}.name"),
                "a scope needs a non-empty name without '/'",
            ));
        }
        let selector = selector::validate(&locator, &format!("{field}.match"), &raw.selector)?;
        let rules = RawRules {
            forward: raw.forward,
            host_services: raw.host_services,
            bind: raw.bind,
            alias: raw.alias,
        };
        if let Some(labels) = &raw.labels {
            let error =
                |message: &str| locator.error(labels.span(), format!("{field}.labels"), message);
            if labels.get_ref().is_empty() {
                return Err(error(
                    "name the kinds of rules taken from labels: labels = [\"forward\", \"bind\", \"alias\", \"host_services\"]",
                ));
            }
            if !rules.is_empty() {
                return Err(error(
                    "a scope whose rules come from labels has no rules of its own: write those in another scope",
                ));
            }
            if matches!(selector, Selector::Netns(_)) {
                return Err(error("a network namespace has no labels: match containers"));
            }
        }
        let def = Self {
            origin: super::place(&locator, raw.name.span()),
            name_span: raw.name.span(),
            rules,
            labels: raw.labels.map(Spanned::into_inner).unwrap_or_default(),
            name,
            selector,
            source: Arc::clone(source),
            index,
        };
        Checker {
            def: &def,
            locator: &locator,
            services,
            instance: None,
            facts: None,
            next_rule: 0,
            from_labels: false,
        }
        .scope(&field, &def.rules)?;
        Ok(def)
    }

    /// The rules of one instance: its values filled in, checked against
    /// what `facts` says of it. An error names the policy's place and the
    /// instance.
    pub fn instantiate(
        &self,
        services: &[HostService],
        instance: Instance<'_>,
        facts: &dyn Facts,
    ) -> Result<Scope, PolicyError> {
        // A scope of labels checks its container's labels, as a text of
        // their own; any other its own rules, in its file.
        let labels = (!self.labels.is_empty()).then(|| labels::read(instance.labels, &self.labels));
        let (locator, field, rules) = match &labels {
            Some(labels) => (
                Locator::new(format!("the labels of {:?}", instance.name), &labels.text),
                labels::PREFIX.to_owned(),
                &labels.rules,
            ),
            None => (
                self.source.locator(),
                format!("scope[{}]", self.index),
                &self.rules,
            ),
        };
        Checker {
            def: self,
            locator: &locator,
            services,
            instance: Some(instance),
            facts: Some(facts),
            next_rule: 0,
            from_labels: labels.is_some(),
        }
        .scope(&field, rules)
        .map(|scope| scope.expect("an instance gets its rules"))
        .map_err(|error| PolicyError {
            message: format!("instance {:?}: {}", instance.name, error.message),
            ..error
        })
    }

    /// Whether the scope remaps binds: its instances claim ports.
    #[must_use]
    pub fn has_binds(&self) -> bool {
        !self.rules.bind.is_empty() || self.labels.contains(&LabelKind::Bind)
    }

    /// The kinds of rules its instances take from their labels.
    #[must_use]
    pub fn label_kinds(&self) -> &[LabelKind] {
        &self.labels
    }

    /// An error about the scope as a whole, at its name.
    pub(super) fn error(&self, message: String) -> PolicyError {
        self.source.locator().error(
            self.name_span.clone(),
            format!("scope[{}].name", self.index),
            message,
        )
    }
}

/// What a grant's connections dial, and the gateway they are sent to
/// (when known): what no alias of the scope may take.
type Granted = (SocketAddr, Option<IpAddr>);

/// Checks a scope: alone (no instance, no facts: rules with per-instance
/// values are left for later), or for one instance.
struct Checker<'a> {
    def: &'a ScopeDef,
    locator: &'a Locator<'a>,
    services: &'a [HostService],
    instance: Option<Instance<'a>>,
    facts: Option<&'a dyn Facts>,
    next_rule: u32,
    /// The rules come from an instance's labels: grants only of services
    /// the node lets labels grant.
    from_labels: bool,
}

impl Checker<'_> {
    /// The rules `raw` (of the scope, or an instance's labels) under
    /// `field`, or None when the scope is checked alone.
    fn scope(&mut self, field: &str, raw: &RawRules) -> Result<Option<Scope>, PolicyError> {
        let forwards = self.forwards(field, &raw.forward)?;
        let (grants, dialed) = self.grants(field, &raw.host_services)?;
        let binds = self.binds(field, &raw.bind)?;
        let aliases = self.aliases(field, &raw.alias, &dialed)?;
        Ok(self.instance.map(|_| Scope {
            forwards,
            grants,
            binds,
            aliases,
        }))
    }

    /// The text of a field that may use the instance's values (`{NAME}`):
    /// filled in for an instance; None when the scope is checked alone and
    /// the field uses them (it is checked per instance).
    fn fill(&self, value: &Spanned<String>, field: &str) -> Result<Option<String>, PolicyError> {
        let text = value.get_ref();
        let error = |message: String| self.locator.error(value.span(), field.to_owned(), message);
        let names = placeholders(text).map_err(error)?;
        if names.is_empty() {
            return Ok(Some(text.clone()));
        }
        let known = self.def.selector.capture_names();
        if let Some(unknown) = names.iter().find(|name| !known.contains(*name)) {
            return Err(error(format!(
                "{{{unknown}}} is not captured by this scope's match (it captures: {known:?})"
            )));
        }
        let Some(instance) = self.instance else {
            return Ok(None);
        };
        let mut filled = text.clone();
        for name in names {
            filled = filled.replace(&format!("{{{name}}}"), &instance.captures[name]);
        }
        Ok(Some(filled))
    }

    fn forwards(
        &mut self,
        field: &str,
        raw: &[Spanned<remap::RawRedirect>],
    ) -> Result<Vec<Forward>, PolicyError> {
        let mut forwards: Vec<(usize, Forward)> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let rule_field = format!("{field}.forward[{index}]");
            let Some(forward) = self.forward(&rule_field, raw)? else {
                continue;
            };
            if let Some((earlier, other)) = forwards
                .iter()
                .find(|(_, earlier)| overlaps(earlier, &forward))
            {
                return Err(self.locator.error(
                    raw.get_ref().from.span(),
                    format!("{rule_field}.from"),
                    format!(
                        "localhost:{} overlaps {field}.forward[{earlier}] (localhost:{}) on the same protocol: \
                         each localhost port of a scope goes to one place",
                        forward.from, other.from
                    ),
                ));
            }
            forwards.push((index, forward));
        }
        Ok(forwards.into_iter().map(|(_, forward)| forward).collect())
    }

    fn forward(
        &mut self,
        field: &str,
        raw: &Spanned<remap::RawRedirect>,
    ) -> Result<Option<Forward>, PolicyError> {
        let raw = raw.get_ref();
        let from_field = format!("{field}.from");
        let to_field = format!("{field}.to");
        let (Some(from_text), Some(to_text)) = (
            self.fill(&raw.from, &from_field)?,
            self.fill(&raw.to, &to_field)?,
        ) else {
            return Ok(None);
        };
        let from = endpoint::parse_from(&from_text)
            .map_err(|message| self.locator.error(raw.from.span(), from_field, message))?;
        let to_error =
            |message: String| self.locator.error(raw.to.span(), to_field.clone(), message);
        let to = endpoint::parse_to(&to_text).map_err(to_error)?;
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
        Ok(Some(Forward {
            rule: self.take_rule(),
            protocols: raw.proto,
            from,
            to,
            on_move: on_move(self.locator, field, raw.proto, raw.on_move.as_ref())?,
        }))
    }

    /// The grants of the instance (none when the scope is checked alone),
    /// and what each grant's connections dial and are sent to (the
    /// gateway, when known): what no alias may take.
    fn grants(
        &mut self,
        field: &str,
        raw: &[Spanned<host::RawGrant>],
    ) -> Result<(Vec<Grant>, Vec<Granted>), PolicyError> {
        let Some(first) = raw.first() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let network = match self.facts {
            Some(facts) => {
                let fact_error = |message| {
                    self.locator
                        .error(first.span(), format!("{field}.host_services"), message)
                };
                Some((
                    facts.network().map_err(fact_error)?,
                    facts.node_addresses().map_err(fact_error)?,
                ))
            }
            None => None,
        };
        let mut grants: Vec<Grant> = Vec::new();
        let mut dialed: Vec<Granted> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let grant_field = format!("{field}.host_services[{index}]");
            let def =
                host::validate_grant(self.locator, self.services, &grant_field, raw.get_ref())?;
            if self.from_labels && !self.services[def.service()].grantable_by_label {
                return Err(self.locator.error(
                    raw.span(),
                    format!("{grant_field}.service"),
                    "this host service is not grantable by label: the node's policy says grantable_by_label = true on the services labels may grant",
                ));
            }
            if dialed.iter().any(|(dial, _)| *dial == def.dial()) {
                return Err(self.locator.error(
                    raw.get_ref().dial_span(),
                    format!("{grant_field}.dial"),
                    format!("{} is granted twice in this scope", def.dial()),
                ));
            }
            let Some((network, node_addresses)) = &network else {
                dialed.push((def.dial(), def.gateway()));
                continue;
            };
            let grant = host::resolve_grant(
                self.locator,
                &def,
                network,
                node_addresses,
                &grant_field,
                raw.get_ref(),
                self.take_rule(),
            )?;
            dialed.push((grant.dial, Some(grant.gateway)));
            grants.push(grant);
        }
        Ok((grants, dialed))
    }

    fn binds(
        &mut self,
        field: &str,
        raw: &[Spanned<remap::RawBind>],
    ) -> Result<Vec<BindRemap>, PolicyError> {
        let Some(first) = raw.first() else {
            return Ok(Vec::new());
        };
        let bound = match self.facts {
            Some(facts) => facts.bound_ports().map_err(|message| {
                self.locator
                    .error(first.span(), format!("{field}.bind"), message)
            })?,
            None => Vec::new(),
        };
        let mut binds: Vec<BindRemap> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let bind_field = format!("{field}.bind[{index}]");
            let known = self.def.selector.capture_names();
            let Some(bind) = remap::validate_bind(
                self.locator,
                &bind_field,
                raw.get_ref(),
                &known,
                self.instance
                    .map(|instance| (instance.name, instance.captures)),
            )?
            else {
                continue;
            };
            let locator = self.locator;
            let to_error = |message: String| {
                locator.error(
                    raw.get_ref().target_span(),
                    format!("{bind_field}.to"),
                    message,
                )
            };
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
            }
            binds.push(BindRemap {
                rule: self.take_rule(),
                ..bind
            });
        }
        Ok(binds)
    }

    fn aliases(
        &mut self,
        field: &str,
        raw: &[Spanned<remap::RawRedirect>],
        granted: &[Granted],
    ) -> Result<Vec<Alias>, PolicyError> {
        let mut aliases: Vec<Alias> = Vec::new();
        for (index, raw) in raw.iter().enumerate() {
            let alias_field = format!("{field}.alias[{index}]");
            let alias = remap::validate_alias(self.locator, &alias_field, raw.get_ref(), 0)?;
            let takes_grant = granted.iter().position(|(dial, gateway)| {
                let address = alias.from.ip() == dial.ip() || Some(alias.from.ip()) == *gateway;
                let port = alias.from.port() == 0 || alias.from.port() == dial.port();
                alias
                    .protocols
                    .numbers()
                    .contains(&netbpf_common::PROTO_TCP)
                    && address
                    && port
            });
            let from_error = |message: String| {
                self.locator.error(
                    raw.get_ref().source_span(),
                    format!("{alias_field}.from"),
                    message,
                )
            };
            if let Some(grant) = takes_grant {
                return Err(from_error(format!(
                    "{} would take the connections {field}.host_services[{grant}] grants",
                    alias.from
                )));
            }
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
            aliases.push(Alias {
                rule: self.take_rule(),
                ..alias
            });
        }
        Ok(aliases)
    }

    /// The next rule id of this instance.
    fn take_rule(&mut self) -> u32 {
        self.next_rule += 1;
        self.next_rule - 1
    }
}

/// The `{NAME}`s a text uses.
fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{text:?} opens a {{ it does not close"))?;
        let name = &after[..close];
        if !pattern::is_capture_name(name) {
            return Err(format!(
                "{text:?} has {{{name}}}, which is not a name: write {{NAME}} as the match captures it"
            ));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
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
