//! A Podman pod whose one member is granted a host service: the other
//! members share its network namespace (address, interface, routes) from
//! cgroups of their own, and are refused. Podman runs in a network
//! namespace of the test's own (its bridge, `cni-podman0`, lands there),
//! its containers below the test's cgroup.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{path::PathBuf, process::Command, time::Duration};

use netbpf_testenv::{
    Cgroup, NetbpfRun, Netns, Process, Site, applied, ensure_podman_image,
    ensure_podman_infra_image, netbpf_binary, require_root, run_checked, unique_name,
};

const IMAGE: &str = "localhost/netbpf-test-busybox:3";
const INFRA_IMAGE: &str = "localhost/netbpf-test-infra:1";
const ANSWER: &str = "the loopback service answers";
/// The gateway of Podman's default network, in the node's namespace.
const GATEWAY: &str = "10.88.0.1";

/// Podman in the node's namespace, its pod removed when dropped.
struct PodNode {
    pod: String,
    /// Podman's containers.conf: ulimits within this sandbox's limits.
    conf: PathBuf,
    node: Netns,
}

impl PodNode {
    /// `podman ARGS`, run in the node's namespace with the node's
    /// settings; its output.
    fn podman(&self, args: &[&str]) -> String {
        let namespace = format!("--net={}", self.node.path().display());
        let mut command = vec![
            namespace.as_str(),
            "podman",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
        ];
        command.extend_from_slice(args);
        let output = Command::new("nsenter")
            .args(&command)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The body container `name` gets for `GET /` from `GATEWAY`:18188,
    /// empty when it gets nothing.
    fn get(&self, name: &str) -> String {
        let script =
            format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {GATEWAY} 18188 || true");
        self.podman(&["exec", name, "sh", "-c", &script])
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for PodNode {
    fn drop(&mut self) {
        let namespace = format!("--net={}", self.node.path().display());
        let _ = Command::new("nsenter")
            .args([
                namespace.as_str(),
                "podman",
                "pod",
                "rm",
                "--force",
                &self.pod,
            ])
            .env("CONTAINERS_CONF", &self.conf)
            .output();
    }
}

#[test]
fn a_member_of_the_granted_containers_pod_is_refused() {
    require_root();
    ensure_podman_image(IMAGE).unwrap();
    ensure_podman_infra_image(INFRA_IMAGE).unwrap();
    let root = Cgroup::new_test_root(&unique_name("nbpp")).unwrap();
    let helpers = root.child("helpers").unwrap();
    let work = tempfile::Builder::new()
        .prefix("netbpf-pod-")
        .tempdir()
        .unwrap();
    let conf = work.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
    )
    .unwrap();
    let pods = PodNode {
        pod: unique_name("nbpod"),
        conf,
        node: Netns::new("nbpodn").unwrap(),
    };
    let _service: Process = Site {
        cgroup: &helpers,
        netns: &pods.node,
    }
    .start_http_server(work.path(), "127.0.0.1", 18188, ANSWER)
    .unwrap();
    let parent = root.runtime_parent().unwrap();
    pods.podman(&[
        "pod",
        "create",
        "--name",
        &pods.pod,
        "--cgroup-parent",
        &parent,
        "--infra-image",
        INFRA_IMAGE,
    ]);
    let run = |name: &str| {
        pods.podman(&[
            "run", "--detach", "--pod", &pods.pod, "--name", name, IMAGE, "sleep", "600",
        ])
    };
    let granted = run(&unique_name("nbpa"));
    let member = run(&unique_name("nbpb"));
    // The granted member's own cgroup, below the pod's.
    let cgroup = run_checked(
        "sh",
        [
            "-c",
            &format!(
                "find {} -type d -name 'libpod-{granted}*' | head -1",
                root.path().display()
            ),
        ],
    )
    .unwrap();
    assert!(!cgroup.trim().is_empty(), "no cgroup of {granted}");
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n\
             [[host_service]]\nname = \"svc\"\nlisten = \"127.0.0.1:18188\"\n\
             [[scope]]\nname = \"granted\"\nmatch = {{ cgroup = \"{}\" }}\n\
             host_services = [{{ service = \"svc\", dial = \"{GATEWAY}:18188\" }}]\n",
            cgroup.trim()
        ),
    )
    .unwrap();
    let netbpf = NetbpfRun::start_with(
        &netbpf_binary(),
        &policy,
        root.path(),
        work.path(),
        &["--netns", pods.node.path().to_str().unwrap()],
    )
    .unwrap();
    let status = netbpf
        .wait_for_status(Duration::from_secs(10), |status| {
            applied(status).len() == 1 && status["scopes"][0]["error"].is_null()
        })
        .unwrap();
    assert_eq!(
        status["scopes"][0]["grants"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    assert_eq!(pods.get(&granted), ANSWER);
    assert_eq!(
        pods.get(&member),
        "",
        "a member of the granted container's pod reached the service"
    );
    let status = netbpf.status_json().unwrap();
    assert_eq!(status["host_services"][0]["borrowed"], 1, "{status}");
    assert!(netbpf.stop().unwrap().success());
}
