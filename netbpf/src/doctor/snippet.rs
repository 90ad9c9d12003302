//! The policy doctor proposes. Each finding proposes tables and rules for
//! the scope of a container; once every finding is in, the proposals of
//! one container are merged into one policy file (a container gets the
//! first scope that matches it, so its rules must share one), or, where a
//! scope applies to it already, named as rules to add to that scope, or as
//! labels to give the container where that scope takes its rules from
//! labels.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Finding, Subject, applied_scope};
use crate::{
    api::status::{ScopeStatus, Status},
    policy::LabelKind,
};

/// What a finding proposes for a container's scope.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub subject: Subject,
    /// Top-level tables the rules need (`[[host_service]]`).
    pub tables: Vec<String>,
    /// The scope's rules.
    pub rules: Vec<Rule>,
}

/// One rule of a scope, written both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The kind of rule: the array it goes in, the label it goes in.
    pub kind: LabelKind,
    /// As an inline table of a policy file.
    pub table: String,
    /// As an entry of its label.
    pub entry: String,
    /// The host service it grants, if it is a grant.
    pub service: Option<String>,
}

/// `text` as a TOML string, quoted and escaped.
pub fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `localhost:PORT` of the scope sent to `to`, for `proto` (TCP when
/// None).
pub fn forward(port: u16, to: SocketAddr, proto: Option<&str>) -> Rule {
    let table_proto =
        proto.map_or_else(String::new, |proto| format!(", proto = {}", quoted(proto)));
    let entry_proto = proto.map_or_else(String::new, |proto| format!("/{proto}"));
    Rule {
        kind: LabelKind::Forward,
        table: format!("{{ from = \"localhost:{port}\", to = \"{to}\"{table_proto} }}"),
        entry: format!("localhost:{port}={to}{entry_proto}"),
        service: None,
    }
}

/// The grant of host service `name` to the scope, dialed at `dial`.
pub fn grant(name: &str, dial: SocketAddr) -> Rule {
    Rule {
        kind: LabelKind::HostServices,
        table: format!("{{ service = {}, dial = \"{dial}\" }}", quoted(name)),
        entry: format!("{name}={dial}"),
        service: Some(name.to_owned()),
    }
}

/// A bind of `port` remapped to `to`.
pub fn bind(port: u16, to: u16) -> Rule {
    Rule {
        kind: LabelKind::Bind,
        table: format!("{{ port = {port}, to = {to} }}"),
        entry: format!("{port}={to}"),
        service: None,
    }
}

/// The host service listening at `listen`: its name, and the table that
/// declares it, unless the agent's policy declares it already.
pub fn host_service(listen: SocketAddr, status: Option<&Status>) -> (String, Option<String>) {
    let declared = status.and_then(|status| {
        status
            .host_services
            .iter()
            .find(|service| service.listen == listen)
    });
    if let Some(service) = declared {
        return (service.name.clone(), None);
    }
    let name = format!("loopback-{}", listen.port());
    let table = format!(
        "[[host_service]]\nname = {}\nlisten = \"{listen}\"\n",
        quoted(&name)
    );
    (name, Some(table))
}

/// The loopback address of `address`'s family.
pub fn loopback_like(address: IpAddr) -> IpAddr {
    if address.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }
}

/// A policy file of one MSS clamp to the path MTU on `interface`.
pub fn mss_clamp(interface: &str) -> String {
    format!(
        "version = 1\n\n[[mss_clamp]]\ninterface = {}\ndirection = \"egress\"\nmss = \"pmtu\"\n",
        quoted(interface)
    )
}

/// A policy file of `tables` alone.
pub fn tables_file(tables: &[String]) -> String {
    format!("version = 1\n\n{}", tables.join("\n"))
}

/// The proposals for one container, merged.
struct Merged {
    subject: Subject,
    tables: Vec<String>,
    rules: Vec<Rule>,
}

/// Writes the policy (or the rules to add) of every finding with a
/// proposal, merging the proposals of each container.
pub fn write(findings: &mut [Finding], status: Option<&Status>) {
    let mut merged: BTreeMap<String, Merged> = BTreeMap::new();
    for proposal in findings
        .iter()
        .filter_map(|finding| finding.proposal.as_ref())
    {
        let Merged { tables, rules, .. } = merged
            .entry(proposal.subject.selector.clone())
            .or_insert_with(|| Merged {
                subject: proposal.subject.clone(),
                tables: Vec::new(),
                rules: Vec::new(),
            });
        for table in &proposal.tables {
            if !tables.contains(table) {
                tables.push(table.clone());
            }
        }
        for rule in &proposal.rules {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    for finding in findings.iter_mut() {
        let Some(proposal) = &finding.proposal else {
            continue;
        };
        let Merged {
            subject,
            tables,
            rules,
        } = &merged[&proposal.subject.selector];
        let scope = applied_scope(status, subject);
        if let Some(scope) = scope.filter(|scope| takes_all_from_labels(scope, rules)) {
            let (labels, steps) = labels_for(scope, subject, tables, rules, status);
            finding.policy = labels;
            for (at, step) in steps.into_iter().enumerate() {
                finding.steps.insert(at, step);
            }
            continue;
        }
        let mut arrays: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for rule in rules {
            arrays
                .entry(rule.kind.array())
                .or_default()
                .push(&rule.table);
        }
        let lines: Vec<String> = arrays
            .iter()
            .map(|(key, entries)| format!("{key} = [{}]", entries.join(", ")))
            .collect();
        if let Some(scope) = scope {
            finding.policy = (!tables.is_empty()).then(|| tables_file(tables));
            finding.steps.insert(
                0,
                format!(
                    "the scope {} applies to {} already, and only the first scope that matches a container counts: add to it {}",
                    quoted(&scope.scope),
                    subject.label,
                    lines.join(" and ")
                ),
            );
        } else {
            finding.policy = Some(scope_file(subject, tables, &lines));
        }
    }
}

/// Whether `scope` takes every kind of `rules` from its containers'
/// labels.
fn takes_all_from_labels(scope: &ScopeStatus, rules: &[Rule]) -> bool {
    rules.iter().all(|rule| scope.labels.contains(&rule.kind))
}

/// What to do where `scope` takes `rules` from `subject`'s labels: the
/// node's policy file for the `tables` it lacks (host services labels may
/// grant), and the steps: the labels to give the container, and the
/// services to let labels grant.
fn labels_for(
    scope: &ScopeStatus,
    subject: &Subject,
    tables: &[String],
    rules: &[Rule],
    status: Option<&Status>,
) -> (Option<String>, Vec<String>) {
    let mut labels: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for rule in rules {
        labels.entry(rule.kind.key()).or_default().push(&rule.entry);
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, entries)| quoted(&format!("{key}={}", entries.join(","))))
        .collect();
    let mut steps = vec![format!(
        "the scope {} takes the rules of {} from its labels: give it the labels {} (a compose file's `labels:`, or `docker run --label`)",
        quoted(&scope.scope),
        subject.label,
        labels.join(" and ")
    )];
    let not_grantable = rules
        .iter()
        .filter_map(|rule| rule.service.as_deref())
        .filter(|name| {
            status.is_some_and(|status| {
                status
                    .host_services
                    .iter()
                    .any(|service| service.name == *name && !service.grantable_by_label)
            })
        });
    for name in not_grantable {
        steps.push(format!(
            "let labels grant the host service {}: grantable_by_label = true in its [[host_service]] table",
            quoted(name)
        ));
    }
    let tables: Vec<String> = tables
        .iter()
        .map(|table| {
            if table.starts_with("[[host_service]]") {
                format!("{table}grantable_by_label = true\n")
            } else {
                table.clone()
            }
        })
        .collect();
    ((!tables.is_empty()).then(|| tables_file(&tables)), steps)
}

/// A policy file of `tables` and one scope for `subject` with `lines`.
fn scope_file(subject: &Subject, tables: &[String], lines: &[String]) -> String {
    let name: String = subject
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let preamble: String = tables
        .iter()
        .fold(String::new(), |text, table| text + table + "\n");
    format!(
        "version = 1\n\n{preamble}[[scope]]\nname = \"{name}\"\nmatch = {{ {} }}\n{}\n",
        subject.selector,
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        doctor::{Problem, inventory::Subject},
        host::scope_net::ScopeNetwork,
        policy,
    };

    fn subject(label: &str, selector: &str) -> Subject {
        Subject {
            label: label.to_owned(),
            selector: selector.to_owned(),
            runtime: None,
            id: None,
            cgroup: "/sys/fs/cgroup/test".into(),
            netns: None,
            pid: None,
            network: ScopeNetwork::default(),
            host_network: false,
        }
    }

    fn finding(proposal: Proposal) -> Finding {
        Finding {
            problem: Problem::LocalhostForward,
            container: Some(proposal.subject.label.clone()),
            port: None,
            cause: String::new(),
            evidence: Vec::new(),
            policy: None,
            steps: Vec::new(),
            proposal: Some(proposal),
        }
    }

    fn parses(text: &str) -> policy::Policy {
        policy::parse(Path::new("doctor.toml"), text)
            .unwrap_or_else(|error| panic!("{error}\n{text}"))
    }

    #[test]
    fn where_a_scope_takes_labels_the_container_is_given_labels() {
        let scope: ScopeStatus = serde_json::from_value(serde_json::json!({
            "name": "compose/web", "scope": "compose", "instance": "web",
            "match": {}, "labels": ["forward", "host_services"],
            "forwards": [], "grants": [], "binds": [], "aliases": [],
        }))
        .unwrap();
        let web = subject("web", "container = \"web\"");
        let (service, table) = host_service("127.0.0.1:18188".parse().unwrap(), None);
        let rules = [
            forward(8082, "10.200.1.1:8082".parse().unwrap(), None),
            forward(5353, "10.200.1.1:53".parse().unwrap(), Some("udp")),
            grant(&service, "172.17.0.1:18188".parse().unwrap()),
        ];
        assert!(takes_all_from_labels(&scope, &rules));
        assert!(!takes_all_from_labels(&scope, &[bind(3000, 3001)]));
        let tables: Vec<String> = table.into_iter().collect();
        let (policy, steps) = labels_for(&scope, &web, &tables, &rules, None);
        assert!(
            steps[0].contains(
                "\"io.netbpf.forward=localhost:8082=10.200.1.1:8082,localhost:5353=10.200.1.1:53/udp\" \
                 and \"io.netbpf.host_services=loopback-18188=172.17.0.1:18188\""
            ),
            "{steps:?}"
        );
        // The node's policy declares the service, grantable by label.
        let node = parses(&policy.unwrap());
        assert!(node.host_services[0].grantable_by_label);
    }

    #[test]
    fn the_proposals_of_one_container_share_one_scope() {
        let desktop = subject("desktop", "container = \"desktop\"");
        let (service, table) = host_service("127.0.0.1:18188".parse().unwrap(), None);
        let mut findings = [
            finding(Proposal {
                subject: desktop.clone(),
                tables: Vec::new(),
                rules: vec![forward(8082, "10.200.1.1:8082".parse().unwrap(), None)],
            }),
            finding(Proposal {
                subject: desktop.clone(),
                tables: table.into_iter().collect(),
                rules: vec![
                    grant(&service, "172.17.0.1:18188".parse().unwrap()),
                    forward(5353, "10.200.1.1:53".parse().unwrap(), Some("udp")),
                ],
            }),
            finding(Proposal {
                subject: subject(
                    "system.slice/web\\x2d2.service",
                    &format!("cgroup = {}", quoted("system.slice/web\\x2d2.service")),
                ),
                tables: Vec::new(),
                rules: vec![bind(3000, 3001)],
            }),
        ];
        write(&mut findings, None);
        assert_eq!(findings[0].policy, findings[1].policy);
        let merged = parses(findings[0].policy.as_ref().unwrap());
        assert_eq!(merged.scopes.len(), 1);
        assert_eq!(merged.host_services.len(), 1);
        let remapped = parses(findings[2].policy.as_ref().unwrap());
        assert_eq!(remapped.scopes[0].name, "system-slice-web-x2d2-service");
        assert_eq!(parses(&mss_clamp("wg0")).mss_clamps.len(), 1);
    }
}
