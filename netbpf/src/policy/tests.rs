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
    let captures: Captures = captures
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    policy.scopes[index].instantiate(
        &policy.host_services,
        Instance {
            name,
            captures: &captures,
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

const SERVICES: &str = "version = 1\n\
    [[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\n\
    [[host_service]]\nname = \"db6\"\nlisten = \"[::1]:5432\"\n";

fn with_grants(grants: &str) -> String {
    format!(
        "{SERVICES}[[scope]]\nname = \"app\"\nmatch = {{ cgroup = \"/cg/app\" }}\nhost_services = [\n  {grants},\n]\n"
    )
}

#[test]
fn accepts_host_services_and_finds_gateways() {
    let policy = parse_text(&with_grants(
        r#"{ service = "gpu", dial = "172.17.0.1:18188" }, { service = "db6", dial = "[fd00:17::1]:5432", gateway = "fd21::99" }"#,
    ))
    .unwrap();
    assert_eq!(policy.host_services.len(), 2);
    let rules = instance_of(&policy, 0, "app", &[]).unwrap();
    let [gpu, db] = rules.grants.as_slice() else {
        panic!("two grants expected");
    };
    assert_eq!((gpu.service, gpu.rule), (0, 0));
    assert_eq!(gpu.dial, "172.17.0.1:18188".parse().unwrap());
    assert_eq!(
        gpu.gateway,
        "10.210.1.1".parse::<IpAddr>().unwrap(),
        "found from the scope's default route"
    );
    assert_eq!(
        gpu.sources,
        vec!["10.210.1.2".parse::<IpAddr>().unwrap()],
        "only the addresses of the interface its default route leaves through"
    );
    assert_eq!(
        (gpu.via, gpu.ingress),
        (Some(7), Some(3)),
        "bound to the container's host-side interface and its bridge"
    );
    assert_eq!((db.service, db.gateway), (1, "fd21::99".parse().unwrap()));
}

#[test]
fn a_host_service_may_name_the_owner_of_its_listener() {
    let policy = parse_text(
        "version = 1\n[[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\n\
         owner = { uid = 1000, unit = \"gpu-tunnel.service\" }\n",
    )
    .unwrap();
    let owner = policy.host_services[0].owner.clone().unwrap();
    assert!(owner.owns(1000, Some("gpu-tunnel.service")));
    assert!(
        !owner.owns(1001, Some("gpu-tunnel.service")),
        "another user"
    );
    assert!(!owner.owns(1000, Some("session-3.scope")), "another unit");
    assert!(!owner.owns(1000, None), "no unit");
    assert_eq!(owner.to_string(), "uid 1000 in gpu-tunnel.service");
}

#[test]
fn rejects_bad_host_services_where_they_stand() {
    assert_rejected(
        "version = 1\n[[host_service]]\nname = \"x\"\nlisten = \"10.0.0.1:80\"\n",
        4,
        "host_service[0].listen",
        "loopback",
    );
    assert_rejected(
        "version = 1\n[[host_service]]\nname = \"x\"\nlisten = \"127.0.0.1:80\"\nowner = {}\n",
        5,
        "host_service[0].owner",
        "names a uid, a systemd unit, or both",
    );
    assert_rejected(
        "version = 1\n[[host_service]]\nname = \"x\"\nlisten = \"127.0.0.1:80\"\nowner = { unit = \"ssh\" }\n",
        5,
        "host_service[0].owner",
        "not a systemd unit's name",
    );
    assert_rejected(
        &with_grants(r#"{ service = "gpuu", dial = "172.17.0.1:18188" }"#),
        12,
        "scope[0].host_services[0].service",
        "no host service is named \"gpuu\"",
    );
    assert_rejected(
        &with_grants(r#"{ service = "gpu", dial = "127.0.0.1:18188" }"#),
        12,
        "scope[0].host_services[0].dial",
        "cannot be a host alias",
    );
    assert_rejected(
        &with_grants(r#"{ service = "db6", dial = "172.17.0.1:5432" }"#),
        12,
        "scope[0].host_services[0].dial",
        "different IP families",
    );
    assert_rejected(
        &with_grants(
            r#"{ service = "gpu", dial = "172.17.0.1:1" }, { service = "db6", dial = "[fd00::1]:1", gateway = "fd21::1" }, { service = "gpu", dial = "172.17.0.1:1" }"#,
        ),
        12,
        "scope[0].host_services[2].dial",
        "granted twice",
    );
}

fn with_remaps(body: &str) -> String {
    format!("version = 1\n[[scope]]\nname = \"a\"\nmatch = {{ cgroup = \"/cg/a\" }}\n{body}\n")
}

#[test]
fn accepts_bind_remaps_and_aliases() {
    let policy = parse_text(&with_remaps(
        "bind = [{ port = 3000, to = 7043 }]\nalias = [{ from = \"10.10.10.10:6379\", to = \"10.0.0.5:6380\" }, { from = \"10.10.10.11\", to = \"10.0.0.6\" }]",
    ))
    .unwrap();
    let scope = instance_of(&policy, 0, "a", &[]).unwrap();
    assert_eq!(
        (
            scope.binds[0].port,
            scope.binds[0].to,
            scope.binds[0].address
        ),
        (3000, 7043, None)
    );
    assert_eq!(
        scope.aliases[1].from.port(),
        0,
        "an address alone aliases every port"
    );
}

#[test]
fn rejects_conflicting_remaps_and_alias_loops() {
    assert_rejected(
        &with_remaps("bind = [{ port = 3000, to = 22 }]"),
        5,
        "scope[0].bind[0].to",
        "already bound",
    );
    assert_rejected(
        &with_remaps("bind = [{ port = 0, to = 7000 }]"),
        5,
        "scope[0].bind[0].port",
        "out of range",
    );
    assert_rejected(
        &with_remaps(
            "alias = [{ from = \"10.1.1.1:80\", to = \"10.2.2.2:80\" }, { from = \"10.2.2.2:80\", to = \"10.1.1.1:80\" }]",
        ),
        5,
        "scope[0].alias[1].from",
        "do not chain",
    );
    assert_rejected(
        &with_remaps("alias = [{ from = \"127.0.0.1:80\", to = \"10.2.2.2:80\" }]"),
        5,
        "scope[0].alias[0].from",
        "forward",
    );
}

#[test]
fn instances_take_ports_from_their_names_and_labels() {
    let policy = parse_text(
        "version = 1\n[[scope]]\nname = \"onetime\"\nmatch = { cgroup = \"/cg/onetime@*\" }\n\
         bind = [{ port = 3000, to = \"@\" }]\n\
         [[scope]]\nname = \"web\"\nmatch = { container = \"web-{port}\", label = { tier = \"{tier}\" } }\n\
         bind = [{ port = 3000, to = \"{port}\" }]\n\
         forward = [{ from = \"localhost:{port}\", to = \"10.0.0.1:{port}\" }]\n",
    )
    .unwrap();
    let at = instance_of(&policy, 0, "onetime@7041", &[]).unwrap();
    assert_eq!((at.binds[0].port, at.binds[0].to), (3000, 7041));
    let web = instance_of(&policy, 1, "web-7050", &[("port", "7050"), ("tier", "x")]).unwrap();
    assert_eq!(web.binds[0].to, 7050);
    assert_eq!(web.forwards[0].from, Ports::Single(7050));
    assert_eq!(web.forwards[0].to.to_string(), "10.0.0.1:7050");
    let error = instance_of(&policy, 1, "web-x", &[("port", "x"), ("tier", "x")]).unwrap_err();
    assert_eq!(
        (error.line, error.field.as_str()),
        (10, "scope[1].forward[0].from"),
        "{error}"
    );
    assert!(
        error.message.contains("instance \"web-x\"") && error.message.contains("not a port"),
        "{error}"
    );
    let error = instance_of(&policy, 0, "onetime", &[]).unwrap_err();
    assert!(error.message.contains("no @PORT"), "{error}");
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nbind = [{ port = 3000, to = \"{port}\" }]\n",
        5,
        "scope[0].bind[0].to",
        "the match captures",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nforward = [{ from = \"localhost:{port}\", to = \"10.0.0.1\" }]\n",
        5,
        "scope[0].forward[0].from",
        "not captured",
    );
}

#[test]
fn a_directory_merges_its_files_and_names_both_places_of_a_clash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-services.toml"),
        "version = 1\n[[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-app.toml"),
        "version = 1\n[[scope]]\nname = \"app\"\nmatch = { container = \"app\" }\n\
         host_services = [{ service = \"gpu\", dial = \"172.17.0.1:18188\" }]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let policy = load_dir(dir.path()).unwrap();
    assert_eq!((policy.scopes.len(), policy.host_services.len()), (1, 1));
    std::fs::write(
        dir.path().join("30-again.toml"),
        "version = 1\n\n[[scope]]\nname = \"app\"\nmatch = { container = \"other\" }\n",
    )
    .unwrap();
    let error = load_dir(dir.path()).unwrap_err();
    assert!(error.file.ends_with("30-again.toml"), "{error}");
    assert!(
        error.message.contains("20-app.toml:3") && error.message.contains("30-again.toml:4"),
        "{error}"
    );
}

#[test]
fn grants_that_collide_are_refused_when_the_policy_is_read() {
    let twice = with_grants(
        r#"{ service = "gpu", dial = "172.17.0.1:1" }, { service = "gpu", dial = "172.17.0.1:1" }"#,
    );
    let error = parse_text(&twice).expect_err("refused before any instance");
    assert!(error.message.contains("granted twice"), "{error}");
    let taken = format!(
        "{}alias = [{{ from = \"172.17.0.1:18188\", to = \"10.0.0.9:80\" }}]\n",
        with_grants(r#"{ service = "gpu", dial = "172.17.0.1:18188" }"#)
    );
    let error = parse_text(&taken).expect_err("refused before any instance");
    assert!(
        error.message.contains("would take the connections"),
        "{error}"
    );
}

#[test]
fn rejects_grants_and_remaps_that_could_not_work() {
    assert_rejected(
        &with_grants(r#"{ service = "gpu", dial = "172.17.0.1:18188", gateway = "10.9.9.9" }"#),
        12,
        "scope[0].host_services[0].dial",
        "not an address of the node",
    );
    assert_rejected(
        &with_grants(r#"{ service = "db6", dial = "[fd00::1]:5432", gateway = "fe80::1" }"#),
        12,
        "scope[0].host_services[0].dial",
        "link-local",
    );
    let taken = format!(
        "{}alias = [{{ from = \"172.17.0.1:18188\", to = \"10.0.0.9:80\" }}]\n",
        with_grants(r#"{ service = "gpu", dial = "172.17.0.1:18188" }"#)
    );
    assert_rejected(
        &taken,
        14,
        "scope[0].alias[0].from",
        "would take the connections",
    );
    assert_rejected(
        &with_remaps("bind = [{ port = 8080, to = 9000 }, { port = 8081, to = 9000 }]"),
        5,
        "scope[0].bind[1].to",
        "already gets the remap of port 8080",
    );
}
