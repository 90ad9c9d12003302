use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::*;

/// Resolves `/cg/NAME` and `/ns/NAME` to made-up keys; anything else does
/// not exist.
struct FakeHost;

impl Resolver for FakeHost {
    fn cgroup(&self, path: &str) -> Result<(PathBuf, u64), String> {
        match path.strip_prefix("/cg/") {
            Some(name) => Ok((PathBuf::from(path), fake_key(1000, name))),
            None => Err(format!("cgroup {path:?} does not exist")),
        }
    }

    fn network(&self, _selector: &Selector) -> Result<ScopeNetwork, String> {
        Ok(ScopeNetwork {
            node: false,
            gateways: vec!["10.210.1.1".parse().unwrap(), "fd21::1".parse().unwrap()],
            addresses: vec!["10.210.1.2".parse().unwrap(), "fd21::2".parse().unwrap()],
        })
    }

    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        Ok(vec![
            "10.210.1.1".parse().unwrap(),
            "fd21::1".parse().unwrap(),
            "fd21::99".parse().unwrap(),
        ])
    }

    fn bound_ports(&self, _selector: &Selector) -> Result<Vec<(u8, u16)>, String> {
        Ok(vec![(netbpf_common::PROTO_TCP, 22)])
    }

    fn cgroup_glob(&self, pattern: &str) -> Result<Vec<(PathBuf, u64)>, String> {
        match pattern {
            "/cg/onetime@*" => ["/cg/onetime@7041", "/cg/onetime@7042"]
                .iter()
                .map(|path| self.cgroup(path))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    fn netns(&self, path: &str) -> Result<(PathBuf, u64), String> {
        match path.strip_prefix("/ns/") {
            Some(name) => Ok((PathBuf::from(path), fake_key(2000, name))),
            None => Err(format!("network namespace {path:?} does not exist")),
        }
    }
}

/// A made-up kernel key, distinct for distinct names.
fn fake_key(base: u64, name: &str) -> u64 {
    name.bytes().fold(base, |key, byte| {
        key.wrapping_mul(31).wrapping_add(u64::from(byte))
    })
}

fn parse_text(text: &str) -> Result<Policy, PolicyError> {
    parse(Path::new("policy.toml"), text, &FakeHost)
}

/// Asserts that `text` is rejected at `line` for `field` with a message
/// containing `needle`.
#[track_caller]
fn assert_rejected(text: &str, line: usize, field: &str, needle: &str) {
    let error = parse_text(text).expect_err("the policy must be rejected");
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
    assert_eq!(
        desktop.selector,
        Selector::Cgroup {
            path: "/cg/desktop".into(),
            id: fake_key(1000, "desktop")
        }
    );
    let [http, range, dns] = desktop.forwards.as_slice() else {
        panic!("three forwards expected: {:?}", desktop.forwards);
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
    let pod = &policy.scopes[1];
    assert_eq!(
        pod.selector,
        Selector::Netns {
            path: "/ns/pod".into(),
            cookie: fake_key(2000, "pod")
        }
    );
    assert_eq!(
        (pod.forwards[0].rule, pod.forwards[0].from),
        (3, Ports::Every)
    );
}

#[test]
fn an_empty_policy_is_valid() {
    let policy = parse_text("version = 1\n").unwrap();
    assert_eq!((policy.scopes, policy.mss_clamps), (vec![], vec![]));
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
    assert_eq!(policy.scopes[0].forwards[0].port_delta(), 1);
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
fn rejects_more_port_prefixes_than_the_datapath_holds() {
    // 1-65534 takes 30 prefixes per protocol, 60 with both: the 1093rd
    // such forward passes the 65536 entries of the trie.
    let mut text = String::from("version = 1\n");
    for scope in 0..1093 {
        writeln!(
            text,
            "[[scope]]\nname = \"s{scope}\"\nmatch = {{ cgroup = \"/cg/{scope}\" }}\n\
             forward = [{{ from = \"localhost:1-65534\", to = \"10.0.0.1\", proto = \"both\" }}]"
        )
        .unwrap();
    }
    let error = parse_text(&text).unwrap_err();
    assert_eq!(error.field, "scope[1092].forward[0].from", "{error}");
    assert!(error.message.contains("port prefixes"), "{error}");
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
    assert_eq!(parse_text(&split).unwrap().scopes[0].forwards.len(), 2);
}

#[test]
fn rejects_scopes_that_do_not_exist() {
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/nowhere\" }\n",
        4,
        "scope[0].match.cgroup",
        "does not exist",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { netns = \"/run/netns/gone\" }\n",
        4,
        "scope[0].match.netns",
        "does not exist",
    );
}

#[test]
fn rejects_ambiguous_and_duplicate_scopes() {
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\", netns = \"/ns/a\" }\n",
        4,
        "scope[0].match",
        "exactly one of",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/b\" }\n",
        6,
        "scope[1].name",
        "already taken",
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\n[[scope]]\nname = \"b\"\nmatch = { cgroup = \"/cg/a\" }\n",
        7,
        "scope[1].match",
        "already matches",
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
        "already names",
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
    let [gpu, db] = policy.scopes[0].grants.as_slice() else {
        panic!("two grants expected");
    };
    assert_eq!((gpu.service, gpu.rule), (0, 0));
    assert_eq!(gpu.dial, "172.17.0.1:18188".parse().unwrap());
    assert_eq!(
        gpu.gateway,
        "10.210.1.1".parse::<IpAddr>().unwrap(),
        "found from the scope's default route"
    );
    assert_eq!(gpu.sources, vec!["10.210.1.2".parse::<IpAddr>().unwrap()]);
    assert_eq!((db.service, db.gateway), (1, "fd21::99".parse().unwrap()));
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
    let scope = &policy.scopes[0];
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
        "version = 1\n[[scope]]\nname = \"a\"\nmatch = { cgroup = \"/cg/a\" }\nbind = [{ port = 3000, to = 7043 }]\n\
         [[scope]]\nname = \"b\"\nmatch = { cgroup = \"/cg/b\" }\nbind = [{ port = 3000, to = 7043 }]\n",
        9,
        "scope[1].bind[0].to",
        "two scopes cannot get the same port",
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
fn a_glob_scope_gives_each_instance_the_port_in_its_name() {
    let policy = parse_text(
        "version = 1\n[[scope]]\nname = \"onetime\"\nmatch = { cgroup = \"/cg/onetime@*\" }\n\
         bind = [{ port = 3000, to = \"@\" }]\n",
    )
    .unwrap();
    let instances: Vec<(&str, u16)> = policy
        .scopes
        .iter()
        .map(|scope| (scope.name.as_str(), scope.binds[0].to))
        .collect();
    assert_eq!(
        instances,
        [
            ("onetime/onetime@7041", 7041),
            ("onetime/onetime@7042", 7042)
        ]
    );
    assert_ne!(
        policy.scopes[0].binds[0].rule, policy.scopes[1].binds[0].rule,
        "each instance counts on its own"
    );
    assert_rejected(
        "version = 1\n[[scope]]\nname = \"x\"\nmatch = { cgroup = \"/cg/none*\" }\n",
        4,
        "scope[0].match.cgroup",
        "matches no cgroup",
    );
    assert_rejected(
        &with_remaps("bind = [{ port = 3000, to = \"@\" }]"),
        5,
        "scope[0].bind[0].to",
        "glob",
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
