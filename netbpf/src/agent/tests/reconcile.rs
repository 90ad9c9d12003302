//! The reconcile: what the maps hold, across restarts, failures, full maps,
//! reloads, and instances that wait.

use super::*;

#[test]
fn a_matching_cgroup_gets_its_scope_and_its_forward_in_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
    assert_eq!(rig.outcomes(), [("apps/a".to_owned(), true)]);
}

#[test]
fn a_cgroup_no_scope_matches_leaves_the_maps_empty() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("other/a", 11, None)]).unwrap();
    assert!(holds_nothing(&rig.maps.held), "{:?}", rig.maps.held);
    assert!(rig.core.outcomes.is_empty());
}

#[test]
fn a_cgroup_that_goes_leaves_nothing_in_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.scoped(), [(12, 1)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
    assert!(
        rig.maps.held.forward_ports.keys().all(|key| key.scope == 1),
        "only b's forward is left"
    );
}

#[test]
fn a_scope_keeps_its_id_while_others_come_and_go() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    rig.reconcile(&[workload("test/b", 12, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(
        rig.scoped(),
        [(12, 1), (13, 2)],
        "ids are never reused at once"
    );
}

#[test]
fn the_same_plan_twice_is_one_update_each_and_nothing_new_to_count() {
    let mut rig = Rig::new(FORWARDS);
    let first = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let second = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(
        first.len(),
        1,
        "a new instance: its bound sockets are counted"
    );
    assert!(second.is_empty(), "nothing new the second time");
    assert_eq!(rig.maps.updates, 2);
}

#[test]
fn the_places_of_new_instances_are_returned_for_their_bound_sockets() {
    let mut rig = Rig::new(FORWARDS);
    let places = rig
        .reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let paths: Vec<&Path> = places.iter().map(|place| place.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            Path::new("/sys/fs/cgroup/test/a"),
            Path::new("/sys/fs/cgroup/test/b")
        ]
    );
}

#[test]
fn an_instance_forwarding_more_ports_after_a_reload_is_returned_again() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.core.replace_policy(policy(&FORWARDS.replace(
        "forward = [",
        "forward = [{ from = \"localhost:9000\", to = \"10.0.0.1:9000\" }, ",
    )));
    let places = rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(places.len(), 1);
    assert_eq!(rig.maps.held.forward_ports.len(), 2);
}

#[test]
fn new_rules_get_their_counters_zeroed_once() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    assert_eq!(rig.maps.zeroed, [0, 1], "one slot per new rule, once each");
}

#[test]
fn the_rule_slots_are_kept_for_the_next_agent() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let slots: Vec<u32> = rig.maps.slots.values().copied().collect();
    assert_eq!(slots, [0, 1]);
}

// Restart: adoption of what an earlier agent left.

#[test]
fn a_restarted_agent_keeps_the_scope_ids_and_counter_slots() {
    let mut first = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None), workload("test/b", 12, None)];
    first.reconcile(&workloads[1..]).unwrap();
    first.reconcile(&workloads).unwrap();
    let (held, slots) = (first.maps.held.clone(), first.maps.slots.clone());

    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    let places = second.reconcile(&workloads).unwrap();
    assert_eq!(second.maps.held, held, "the same entries, the same ids");
    assert_eq!(second.maps.slots, slots);
    assert!(second.maps.zeroed.len() == 2, "no counter zeroed again");
    assert!(places.is_empty(), "no instance is new to the maps");
}

#[test]
fn a_restarted_agent_drops_what_went_while_no_agent_ran() {
    let mut first = Rig::new(FORWARDS);
    first
        .reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    second.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(second.scoped(), [(12, 1)]);
}

#[test]
fn a_restarted_agent_numbers_new_scopes_after_the_adopted_ones() {
    let mut first = Rig::new(FORWARDS);
    first.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let mut second = Rig::adopting(FORWARDS, Capacity::default(), first.maps);
    second
        .reconcile(&[workload("test/a", 11, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(second.scoped(), [(11, 0), (13, 1)]);
}

// Failures, and their undoing.

#[test]
fn a_failed_update_is_undone_and_the_plan_stays_the_old_one() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let before = rig.maps.held.clone();
    rig.maps.fail_next(Operation::Update);
    let failed = rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)]);
    assert!(failed.is_err());
    assert_eq!(rig.maps.held, before, "the half-written update was undone");
    assert_eq!(rig.core.plan, before);
    assert_eq!(rig.outcomes(), [("apps/a".to_owned(), true)]);
}

#[test]
fn an_update_whose_undo_fails_too_starts_again_from_what_the_maps_hold() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    rig.maps.fail_next(Operation::Update);
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&[workload("test/b", 12, None)]).is_err());
    assert_eq!(
        rig.core.plan, rig.maps.held,
        "the agent's view is what the maps hold, read back"
    );
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.scoped(), [(12, 1)]);
    assert_eq!(rig.maps.held.forward_ports.len(), 1);
}

#[test]
fn after_a_failed_update_the_next_reconcile_applies_it() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&[workload("test/a", 11, None)]).is_err());
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
}

#[test]
fn a_failed_reset_of_counters_touches_no_map() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::ResetRuleStats);
    assert!(rig.reconcile(&[workload("test/a", 11, None)]).is_err());
    assert_eq!(rig.maps.updates, 0);
    assert!(rig.core.outcomes.is_empty());
}

#[test]
fn rule_slots_not_kept_leave_the_plan_applied() {
    let mut rig = Rig::new(FORWARDS);
    rig.maps.fail_next(Operation::WriteRuleSlots);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert!(rig.maps.slots.is_empty());
}

// Full maps.

#[test]
fn a_full_map_refuses_the_instances_beyond_it_naming_map_and_setting() {
    let capacity = Capacity {
        scopes: 1,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    assert_eq!(rig.scoped(), [(11, 0)]);
    assert_eq!(
        rig.outcomes(),
        [("apps/a".to_owned(), true), ("apps/b".to_owned(), false)]
    );
    let refusal = rig.refusal();
    assert!(
        refusal.contains("CGROUP_SCOPES") && refusal.contains("capacity.scopes"),
        "{refusal}"
    );
    assert!(rig.core.waiting(), "a refused instance is tried again");
}

#[test]
fn a_full_map_takes_a_replacement_in_one_update() {
    let capacity = Capacity {
        scopes: 2,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None), workload("test/c", 13, None)])
        .unwrap();
    assert_eq!(rig.scoped(), [(12, 1), (13, 2)]);
    assert!(rig.outcomes().iter().all(|(_, applied)| *applied));
}

#[test]
fn an_instance_refused_for_a_full_map_gets_in_once_another_goes() {
    let capacity = Capacity {
        scopes: 1,
        ..Capacity::default()
    };
    let mut rig = Rig::with_capacity(FORWARDS, capacity);
    rig.reconcile(&[workload("test/a", 11, None), workload("test/b", 12, None)])
        .unwrap();
    rig.reconcile(&[workload("test/b", 12, None)]).unwrap();
    assert_eq!(rig.outcomes(), [("apps/b".to_owned(), true)]);
    assert!(!rig.core.waiting());
}

// Reloads.

#[test]
fn a_reload_replaces_the_rules_of_every_instance() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    rig.core
        .replace_policy(policy(&FORWARDS.replace("10.0.0.1:8082", "10.0.0.2:8082")));
    rig.reconcile(&workloads).unwrap();
    let target = rig.maps.held.forward_ports.values().next().unwrap();
    assert_eq!(target.addr[0], u32::from_ne_bytes([10, 0, 0, 2]));
}

#[test]
fn a_reload_that_cannot_be_applied_puts_the_running_policy_back() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    let before = rig.maps.held.clone();
    let replaced = rig
        .core
        .replace_policy(policy(&FORWARDS.replace("10.0.0.1:8082", "10.0.0.2:8082")));
    rig.maps.fail_next(Operation::Update);
    assert!(rig.reconcile(&workloads).is_err());
    rig.core.put_back(replaced);
    rig.reconcile(&workloads).unwrap();
    assert_eq!(rig.maps.held, before);
}

#[test]
fn a_reload_to_a_policy_matching_nothing_empties_the_maps() {
    let mut rig = Rig::new(FORWARDS);
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    rig.core.replace_policy(policy("version = 1\n"));
    rig.reconcile(&workloads).unwrap();
    assert!(holds_nothing(&rig.maps.held), "{:?}", rig.maps.held);
}

// Network namespaces, and instances that wait.

#[test]
fn a_netns_scope_applies_once_its_namespace_exists() {
    let text = "version = 1\n[[scope]]\nname = \"desk\"\nmatch = { netns = \"/run/netns/desk\" }\n\
                forward = [{ from = \"localhost:8082\", to = \"10.0.0.1:8082\" }]\n";
    let mut rig = Rig::new(text);
    rig.reconcile(&[]).unwrap();
    assert!(rig.maps.held.netns_scopes.is_empty());
    assert!(rig.core.waiting(), "a netns scope with no instance waits");
    rig.table
        .borrow_mut()
        .namespaces
        .insert(PathBuf::from("/run/netns/desk"), 4096);
    rig.reconcile(&[]).unwrap();
    assert_eq!(
        rig.maps
            .held
            .netns_scopes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [4096]
    );
    assert!(!rig.core.waiting());
}

#[test]
fn a_failing_instance_is_listed_with_its_reason_until_it_applies() {
    let mut rig = Rig::new(GRANTED);
    rig.table.borrow_mut().node_addresses = vec!["10.210.1.1".parse().unwrap()];
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    let failing = rig.core.failing();
    assert!(
        failing[0].contains("Cgroup(11)") && failing[0].contains("no process"),
        "{failing:?}"
    );
    assert!(rig.core.waiting());
    // Its process runs now: the facts are there, the cached failure is
    // forgotten on the retry.
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.210.1.2", 7, 3));
    rig.core.forget_failed();
    rig.reconcile(&workloads).unwrap();
    assert!(!rig.core.waiting(), "{:?}", rig.core.failing());
    assert_eq!(rig.maps.held.grants.len(), 1);
}
