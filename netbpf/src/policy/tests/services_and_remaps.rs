//! Host services and their grants, bind remaps and aliases, instances
//! taking ports from their names, and policies of several files.

use super::*;

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
