//! The policy doctor proposes: whole policy files (TOML), each a file of
//! its own for the agent's policy directory, naming the container.

use std::net::SocketAddr;

use super::Subject;

/// A policy file of one scope for `subject`, with `rules` (lines of the
/// scope's table), after `preamble` (top-level tables it needs).
pub fn scope(subject: &Subject, preamble: &str, rules: &str) -> String {
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
    format!(
        "version = 1\n\n{preamble}[[scope]]\nname = \"{name}\"\nmatch = {{ {} }}\n{rules}\n",
        subject.selector
    )
}

/// `localhost:PORT` of the scope sent to `to`.
pub fn forward(port: u16, to: SocketAddr) -> String {
    format!("forward = [{{ from = \"localhost:{port}\", to = \"{to}\" }}]")
}

/// The host service `name` listening at `listen`, to put before the scope
/// that is granted it.
pub fn host_service(name: &str, listen: SocketAddr) -> String {
    format!("[[host_service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n\n")
}

/// The grant of host service `name` to the scope, dialed at `dial`.
pub fn grant(name: &str, dial: SocketAddr) -> String {
    format!("host_services = [{{ service = \"{name}\", dial = \"{dial}\" }}]")
}

/// A bind of `port` remapped to `to`.
pub fn bind(port: u16, to: u16) -> String {
    format!("bind = [{{ port = {port}, to = {to} }}]")
}

/// A policy file of one MSS clamp to the path MTU on `interface`.
pub fn mss_clamp(interface: &str) -> String {
    format!(
        "version = 1\n\n[[mss_clamp]]\ninterface = \"{interface}\"\ndirection = \"egress\"\nmss = \"pmtu\"\n"
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{host::scope_net::ScopeNetwork, policy};

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

    fn parses(text: &str) -> policy::Policy {
        policy::parse(Path::new("doctor.toml"), text)
            .unwrap_or_else(|error| panic!("{error}\n{text}"))
    }

    #[test]
    fn every_proposal_is_a_valid_policy() {
        let desktop = subject("desktop", "container = \"desktop\"");
        let forward = parses(&scope(
            &desktop,
            "",
            &forward(8082, "10.200.1.1:8082".parse().unwrap()),
        ));
        assert_eq!(forward.scopes.len(), 1);
        let granted = parses(&scope(
            &subject("backend", "container = \"backend\""),
            &host_service("port-18188", "127.0.0.1:18188".parse().unwrap()),
            &grant("port-18188", "172.17.0.1:18188".parse().unwrap()),
        ));
        assert_eq!(granted.host_services.len(), 1);
        let remapped = parses(&scope(
            &subject(
                "system.slice/web@2.service",
                "cgroup = \"system.slice/web@2.service\"",
            ),
            "",
            &bind(3000, 3001),
        ));
        assert_eq!(remapped.scopes[0].name, "system-slice-web-2-service");
        assert_eq!(parses(&mss_clamp("wg0")).mss_clamps.len(), 1);
    }
}
