//! The policy parser and validator: what it accepts, and each refusal
//! with its file, line and field.

mod index;
mod labels;
mod services_and_remaps;

use std::{net::IpAddr, path::Path};

use super::*;

/// The facts of a made-up instance: a bridge network, port 22 taken.
struct FakeFacts;

impl Facts for FakeFacts {
    fn network(&self) -> Result<ScopeNetwork, String> {
        Ok(ScopeNetwork {
            node: false,
            gateways: vec!["10.210.1.1".parse().unwrap(), "fd21::1".parse().unwrap()],
            addresses: vec![
                "10.210.1.2".parse().unwrap(),
                "fd21::2".parse().unwrap(),
                "10.99.0.2".parse().unwrap(),
            ],
            route_addresses: vec!["10.210.1.2".parse().unwrap(), "fd21::2".parse().unwrap()],
            host_interface: Some(7),
            ingress_interface: Some(3),
        })
    }

    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        Ok(vec![
            "10.210.1.1".parse().unwrap(),
            "fd21::1".parse().unwrap(),
            "fd21::99".parse().unwrap(),
        ])
    }

    fn bound_ports(&self) -> Result<Vec<(u8, u16)>, String> {
        Ok(vec![(netbpf_common::PROTO_TCP, 22)])
    }
}

fn parse_text(text: &str) -> Result<Policy, PolicyError> {
    parse(Path::new("policy.toml"), text)
}

/// The rules of scope `index` of `policy` for an instance named `name`
/// whose match captured `captures`.
fn instance_of(
    policy: &Policy,
    index: usize,
    name: &str,
    captures: &[(&str, &str)],
) -> Result<Scope, PolicyError> {
    labelled_instance_of(policy, index, name, captures, &[])
}

/// As [`instance_of`], for a container with `labels`.
fn labelled_instance_of(
    policy: &Policy,
    index: usize,
    name: &str,
    captures: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> Result<Scope, PolicyError> {
    let owned = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (captures, labels) = (owned(captures), owned(labels));
    policy.scopes[index].instantiate(
        &policy.host_services,
        Instance {
            name,
            captures: &captures,
            labels: &labels,
        },
        &FakeFacts,
    )
}

/// The first error of `text`: when read, or else when its scopes are
/// instantiated for an instance named "app".
fn first_error(text: &str) -> PolicyError {
    let policy = match parse_text(text) {
        Ok(policy) => policy,
        Err(error) => return error,
    };
    (0..policy.scopes.len())
        .find_map(|index| instance_of(&policy, index, "app", &[]).err())
        .expect("the policy must be rejected")
}

/// Asserts that `text` is rejected at `line` for `field` with a message
/// containing `needle`.
#[track_caller]
fn assert_rejected(text: &str, line: usize, field: &str, needle: &str) {
    let error = first_error(text);
    assert_eq!(error.line, line, "wrong line in: {error}");
    assert_eq!(error.field, field, "wrong field in: {error}");
    assert!(error.message.contains(needle), "{needle:?} not in: {error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("policy.toml:{line}:")),
        "{error}"
    );
}

const GOOD: &str = r#"
version = 1

[[scope]]
name = "desktop"
match = { cgroup = "/cg/desktop" }
forward = [
  { from = "localhost:8082", to = "10.200.1.1:80" },
  { from = "localhost:9000-9010", to = "10.200.1.1:19000-19010", proto = "udp" },
  { from = "localhost:53", to = "[fd00::53]", proto = "both" },
]

[[scope]]
name = "pod"
match = { netns = "/ns/pod" }
forward = [{ from = "localhost:*", to = "10.0.0.1" }]
"#;

#[test]
fn accepts_a_complete_policy() {
    let policy = parse_text(GOOD).unwrap();
    assert_eq!(policy.scopes.len(), 2);
    let desktop = &policy.scopes[0];
    assert_eq!(desktop.name, "desktop");
    assert_eq!(desktop.origin, "policy.toml:5");
    let Selector::Workload(selector) = &desktop.selector else {
        panic!("a cgroup selector expected: {:?}", desktop.selector);
    };
    assert_eq!(selector.cgroup.as_ref().unwrap().as_str(), "/cg/desktop");
    let rules = instance_of(&policy, 0, "desktop", &[]).unwrap();
    let [http, range, dns] = rules.forwards.as_slice() else {
        panic!("three forwards expected: {:?}", rules.forwards);
    };
    assert_eq!(
        (http.rule, http.protocols, http.from),
        (0, Protocols::Tcp, Ports::Single(8082))
    );
    assert_eq!(http.port_delta(), 80u16.wrapping_sub(8082));
    assert_eq!(
        (range.protocols, range.port_delta()),
        (Protocols::Udp, 10_000)
    );
    assert_eq!((dns.protocols, dns.port_delta()), (Protocols::Both, 0));
    assert_eq!(policy.scopes[1].selector, Selector::Netns("/ns/pod".into()));
    let pod = instance_of(&policy, 1, "pod", &[]).unwrap();
    assert_eq!(
        (pod.forwards[0].rule, pod.forwards[0].from),
        (0, Ports::Every)
    );
}

#[test]
fn an_empty_policy_is_valid() {
    let policy = parse_text("version = 1\n").unwrap();
    assert!(policy.scopes.is_empty() && policy.mss_clamps.is_empty());
}

#[test]
fn rejects_an_unknown_key_where_it_stands() {
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\nfoward = []\n",
        5,
        "",
        "unknown field `foward`",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\nforward = [{ from = \"localhost:1\", to = \"10.0.0.1\", port = 2 }]\n",
        5,
        "",
        "unknown field `port`",
    );
}

#[test]
fn rejects_another_version() {
    assert_rejected(
        "version = 2\n",
        1,
        "version",
        "unsupported policy version 2",
    );
}

#[test]
fn rejects_a_missing_version() {
    let error =
        parse_text("[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\n").unwrap_err();
    assert!(error.message.contains("missing field `version`"), "{error}");
}

fn one_forward(forward: &str) -> String {
    format!(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = {{ cgroup = \"/cg/a\" }}\nforward = [\n  {forward},\n]\n"
    )
}

#[test]
fn rejects_bad_addresses_and_ports() {
    let field = "scope[0].forward[0]";
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80", to = "10.200.1.300:80" }"#),
        6,
        &format!("{field}.to"),
        "not an IPv4 or IPv6 address",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:0", to = "10.0.0.1:80" }"#),
        6,
        &format!("{field}.from"),
        "port 0",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80", to = "10.0.0.1:65536" }"#),
        6,
        &format!("{field}.to"),
        "out of range",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80", to = "0.0.0.0:80" }"#),
        6,
        &format!("{field}.to"),
        "unicast",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80", to = "10.0.0.1:80", proto = "sctp" }"#),
        6,
        "",
        "unknown variant `sctp`",
    );
}

#[test]
fn rejects_ranges_of_different_lengths() {
    assert_rejected(
        &one_forward(r#"{ from = "localhost:9000-9010", to = "10.0.0.1:9000-9005" }"#),
        6,
        "scope[0].forward[0].to",
        "same length",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80-81", to = "10.0.0.1:80" }"#),
        6,
        "scope[0].forward[0].to",
        "same length",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:*", to = "10.0.0.1:80" }"#),
        6,
        "scope[0].forward[0].to",
        "port that was dialed",
    );
}

#[test]
fn a_single_port_is_a_range_of_one() {
    let policy = parse_text(&one_forward(
        r#"{ from = "localhost:80-80", to = "10.0.0.1:81" }"#,
    ))
    .unwrap();
    assert_eq!(
        instance_of(&policy, 0, "a", &[]).unwrap().forwards[0].port_delta(),
        1
    );
}

#[test]
fn rejects_link_local_targets() {
    assert_rejected(
        &one_forward(r#"{ from = "localhost:80", to = "[fe80::1]:80" }"#),
        6,
        "scope[0].forward[0].to",
        "link-local",
    );
}

#[test]
fn on_move_resets_only_rules_with_tcp() {
    assert_rejected(
        &one_forward(
            r#"{ from = "localhost:53", to = "10.0.0.53", proto = "udp", on_move = "reset" }"#,
        ),
        6,
        "scope[0].forward[0].on_move",
        "a UDP rule has no connection to reset",
    );
    assert_rejected(
        &one_forward(r#"{ from = "localhost:53", to = "10.0.0.53", on_move = "drop" }"#),
        6,
        "",
        "unknown variant `drop`, expected `keep` or `reset`",
    );
    let policy = parse_text(&one_forward(
        r#"{ from = "localhost:53", to = "10.0.0.53", proto = "both", on_move = "reset" }"#,
    ))
    .unwrap();
    let forwards = instance_of(&policy, 0, "app", &[]).unwrap().forwards;
    assert_eq!(forwards[0].on_move, OnMove::Reset);
}

#[test]
fn rejects_overlapping_forwards_on_one_protocol() {
    let text = "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\nforward = [\n  \
                { from = \"localhost:9000-9010\", to = \"10.0.0.1\" },\n  \
                { from = \"localhost:9010\", to = \"10.0.0.2\", proto = \"both\" },\n]\n";
    assert_rejected(
        text,
        7,
        "scope[0].forward[1].from",
        "overlaps scope[0].forward[0]",
    );
    // The same ports on different protocols do not overlap.
    let split = text.replace("proto = \"both\"", "proto = \"udp\"");
    let policy = parse_text(&split).unwrap();
    assert_eq!(instance_of(&policy, 0, "a", &[]).unwrap().forwards.len(), 2);
}

#[test]
fn a_policy_is_valid_whether_or_not_anything_matches_it() {
    let policy = parse_text(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/nowhere/yet\" }\n\
         [[scope]]\nname = \"b\"\nmatch = { netns = \"/run/netns/later\" }\n\
         [[scope]]\nname = \"c\"\nmatch = { container = \"web-*\", label = { tier = \"front\" } }\n",
    )
    .unwrap();
    assert_eq!(policy.scopes.len(), 3);
}

#[test]
fn rejects_ambiguous_empty_and_duplicate_scopes() {
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\", netns = \"/ns/a\" }\n",
        4,
        "scope[0].match",
        "takes no other condition",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = {}\n",
        4,
        "scope[0].match",
        "at least one of",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/b\" }\n",
        6,
        "scope[1].name",
        "defined twice: at policy.toml:3 and at policy.toml:6",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { container = \"web-{n\" }\n",
        4,
        "scope[0].match.container",
        "does not close",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { id = \"xyz\" }\n",
        4,
        "scope[0].match.id",
        "hexadecimal",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { pod = \"web\" }\n",
        4,
        "scope[0].match.pod",
        "NAMESPACE/NAME",
    );
}

#[test]
fn accepts_mss_clamps() {
    let policy = parse_text(
        "version = 1\n[[mss_clamp]]\ninterface = \"wg*\"\nmss = \"pmtu\"\n\
         [[mss_clamp]]\ninterface = \"veth0\"\ndirection = \"both\"\nmss = 1300\n",
    )
    .unwrap();
    assert_eq!(
        policy.mss_clamps,
        vec![
            MssClamp {
                interface: "wg*".into(),
                direction: Direction::Egress,
                mss: Mss::PathMtu
            },
            MssClamp {
                interface: "veth0".into(),
                direction: Direction::Both,
                mss: Mss::Fixed(1300)
            },
        ]
    );
}

#[test]
fn rejects_bad_mss_clamps_where_they_stand() {
    let clamp = |body: &str| format!("version = 1\n[[mss_clamp]]\n{body}\n");
    assert_rejected(
        &clamp("interface = \"wg0\"\nmss = 0"),
        4,
        "mss_clamp[0].mss",
        "out of range",
    );
    assert_rejected(
        &clamp("interface = \"wg0\"\nmss = 70000"),
        4,
        "mss_clamp[0].mss",
        "out of range",
    );
    assert_rejected(
        &clamp("interface = \"wg0\"\nmss = \"auto\""),
        4,
        "mss_clamp[0].mss",
        "\"pmtu\"",
    );
    assert_rejected(
        &clamp("interface = \"\"\nmss = 1300"),
        3,
        "mss_clamp[0].interface",
        "needed",
    );
    assert_rejected(
        &clamp("interface = \"wg0\"\nmss = 1300\ndirection = \"out\""),
        5,
        "",
        "unknown variant `out`",
    );
    assert_rejected(
        &clamp("interface = \"wg0\"\nmss = 1300\nmode = 1"),
        5,
        "",
        "unknown field `mode`",
    );
    assert_rejected(
        "version = 1\n[[mss_clamp]]\ninterface = \"wg0\"\nmss = 1300\n[[mss_clamp]]\ninterface = \"wg0\"\nmss = 1200\n",
        6,
        "mss_clamp[1].interface",
        "clamped twice: at policy.toml:3 and at policy.toml:6",
    );
}
