//! The policy doctor proposes. Each finding proposes tables and rules for
//! the scope of a container; once every finding is in, the proposals of
//! one container are merged into one policy file (a container gets the
//! first scope that matches it, so its rules must share one), or, where a
//! scope applies to it already, named as rules to add to that scope.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Finding, Subject, applied_scope};
use crate::api::status::Status;

/// What a finding proposes for a container's scope.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub subject: Subject,
    /// Top-level tables the rules need (`[[host_service]]`).
    pub tables: Vec<String>,
    /// The scope's rules: the array each goes in (`forward`), and the rule
    /// as an inline table.
    pub rules: Vec<(&'static str, String)>,
}

/// `text` as a TOML string, quoted and escaped.
pub fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `localhost:PORT` of the scope sent to `to`, for `proto` (TCP when
/// None).
pub fn forward(port: u16, to: SocketAddr, proto: Option<&str>) -> (&'static str, String) {
    let proto = proto.map_or_else(String::new, |proto| format!(", proto = {}", quoted(proto)));
    (
        "forward",
        format!("{{ from = \"localhost:{port}\", to = \"{to}\"{proto} }}"),
    )
}

/// The grant of host service `name` to the scope, dialed at `dial`.
pub fn grant(name: &str, dial: SocketAddr) -> (&'static str, String) {
    (
        "host_services",
        format!("{{ service = {}, dial = \"{dial}\" }}", quoted(name)),
    )
}

/// A bind of `port` remapped to `to`.
pub fn bind(port: u16, to: u16) -> (&'static str, String) {
    ("bind", format!("{{ port = {port}, to = {to} }}"))
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
    /// Each rule array of the scope, and its entries.
    rules: BTreeMap<&'static str, Vec<String>>,
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
                rules: BTreeMap::new(),
            });
        for table in &proposal.tables {
            if !tables.contains(table) {
                tables.push(table.clone());
            }
        }
        for (key, rule) in &proposal.rules {
            let entries = rules.entry(key).or_default();
            if !entries.contains(rule) {
                entries.push(rule.clone());
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
        let lines: Vec<String> = rules
            .iter()
            .map(|(key, entries)| format!("{key} = [{}]", entries.join(", ")))
            .collect();
        if let Some(scope) = applied_scope(status, subject) {
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
