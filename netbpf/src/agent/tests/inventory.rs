//! The inventory of what runs: runtimes' descriptions, hooks kept across
//! agents, subtrees and resyncs.

use super::*;

#[test]
fn a_runtimes_cgroup_is_known_as_its_container() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    let (path, id) = docker_cgroup(1);
    inventory.add_workload(path, 5);
    inventory.add_workload(PathBuf::from("test/plain"), 6);
    let workloads = inventory.workloads();
    assert_eq!(workloads.len(), 2);
    let container = workloads[0].container.as_ref().unwrap();
    assert_eq!(
        (container.runtime, container.id.as_str()),
        (Some(Runtime::Docker), id.as_str())
    );
    assert!(workloads[1].container.is_none());
}

#[test]
fn what_a_runtime_says_names_its_containers_until_they_go() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    let (path, id) = docker_cgroup(2);
    inventory.add_workload(path, 5);
    inventory.follow_runtime(EngineEvent::Known(docker_container(&id, "web-1")));
    let name = |inventory: &Inventory| {
        inventory.workloads()[0]
            .container
            .as_ref()
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(name(&inventory).as_deref(), Some("web-1"));
    inventory.follow_runtime(EngineEvent::Gone(id));
    assert_eq!(name(&inventory), None);
}

#[test]
fn a_runtimes_list_replaces_its_descriptions_but_keeps_the_hooks() {
    let (path_a, id_a) = docker_cgroup(3);
    let (path_b, id_b) = docker_cgroup(4);
    let mut inventory = Inventory::new(
        vec![docker_container(&id_a, "old")],
        StateDirs::default(),
        None,
    );
    inventory.add_workload(path_a, 5);
    inventory.add_workload(path_b, 6);
    inventory.hooked(docker_container(&id_b, "hooked"), true);
    inventory.follow_runtime(EngineEvent::All(Runtime::Docker, Vec::new()));
    let names: Vec<Option<String>> = inventory
        .workloads()
        .into_iter()
        .map(|workload| workload.container.unwrap().name)
        .collect();
    assert_eq!(names, [None, Some("hooked".to_owned())]);
}

#[test]
fn a_container_whose_networks_changed_names_its_cgroups() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    let (path, id) = docker_cgroup(5);
    inventory.add_workload(path, 5);
    let rewired = inventory.follow_runtime(EngineEvent::Rewired(id.clone()));
    assert_eq!(rewired.as_deref(), Some(id.as_str()));
    assert_eq!(inventory.cgroups_of(&id), HashSet::from([5]));
}

#[test]
fn a_cgroup_that_goes_takes_its_subtree_along() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    inventory.add_workload(PathBuf::from("test/a"), 1);
    inventory.add_workload(PathBuf::from("test/a/inner"), 2);
    inventory.add_workload(PathBuf::from("test/ab"), 3);
    inventory.remove_below(Path::new("test/a"));
    assert!(!inventory.knows(Path::new("test/a/inner")));
    assert!(
        inventory.knows(Path::new("test/ab")),
        "a sibling, not a child"
    );
    assert_eq!(inventory.cgroups(), 1);
}

#[test]
fn a_resync_knows_exactly_the_cgroups_listed() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    inventory.add_workload(PathBuf::from("test/gone"), 1);
    inventory.resync(vec![(PathBuf::from("test/new"), 2)]);
    assert!(!inventory.knows(Path::new("test/gone")));
    assert!(inventory.knows(Path::new("test/new")));
}

#[test]
fn hooked_containers_are_kept_for_the_next_agent_until_their_cgroup_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("described.json");
    let (path, id) = docker_cgroup(6);
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), Some(file.clone()));
    inventory.add_workload(path.clone(), 5);
    inventory.hooked(docker_container(&id, "web-1"), true);

    let mut next = Inventory::new(Vec::new(), StateDirs::default(), Some(file.clone()));
    next.add_workload(path.clone(), 5);
    let named = next.workloads()[0].container.clone().unwrap().name;
    assert_eq!(named.as_deref(), Some("web-1"), "the next agent knows it");

    next.remove_below(&path);
    let kept: Vec<Container> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(kept.is_empty(), "forgotten with its cgroup");
}

#[test]
fn a_hook_for_a_cgroup_its_layout_does_not_name_is_not_kept() {
    let mut inventory = Inventory::new(Vec::new(), StateDirs::default(), None);
    inventory.add_workload(PathBuf::from("test/plain"), 5);
    inventory.hooked(docker_container("cd".repeat(32).as_str(), "web-1"), false);
    assert!(inventory.workloads()[0].container.is_none());
}
