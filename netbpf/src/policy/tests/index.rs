//! The scope index: a workload gets the scope trying every scope in order
//! would give it, whatever condition the scopes are filed under.

use std::collections::BTreeMap;

use super::*;

/// Scopes of every kind of condition, several of which select the same
/// workloads, so that only policy order decides.
const SCOPES: &str = r#"version = 1
[[scope]]
name = "exact"
match = { container = "web-1" }
[[scope]]
name = "label-only"
match = { label = { tier = "front*" } }
[[scope]]
name = "prefixed"
match = { container = "web-{n}" }
[[scope]]
name = "id"
match = { id = "abc" }
[[scope]]
name = "pod"
match = { pod = "shop/cart-*" }
[[scope]]
name = "relative-cgroup"
match = { cgroup = "kubepods/*/c{n}" }
[[scope]]
name = "absolute-cgroup"
match = { cgroup = "/sys/fs/cgroup/system.slice/*" }
[[scope]]
name = "name-and-label"
match = { container = "db*", label = { role = "primary" } }
[[scope]]
name = "anything-named"
match = { container = "*" }
[[scope]]
name = "any-cgroup"
match = { cgroup = "*/*" }
"#;

/// The first scope in order that selects `candidate`, trying each.
fn by_trying_each(policy: &Policy, candidate: &Candidate<'_>) -> Option<(usize, Captures, bool)> {
    policy.scopes.iter().enumerate().find_map(|(at, def)| {
        let Selector::Workload(selector) = &def.selector else {
            return None;
        };
        Some((at, selector.matches(candidate)?, selector.pod.is_some()))
    })
}

#[test]
fn each_workload_gets_the_scope_trying_every_scope_would_give() {
    let policy = parse_text(SCOPES).unwrap();
    let names = [
        None,
        Some("web-1"),
        Some("web-22"),
        Some("db-a"),
        Some("dbx"),
        Some("cache"),
        Some(""),
    ];
    let ids = ["abcdef", "0123"];
    let pods = [None, Some("shop/cart-7"), Some("shop/basket")];
    let labels: [&[(&str, &str)]; 4] = [
        &[],
        &[("tier", "frontend")],
        &[("role", "primary")],
        &[("tier", "back"), ("role", "replica")],
    ];
    let cgroups = [
        "kubepods/burstable/c9",
        "system.slice/x.service",
        "a/b",
        "top",
        "a/b/c",
    ];
    let mut tried = 0;
    let mut selected = BTreeMap::<String, usize>::new();
    for cgroup in cgroups {
        for name in names {
            for id in ids {
                for pod in pods {
                    for labels in labels {
                        let labels: BTreeMap<String, String> = labels
                            .iter()
                            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                            .collect();
                        let container = ContainerView {
                            id,
                            name,
                            labels: &labels,
                            pod,
                        };
                        for container in [None, Some(container)] {
                            let candidate = Candidate {
                                cgroup: Path::new(cgroup),
                                mount: Path::new("/sys/fs/cgroup"),
                                container,
                            };
                            let expected = by_trying_each(&policy, &candidate);
                            assert_eq!(
                                policy.first_selecting(&candidate),
                                expected,
                                "{candidate:?}"
                            );
                            tried += 1;
                            let scope =
                                expected.map_or("none", |(at, _, _)| &policy.scopes[at].name);
                            *selected.entry(scope.to_owned()).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(tried > 1000);
    // Every scope was the first to select some workload: the comparison
    // covered each way of filing one.
    for def in &policy.scopes {
        assert!(
            selected.contains_key(&def.name),
            "{} selected nothing: {selected:?}",
            def.name
        );
    }
}

#[test]
fn a_literal_prefix_ends_at_the_first_wildcard_class_or_capture() {
    for (pattern, prefix) in [
        ("web-1", "web-1"),
        ("web-{n}", "web-"),
        ("db*", "db"),
        ("a?c", "a"),
        ("[ab]x", ""),
        ("*", ""),
    ] {
        assert_eq!(
            Pattern::new(pattern).unwrap().literal_prefix(),
            prefix,
            "{pattern}"
        );
    }
}
