//! `cargo xtask demo`: the agent with real containers, on a throw-away
//! node. A Docker daemon runs in a network namespace of the demo's own, a
//! service is published on its bridge's gateway (10.203.0.1:8082, as
//! `docker run -p` publishes it), and `netbpf agent` runs with a policy
//! that names containers, not cgroup paths. A container started after
//! the agent reaches the service at `localhost:8082`; another one, which
//! the policy does not name, does not. The datapath stays in force while
//! the agent is stopped, and `netbpf uninstall` removes it. Everything the
//! demo made is removed at the end.

use std::path::Path;

use netbpf_testenv::{AgentOptions, AgentSetup, Cgroup, DockerDaemon, Site, unique_name};

use crate::{build, cmd, setup};

const IMAGE: &str = "localhost/netbpf-demo-busybox:1";
const GATEWAY: &str = "10.203.0.1";

pub fn demo(workspace: &Path) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask demo")?;
    setup::test_environment()?;
    let netbpf = build(workspace)?;
    // SAFETY: no other thread runs yet; the agent setup reads it.
    unsafe { std::env::set_var("NETBPF_BIN", &netbpf) };

    step(
        "A node of the demo's own: a Docker daemon in its own network namespace, bridge 10.203.0.1/24",
    );
    let root = Cgroup::new_test_root(&unique_name("nbdemo"))?;
    let containers = root.child("docker")?;
    let helpers = root.child("helpers")?;
    let work = tempfile::Builder::new().prefix("netbpf-demo-").tempdir()?;
    let docker = DockerDaemon::start(
        &containers,
        &helpers,
        &format!("{GATEWAY}/24"),
        &work.path().join("docker"),
    )?;
    docker.import_busybox(IMAGE)?;
    let _service = Site {
        cgroup: &helpers,
        netns: docker.netns(),
    }
    .start_http_server(
        work.path(),
        GATEWAY,
        8082,
        "hello from the service published on 10.203.0.1:8082",
    )?;
    println!("  dockerd answers on {}", docker.socket().display());

    let policy = format!(
        "version = 1\n\n[[scope]]\nname = \"desktop\"\nmatch = {{ container = \"desktop-*\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"{GATEWAY}:8082\" }}]\n"
    );
    let setup = AgentSetup::new(
        work.path(),
        root.path(),
        AgentOptions {
            docker: Some(docker.socket()),
            ..AgentOptions::default()
        },
    )?;
    setup.policy("desktop.toml", &policy)?;
    step("The policy (policy.d/desktop.toml): containers by name");
    print!("{policy}");

    step("netbpf agent: started before any container");
    let agent = setup.start("agent")?;
    println!(
        "  following the cgroups below {} and Docker's events; datapath pinned at {}",
        root.path().display(),
        setup.pin_dir.display()
    );

    step("docker run --name desktop-1 (matches) and --name other-1 (does not), after the agent");
    for name in ["desktop-1", "other-1"] {
        docker.docker(&["run", "--detach", "--name", name, IMAGE, "sleep", "600"])?;
    }
    agent.wait_for_status(std::time::Duration::from_secs(10), |status| {
        status["scopes"]
            .as_array()
            .is_some_and(|scopes| !scopes.is_empty())
    })?;
    let reached = ask(&docker, "desktop-1")?;
    println!("  desktop-1: localhost:8082 answers: {reached}");
    println!(
        "  other-1:   localhost:8082 answers: {}",
        ask(&docker, "other-1")?
    );

    step("netbpf status");
    print!("{}", agent.status(&[])?);

    step("Stopping the agent (SIGTERM): the pinned datapath stays in force");
    let exit = agent.stop()?;
    println!("  the agent exited: {exit}");
    println!(
        "  desktop-1: localhost:8082 answers: {}",
        ask(&docker, "desktop-1")?
    );

    step("netbpf uninstall: every program, link and map removed");
    let output = setup.uninstall()?;
    print!("  {}", String::from_utf8_lossy(&output.stdout));
    println!(
        "  desktop-1: localhost:8082 answers: {}",
        ask(&docker, "desktop-1")?
    );
    println!("\nRemoving the demo's node.");
    anyhow::ensure!(
        reached.contains("hello"),
        "desktop-1 did not reach the service through netbpf"
    );
    Ok(())
}

/// What container `name` gets for `GET /` at localhost:8082 (busybox nc),
/// or why it got nothing.
fn ask(docker: &DockerDaemon, name: &str) -> anyhow::Result<String> {
    let script = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8082 || echo 'nothing (connection refused)'";
    let response = docker.docker(&["exec", name, "sh", "-c", script])?;
    Ok(response
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

fn step(title: &str) {
    println!("\n==> {title}");
}
