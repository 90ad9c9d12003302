//! The iptables rules people write for what netbpf does, read with
//! `iptables-save` in each network namespace: DNAT to or from localhost
//! left half done (no `route_localnet`, no MASQUERADE), TCPMSS clamps, and
//! Docker's isolation rules between its networks.
//!
//! Reading must change nothing: with the legacy backend, `iptables-save`
//! of a table that no rule uses yet would load it into the namespace (and
//! its conntrack with it), so only the tables the namespace has are read.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    Area, Finding, Problem, Report, State, Subject,
    inventory::Inventory,
    snippet::{self, Proposal},
};
use crate::host::{addressing, links, netns, scope_net};

/// `iptables-save -t TABLE` in the network namespace at `netns`: None
/// where the namespace has no such table; an error where iptables cannot
/// be run or read it.
pub fn save(netns: &Path, table: &str) -> Result<Option<String>, String> {
    let read = netns::in_netns(netns, || {
        let legacy = Command::new("iptables-save")
            .arg("--version")
            .output()
            .map_err(|error| format!("running iptables-save: {error}"))?
            .stdout
            .windows(6)
            .any(|word| word == b"legacy");
        let present = fs::read_to_string("/proc/thread-self/net/ip_tables_names")
            .is_ok_and(|names| names.lines().any(|name| name == table));
        if legacy && !present {
            return Ok(None);
        }
        let output = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .map_err(|error| format!("running iptables-save: {error}"))?;
        if output.status.success() {
            Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
        } else {
            Err(format!(
                "iptables-save -t {table}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    });
    read.map_err(|error| format!("entering {}: {error}", netns.display()))?
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

    /// The word after `option`, and whether `!` negates it.
    fn option(&self, option: &str) -> Option<(&'a str, bool)> {
        let at = self.words.iter().position(|word| *word == option)?;
        let negated = at > 0 && self.words[at - 1] == "!";
        Some((self.words.get(at + 1)?, negated))
    }

    /// The word after `option`, where it is not negated.
    fn value(&self, option: &str) -> Option<&'a str> {
        self.option(option)
            .and_then(|(value, negated)| (!negated).then_some(value))
    }

    /// The rule's target (`-j`).
    fn target(&self) -> Option<&'a str> {
        self.value("-j")
    }

    /// Whether the rule's `option` (`-o`, `-i`) takes `interface`: no
    /// such option, a name or a `+` wildcard that fits, or a negation of
    /// one that does not.
    fn takes_interface(&self, option: &str, interface: &str) -> bool {
        self.option(option).is_none_or(|(pattern, negated)| {
            let fits = match pattern.strip_suffix('+') {
                Some(prefix) => interface.starts_with(prefix),
                None => pattern == interface,
            };
            fits != negated
        })
    }

    /// Whether the rule's `-s` takes packets from 127.0.0.1.
    fn takes_loopback_source(&self) -> bool {
        self.option("-s")
            .is_none_or(|(source, negated)| is_loopback(source) != negated)
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
/// leaving through `interface` (`-o wg0`, `-o wg+`, no `-o`, or `! -o`
/// of another).
pub fn clamps_mss(text: &str, interface: &str) -> bool {
    Rule::all(text)
        .any(|rule| rule.target() == Some("TCPMSS") && rule.takes_interface("-o", interface))
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
        match save(&path, "nat") {
            Ok(Some(text)) => report
                .findings
                .extend(half_done(&text, &path, subject, inventory)),
            Ok(None) => {}
            Err(error) => report.check(
                Area::Host,
                "iptables",
                State::Warning,
                format!("the nat table of {} not read: {error}", place(subject)),
            ),
        }
    }
}

/// Where a namespace is, as people read it.
fn place(subject: Option<&Subject>) -> String {
    subject.map_or_else(
        || "the node".to_owned(),
        |subject| format!("{}'s network namespace", subject.label),
    )
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
    let masquerade = Rule::all(text).any(|rule| {
        rule.chain == "POSTROUTING"
            && matches!(rule.target(), Some("MASQUERADE" | "SNAT"))
            && rule.takes_loopback_source()
    });
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
        let port = rule
            .value("--dport")
            .and_then(|port| port.parse().ok())
            .unwrap_or(to.port());
        let from_localhost = rule.chain == "OUTPUT"
            && rule.value("-d").is_some_and(is_loopback)
            && !to.ip().is_loopback();
        let to_localhost = rule.chain == "PREROUTING" && to.ip().is_loopback();
        if !from_localhost && !to_localhost {
            continue;
        }
        let mut missing = Vec::new();
        let (interface, localnet) = route_localnet(path, &rule, to.ip(), to_localhost);
        if !localnet {
            missing.push(format!("net.ipv4.conf.all.route_localnet and net.ipv4.conf.{interface}.route_localnet are 0: the kernel drops packets to or from 127.0.0.0/8 that cross {interface}"));
        }
        if from_localhost && !masquerade {
            missing.push("no MASQUERADE or SNAT rule in POSTROUTING takes them: the packets leave with source 127.0.0.1, and the replies never come back".to_owned());
        }
        if missing.is_empty() {
            continue;
        }
        let mut evidence = vec![format!(
            "iptables -t nat in {}: {}",
            place(subject),
            rule.line
        )];
        evidence.extend(missing);
        let proto = rule.value("-p").filter(|proto| *proto == "udp");
        let (policy, proposal, mut steps) = if from_localhost {
            let scope = subject.cloned().unwrap_or_else(|| node_scope(inventory));
            let proposal = Proposal {
                subject: scope,
                tables: Vec::new(),
                rules: vec![snippet::forward(port, to, proto)],
            };
            (None, Some(proposal), Vec::new())
        } else {
            let (name, table) = snippet::host_service(to, None);
            let grant = snippet::grant(&name, SocketAddr::new(to.ip(), port)).table;
            (
                table.map(|table| snippet::tables_file(&[table])),
                None,
                vec![format!(
                    "grant it in the scopes of the containers that dial this node at port {port}: host_services = [{}], with the address they dial",
                    grant.replace(&to.ip().to_string(), "ADDRESS")
                )],
            )
        };
        steps.push(run_there(rule.deletion("nat")));
        findings.push(Finding {
            problem: Problem::HalfDoneIptables,
            container: subject.map(|subject| subject.label.clone()),
            port: Some(port),
            cause: format!(
                "a DNAT {} localhost in {} is half the iptables fix: without route_localnet (and MASQUERADE, for DNAT from localhost) its packets are dropped",
                if from_localhost { "from" } else { "to" },
                place(subject)
            ),
            evidence,
            policy,
            steps,
            proposal,
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
        selector: format!("netns = {}", snippet::quoted(&netns.to_string_lossy())),
        runtime: None,
        id: None,
        cgroup: PathBuf::new(),
        netns: Some(netns),
        pid: None,
        network: scope_net::ScopeNetwork::default(),
        host_network: true,
    }
}

/// The interface a DNAT's packets cross in the namespace at `path`, and
/// whether `route_localnet` is on for it (or for all), as the kernel
/// decides: the rule's `-i` for DNAT to localhost (else any interface),
/// the interface whose network holds `target` for DNAT from localhost
/// (else any interface a route leaves through).
fn route_localnet(
    path: &Path,
    rule: &Rule<'_>,
    target: IpAddr,
    to_localhost: bool,
) -> (String, bool) {
    let read = |name: &str| {
        fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"))
            .is_ok_and(|value| value.trim() == "1")
    };
    let named = rule.value("-i").filter(|_| to_localhost).map(str::to_owned);
    netns::in_netns(path, || {
        if read("all") {
            return ("all".to_owned(), true);
        }
        if let Some(interface) = named {
            let on = read(&interface);
            return (interface, on);
        }
        let interfaces = links::list().unwrap_or_default();
        let holding: Vec<u32> = addressing::addresses()
            .unwrap_or_default()
            .into_iter()
            .filter(|address| !to_localhost && address.network_contains(target))
            .map(|address| address.interface)
            .collect();
        let candidates: Vec<u32> = if holding.is_empty() {
            addressing::route_interfaces()
                .unwrap_or_default()
                .into_iter()
                .collect()
        } else {
            holding
        };
        let crossed: Vec<&str> = interfaces
            .iter()
            .filter(|interface| candidates.contains(&interface.index) && interface.name != "lo")
            .map(|interface| interface.name.as_str())
            .collect();
        let on = crossed.iter().any(|name| read(name));
        (crossed.join("|"), on)
    })
    .unwrap_or_else(|_| ("all".to_owned(), false))
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
        let negated = "-A FORWARD ! -o wg0 -p tcp -j TCPMSS --set-mss 1300\n";
        assert!(!clamps_mss(negated, "wg0"));
        assert!(clamps_mss(negated, "wg1"));
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
        assert!(!rule[1].takes_interface("-o", "docker0"));
        let masquerade = Rule::all("-A POSTROUTING ! -s 127.0.0.0/8 -j MASQUERADE\n-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE\n-A POSTROUTING -j MASQUERADE\n").collect::<Vec<_>>();
        assert_eq!(
            masquerade
                .iter()
                .map(Rule::takes_loopback_source)
                .collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(is_loopback("127.0.0.0/8") && !is_loopback("10.0.0.1"));
    }
}
