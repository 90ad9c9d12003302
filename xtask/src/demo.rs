//! `cargo xtask demo`: localhost forwarding, shown on a throw-away
//! topology. A "desktop container" (its own network namespace and cgroup)
//! types `curl localhost:8082`; the server is published on another
//! bridge's gateway, 10.200.1.1:8082, as `docker run -p` would publish it.
//! Without netbpf the request fails; with netbpf it is answered, with no
//! iptables rule and no sysctl. Everything is removed at the end.

use std::{path::Path, time::Duration};

use netbpf_testenv::{BRIDGE_V4, DesktopTopology, NetbpfRun, Place};

use crate::{build, cmd, setup};

const URL: &str = "http://localhost:8082/";

pub fn demo(workspace: &Path) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask demo")?;
    setup::test_environment()?;
    let netbpf = build(workspace)?;

    step("Building a desktop container and a docker host with a bridge at 10.200.1.1/24");
    let topology = DesktopTopology::new()?;
    let _server = topology.start_http_server(
        BRIDGE_V4,
        8082,
        "hello from the server published on 10.200.1.1:8082",
    )?;
    println!(
        "  desktop container: network namespace {}, cgroup {}",
        topology.desktop_ns.name(),
        topology.desktop.path().display()
    );
    println!(
        "  docker host:       network namespace {}, server on {BRIDGE_V4}:8082",
        topology.host_ns.name()
    );

    step(&format!(
        "Without netbpf: curl {URL} in the desktop container"
    ));
    let (ok, said) = curl(&topology)?;
    println!(
        "  {} {said}",
        if ok {
            "answered:"
        } else {
            "failed, as users see it today:"
        }
    );

    let policy = format!(
        "version = 1\n\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n  {{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }},\n]\n",
        topology.desktop.path().display()
    );
    let policy_file = topology.file("demo-policy.toml");
    std::fs::write(&policy_file, &policy)?;
    step("The policy");
    print!("{policy}");

    step(&format!(
        "netbpf run --policy demo-policy.toml --cgroup-root {}",
        topology.root.path().display()
    ));
    let run = NetbpfRun::start(
        &netbpf,
        &policy_file,
        topology.root.path(),
        topology.work.path(),
    )?;

    step(&format!("With netbpf: curl {URL} in the desktop container"));
    let (ok, said) = curl(&topology)?;
    println!("  {} {said}", if ok { "answered:" } else { "FAILED:" });

    step("netbpf status");
    print!("{}", run.status(&[])?);

    step("Stopping netbpf (SIGTERM): it detaches everything it attached");
    let exit = run.stop()?;
    println!("  netbpf exited: {exit}; removing the topology");
    anyhow::ensure!(
        ok,
        "the desktop container did not reach the bridge server through netbpf"
    );
    Ok(())
}

/// curl in the desktop container: whether it succeeded, and what it said.
fn curl(topology: &DesktopTopology) -> anyhow::Result<(bool, String)> {
    let output = topology
        .spawn(
            Place::Desktop,
            "curl",
            &["--silent", "--show-error", "--max-time", "5", URL],
        )?
        .output(Duration::from_secs(10))?;
    let said = if output.status.success() {
        output.stdout
    } else {
        output.stderr
    };
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&said).trim().to_owned(),
    ))
}

fn step(title: &str) {
    println!("\n==> {title}");
}
