//! The iptables rules people write for what netbpf does, read with
//! `iptables-save` in each network namespace: DNAT to or from localhost
//! left half done (no `route_localnet`, no MASQUERADE), and Docker's
//! isolation rules between its networks.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use super::{Finding, Problem, Report, Subject, inventory::Inventory, snippet};
use crate::host::{netns, scope_net};

/// `iptables-save -t TABLE` in the network namespace at `netns`; None
/// where iptables is not installed or cannot read the table.
pub fn save(netns: &Path, table: &str) -> Option<String> {
    let output = netns::in_netns(netns, || {
        Command::new("iptables-save").args(["-t", table]).output()
    })
    .ok()?
    .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A rule of `iptables-save`: `-A CHAIN` and its options.
struct Rule<'a> {
    line: &'a str,
    chain: &'a str,
    words: Vec<&'a str>,
}

impl<'a> Rule<'a> {
    fn all(text: &'a str) -> impl Iterator<Item = Rule<'a>> {
        text.lines().filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "-A").then_some(())?;
            Some(Rule {
                line,
                chain: words.next()?,
                words: words.collect(),
            })
        })
    }

    /// The word after `option`, where it is not negated.
    fn value(&self, option: &str) -> Option<&'a str> {
        let at = self.words.iter().position(|word| *word == option)?;
        (at == 0 || self.words[at - 1] != "!").then(|| self.words.get(at + 1).copied())?
    }

    fn target(&self) -> Option<&'a str> {
        self.value("-j")
    }

    /// The rule as a command that deletes it.
    fn deletion(&self, table: &str) -> String {
        format!(
            "iptables -t {table} -D {} {}",
            self.chain,
            self.words.join(" ")
        )
    }
}

/// Whether an `iptables` address (`127.0.0.1`, `127.0.0.0/8`) is on
/// loopback.
fn is_loopback(address: &str) -> bool {
    address
        .split('/')
        .next()
        .and_then(|address| address.parse::<IpAddr>().ok())
        .is_some_and(|address| address.is_loopback())
}

/// The rules of a filter table that drop traffic between the bridges
/// `ours` and `theirs` in Docker's chains.
pub fn isolation_drops(text: &str, ours: &str, theirs: &str) -> Vec<String> {
    Rule::all(text)
        .filter(|rule| rule.chain.starts_with("DOCKER") && rule.target() == Some("DROP"))
        .filter(|rule| {
            [rule.value("-o"), rule.value("-i")]
                .into_iter()
                .flatten()
                .any(|interface| interface == ours || interface == theirs)
        })
        .map(|rule| rule.line.to_owned())
        .collect()
}

/// Whether a rule of the mangle table `text` clamps the MSS of segments
/// leaving through `interface` (`-o wg0`, `-o wg+`, or no `-o`).
pub fn clamps_mss(text: &str, interface: &str) -> bool {
    Rule::all(text).any(|rule| {
        rule.target() == Some("TCPMSS")
            && rule
                .value("-o")
                .is_none_or(|out| match out.strip_suffix('+') {
                    Some(prefix) => interface.starts_with(prefix),
                    None => out == interface,
                })
    })
}

/// Finds the half-done DNAT of each network namespace: the node's, and
/// each of `subjects`' own.
pub fn check(inventory: &Inventory, subjects: &[Subject], report: &mut Report) {
    let mut namespaces: Vec<(PathBuf, Option<&Subject>)> =
        vec![(inventory.node_netns.clone(), None)];
    for subject in subjects.iter().filter(|subject| !subject.host_network) {
        if let Some(path) = &subject.netns
            && !namespaces
                .iter()
                .any(|(known, _)| scope_net::same_namespace(known, path))
        {
            namespaces.push((path.clone(), Some(subject)));
        }
    }
    for (path, subject) in namespaces {
        if let Some(text) = save(&path, "nat") {
            report
                .findings
                .extend(half_done(&text, &path, subject, inventory));
        }
    }
}

/// The DNAT rules of the nat table `text` (of the namespace at `path`)
/// that cannot work: from localhost without `route_localnet` or without
/// MASQUERADE, to localhost without `route_localnet`.
fn half_done(
    text: &str,
    path: &Path,
    subject: Option<&Subject>,
    inventory: &Inventory,
) -> Vec<Finding> {
    let route_localnet = route_localnet(path);
    let masquerade = Rule::all(text).any(|rule| {
        rule.chain == "POSTROUTING"
            && matches!(rule.target(), Some("MASQUERADE" | "SNAT"))
            && rule.value("-s").is_none_or(is_loopback)
    });
    let place = subject.map_or_else(
        || "the node".to_owned(),
        |subject| format!("{}'s network namespace", subject.label),
    );
    let run_there = |command: String| match subject.and_then(|subject| subject.pid) {
        Some(pid) => format!("nsenter --net=/proc/{pid}/ns/net {command}"),
        None => command,
    };
    let mut findings = Vec::new();
    for rule in Rule::all(text).filter(|rule| rule.target() == Some("DNAT")) {
        let Some(to) = rule
            .value("--to-destination")
            .and_then(|to| to.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let port = rule.value("--dport").and_then(|port| port.parse().ok());
        let from_localhost = rule.chain == "OUTPUT"
            && rule.value("-d").is_some_and(is_loopback)
            && !to.ip().is_loopback();
        let to_localhost = rule.chain == "PREROUTING" && to.ip().is_loopback();
        let mut missing = Vec::new();
        if (from_localhost || to_localhost) && !route_localnet {
            missing.push("net.ipv4.conf.*.route_localnet is 0 on every interface: the kernel drops packets to or from 127.0.0.0/8 that leave loopback".to_owned());
        }
        if from_localhost && !masquerade {
            missing.push("no MASQUERADE or SNAT rule in POSTROUTING: the packets leave with source 127.0.0.1, and the replies never come back".to_owned());
        }
        if missing.is_empty() {
            continue;
        }
        let mut evidence = vec![format!("iptables -t nat in {place}: {}", rule.line)];
        evidence.extend(missing);
        let (policy, mut then) = if from_localhost {
            let port = port.unwrap_or(to.port());
            let scope = subject.cloned().unwrap_or_else(|| node_scope(inventory));
            (
                Some(snippet::scope(&scope, "", &snippet::forward(port, to))),
                Vec::new(),
            )
        } else {
            let name = format!("loopback-{}", to.port());
            let dialed = port.unwrap_or(to.port());
            (
                Some(format!(
                    "version = 1\n\n{}",
                    snippet::host_service(&name, to)
                )),
                vec![format!(
                    "grant it in the scopes of the containers that dial this node at port {dialed}: host_services = [{{ service = \"{name}\", dial = \"ADDRESS:{dialed}\" }}]"
                )],
            )
        };
        then.push(run_there(rule.deletion("nat")));
        findings.push(Finding {
            problem: Problem::HalfDoneIptables,
            container: subject.map(|subject| subject.label.clone()),
            port,
            cause: format!(
                "a DNAT {} localhost in {place} is half the iptables fix: without route_localnet (and MASQUERADE, for DNAT from localhost) its packets are dropped",
                if from_localhost { "from" } else { "to" }
            ),
            evidence,
            policy,
            then,
        });
    }
    findings
}

/// A scope of every socket of the node's network namespace: what a DNAT
/// in the node's OUTPUT chain acted on.
fn node_scope(inventory: &Inventory) -> Subject {
    let netns = if inventory.node_netns == Path::new("/proc/self/ns/net") {
        PathBuf::from("/proc/1/ns/net")
    } else {
        inventory.node_netns.clone()
    };
    Subject {
        label: "node".to_owned(),
        selector: format!("netns = \"{}\"", netns.display()),
        runtime: None,
        id: None,
        cgroup: PathBuf::new(),
        netns: Some(netns),
        pid: None,
        network: scope_net::ScopeNetwork::default(),
        host_network: true,
    }
}

/// Whether `route_localnet` is on for all interfaces or any one of the
/// network namespace at `path`.
fn route_localnet(path: &Path) -> bool {
    netns::in_netns(path, || {
        fs::read_dir("/proc/sys/net/ipv4/conf")
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                fs::read_to_string(entry.path().join("route_localnet"))
                    .is_ok_and(|value| value.trim() == "1")
            })
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "\
*filter
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -i br-5e1 ! -o br-5e1 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o br-5e1 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A FORWARD -o br-77 -j DROP
COMMIT
";

    #[test]
    fn finds_the_isolation_drops_between_two_docker_networks() {
        assert_eq!(
            isolation_drops(DOCKER, "br-5e1", "docker0"),
            [
                "-A DOCKER-ISOLATION-STAGE-2 -o br-5e1 -j DROP",
                "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP"
            ]
        );
        assert!(isolation_drops(DOCKER, "br-77", "br-78").is_empty());
    }

    #[test]
    fn a_tcpmss_rule_clamps_the_interfaces_it_names() {
        let mangle = "-A FORWARD -o wg+ -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n";
        assert!(clamps_mss(mangle, "wg0"));
        assert!(!clamps_mss(mangle, "eth0"));
        assert!(!clamps_mss("", "wg0"));
    }

    #[test]
    fn reads_options_and_their_negation() {
        let rule = Rule::all("-A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8082 -j DNAT --to-destination 10.200.1.1:8082\n-A X ! -o docker0 -j Y\n")
            .collect::<Vec<_>>();
        assert_eq!(rule[0].value("-d"), Some("127.0.0.1/32"));
        assert_eq!(rule[0].value("--dport"), Some("8082"));
        assert_eq!(rule[0].target(), Some("DNAT"));
        assert_eq!(
            rule[0].deletion("nat"),
            "iptables -t nat -D OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8082 -j DNAT --to-destination 10.200.1.1:8082"
        );
        assert_eq!(rule[1].value("-o"), None);
        assert!(is_loopback("127.0.0.0/8") && !is_loopback("10.0.0.1"));
    }
}
