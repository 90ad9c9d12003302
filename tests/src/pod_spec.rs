//! A Kubernetes DaemonSet's pod spec, read from its manifest and turned
//! into the `podman run` arguments that give a container exactly the
//! capabilities, host namespaces, security options and mounts the spec
//! declares, the host side of each mount redirected where a test says.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The parts of a pod spec a Podman run reproduces.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub host_network: bool,
    #[serde(default, rename = "hostPID")]
    pub host_pid: bool,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub security_context: SecurityContext,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    pub startup_probe: Option<Probe>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default)]
    pub privileged: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub capabilities: Capabilities,
    pub seccomp_profile: Option<Profile>,
    pub app_armor_profile: Option<Profile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    pub sub_path: Option<String>,
    pub mount_propagation: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub host_path: Option<HostPath>,
    pub config_map: Option<ConfigMapRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPath {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConfigMapRef {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub exec: Option<ExecAction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Deserialize)]
struct Object {
    kind: String,
    #[serde(default)]
    spec: Option<yaml_serde::Value>,
}

impl PodSpec {
    /// The pod spec of the DaemonSet in the multi-document manifest `text`.
    pub fn of_daemonset(text: &str) -> anyhow::Result<Self> {
        for document in yaml_serde::Deserializer::from_str(text) {
            let object = Object::deserialize(document).context("a manifest document")?;
            if object.kind != "DaemonSet" {
                continue;
            }
            let template = object
                .spec
                .as_ref()
                .and_then(|spec| spec.get("template"))
                .and_then(|template| template.get("spec"))
                .context("the DaemonSet has spec.template.spec")?;
            return yaml_serde::from_value(template.clone()).context("the DaemonSet's pod spec");
        }
        bail!("the manifest has no DaemonSet")
    }

    /// The one container of the pod.
    pub fn container(&self) -> anyhow::Result<&ContainerSpec> {
        match self.containers.as_slice() {
            [container] => Ok(container),
            other => bail!("the pod has {} containers, not one", other.len()),
        }
    }
}

/// Where a test puts the host side of each volume: hostPath volumes by
/// their path on the node, ConfigMap volumes by their name.
#[derive(Debug, Default)]
pub struct HostSides {
    pub host_paths: BTreeMap<String, PathBuf>,
    pub config_maps: BTreeMap<String, PathBuf>,
}

/// What a Podman run of the pod takes beyond the spec: the container's
/// name, its network namespace (the test's stand-in for the node's), its
/// cgroup parent and image.
pub struct PodmanRun<'a> {
    pub name: &'a str,
    pub netns: &'a std::path::Path,
    pub cgroup_parent: &'a str,
    pub image: &'a str,
    pub sides: &'a HostSides,
    /// Capabilities of the spec withheld, to show each is needed.
    pub withheld: &'a [String],
}

impl PodmanRun<'_> {
    /// The `podman` arguments that run `spec`'s container as declared.
    pub fn arguments(&self, spec: &PodSpec) -> anyhow::Result<Vec<String>> {
        let container = spec.container()?;
        let security = &container.security_context;
        anyhow::ensure!(
            !security.privileged,
            "the pod asks for a privileged container"
        );
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--name",
            self.name,
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--cgroup-parent",
            self.cgroup_parent,
            "--pull",
            "never",
            // Podman's defaults exceed what runc may set here (TOOLCHAIN.md):
            // limits, not privileges.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]
        .map(str::to_owned)
        .to_vec();
        if spec.host_network {
            args.push(format!("--network=ns:{}", self.netns.display()));
        }
        if spec.host_pid {
            args.push("--pid=host".to_owned());
        }
        for dropped in &security.capabilities.drop {
            args.push(format!("--cap-drop={}", capability(dropped)));
        }
        for added in &security.capabilities.add {
            if !self.withheld.contains(added) {
                args.push(format!("--cap-add={}", capability(added)));
            }
        }
        if security.allow_privilege_escalation == Some(false) {
            args.push("--security-opt=no-new-privileges".to_owned());
        }
        if let Some(profile) = &security.seccomp_profile
            && profile.kind == "Unconfined"
        {
            args.push("--security-opt=seccomp=unconfined".to_owned());
        }
        if let Some(profile) = &security.app_armor_profile
            && profile.kind == "Unconfined"
        {
            args.push("--security-opt=apparmor=unconfined".to_owned());
        }
        if security.read_only_root_filesystem {
            args.push("--read-only".to_owned());
        }
        if let Some(user) = security.run_as_user {
            args.push(format!(
                "--user={user}:{}",
                security.run_as_group.unwrap_or(user)
            ));
        }
        for variable in &container.env {
            args.push(format!("--env={}={}", variable.name, variable.value));
        }
        for mount in &container.volume_mounts {
            args.push(format!("--volume={}", self.volume(spec, mount)?));
        }
        let (entrypoint, rest) = container
            .command
            .split_first()
            .context("the container names its command")?;
        args.push(format!("--entrypoint={entrypoint}"));
        args.push(self.image.to_owned());
        args.extend(rest.iter().cloned());
        args.extend(container.args.iter().cloned());
        Ok(args)
    }

    /// `SOURCE:DESTINATION[:OPTIONS]` of a volume mount.
    fn volume(&self, spec: &PodSpec, mount: &VolumeMount) -> anyhow::Result<String> {
        let volume = spec
            .volumes
            .iter()
            .find(|volume| volume.name == mount.name)
            .with_context(|| format!("volume {} is declared", mount.name))?;
        let mut source = if let Some(host_path) = &volume.host_path {
            self.sides
                .host_paths
                .get(&host_path.path)
                .with_context(|| format!("the test places hostPath {}", host_path.path))?
                .clone()
        } else if let Some(config_map) = &volume.config_map {
            self.sides
                .config_maps
                .get(&config_map.name)
                .with_context(|| format!("the test places ConfigMap {}", config_map.name))?
                .clone()
        } else {
            bail!(
                "volume {} is neither a hostPath nor a ConfigMap",
                volume.name
            );
        };
        if let Some(sub_path) = &mount.sub_path {
            source = source.join(sub_path);
        }
        let mut options = Vec::new();
        if mount.read_only {
            options.push("ro");
        }
        match mount.mount_propagation.as_deref() {
            Some("HostToContainer") => options.push("rslave"),
            Some("Bidirectional") => options.push("rshared"),
            _ => {}
        }
        let mut volume = format!("{}:{}", source.display(), mount.mount_path);
        if !options.is_empty() {
            volume = format!("{volume}:{}", options.join(","));
        }
        Ok(volume)
    }
}

/// A Kubernetes capability name (`NET_ADMIN`) as Podman takes it.
#[must_use]
pub fn capability(name: &str) -> String {
    if name == "ALL" || name.starts_with("CAP_") {
        name.to_owned()
    } else {
        format!("CAP_{name}")
    }
}
