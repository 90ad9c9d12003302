//! Grants and the network changing under them, bind remaps' claims, and
//! what a runtime's hook is answered.

use super::*;

/// A rig with one granted container, its veth 7 on bridge 3.
fn granted_rig() -> (Rig, [Workload; 1]) {
    let mut rig = Rig::new(GRANTED);
    {
        let mut table = rig.table.borrow_mut();
        table.node_addresses = vec!["10.210.1.1".parse().unwrap()];
        table
            .networks
            .insert(ScopeKey::Cgroup(11), container_network("10.210.1.2", 7, 3));
    }
    let workloads = [workload("test/a", 11, None)];
    rig.reconcile(&workloads).unwrap();
    (rig, workloads)
}

#[test]
fn a_grant_admits_the_containers_address_through_its_bridge() {
    let (rig, _) = granted_rig();
    let paths: Vec<(u32, u32)> = rig.grant_paths();
    assert_eq!(paths, [(7, 3)]);
    assert_eq!(rig.maps.held.scope_grants.len(), 1);
}

#[test]
fn a_grant_through_an_interface_that_went_is_resolved_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.214.0.2", 9, 5));
    assert!(!rig.core.withdraw_grants_through(42), "no grant through 42");
    rig.reconcile(&workloads).unwrap();
    let stale: Vec<u32> = rig
        .grant_paths()
        .into_iter()
        .map(|(port, _)| port)
        .collect::<Vec<_>>();
    assert_eq!(stale, [7], "cached until its interface changes");
    assert!(rig.core.withdraw_grants_through(7));
    rig.reconcile(&workloads).unwrap();
    let moved: Vec<(u32, u32)> = rig.grant_paths();
    assert_eq!(moved, [(9, 5)], "the new veth and bridge");
}

#[test]
fn lost_interface_events_resolve_every_grant_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .insert(ScopeKey::Cgroup(11), container_network("10.210.1.9", 8, 3));
    rig.core.withdraw_grants();
    rig.reconcile(&workloads).unwrap();
    assert_eq!(
        rig.grant_paths()
            .into_iter()
            .map(|(port, _)| port)
            .collect::<Vec<_>>(),
        [8]
    );
}

#[test]
fn a_container_whose_networks_changed_is_resolved_again() {
    let (mut rig, workloads) = granted_rig();
    rig.table
        .borrow_mut()
        .networks
        .remove(&ScopeKey::Cgroup(11));
    rig.core.forget_cgroups(&HashSet::from([11]));
    rig.reconcile(&workloads).unwrap();
    assert!(rig.maps.held.grants.is_empty(), "no network, no grant");
    assert!(rig.core.waiting());
}

// Bind remaps: where they claim ports.

#[test]
fn two_instances_in_one_network_cannot_remap_to_the_same_port() {
    let text = "version = 1\n[[scope]]\nname = \"web\"\nmatch = { cgroup = \"test/*\" }\n\
                bind = [{ port = 3000, to = 7000 }]\n";
    let mut rig = Rig::new(text);
    {
        let mut table = rig.table.borrow_mut();
        table.binds_in.insert(ScopeKey::Cgroup(11), BindsIn::Node);
        table.binds_in.insert(ScopeKey::Cgroup(12), BindsIn::Node);
        table
            .binds_in
            .insert(ScopeKey::Cgroup(13), BindsIn::Namespace(99));
    }
    rig.reconcile(&[
        workload("test/a", 11, None),
        workload("test/b", 12, None),
        workload("test/c", 13, None),
    ])
    .unwrap();
    assert_eq!(
        rig.outcomes(),
        [
            ("web/a".to_owned(), true),
            ("web/b".to_owned(), false),
            ("web/c".to_owned(), true)
        ],
        "b would take a's port; c binds in a network of its own"
    );
}

// What a runtime's hook registers: the outcome it is answered with.

#[test]
fn the_deepest_instance_among_a_hooks_cgroups_answers_the_hook() {
    let mut rig = Rig::new(FORWARDS);
    rig.reconcile(&[workload("test/a", 11, None)]).unwrap();
    let keys = [
        ScopeKey::Cgroup(99),
        ScopeKey::Cgroup(11),
        ScopeKey::Cgroup(1),
    ];
    let outcome = rig.core.outcome_of(&keys).unwrap();
    assert_eq!(rig.core.name_of(outcome), "apps/a");
    assert!(rig.core.outcome_of(&[ScopeKey::Cgroup(99)]).is_none());
}

#[test]
fn a_hooked_container_is_in_the_maps_after_one_reconcile() {
    let text = "version = 1\n[[scope]]\nname = \"named\"\nmatch = { container = \"web-*\" }\n\
                forward = [{ from = \"localhost:8082\", to = \"10.0.0.1:8082\" }]\n";
    let mut rig = Rig::new(text);
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    let id = "ab".repeat(32);
    let path = format!("test/docker-{id}.scope");
    inventory.add_workload(PathBuf::from(&path), 21);
    rig.reconcile(&inventory.workloads()).unwrap();
    assert!(rig.maps.held.cgroup_scopes.is_empty(), "no name, no match");
    inventory.hooked(docker_container(&id, "web-1"), true);
    rig.reconcile(&inventory.workloads()).unwrap();
    assert_eq!(rig.scoped(), [(21, 0)]);
}
