//! A scope's `match`: which cgroups, containers or network namespace it
//! selects, matched by the agent at every container event.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap as _};
use toml::Spanned;

use super::{
    Locator, PolicyError,
    pattern::{Captures, Pattern},
};

/// What makes a socket part of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The sockets of the network namespace at this path.
    Netns(PathBuf),
    /// Each cgroup (or container, or pod) that every condition matches: one
    /// instance of the scope each.
    Workload(WorkloadSelector),
}

/// Conditions on a cgroup and on the container in it; all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSelector {
    /// The cgroup's path: relative to the cgroup v2 mount, or absolute.
    pub cgroup: Option<Pattern>,
    /// The container's name, as its runtime knows it.
    pub container: Option<Pattern>,
    /// A prefix of the container's id.
    pub id: Option<String>,
    /// Labels the container carries, each with a pattern of its value.
    pub labels: BTreeMap<String, Pattern>,
    /// The container's pod, `NAMESPACE/NAME`: one instance per pod.
    pub pod: Option<Pattern>,
}

/// What a selector is matched against: a cgroup, and what its runtime
/// says of the container in it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The cgroup's path below the cgroup v2 mount, without a leading `/`.
    pub cgroup: &'a Path,
    /// The cgroup v2 mount, for selectors that give absolute paths.
    pub mount: &'a Path,
    /// The container in the cgroup, when it is one.
    pub container: Option<ContainerView<'a>>,
}

/// A container as selectors see it.
#[derive(Debug, Clone, Copy)]
pub struct ContainerView<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    /// `NAMESPACE/NAME` of its Kubernetes pod.
    pub pod: Option<&'a str>,
}

impl WorkloadSelector {
    /// Whether only containers match (not any cgroup).
    #[must_use]
    pub fn wants_container(&self) -> bool {
        self.container.is_some()
            || self.id.is_some()
            || !self.labels.is_empty()
            || self.pod.is_some()
    }

    /// Every name the selector captures.
    #[must_use]
    pub fn capture_names(&self) -> BTreeSet<&str> {
        self.cgroup
            .iter()
            .chain(&self.container)
            .chain(self.labels.values())
            .chain(&self.pod)
            .flat_map(Pattern::captures)
            .collect()
    }

    /// The captures when `candidate` matches every condition.
    #[must_use]
    pub fn matches(&self, candidate: &Candidate<'_>) -> Option<Captures> {
        let mut captures = Captures::new();
        if let Some(pattern) = &self.cgroup {
            let path = if pattern.as_str().starts_with('/') {
                candidate.mount.join(candidate.cgroup)
            } else {
                candidate.cgroup.to_owned()
            };
            if !pattern.matches(&path.to_string_lossy(), &mut captures) {
                return None;
            }
        }
        if !self.wants_container() {
            return Some(captures);
        }
        let container = candidate.container?;
        if let Some(prefix) = &self.id
            && !container.id.starts_with(prefix.as_str())
        {
            return None;
        }
        if let Some(pattern) = &self.container
            && !container
                .name
                .is_some_and(|name| pattern.matches(name, &mut captures))
        {
            return None;
        }
        for (key, pattern) in &self.labels {
            let value = container.labels.get(key)?;
            if !pattern.matches(value, &mut captures) {
                return None;
            }
        }
        if let Some(pattern) = &self.pod
            && !container
                .pod
                .is_some_and(|pod| pattern.matches(pod, &mut captures))
        {
            return None;
        }
        Some(captures)
    }
}

impl Selector {
    /// Every name the selector captures: what per-instance values may use.
    #[must_use]
    pub fn capture_names(&self) -> BTreeSet<&str> {
        match self {
            Self::Netns(_) => BTreeSet::new(),
            Self::Workload(workload) => workload.capture_names(),
        }
    }
}

/// The selector as the policy wrote it, for `netbpf status`.
impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Self::Netns(path) => map.serialize_entry("netns", path)?,
            Self::Workload(workload) => {
                let text = |pattern: &Option<Pattern>| pattern.as_ref().map(Pattern::to_string);
                if let Some(cgroup) = text(&workload.cgroup) {
                    map.serialize_entry("cgroup", &cgroup)?;
                }
                if let Some(container) = text(&workload.container) {
                    map.serialize_entry("container", &container)?;
                }
                if let Some(id) = &workload.id {
                    map.serialize_entry("id", id)?;
                }
                if !workload.labels.is_empty() {
                    let labels: BTreeMap<&str, String> = workload
                        .labels
                        .iter()
                        .map(|(key, value)| (key.as_str(), value.to_string()))
                        .collect();
                    map.serialize_entry("label", &labels)?;
                }
                if let Some(pod) = text(&workload.pod) {
                    map.serialize_entry("pod", &pod)?;
                }
            }
        }
        map.end()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelector {
    cgroup: Option<Spanned<String>>,
    netns: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    id: Option<Spanned<String>>,
    label: Option<BTreeMap<String, Spanned<String>>>,
    pod: Option<Spanned<String>>,
}

/// Validates a scope's `match`, at `field`.
pub(super) fn validate(
    locator: &Locator<'_>,
    field: &str,
    raw: &Spanned<RawSelector>,
) -> Result<Selector, PolicyError> {
    let span = raw.span();
    let raw = raw.get_ref();
    let pattern = |value: &Option<Spanned<String>>, key: &str| {
        value
            .as_ref()
            .map(|value| {
                Pattern::new(value.get_ref().trim())
                    .and_then(|pattern| {
                        if pattern.as_str().is_empty() {
                            Err("an empty pattern matches nothing".to_owned())
                        } else {
                            Ok(pattern)
                        }
                    })
                    .map_err(|message| {
                        locator.error(value.span(), format!("{field}.{key}"), message)
                    })
            })
            .transpose()
    };
    if let Some(netns) = &raw.netns {
        return validate_netns(locator, field, span, raw, netns);
    }
    let mut labels = BTreeMap::new();
    for (key, value) in raw.label.iter().flatten() {
        if key.is_empty() {
            return Err(locator.error(
                value.span(),
                format!("{field}.label"),
                "a label key cannot be empty",
            ));
        }
        let compiled = Pattern::new(value.get_ref()).map_err(|message| {
            locator.error(value.span(), format!("{field}.label.{key}"), message)
        })?;
        labels.insert(key.clone(), compiled);
    }
    let id = raw
        .id
        .as_ref()
        .map(|id| {
            let prefix = id.get_ref().trim().to_ascii_lowercase();
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
                Err(locator.error(
                    id.span(),
                    format!("{field}.id"),
                    format!(
                        "{:?} is not a container id or a prefix of one (hexadecimal digits)",
                        id.get_ref()
                    ),
                ))
            } else {
                Ok(prefix)
            }
        })
        .transpose()?;
    let selector = WorkloadSelector {
        cgroup: pattern(&raw.cgroup, "cgroup")?,
        container: pattern(&raw.container, "container")?,
        id,
        labels,
        pod: pattern(&raw.pod, "pod")?,
    };
    if let Some(pod) = &selector.pod
        && pod.as_str().matches('/').count() != 1
    {
        return Err(locator.error(
            raw.pod.as_ref().map_or(span.clone(), Spanned::span),
            format!("{field}.pod"),
            format!("{:?} is not NAMESPACE/NAME", pod.as_str()),
        ));
    }
    if selector.cgroup.is_none() && !selector.wants_container() {
        return Err(locator.error(
            span,
            field,
            "a scope matches at least one of: container = \"NAME\", label = { KEY = \"VALUE\" }, \
             id = \"PREFIX\", pod = \"NAMESPACE/NAME\", cgroup = \"PATH\"; or netns = \"PATH\"",
        ));
    }
    Ok(Selector::Workload(selector))
}

/// Validates a `match = { netns = "PATH" }`.
fn validate_netns(
    locator: &Locator<'_>,
    field: &str,
    span: std::ops::Range<usize>,
    raw: &RawSelector,
    netns: &Spanned<String>,
) -> Result<Selector, PolicyError> {
    if raw.cgroup.is_some()
        || raw.container.is_some()
        || raw.id.is_some()
        || raw.label.is_some()
        || raw.pod.is_some()
    {
        return Err(locator.error(
            span,
            field,
            "netns = \"PATH\" selects a network namespace and takes no other condition",
        ));
    }
    let path = netns.get_ref().trim();
    if !path.starts_with('/') {
        return Err(locator.error(
            netns.span(),
            format!("{field}.netns"),
            format!("{path:?} is not an absolute path: write /run/netns/NAME or /proc/PID/ns/net"),
        ));
    }
    Ok(Selector::Netns(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container<'a>(
        id: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        pod: Option<&'a str>,
    ) -> ContainerView<'a> {
        ContainerView {
            id,
            name: Some(name),
            labels,
            pod,
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let labels: BTreeMap<String, String> = [(
            "com.docker.compose.project".to_owned(),
            "llamasketch".to_owned(),
        )]
        .into();
        let app = container("4f1c2a99", "llamasketch-app-1", &labels, None);
        let candidate = Candidate {
            cgroup: Path::new("system.slice/docker-4f1c2a99.scope"),
            mount: Path::new("/sys/fs/cgroup"),
            container: Some(app),
        };
        let selector = WorkloadSelector {
            container: Some(Pattern::new("llamasketch-{service}-1").unwrap()),
            labels: [(
                "com.docker.compose.project".to_owned(),
                Pattern::new("llamasketch").unwrap(),
            )]
            .into(),
            id: Some("4f1c".to_owned()),
            ..WorkloadSelector::default()
        };
        assert_eq!(selector.matches(&candidate).unwrap()["service"], "app");
        let other_id = WorkloadSelector {
            id: Some("5".to_owned()),
            ..selector.clone()
        };
        assert!(other_id.matches(&candidate).is_none());
        let absolute = WorkloadSelector {
            cgroup: Some(Pattern::new("/sys/fs/cgroup/system.slice/docker-*.scope").unwrap()),
            ..WorkloadSelector::default()
        };
        assert!(absolute.matches(&candidate).is_some());
        let plain = Candidate {
            container: None,
            ..candidate
        };
        assert!(
            absolute.matches(&plain).is_some(),
            "a cgroup selector matches any cgroup"
        );
        assert!(
            selector.matches(&plain).is_none(),
            "a container selector needs a container"
        );
    }
}
