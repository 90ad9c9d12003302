use std::path::Path;

use netbpf_common::PROTO_UDP;

use super::*;
use crate::{containers::Container, policy};

fn workload(path: &str, id: u64, name: Option<&str>) -> Workload {
    Workload {
        cgroup: PathBuf::from(path),
        cgroup_id: id,
        container: name.map(|name| Container {
            runtime: None,
            id: format!("{id:064x}"),
            name: Some(name.to_owned()),
            labels: BTreeMap::new(),
            pod: None,
        }),
    }
}

fn policy(text: &str) -> Policy {
    policy::parse(Path::new("p.toml"), text).unwrap()
}

/// The facts of an instance whose rules need none.
pub(super) struct NoFacts;

impl policy::Facts for NoFacts {
    fn network(&self) -> Result<policy::ScopeNetwork, String> {
        Err("none".into())
    }
    fn node_addresses(&self) -> Result<Vec<IpAddr>, String> {
        Err("none".into())
    }
    fn bound_ports(&self) -> Result<Vec<(u8, u16)>, String> {
        Ok(Vec::new())
    }
}

/// Resolves every assignment's rules without host facts (its rules need
/// none).
fn resolved(policy: &Policy, assignments: Vec<Assignment>) -> Vec<Resolved> {
    assignments
        .into_iter()
        .map(|assignment| {
            let rules = policy.scopes[assignment.scope]
                .instantiate(
                    &policy.host_services,
                    policy::Instance {
                        name: &assignment.instance,
                        captures: &assignment.captures,
                        labels: &BTreeMap::new(),
                    },
                    &NoFacts,
                )
                .map_err(|error| error.to_string());
            Resolved {
                assignment,
                rules,
                network: None,
            }
        })
        .collect()
}

/// The plan of `workloads` under `policy`, compiled with no ids or slots
/// given before.
fn plan_afresh(policy: &Policy, workloads: &[Workload]) -> Plan {
    let assigned = assign(policy, workloads, Path::new("/"), 0);
    compile(
        policy,
        resolved(policy, assigned),
        &mut ScopeIds::default(),
        &mut RuleSlots::default(),
        &Capacity::default(),
    )
    .0
}

/// The counter slots of the forwards flagged to keep nothing at connect,
/// found by port or by cgroup.
fn derived_rules(plan: &Plan) -> BTreeSet<u32> {
    let by_cgroup = plan.cgroup_forwards.values().map(|forward| &forward.target);
    plan.forward_ports
        .values()
        .chain(by_cgroup)
        .filter(|target| target.derives_peer())
        .map(|target| target.rule)
        .collect()
}

#[test]
fn each_workload_gets_the_first_scope_that_selects_it() {
    let policy = policy(
        "version = 1\n[[scope]]\nname = \"named\"\nmatch = { container = \"web-{n}\" }\n\
         [[scope]]\nname = \"tree\"\nmatch = { cgroup = \"test/*\" }\n",
    );
    let workloads = [
        workload("test/a", 1, Some("web-1")),
        workload("test/b", 2, None),
        workload("test/b/deeper", 3, None),
        workload("other", 4, Some("db")),
    ];
    let assigned = assign(&policy, &workloads, Path::new("/sys/fs/cgroup"), 0);
    let summary: Vec<(usize, ScopeKey, &str)> = assigned
        .iter()
        .map(|found| (found.scope, found.key, found.instance.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (0, ScopeKey::Cgroup(1), "web-1"),
            (1, ScopeKey::Cgroup(2), "b")
        ]
    );
    assert_eq!(assigned[0].captures["n"], "1");
    let levels: Vec<u16> = assigned.iter().map(|found| found.level).collect();
    assert_eq!(levels, [2, 2]);
    // A mount of a subtree three levels deep: the kernel counts from the
    // hierarchy's root.
    let assigned = assign(&policy, &workloads, Path::new("/sys/fs/cgroup"), 3);
    let levels: Vec<u16> = assigned.iter().map(|found| found.level).collect();
    assert_eq!(levels, [5, 5]);
}

#[test]
fn a_later_instance_that_conflicts_fails_alone() {
    let policy = policy(
        "version = 1\n[[scope]]\nname = \"w\"\nmatch = { container = \"w-*\" }\n\
         bind = [{ port = 3000, to = 7000 }]\nforward = [{ from = \"localhost:1-65534\", to = \"10.0.0.1\" }]\n",
    );
    let workloads = [workload("a", 1, Some("w-a")), workload("b", 2, Some("w-b"))];
    let assigned = assign(&policy, &workloads, Path::new("/"), 0);
    let mut ids = ScopeIds::default();
    let mut slots = RuleSlots::default();
    let (plan, outcomes) = compile(
        &policy,
        resolved(&policy, assigned.clone()),
        &mut ids,
        &mut slots,
        &Capacity::default(),
    );
    assert!(outcomes[0].applied.is_ok());
    let error = outcomes[1].applied.as_ref().unwrap_err();
    assert!(error.contains("w/w-a has that port already"), "{error}");
    assert_eq!(
        plan.cgroup_scopes.len(),
        1,
        "nothing of the failed instance is in the plan"
    );
    assert_eq!(
        slots.take_fresh().len(),
        2,
        "a slot for each rule of the applied instance"
    );

    // A full map fails the instance that would overflow it, by name.
    let small = Capacity {
        forward_prefixes: 20,
        ..Capacity::default()
    };
    let (_, outcomes) = compile(
        &policy,
        resolved(&policy, assigned),
        &mut ids,
        &mut slots,
        &small,
    );
    let error = outcomes[0].applied.as_ref().unwrap_err();
    assert!(error.contains("map FORWARDS is full"), "{error}");
}

#[test]
fn remaps_claim_ports_in_their_own_network_namespace() {
    let policy = policy(
        "version = 1\n[[scope]]\nname = \"w\"\nmatch = { container = \"w-*\" }\n\
         bind = [{ port = 80, to = 8080 }]\n",
    );
    let workloads = [workload("a", 1, Some("w-a")), workload("b", 2, Some("w-b"))];
    let mut resolved = resolved(&policy, assign(&policy, &workloads, Path::new("/"), 0));
    resolved[0].network = Some(1001);
    resolved[1].network = Some(1002);
    let (_, outcomes) = compile(
        &policy,
        resolved,
        &mut ScopeIds::default(),
        &mut RuleSlots::default(),
        &Capacity::default(),
    );
    assert!(
        outcomes.iter().all(|outcome| outcome.applied.is_ok()),
        "{outcomes:?}"
    );
}

#[test]
fn ids_and_slots_stay_while_their_instance_does() {
    let policy = policy(
        "version = 1\n[[scope]]\nname = \"w\"\nmatch = { container = \"w-*\" }\n\
         forward = [{ from = \"localhost:80\", to = \"10.0.0.1\" }]\n",
    );
    let mut ids = ScopeIds::default();
    let mut slots = RuleSlots::default();
    let mut compiled = |workloads: &[Workload]| {
        let assigned = assign(&policy, workloads, Path::new("/"), 0);
        let (_, outcomes) = compile(
            &policy,
            resolved(&policy, assigned),
            &mut ids,
            &mut slots,
            &Capacity::default(),
        );
        outcomes
            .into_iter()
            .map(|outcome| {
                let (id, scope) = outcome.applied.unwrap();
                (outcome.assignment.instance, id, scope.forwards[0].rule)
            })
            .collect::<Vec<_>>()
    };
    let first = compiled(&[workload("a", 1, Some("w-a"))]);
    let both = compiled(&[workload("a", 1, Some("w-a")), workload("b", 2, Some("w-b"))]);
    assert_eq!(both[0], first[0], "w-a keeps its id and slot");
    assert_ne!((both[1].1, both[1].2), (first[0].1, first[0].2));
    let after = compiled(&[workload("b", 2, Some("w-b"))]);
    assert_eq!(after[0], both[1], "w-b keeps its id and slot when w-a goes");
}

/// A TCP forward that alone reaches its target in its scope gets its peer
/// derived (its connects keep nothing), for each instance of the scope by
/// its cgroup; two forwards to one target, a UDP forward and the forwards
/// of a scope with port ranges do not.
#[test]
fn a_forward_alone_at_its_target_gets_its_peer_derived() {
    let policy = policy(
        "version = 1\n\
         [[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nforward = [\n\
           { from = \"localhost:8082\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:8083\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:8090\", to = \"10.0.0.1:90\" },\n\
           { from = \"localhost:5353\", to = \"10.0.0.1:53\", proto = \"udp\" },\n\
         ]\n\
         [[scope]]\nname = \"r\"\nmatch = { container = \"r\" }\nforward = [\n\
           { from = \"localhost:8090\", to = \"10.0.0.2:90\" },\n\
           { from = \"localhost:9000-9010\", to = \"10.0.0.2:9000-9010\" },\n\
         ]\n",
    );
    let workloads = [
        workload("a", 1, Some("a")),
        workload("r", 2, Some("r")),
        workload("a2", 3, Some("a")),
    ];
    let plan = plan_afresh(&policy, &workloads);
    let derived: Vec<_> = plan
        .derived_peers
        .iter()
        .map(|(key, derived)| {
            (
                key.instance,
                key.peer.addr[0].to_ne_bytes(),
                u16::from_be(key.peer.port),
                u16::from_be(derived.port),
            )
        })
        .collect();
    assert_eq!(
        derived,
        [(1, [10, 0, 0, 1], 90, 8090), (3, [10, 0, 0, 1], 90, 8090)]
    );
    // Each instance counts on its own forward's slot.
    let slots: BTreeSet<u32> = plan.derived_peers.values().map(|peer| peer.rule).collect();
    assert_eq!(slots.len(), 2);
    assert_eq!(derived_rules(&plan), slots);
}

/// The lookups' filter of rewritten peers holds every target a socket
/// may have been sent to (exact forwards, each port of a range, aliases,
/// derived peers among them) and rules out a peer no rule reaches; an
/// own service's localhost target is left to the programs.
#[test]
fn every_rewrite_target_is_in_the_filter_of_rewritten_peers() {
    let policy = policy(
        "version = 1\n\
         [[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nforward = [\n\
           { from = \"localhost:8082\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:8090\", to = \"10.0.0.1:90\" },\n\
           { from = \"localhost:5353\", to = \"10.0.0.1:53\", proto = \"udp\" },\n\
           { from = \"localhost:9000-9010\", to = \"10.0.0.2:7000-7010\" },\n\
         ]\n\
         alias = [{ from = \"10.96.0.10:53\", to = \"10.0.0.53:5300\", proto = \"both\" }]\n\
         bind = [{ port = 3000, to = 7000 }]\n",
    );
    let plan = plan_afresh(&policy, &[workload("a", 1, Some("a"))]);
    let lookups = plan.lookups();
    let may = |addr: [u8; 4], port: u16| {
        lookups.may_be_rewritten_peer(&[u32::from_ne_bytes(addr), 0, 0, 0], port.to_be())
    };
    for (addr, port) in [
        ([10, 0, 0, 1], 80),
        ([10, 0, 0, 1], 90),
        ([10, 0, 0, 1], 53),
        ([10, 0, 0, 2], 7000),
        ([10, 0, 0, 2], 7010),
        ([10, 0, 0, 53], 5300),
    ] {
        assert!(may(addr, port), "{addr:?}:{port}");
    }
    assert!(!may([10, 0, 0, 1], 25), "a peer no rule reaches");
    assert!(
        !may([127, 0, 0, 1], 7000),
        "an own service's localhost target is left to the programs"
    );
}

/// A network namespace instance's derived peers are keyed by its cookie,
/// marked as one.
#[test]
fn a_network_namespace_instance_is_marked_in_its_keys() {
    assert_eq!(ScopeKey::Cgroup(4096).instance(), 4096);
    assert_eq!(ScopeKey::Netns(4096).instance(), 4096 | INSTANCE_NETNS);
}

/// Every exact-port forward of a cgroup scope is also keyed by its cgroup,
/// with its scope id: the connect's one lookup. Port ranges are not.
#[test]
fn exact_forwards_of_cgroup_scopes_are_keyed_by_cgroup() {
    let policy = policy(
        "version = 1\n\
         [[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nforward = [\n\
           { from = \"localhost:8082\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:9000-9010\", to = \"10.0.0.2:9000-9010\" },\n\
         ]\n",
    );
    let workloads = [workload("a", 7, Some("a"))];
    let plan = plan_afresh(&policy, &workloads);
    let (&key, forward) = plan.cgroup_forwards.iter().next().unwrap();
    assert_eq!(plan.cgroup_forwards.len(), 1, "{:?}", plan.cgroup_forwards);
    assert_eq!(key, CgroupPort::new(7, 8082, PROTO_TCP));
    let scope = plan.cgroup_scopes[&7].id;
    assert_eq!(forward.scope, scope);
    assert_eq!(
        Some(&forward.target),
        plan.forward_ports
            .get(&ScopePort::new(scope, 8082, PROTO_TCP))
    );
}

/// The maps keyed by instance (`CGROUP_FORWARDS`, `DERIVED_PEERS`) share
/// `FORWARD_PORTS`' capacity and hold at most an entry per entry of it:
/// scope ids are per instance, so checking `FORWARD_PORTS` fails the
/// instance that would overflow any of the three, by name, before an
/// update does.
#[test]
fn instance_keyed_maps_fit_wherever_their_forward_ports_do() {
    let policy = policy(
        "version = 1\n\
         [[scope]]\nname = \"w\"\nmatch = { container = \"w-*\" }\nforward = [\n\
           { from = \"localhost:8080\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:5432\", to = \"10.0.0.1:5432\" },\n\
           { from = \"localhost:5353\", to = \"10.0.0.1:53\", proto = \"udp\" },\n\
         ]\nbind = [{ port = 3000, to = 7000 }]\n",
    );
    let one = plan_afresh(&policy, &[workload("a", 1, Some("w-a"))]);
    let per_instance = one.forward_ports.len();
    let workloads = [
        workload("a", 1, Some("w-a")),
        workload("b", 2, Some("w-b")),
        workload("c", 3, Some("w-c")),
    ];
    let two = Capacity {
        forward_ports: u32::try_from(2 * per_instance).unwrap(),
        ..Capacity::default()
    };
    let mut resolved = resolved(&policy, assign(&policy, &workloads, Path::new("/"), 0));
    for (instance, network) in resolved.iter_mut().zip(1001..) {
        instance.network = Some(network);
    }
    let (plan, outcomes) = compile(
        &policy,
        resolved,
        &mut ScopeIds::default(),
        &mut RuleSlots::default(),
        &two,
    );
    assert!(outcomes[..2].iter().all(|outcome| outcome.applied.is_ok()));
    let error = outcomes[2].applied.as_ref().unwrap_err();
    assert!(error.contains("map FORWARD_PORTS is full"), "{error}");
    assert_eq!(plan.forward_ports.len(), 2 * per_instance);
    assert_eq!(plan.cgroup_forwards.len(), plan.forward_ports.len());
    assert_eq!(plan.derived_peers.len(), 4, "{:?}", plan.derived_peers);
}

/// The set of forwarded localhost ports holds every port a forward of
/// one port, a range or a localhost bind remap leads somewhere from, and
/// no other: binds and connects to any other port stop at its bit.
#[test]
fn the_localhost_ports_are_those_some_scope_forwards_or_remaps() {
    let policy = policy(
        "version = 1\n\
         [[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\nforward = [\n\
           { from = \"localhost:8082\", to = \"10.0.0.1:80\" },\n\
           { from = \"localhost:9000-9010\", to = \"10.0.0.2:9000-9010\", proto = \"udp\" },\n\
         ]\nbind = [{ port = 3000, to = 7000 }]\n\
         [[scope]]\nname = \"b\"\nmatch = { container = \"b\" }\n\
         forward = [{ from = \"localhost:5432\", to = \"10.0.0.3:5432\" }]\n",
    );
    let workloads = [workload("a", 7, Some("a")), workload("b", 8, Some("b"))];
    let plan = plan_afresh(&policy, &workloads);
    let forwarded: Vec<u16> = (0..=u16::MAX)
        .filter(|&port| plan.localhost_ports.contains(port))
        .collect();
    let mut expected = vec![3000, 5432, 8082];
    expected.extend(9000..=9010);
    expected.sort_unstable();
    assert_eq!(forwarded, expected);
}

/// A derived peer stays what live sockets derived while its instance
/// lives: a forward moved to another port keeps storage instead, a
/// forward removed leaves its peer; the instance gone, its peers go.
#[test]
fn derived_peers_stay_what_live_sockets_derived() {
    let forwarding = |port| {
        policy(&format!(
            "version = 1\n[[scope]]\nname = \"a\"\nmatch = {{ container = \"a\" }}\n\
             forward = [{{ from = \"localhost:{port}\", to = \"10.0.0.1:90\" }}]\n\
             [[scope]]\nname = \"b\"\nmatch = {{ container = \"b\" }}\n"
        ))
    };
    let mut ids = ScopeIds::default();
    let mut slots = RuleSlots::default();
    let mut plan_of = |policy: &Policy, name: &str| {
        let cgroup = if name == "a" { 1 } else { 2 };
        let workloads = [workload(name, cgroup, Some(name))];
        let assigned = assign(policy, &workloads, Path::new("/"), 0);
        compile(
            policy,
            resolved(policy, assigned),
            &mut ids,
            &mut slots,
            &Capacity::default(),
        )
        .0
    };
    let ports = |plan: &Plan| -> Vec<u16> {
        plan.derived_peers
            .values()
            .map(|peer| u16::from_be(peer.port))
            .collect()
    };
    let first = plan_of(&forwarding(8090), "a");
    assert_eq!(ports(&first), [8090]);

    let mut moved = plan_of(&forwarding(8091), "a");
    assert_eq!(moved.keep_derived_peers(&first, 10), 0);
    assert_eq!(ports(&moved), [8090], "the live sockets' port stays");
    assert!(
        derived_rules(&moved).is_empty(),
        "the moved forward keeps storage"
    );

    let mut removed = plan_of(
        &policy("version = 1\n[[scope]]\nname = \"a\"\nmatch = { container = \"a\" }\n"),
        "a",
    );
    removed.keep_derived_peers(&moved, 10);
    assert_eq!(ports(&removed), [8090], "a removed forward leaves its peer");
    let mut full = removed.clone();
    full.derived_peers.clear();
    assert_eq!(
        full.keep_derived_peers(&removed, 0),
        1,
        "no room: not kept, and said"
    );

    let mut gone = plan_of(&forwarding(8090), "b");
    gone.keep_derived_peers(&removed, 10);
    assert!(
        gone.derived_peers.is_empty(),
        "the instance gone, its peers go"
    );
}

#[test]
fn targets_are_stored_in_network_order() {
    let (words, family) = target_words("10.200.1.1".parse().unwrap());
    assert_eq!(family, AF_INET);
    assert_eq!(words[0].to_ne_bytes(), [10, 200, 1, 1]);
    let (words, family) = target_words("fd00::53".parse().unwrap());
    assert_eq!(family, AF_INET6);
    assert_eq!(words[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
    assert_eq!(words[3].to_ne_bytes(), [0, 0, 0, 0x53]);
    // And back, IPv4-mapped addresses as IPv4.
    for addr in ["10.200.1.1", "fd00::53"] {
        let (words, family) = target_words(addr.parse().unwrap());
        assert_eq!(ip_of(words, family).to_string(), addr);
    }
    let (words, family) = target_words("::ffff:10.0.0.1".parse().unwrap());
    assert_eq!(ip_of(words, family).to_string(), "10.0.0.1");
}

#[test]
fn cgroup_levels_count_directories_below_the_mount() {
    let mount = Path::new("/sys/fs/cgroup");
    assert_eq!(
        super::cgroup_level(
            mount,
            Path::new("/sys/fs/cgroup/system.slice/docker-1.scope")
        ),
        2
    );
    assert_eq!(
        super::cgroup_level(mount, Path::new("system.slice/docker-1.scope")),
        2
    );
    assert_eq!(super::cgroup_level(mount, Path::new("/sys/fs/cgroup")), 0);
}

#[test]
fn lookups_name_the_levels_and_kinds_of_scope_present() {
    let mut plan = Plan::default();
    assert_eq!(plan.lookups(), Lookups::new(0, 0, 0));
    let scope = |id, level| ScopeEntry {
        id,
        flags: 0,
        level,
    };
    plan.cgroup_scopes.insert(10, scope(0, 2));
    plan.cgroup_scopes.insert(11, scope(1, 5));
    plan.netns_scopes.insert(4096, scope(2, 0));
    assert_eq!(
        plan.lookups(),
        Lookups::new(1 << 2 | 1 << 5, LOOKUP_NETNS_SCOPES, 0)
    );
}

#[test]
fn scopes_sit_at_eight_cgroup_depths_at_most() {
    let mut plan = Plan::default();
    for level in 1..=8u16 {
        assert_eq!(
            super::check_level(plan.lookups().cgroup_levels, ScopeKey::Cgroup(1), level),
            Ok(())
        );
        plan.cgroup_scopes.insert(
            u64::from(level),
            ScopeEntry {
                id: u32::from(level),
                flags: 0,
                level,
            },
        );
    }
    assert_eq!(
        super::check_level(plan.lookups().cgroup_levels, ScopeKey::Cgroup(1), 3),
        Ok(())
    );
    let error =
        super::check_level(plan.lookups().cgroup_levels, ScopeKey::Cgroup(1), 9).unwrap_err();
    assert!(error.contains("9 levels deep"), "{error}");
    assert!(super::check_level(plan.lookups().cgroup_levels, ScopeKey::Cgroup(1), 64).is_err());
}

#[test]
fn each_scope_reserves_its_forwarded_ports_in_the_local_binds_table_up_to_a_limit() {
    let policy = policy(
        "version = 1\n[[scope]]\nname = \"w\"\nmatch = { container = \"w-*\" }\n\
         forward = [{ from = \"localhost:9000-9099\", to = \"10.0.0.1\" }, \
         { from = \"localhost:8082\", to = \"10.0.0.1:80\", proto = \"udp\" }]\n",
    );
    let workloads = [workload("a", 1, Some("w-a")), workload("b", 2, Some("w-b"))];
    let assigned = assign(&policy, &workloads, Path::new("/"), 0);
    let (mut ids, mut slots) = (ScopeIds::default(), RuleSlots::default());
    let (plan, outcomes) = compile(
        &policy,
        resolved(&policy, assigned.clone()),
        &mut ids,
        &mut slots,
        &Capacity::default(),
    );
    let id = outcomes[0].applied.as_ref().unwrap().0;
    for (port, protocol, forwarded) in [
        (9000, PROTO_TCP, true),
        (9099, PROTO_TCP, true),
        (9100, PROTO_TCP, false),
        (8999, PROTO_TCP, false),
        (8082, PROTO_UDP, true),
        (8082, PROTO_TCP, false),
    ] {
        assert_eq!(
            plan.forwards_port(ScopePort::new(id, port, protocol)),
            forwarded,
            "{protocol}/{port}"
        );
    }
    assert_eq!(plan.local_binds_reserved(16), 32, "16 of 101 ports each");
    assert_eq!(plan.local_binds_reserved(1000), 202);
    assert_eq!(plan.lookups().local_binds_per_scope, 16);

    // The second instance's reservation would not fit beside the first's.
    let small = Capacity {
        local_binds: 20,
        ..Capacity::default()
    };
    let (_, outcomes) = compile(
        &policy,
        resolved(&policy, assigned),
        &mut ids,
        &mut slots,
        &small,
    );
    assert!(outcomes[0].applied.is_ok());
    let error = outcomes[1].applied.as_ref().unwrap_err();
    assert!(error.contains("map LOCAL_BINDS is full"), "{error}");
}

/// A rule kept under the same key with another target moved: the old
/// plan's slot and target name its sockets; a rule whose target stays, a
/// new rule and a dropped one did not move.
#[test]
fn rules_whose_targets_change_are_moved_with_their_old_target() {
    let policy_of = |forward_to: &str, alias_to: &str, on_move: &str| {
        policy(&format!(
            "version = 1\n[[scope]]\nname = \"w\"\nmatch = {{ container = \"w\" }}\n\
             forward = [\n  {{ from = \"localhost:5432\", to = \"{forward_to}\"{on_move} }},\n  \
             {{ from = \"localhost:9000-9001\", to = \"10.0.0.9\" }},\n]\n\
             alias = [{{ from = \"10.96.0.10:53\", to = \"{alias_to}\", proto = \"both\" }}]\n",
        ))
    };
    let workloads = [workload("w", 1, Some("w"))];
    let mut ids = ScopeIds::default();
    let mut slots = RuleSlots::default();
    let mut compiled = |policy: &Policy| {
        let assigned = assign(policy, &workloads, Path::new("/"), 0);
        let resolved = resolved(policy, assigned);
        compile(policy, resolved, &mut ids, &mut slots, &Capacity::default()).0
    };
    let before = compiled(&policy_of("10.0.0.1:5432", "10.0.0.53:53", ""));
    let same = compiled(&policy_of("10.0.0.1:5432", "10.0.0.53:53", ""));
    assert_eq!(same.moved_since(&before), Vec::new());

    let after = compiled(&policy_of(
        "10.0.0.2:6432",
        "10.0.0.54",
        ", on_move = \"reset\"",
    ));
    let forward = before.forward_ports[&ScopePort::new(0, 5432, PROTO_TCP)];
    let alias_rule = |plan: &Plan| plan.aliases.values().next().unwrap().rule;
    let old: SocketAddr = "10.0.0.1:5432".parse().unwrap();
    let old_alias: SocketAddr = "10.0.0.53:53".parse().unwrap();
    let moved = after.moved_since(&before);
    assert_eq!(
        moved,
        vec![
            Moved {
                scope: 0,
                protocol: PROTO_TCP,
                rule: forward.rule,
                old_target: old,
                // A scope with a range of ports derives no peer.
                derived_peer: false,
                reset_tcp: true,
            },
            Moved {
                scope: 0,
                protocol: PROTO_TCP,
                rule: alias_rule(&before),
                old_target: old_alias,
                derived_peer: false,
                reset_tcp: false,
            },
            Moved {
                scope: 0,
                protocol: PROTO_UDP,
                rule: alias_rule(&before),
                old_target: old_alias,
                derived_peer: false,
                reset_tcp: false,
            },
        ]
    );
    assert!(moved[2].destroys() && moved[0].destroys() && !moved[1].destroys());
    assert!(moved[1].reached("[::ffff:10.0.0.53]:53".parse().unwrap()));
    assert!(!moved[1].reached("10.0.0.53:54".parse().unwrap()));
}
