//! Docker's containers, described by what Docker keeps on disk for each
//! (`DATA_ROOT/containers/ID/config.v2.json`: its name and labels). At boot
//! Docker restarts its containers before its API answers: their cgroups
//! appear while the API cannot yet say whose they are, and this can.

use std::{collections::BTreeMap, fs, path::Path};

use serde::Deserialize;

use super::{Container, Runtime};

/// The part of Docker's container state that describes it.
#[derive(Deserialize)]
struct State {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Config")]
    config: Config,
}

#[derive(Deserialize)]
struct Config {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// The container `id` of the Docker whose data root is `root`, if Docker
/// keeps one of that id (a full 64-hex id, as its cgroup names it).
#[must_use]
pub fn describe(root: &Path, id: &str) -> Option<Container> {
    // An id from a cgroup's name: it never leaves the containers directory.
    if id.len() != 64 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let text = fs::read_to_string(root.join("containers").join(id).join("config.v2.json")).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    Some(Container {
        runtime: Some(Runtime::Docker),
        id: id.to_owned(),
        name: Some(state.name.trim_start_matches('/').to_owned()),
        labels: state.config.labels.unwrap_or_default(),
        pod: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_and_labels_and_refuses_what_is_not_an_id() {
        let root = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        let dir = root.path().join("containers").join(&id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/web-1","Config":{"Labels":{"com.docker.compose.project":"shop"}},"State":{}}"#,
        )
        .unwrap();
        let web = describe(root.path(), &id).unwrap();
        assert_eq!(web.name.as_deref(), Some("web-1"));
        assert_eq!(web.labels["com.docker.compose.project"], "shop");
        assert!(describe(root.path(), &"b".repeat(64)).is_none());
        assert!(describe(root.path(), "../../etc").is_none());
    }
}
