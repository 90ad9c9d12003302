//! containerd's containers (Kubernetes through its CRI, nerdctl, `ctr`),
//! described by what containerd writes for each task before its cgroup
//! exists: the OCI bundle in its state directory
//! (`STATE/io.containerd.runtime.v2.task/NAMESPACE/ID/config.json`), whose
//! annotations carry the CRI's container and pod names, or the labels a
//! container was given.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{Container, Runtime, oci};

/// The annotation nerdctl names its containers with.
const NERDCTL_NAME: &str = "nerdctl/name";

/// The part of an OCI configuration that describes a container.
#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The container `id` of the containerd whose state directory is `state`,
/// if containerd runs a task of that id.
#[must_use]
pub fn describe(state: &Path, id: &str) -> Option<Container> {
    let bundle = bundle(state, id)?;
    let annotations = serde_json::from_str::<Bundle>(&fs::read_to_string(bundle).ok()?)
        .ok()?
        .annotations;
    if let Some(container) = oci::containerd_kubernetes(id, &annotations) {
        return Some(container);
    }
    let name = annotations
        .get(NERDCTL_NAME)
        .cloned()
        .unwrap_or_else(|| id.to_owned());
    Some(Container {
        runtime: Some(Runtime::Containerd),
        id: id.to_owned(),
        name: Some(name),
        labels: annotations,
        pod: None,
    })
}

/// The configuration of task `id`, in whichever containerd namespace.
fn bundle(state: &Path, id: &str) -> Option<PathBuf> {
    fs::read_dir(state.join(oci::CONTAINERD_TASKS))
        .ok()?
        .filter_map(Result::ok)
        .map(|namespace| namespace.path().join(id).join("config.json"))
        .find(|config| config.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_tasks_by_their_bundles() {
        let state = tempfile::tempdir().unwrap();
        let task = |namespace: &str, id: &str, annotations: &str| {
            let dir = state
                .path()
                .join("io.containerd.runtime.v2.task")
                .join(namespace)
                .join(id);
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("config.json"),
                format!(r#"{{"annotations":{annotations}}}"#),
            )
            .unwrap();
        };
        task(
            "default",
            "web",
            r#"{"tier":"front","nerdctl/name":"web-1"}"#,
        );
        task(
            "k8s.io",
            "abc",
            r#"{"io.kubernetes.cri.container-name":"app","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-name":"web-0"}"#,
        );
        let web = describe(state.path(), "web").unwrap();
        assert_eq!(web.name.as_deref(), Some("web-1"));
        assert_eq!(web.labels["tier"], "front");
        let app = describe(state.path(), "abc").unwrap();
        assert_eq!(app.pod.as_deref(), Some("shop/web-0"));
        assert!(describe(state.path(), "gone").is_none());
    }
}
