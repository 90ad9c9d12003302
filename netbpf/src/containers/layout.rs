//! The cgroup layouts of the container runtimes: which cgroup directories
//! are containers, of which runtime, with which id. Both cgroup drivers
//! are recognised (systemd's `*.scope` units and cgroupfs directories).
//!
//! | runtime | systemd driver | cgroupfs driver |
//! | --- | --- | --- |
//! | Docker | `system.slice/docker-ID.scope` | `docker/ID` (or `PARENT/ID`) |
//! | Podman | `machine.slice/libpod-ID.scope`, `libpod-payload-ID` | `libpod_parent/libpod-ID` |
//! | containerd (CRI) | `kubepods-…-podUID.slice/cri-containerd-ID.scope` | `kubepods/…/podUID/ID` |
//! | CRI-O | `kubepods-…-podUID.slice/crio-ID.scope` | `kubepods/…/podUID/ID` |
//! | systemd units, Quadlet | `system.slice/NAME@INSTANCE.service`, `NAME.service` | |

use std::path::Path;

use super::Runtime;

/// What a cgroup's path says about the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// The runtime, where the layout names it; None for a bare id, which
    /// the runtimes' APIs tell apart.
    pub runtime: Option<Runtime>,
    /// The container's id, or the unit's name.
    pub id: String,
}

/// The container whose cgroup is at `path` (below the cgroup v2 mount),
/// or None when it is not one: a slice, a runtime's monitor (conmon), a
/// container's own sub-cgroup.
#[must_use]
pub fn recognise(path: &Path) -> Option<Recognised> {
    let name = path.file_name()?.to_str()?;
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str());
    let with_runtime = |runtime, id: &str| {
        is_container_id(id).then(|| Recognised {
            runtime: Some(runtime),
            id: id.to_owned(),
        })
    };
    if let Some(id) = unit(name, "docker-", ".scope") {
        return with_runtime(Runtime::Docker, id);
    }
    if name.starts_with("libpod-conmon-") || name.starts_with("crio-conmon-") {
        return None;
    }
    if let Some(id) = name
        .strip_prefix("libpod-payload-")
        .or_else(|| unit(name, "libpod-", ".scope"))
        .or_else(|| name.strip_prefix("libpod-"))
    {
        return with_runtime(Runtime::Podman, id);
    }
    if let Some(id) = unit(name, "cri-containerd-", ".scope") {
        return with_runtime(Runtime::Containerd, id);
    }
    if let Some(id) = unit(name, "crio-", ".scope") {
        return with_runtime(Runtime::CriO, id);
    }
    if is_container_id(name) {
        let runtime = (parent == Some("docker")).then_some(Runtime::Docker);
        return Some(Recognised {
            runtime,
            id: name.to_owned(),
        });
    }
    if name.ends_with(".service") {
        return Some(Recognised {
            runtime: Some(Runtime::Systemd),
            id: name.to_owned(),
        });
    }
    None
}

/// The middle of `PREFIX…SUFFIX`.
fn unit<'a>(name: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)
}

/// Whether `id` is a container id as Docker, Podman, containerd's CRI and
/// CRI-O make them: 64 lowercase hexadecimal digits.
fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a99e0d1b2c3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665544332211ffee";

    /// The runtime a path names: `Err` when it is no container, `Ok(None)`
    /// for a container of a runtime the layout does not name.
    fn runtime_of(path: &str) -> Result<Option<Runtime>, ()> {
        let found = recognise(Path::new(path)).ok_or(())?;
        assert!(
            found.id == ID || found.runtime == Some(Runtime::Systemd),
            "{found:?}"
        );
        Ok(found.runtime)
    }

    #[test]
    fn recognises_each_runtime_with_both_drivers() {
        let docker = Ok(Some(Runtime::Docker));
        assert_eq!(
            runtime_of(&format!("system.slice/docker-{ID}.scope")),
            docker
        );
        assert_eq!(runtime_of(&format!("docker/{ID}")), docker);
        assert_eq!(
            runtime_of(&format!("ci/jobs/{ID}")),
            Ok(None),
            "a bare id under --cgroup-parent"
        );
        let podman = Ok(Some(Runtime::Podman));
        assert_eq!(runtime_of(&format!("libpod_parent/libpod-{ID}")), podman);
        assert_eq!(
            runtime_of(&format!("machine.slice/libpod-{ID}.scope")),
            podman
        );
        assert_eq!(
            runtime_of(&format!("system.slice/web.service/libpod-payload-{ID}")),
            podman
        );
        assert_eq!(
            runtime_of(&format!("machine.slice/libpod-conmon-{ID}.scope")),
            Err(())
        );
        assert_eq!(
            runtime_of(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d5e_11aa.slice/cri-containerd-{ID}.scope"
            )),
            Ok(Some(Runtime::Containerd))
        );
        assert_eq!(
            runtime_of(&format!(
                "kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"
            )),
            Ok(Some(Runtime::CriO))
        );
        assert_eq!(
            runtime_of("system.slice/onetime@7043.service"),
            Ok(Some(Runtime::Systemd))
        );
        assert_eq!(runtime_of("system.slice"), Err(()));
        assert_eq!(runtime_of("libpod_parent"), Err(()));
        assert_eq!(
            runtime_of(&format!("docker/{}", &ID[1..])),
            Err(()),
            "63 digits are no id"
        );
    }
}
