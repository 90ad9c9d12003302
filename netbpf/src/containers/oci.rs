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

/// The Kubernetes runtimes, each with where it says which pod and
/// container a container is. Only what the runtime writes itself counts:
/// CRI-O passes a pod's own annotations into the OCI state, so a tenant
/// can set any other runtime's keys there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maker {
    /// containerd's CRI writes its own annotations over any of the pod's.
    Containerd,
    /// CRI-O writes kubelet's labels, as one JSON annotation of its own.
    CriO,
    Other,
}

/// containerd's annotations: container name, pod namespace, pod name.
const CONTAINERD_KEYS: (&str, &str, &str) = (
    "io.kubernetes.cri.container-name",
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.sandbox-name",
);
/// The annotation CRI-O keeps kubelet's labels in (a JSON object).
const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
/// kubelet's labels in it: container name, pod namespace, pod name.
const KUBELET_LABELS: (&str, &str, &str) = (
    "io.kubernetes.container.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.name",
);
/// The directory of containerd's tasks (their bundles), in its state
/// directory: a path a pod cannot choose.
pub const CONTAINERD_TASKS: &str = "io.containerd.runtime.v2.task";

impl State {
    /// The container the state describes: its runtime and pod from its
    /// annotations; its name from them (Kubernetes) or from Podman's
    /// storage, which keeps the bundle in `STORAGE/overlay-containers/ID/
    /// userdata` beside its lists of containers.
    #[must_use]
    pub fn container(&self) -> Container {
        let kubernetes = match self.maker() {
            Maker::Containerd => containerd_kubernetes(&self.id, &self.annotations),
            Maker::CriO => crio_kubernetes(&self.id, &self.annotations),
            Maker::Other => None,
        };
        if let Some(container) = kubernetes {
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

    /// Which runtime made the container: containerd keeps its bundles in
    /// its tasks' directory; CRI-O always writes its labels annotation.
    fn maker(&self) -> Maker {
        if self
            .bundle
            .components()
            .any(|part| part.as_os_str() == CONTAINERD_TASKS)
        {
            Maker::Containerd
        } else if self.annotations.contains_key(CRIO_LABELS) {
            Maker::CriO
        } else {
            Maker::Other
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

/// The Kubernetes container containerd's `annotations` describe, if
/// they do: for bundles containerd made.
#[must_use]
pub fn containerd_kubernetes(
    id: &str,
    annotations: &BTreeMap<String, String>,
) -> Option<Container> {
    pod_container(
        Runtime::Containerd,
        id,
        annotations,
        CONTAINERD_KEYS,
        annotations,
    )
}

/// The Kubernetes container CRI-O's labels annotation describes, if it
/// does.
fn crio_kubernetes(id: &str, annotations: &BTreeMap<String, String>) -> Option<Container> {
    let labels: BTreeMap<String, String> =
        serde_json::from_str(annotations.get(CRIO_LABELS)?).ok()?;
    pod_container(Runtime::CriO, id, &labels, KUBELET_LABELS, annotations)
}

/// The container of a pod that `keys` (container name, pod namespace, pod
/// name) of `values` name, made by `runtime`. Its labels are the netbpf
/// ones (`io.netbpf.*`) among its `annotations` (the pod's, where the
/// runtime passes them on), and only those: no other annotation a tenant
/// writes becomes a label a scope could select by.
fn pod_container(
    runtime: Runtime,
    id: &str,
    values: &BTreeMap<String, String>,
    (name, namespace, pod): (&str, &str, &str),
    annotations: &BTreeMap<String, String>,
) -> Option<Container> {
    let value = |key: &str| values.get(key).cloned();
    let pod_name = value(pod)?;
    Some(Container {
        runtime: Some(runtime),
        id: id.to_owned(),
        name: value(name),
        labels: crate::policy::netbpf_labels(annotations),
        pod: Some(format!(
            "{}/{pod_name}",
            value(namespace).unwrap_or_default()
        )),
    })
}

/// One entry of a list of Podman's containers.
#[derive(Deserialize)]
struct Stored {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The lists of containers in Podman's storage: those it keeps, and those
/// made with `--rm` (as Quadlet's units make theirs), which it forgets at
/// boot.
const PODMAN_LISTS: [&str; 2] = ["containers.json", "volatile-containers.json"];

/// The name Podman's storage gives container `id` whose bundle is
/// `bundle`.
fn podman_name(bundle: &Path, id: &str) -> Option<String> {
    let storage = bundle.parent()?.parent()?;
    PODMAN_LISTS.iter().find_map(|list| {
        let stored: Vec<Stored> =
            serde_json::from_str(&fs::read_to_string(storage.join(list)).ok()?).ok()?;
        stored
            .into_iter()
            .find(|entry| entry.id == id)?
            .names
            .into_iter()
            .next()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Podman container `id` whose storage lists it in `list`.
    fn stored_podman_container(list: &str, id: &str) -> (tempfile::TempDir, State) {
        let storage = tempfile::tempdir().unwrap();
        let bundle = storage
            .path()
            .join(format!("overlay-containers/{id}/userdata"));
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            storage.path().join("overlay-containers").join(list),
            format!(r#"[{{"id":"other","names":["x"]}},{{"id":"{id}","names":["onetime-7041"],"image":"i"}}]"#),
        )
        .unwrap();
        let state = State {
            id: id.into(),
            pid: 1,
            bundle,
            annotations: [("io.container.manager".into(), "libpod".into())].into(),
        };
        (storage, state)
    }

    #[test]
    fn names_podman_containers_from_their_storage() {
        let (_storage, state) = stored_podman_container("containers.json", "abc");
        let container = state.container();
        assert_eq!(container.runtime, Some(Runtime::Podman));
        assert_eq!(container.name.as_deref(), Some("onetime-7041"));
    }

    /// Quadlet's units run their containers with `--rm`: Podman lists
    /// those apart.
    #[test]
    fn names_podman_containers_made_to_be_removed() {
        let (_storage, state) = stored_podman_container("volatile-containers.json", "abc");
        assert_eq!(state.container().name.as_deref(), Some("onetime-7041"));
    }

    #[test]
    fn names_kubernetes_containers_and_pods_from_annotations() {
        let state = State {
            id: "abc".into(),
            pid: 1,
            bundle: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"),
            annotations: [
                ("io.kubernetes.cri.container-name".into(), "app".into()),
                ("io.kubernetes.cri.sandbox-namespace".into(), "shop".into()),
                ("io.kubernetes.cri.sandbox-name".into(), "web-0".into()),
                // The pod's, passed on by containerd's `pod_annotations`.
                ("io.netbpf.forward".into(), "localhost:80=10.0.0.1".into()),
                ("tier".into(), "front".into()),
                ("io.netbpfx".into(), "not ours".into()),
            ]
            .into(),
        };
        let container = state.container();
        assert_eq!(container.runtime, Some(Runtime::Containerd));
        assert_eq!(
            (container.name.as_deref(), container.pod.as_deref()),
            (Some("app"), Some("shop/web-0"))
        );
        // Only netbpf's annotations become labels: none a scope's match
        // could select by.
        assert_eq!(
            container.labels,
            [(
                "io.netbpf.forward".to_owned(),
                "localhost:80=10.0.0.1".to_owned()
            )]
            .into()
        );
    }

    /// A CRI-O pod's own annotations reach the OCI state: the containerd
    /// keys a tenant sets there never name its pod.
    #[test]
    fn a_crio_pod_is_named_by_crio_whatever_annotations_it_carries() {
        let labels = r#"{"io.kubernetes.container.name":"app","io.kubernetes.pod.namespace":"tenant","io.kubernetes.pod.name":"web-0"}"#;
        let state = State {
            id: "abc".into(),
            pid: 1,
            bundle: PathBuf::from("/run/containers/storage/overlay-containers/abc/userdata"),
            annotations: [
                (CRIO_LABELS.into(), labels.into()),
                ("io.kubernetes.cri.container-name".into(), "db".into()),
                (
                    "io.kubernetes.cri.sandbox-namespace".into(),
                    "victim".into(),
                ),
                ("io.kubernetes.cri.sandbox-name".into(), "db-0".into()),
                ("io.kubernetes.pod.namespace".into(), "victim".into()),
                ("io.kubernetes.pod.name".into(), "db-0".into()),
            ]
            .into(),
        };
        let container = state.container();
        assert_eq!(container.runtime, Some(Runtime::CriO));
        assert_eq!(
            (container.name.as_deref(), container.pod.as_deref()),
            (Some("app"), Some("tenant/web-0"))
        );
        // Without CRI-O's own annotation, nothing makes it a pod at all.
        let mut unmarked = state;
        unmarked.annotations.remove(CRIO_LABELS);
        assert_eq!(unmarked.container().pod, None);
    }
}
