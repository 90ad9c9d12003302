//! The Kubernetes DaemonSet, run: its pod spec becomes a Podman run of the
//! agent's image with exactly the capabilities, host namespaces, security
//! options and mounts it declares (the node's network namespace and the
//! host side of each mount being the test's own), and a container's
//! localhost forward works through that agent. Then each capability the
//! spec adds is withheld in turn, and the agent refuses to start, naming
//! it: the manifest's privileges are both sufficient and minimal.
//!
//! Privileged: run as root (`cargo xtask test`, which builds the image and
//! names it in `NETBPF_IMAGE`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use netbpf_testenv::{
    BRIDGE_V4, Cgroup, DesktopTopology, Place, Process, Scrape, netbpf_binary,
    pod_spec::{HostSides, PodSpec, PodmanRun, capability},
    require_root, unique_name,
};

const MANIFEST: &str = "../deploy/kubernetes/netbpf.yaml";

fn manifest() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFEST)).unwrap()
}

/// The image `cargo xtask test` built from this tree.
fn image() -> String {
    let image = std::env::var("NETBPF_IMAGE").unwrap_or_else(|_| {
        panic!("NETBPF_IMAGE names no image: run `cargo xtask image --debug` and set NETBPF_IMAGE=localhost/netbpf:dev, or run `cargo xtask test`")
    });
    let exists = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        exists,
        "image {image} is not in Podman's storage: run `cargo xtask image --debug`"
    );
    image
}

/// Where the pod's volumes are on this machine, and the configuration and
/// policy the test gives the agent in place of those of the ConfigMap (which names
/// the machine's own cgroup root and pin directory).
struct Node {
    /// The pods' cgroup parent: a cgroup of their own, since Podman
    /// enables controllers in the parent, after which (with cgroup v2
    /// alone) no process may join the parent itself.
    pods: Cgroup,
    topology: DesktopTopology,
    sides: HostSides,
    pin_dir: PathBuf,
    run_dir: PathBuf,
    metrics_port: u16,
}

impl Node {
    fn new() -> Self {
        require_root();
        let topology = DesktopTopology::new().expect("building the desktop topology");
        let work = topology.work.path();
        let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("nbpin"));
        let run_dir = work.join("run-netbpf");
        let containerd = work.join("run-containerd");
        let config = work.join("config");
        let policy = work.join("policy.d");
        for dir in [&run_dir, &containerd, &config, &policy] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let metrics_port = 9981;
        std::fs::write(
            config.join("config.toml"),
            format!(
                "pin_dir = \"{}\"\ncgroup_root = \"{}\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
                 [runtimes]\ndocker = \"\"\npodman = \"\"\n",
                pin_dir.display(),
                topology.root.path().display(),
            ),
        )
        .unwrap();
        std::fs::write(
            policy.join("10-desktop.toml"),
            format!(
                "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\n\
                 forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}]\n",
                topology.desktop.path().display()
            ),
        )
        .unwrap();
        let sides = HostSides {
            host_paths: [
                ("/sys/fs/bpf", PathBuf::from("/sys/fs/bpf")),
                ("/sys/fs/cgroup", PathBuf::from("/sys/fs/cgroup")),
                ("/run/netbpf", run_dir.clone()),
                ("/run/containerd", containerd),
            ]
            .map(|(path, side)| (path.to_owned(), side))
            .into(),
            config_maps: [("netbpf-config", config), ("netbpf-policy", policy)]
                .map(|(name, side)| (name.to_owned(), side))
                .into(),
        };
        Self {
            pods: topology.root.child("pods").expect("the pods' cgroup"),
            topology,
            sides,
            pin_dir,
            run_dir,
            metrics_port,
        }
    }

    /// The `podman` arguments of the pod, without `withheld` capabilities.
    fn podman_args(&self, spec: &PodSpec, name: &str, withheld: &[String]) -> Vec<String> {
        let parent = self.pods.runtime_parent().unwrap();
        PodmanRun {
            name,
            netns: &self.topology.host_ns.path(),
            cgroup_parent: &parent,
            image: &image(),
            sides: &self.sides,
            withheld,
        }
        .arguments(spec)
        .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = Command::new(netbpf_binary())
                .arg("uninstall")
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .arg("--run-dir")
                .arg(&self.run_dir)
                .output();
        }
    }
}

/// A container of the pod, removed when dropped.
struct Pod {
    name: String,
    process: Process,
}

impl Pod {
    fn start(node: &Node, spec: &PodSpec) -> Self {
        let name = unique_name("nbds");
        let args = node.podman_args(spec, &name, &[]);
        let log = node.topology.work.path().join("pod.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("podman")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            name,
            process: Process::from_child(child, log),
        }
    }

    /// Runs `command` in the container, as a probe does.
    fn exec(&self, command: &[String]) -> std::process::Output {
        Command::new("podman")
            .args(["exec", &self.name])
            .args(command)
            .output()
            .unwrap()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "10", &self.name])
            .output();
    }
}

#[test]
fn the_daemonset_runs_under_podman_with_exactly_its_privileges() {
    let spec = PodSpec::of_daemonset(&manifest()).unwrap();
    let container = spec.container().unwrap();
    let security = &container.security_context;
    assert!(
        spec.host_network && spec.host_pid,
        "host network and PID namespaces"
    );
    assert_eq!(
        security.capabilities.drop,
        ["ALL"],
        "every capability not added is dropped"
    );
    assert!(!security.privileged && security.read_only_root_filesystem);
    let added = security.capabilities.add.clone();
    let node = Node::new();

    let mut pod = Pod::start(&node, &spec);
    let started = Instant::now();
    let probe = container
        .startup_probe
        .as_ref()
        .and_then(|probe| probe.exec.as_ref())
        .map(|exec| exec.command.clone())
        .expect("the DaemonSet has an exec startup probe");
    // The startup probe, as the kubelet runs it, until it passes.
    loop {
        let output = pod.exec(&probe);
        if output.status.success() {
            break;
        }
        assert!(
            !pod.process.has_exited(),
            "the pod stopped:\n{}",
            pod.process.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the startup probe {probe:?} did not pass in 30 s: {}\npod log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            pod.process.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let _server = node
        .topology
        .start_http_server(BRIDGE_V4, 8082, "through the daemonset")
        .unwrap();
    assert_eq!(
        node.topology
            .curl(Place::Desktop, "http://localhost:8082/")
            .unwrap(),
        (0, "through the daemonset".to_owned()),
        "the desktop's localhost forward, applied by the agent in the pod:\n{}",
        pod.process.log()
    );
    let scrape = Scrape::fetch(
        ([127, 0, 0, 1], node.metrics_port).into(),
        Some(node.topology.host_ns.name()),
    )
    .unwrap();
    assert_eq!(
        scrape.count(
            "netbpf_rule_connects_total",
            &[("scope", "desktop"), ("kind", "forward")]
        ),
        1,
        "{}",
        scrape.text
    );
    drop(pod);

    // Each capability withheld in turn: the agent stops at start, naming it.
    for withheld in &added {
        let name = unique_name("nbdc");
        let args = node.podman_args(&spec, &name, std::slice::from_ref(withheld));
        // It must stop by itself; `timeout` ends it if it does not.
        let output = Command::new("timeout")
            .arg("60")
            .arg("podman")
            .args(&args)
            .output()
            .unwrap();
        let _ = Command::new("podman")
            .args(["rm", "--force", &name])
            .output();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "the agent started without {withheld}:\n{said}"
        );
        assert!(
            said.contains(&capability(withheld)),
            "without {withheld} the agent says:\n{said}"
        );
        eprintln!("without {withheld}: {}", said.trim());
    }
}

#[test]
fn the_shipped_configurations_and_policies_load() {
    let manifest = manifest();
    // The ConfigMaps' files, as the agent reads them.
    let data = |name: &str| -> Vec<(String, String)> {
        yaml_documents(&manifest)
            .into_iter()
            .find(|document| document["metadata"]["name"] == name)
            .and_then(|document| document["data"].as_object().cloned())
            .unwrap_or_else(|| panic!("ConfigMap {name} in {MANIFEST}"))
            .into_iter()
            .map(|(file, text)| (file, text.as_str().unwrap().to_owned()))
            .collect()
    };
    let work = tempfile::tempdir().unwrap();
    let configs = [
        (
            "kubernetes",
            data("netbpf-config").into_iter().next().unwrap().1,
        ),
        (
            "systemd",
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/config.toml"),
            )
            .unwrap(),
        ),
    ];
    for (name, text) in configs {
        let file = work.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        netbpf::agent::config::Config::load(&file)
            .unwrap_or_else(|error| panic!("the {name} configuration: {error}"));
    }
    let policy = work.path().join("policy.d");
    std::fs::create_dir(&policy).unwrap();
    for (file, text) in data("netbpf-policy") {
        std::fs::write(policy.join(file), text).unwrap();
    }
    for dir in [
        policy,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/policy.d"),
    ] {
        let output = Command::new(netbpf_binary())
            .args(["check", "--policy"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "netbpf check --policy {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The documents of a multi-document YAML text, as JSON values.
fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    yaml_serde::Deserializer::from_str(text)
        .map(|document| serde_json::Value::deserialize(document).unwrap())
        .collect()
}
