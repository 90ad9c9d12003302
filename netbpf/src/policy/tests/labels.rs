//! Rules from containers' labels, where a scope takes them: read and
//! checked as the same rules in a file, each refusal naming the label,
//! its entry and column.

use super::*;

const NODE: &str = "version = 1\n\
    [[host_service]]\nname = \"gpu\"\nlisten = \"127.0.0.1:18188\"\ngrantable_by_label = true\n\
    [[host_service]]\nname = \"db\"\nlisten = \"127.0.0.1:5432\"\n\
    [[scope]]\nname = \"compose\"\nmatch = { label = { \"com.docker.compose.project\" = \"*\" } }\n\
    labels = [\"forward\", \"alias\", \"bind\", \"host_services\"]\n";

fn rules(labels: &[(&str, &str)]) -> Result<Scope, PolicyError> {
    let policy = parse_text(NODE).unwrap();
    labelled_instance_of(&policy, 0, "web", &[], labels)
}

#[test]
fn each_kind_of_rule_comes_from_its_label() {
    let scope = rules(&[
        (
            "io.netbpf.forward",
            "localhost:8082=10.200.1.1:8082, localhost:53=10.0.0.53/both",
        ),
        ("io.netbpf.alias", "10.99.99.99:6379=10.0.0.5:6379"),
        ("io.netbpf.bind", "3000=7041/udp"),
        ("io.netbpf.host_services", "gpu=10.210.1.1:18188"),
        ("com.example.other", "ignored"),
    ])
    .unwrap();
    let forwards: Vec<_> = scope
        .forwards
        .iter()
        .map(|forward| (forward.from.to_string(), forward.to.addr, forward.protocols))
        .collect();
    assert_eq!(
        forwards,
        [
            (
                "8082".to_owned(),
                "10.200.1.1".parse::<IpAddr>().unwrap(),
                Protocols::Tcp
            ),
            (
                "53".to_owned(),
                "10.0.0.53".parse().unwrap(),
                Protocols::Both
            ),
        ]
    );
    assert_eq!(scope.aliases[0].to, "10.0.0.5:6379".parse().unwrap());
    assert_eq!(
        (
            scope.binds[0].port,
            scope.binds[0].to,
            scope.binds[0].protocols
        ),
        (3000, 7041, Protocols::Udp)
    );
    assert_eq!(scope.grants[0].service, 0);
    // Rules are numbered across kinds, as in a file.
    let mut numbers: Vec<u32> = scope
        .forwards
        .iter()
        .map(|forward| forward.rule)
        .chain(scope.grants.iter().map(|grant| grant.rule))
        .chain(scope.binds.iter().map(|bind| bind.rule))
        .chain(scope.aliases.iter().map(|alias| alias.rule))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);
}

#[test]
fn a_container_without_netbpf_labels_gets_no_rules() {
    let scope = rules(&[("com.docker.compose.project", "shop")]).unwrap();
    assert!(scope.forwards.is_empty() && scope.grants.is_empty());
}

#[test]
fn an_invalid_label_names_itself_its_entry_and_column() {
    let error = rules(&[
        ("io.netbpf.alias", "10.99.99.99:6379=10.0.0.5:6379"),
        (
            "io.netbpf.forward",
            "localhost:8082=10.200.1.1:8082,localhost:80=nowhere",
        ),
    ])
    .unwrap_err();
    assert_eq!(error.file, Path::new("the labels of \"web\""));
    // The forward's label is read first, on line 1.
    assert_eq!((error.line, error.column), (1, 64));
    assert_eq!(error.field, "io.netbpf.forward[1].to");
    assert!(error.message.contains("nowhere"), "{error}");
}

#[test]
fn labels_grant_only_the_services_the_node_lets_them() {
    let error = rules(&[("io.netbpf.host_services", "db=10.210.1.1:5432")]).unwrap_err();
    assert_eq!(error.field, "io.netbpf.host_services[0].service");
    assert!(error.message.contains("grantable_by_label"), "{error}");
    let error = rules(&[("io.netbpf.host_services", "nosuch=10.210.1.1:5432")]).unwrap_err();
    assert!(
        error.message.contains("no host service is named"),
        "{error}"
    );
}

#[test]
fn labels_give_only_the_kinds_the_scope_takes() {
    let policy = parse_text(&NODE.replace(
        "labels = [\"forward\", \"alias\", \"bind\", \"host_services\"]",
        "labels = [\"forward\"]",
    ))
    .unwrap();
    let scope = labelled_instance_of(
        &policy,
        0,
        "web",
        &[],
        &[
            ("io.netbpf.forward", "localhost:8082=10.200.1.1:8082"),
            ("io.netbpf.host_services", "gpu=10.210.1.1:18188"),
        ],
    )
    .unwrap();
    assert_eq!((scope.forwards.len(), scope.grants.len()), (1, 0));
}

#[test]
fn a_scope_of_labels_has_no_rules_of_its_own() {
    assert_rejected(
        &format!("{NODE}forward = [{{ from = \"localhost:1\", to = \"10.0.0.1\" }}]\n"),
        12,
        "scope[0].labels",
        "no rules of its own",
    );
    assert_rejected(
        &NODE.replace(
            "labels = [\"forward\", \"alias\", \"bind\", \"host_services\"]",
            "labels = []",
        ),
        12,
        "scope[0].labels",
        "name the kinds",
    );
    assert_rejected(
        &NODE.replace("\"bind\"", "\"binds\""),
        12,
        "",
        "unknown variant `binds`",
    );
}
