//! Containers as an OCI runtime hook sees them: the state the runtime
//! hands the hook (`createRuntime`, before the container's process runs),
//! and what the runtime wrote beside the bundle. Podman and CRI-O read
//! hooks from `hooks.d`; `netbpf hook` is such a hook.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Container, Runtime};

/// The state of a container, as the OCI runtime spec gives it to hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// The container's first process (waiting to run, at `createRuntime`).
    pub pid: u32,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Annotations the Kubernetes runtimes set: (runtime, name key, pod
/// namespace key, pod name key).
const CRI_ANNOTATIONS: [(Runtime, &str, &str, &str); 2] = [
    (
        Runtime::Containerd,
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
    ),
    (
        Runtime::CriO,
        "io.kubernetes.container.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
    ),
];

impl State {
    /// The container the state describes: its runtime and pod from its
    /// annotations; its name from them (Kubernetes) or from Podman's
    /// storage, which keeps the bundle in `STORAGE/overlay-containers/ID/
    /// userdata` beside `containers.json`.
    #[must_use]
    pub fn container(&self) -> Container {
        if let Some(container) = kubernetes(&self.id, &self.annotations) {
            return container;
        }
        let annotation = |key: &str| self.annotations.get(key).cloned();
        let podman = annotation("io.container.manager").is_some_and(|manager| manager == "libpod");
        Container {
            runtime: podman.then_some(Runtime::Podman),
            id: self.id.clone(),
            name: podman
                .then(|| podman_name(&self.bundle, &self.id))
                .flatten(),
            labels: BTreeMap::new(),
            pod: None,
        }
    }

    /// The container's cgroup, below the cgroup v2 mount: where its first
    /// process is (`0::/PATH` in `/proc/PID/cgroup`).
    pub fn cgroup(&self) -> std::io::Result<PathBuf> {
        let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", self.pid))?;
        cgroups
            .lines()
            .find_map(|line| line.strip_prefix("0::/"))
            .map(PathBuf::from)
            .ok_or_else(|| {
                std::io::Error::other(format!("process {} has no cgroup v2 path", self.pid))
            })
    }
}

/// The Kubernetes container `annotations` describe (its runtime's CRI
/// annotations), if they do.
#[must_use]
pub fn kubernetes(id: &str, annotations: &BTreeMap<String, String>) -> Option<Container> {
    let annotation = |key: &str| annotations.get(key).cloned();
    CRI_ANNOTATIONS
        .into_iter()
        .find_map(|(runtime, name, namespace, pod)| {
            let pod_name = annotation(pod)?;
            Some(Container {
                runtime: Some(runtime),
                id: id.to_owned(),
                name: annotation(name),
                labels: BTreeMap::new(),
                pod: Some(format!(
                    "{}/{pod_name}",
                    annotation(namespace).unwrap_or_default()
                )),
            })
        })
}

/// One entry of Podman's `containers.json`.
#[derive(Deserialize)]
struct Stored {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The name Podman's storage gives container `id` whose bundle is
/// `bundle`.
fn podman_name(bundle: &Path, id: &str) -> Option<String> {
    let listing = bundle.parent()?.parent()?.join("containers.json");
    let stored: Vec<Stored> = serde_json::from_str(&fs::read_to_string(listing).ok()?).ok()?;
    stored
        .into_iter()
        .find(|entry| entry.id == id)?
        .names
        .into_iter()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_podman_containers_from_their_storage() {
        let storage = tempfile::tempdir().unwrap();
        let bundle = storage.path().join("overlay-containers/abc/userdata");
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            storage.path().join("overlay-containers/containers.json"),
            r#"[{"id":"other","names":["x"]},{"id":"abc","names":["onetime-7041"],"image":"i"}]"#,
        )
        .unwrap();
        let state = State {
            id: "abc".into(),
            pid: 1,
            bundle,
            annotations: [("io.container.manager".into(), "libpod".into())].into(),
        };
        let container = state.container();
        assert_eq!(container.runtime, Some(Runtime::Podman));
        assert_eq!(container.name.as_deref(), Some("onetime-7041"));
    }

    #[test]
    fn names_kubernetes_containers_and_pods_from_annotations() {
        let state = State {
            id: "abc".into(),
            pid: 1,
            bundle: PathBuf::from("/nowhere"),
            annotations: [
                ("io.kubernetes.cri.container-name".into(), "app".into()),
                ("io.kubernetes.cri.sandbox-namespace".into(), "shop".into()),
                ("io.kubernetes.cri.sandbox-name".into(), "web-0".into()),
            ]
            .into(),
        };
        let container = state.container();
        assert_eq!(container.runtime, Some(Runtime::Containerd));
        assert_eq!(
            (container.name.as_deref(), container.pod.as_deref()),
            (Some("app"), Some("shop/web-0"))
        );
    }
}
