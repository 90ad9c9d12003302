//! What `netbpf run` leaves on the host: no iptables rule, no sysctl, and
//! after it exits, no program, link or pin; an invalid policy loads
//! nothing at all.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use netbpf_testenv::{
    AgentOptions, AgentSetup, BRIDGE_V4, DesktopTopology, KernelMaps, NetbpfRun, Place, Site,
    bpftool_json, cgroup_id, netbpf_binary, require_root, run_checked,
};

fn topology() -> DesktopTopology {
    require_root();
    DesktopTopology::new().expect("building the desktop topology")
}

/// `netbpf run` with `policy`, attached to the topology's cgroup root.
fn start(topology: &DesktopTopology, policy: &Path) -> NetbpfRun {
    NetbpfRun::start(
        &netbpf_binary(),
        policy,
        topology.root.path(),
        topology.work.path(),
    )
    .unwrap()
}

fn desktop_policy(topology: &DesktopTopology) -> std::path::PathBuf {
    let policy = format!(
        "version = 1\n\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n  \
         {{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\", proto = \"both\" }},\n]\n",
        topology.desktop.path().display()
    );
    let file = topology.file("policy.toml");
    std::fs::write(&file, policy).unwrap();
    file
}

/// iptables rules without what changes by itself: comment lines (they
/// carry a date) and packet counters.
fn rules(program: &str, netns: Option<&str>) -> String {
    let output = match netns {
        Some(name) => run_checked("ip", ["netns", "exec", name, program]),
        None => run_checked(program, [] as [&str; 0]),
    }
    .unwrap_or_else(|error| panic!("{error:#}"));
    output
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.rfind(" [") {
            Some(at) if line.starts_with(':') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `route_localnet` sysctl of a namespace, with its value.
fn route_localnet(netns: Option<&str>) -> String {
    let script = "grep -H . /proc/sys/net/ipv4/conf/*/route_localnet";
    match netns {
        Some(name) => run_checked("ip", ["netns", "exec", name, "sh", "-c", script]),
        None => run_checked("sh", ["-c", script]),
    }
    .unwrap()
}

/// The host's and the desktop namespace's iptables rules and sysctls.
fn host_network_config(topology: &DesktopTopology) -> Vec<String> {
    let desktop = Some(topology.desktop_ns.name());
    let mut snapshot = Vec::new();
    for netns in [None, desktop] {
        snapshot.push(rules("iptables-save", netns));
        snapshot.push(rules("ip6tables-save", netns));
        snapshot.push(route_localnet(netns));
    }
    snapshot
}

#[test]
fn needs_no_iptables_rule_and_no_sysctl() {
    let topology = topology();
    let before = host_network_config(&topology);
    let policy = desktop_policy(&topology);
    let netbpf = start(&topology, &policy);
    let _server = topology
        .start_http_server(BRIDGE_V4, 8082, "bridge")
        .unwrap();
    let (_, body) = topology
        .curl(Place::Desktop, "http://localhost:8082/")
        .unwrap();
    assert_eq!(body, "bridge");
    let during = host_network_config(&topology);
    assert!(netbpf.stop().unwrap().success());
    assert_eq!(
        before, during,
        "iptables rules or route_localnet changed while netbpf ran"
    );
    assert_eq!(
        before,
        host_network_config(&topology),
        "iptables rules or route_localnet changed"
    );
}

/// Program ids in a `bpftool -j` listing whose objects carry `prog_id`.
fn prog_ids_in(listing: &serde_json::Value, field: &str) -> BTreeSet<u64> {
    listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry[field].as_u64())
        .collect()
}

/// Runs `netbpf run` with `policy` and `run_dir`, which must fail; returns
/// what it printed on stderr.
fn run_to_failure(topology: &DesktopTopology, policy: &Path, run_dir: &Path) -> String {
    let output = Command::new(netbpf_binary())
        .args(["run", "--policy"])
        .arg(policy)
        .arg("--cgroup-root")
        .arg(topology.root.path())
        .arg("--run-dir")
        .arg(run_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "netbpf run succeeded: {stderr}");
    stderr
}

/// Ids of the programs attached to the cgroup at `path`.
fn attached_to(path: &str) -> BTreeSet<u64> {
    prog_ids_in(&bpftool(&["cgroup", "show", path]), "id")
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    bpftool_json(args).unwrap_or_else(|error| panic!("{error:#}"))
}

#[test]
fn leaves_no_program_link_or_pin_after_it_exits() {
    let topology = topology();
    let policy = desktop_policy(&topology);
    let netbpf = start(&topology, &policy);
    let programs = netbpf.programs().unwrap();
    // Every socket hook has its program; a policy without MSS clamps or
    // host services loads neither the tc nor the sk_lookup program.
    assert_eq!(programs.len(), 13, "{programs:?}");
    assert!(
        !programs.keys().any(|name| name.starts_with("netbpf_mss")),
        "{programs:?}"
    );
    let ours: BTreeSet<u64> = programs.values().copied().collect();
    let root = topology.root.path().to_str().unwrap();

    // While it runs, the kernel shows them attached to the test's cgroup
    // through links.
    assert_eq!(attached_to(root), ours, "bpftool cgroup show {root}");
    let linked = prog_ids_in(&bpftool(&["link", "show"]), "prog_id");
    assert!(
        ours.is_subset(&linked),
        "every program is attached by a bpf link"
    );
    let run_dir = netbpf.run_dir().to_owned();
    let maps = KernelMaps::of(&netbpf).unwrap();

    assert!(netbpf.stop().unwrap().success(), "SIGTERM is a clean exit");
    assert_eq!(
        attached_to(root),
        BTreeSet::new(),
        "programs left on {root}"
    );
    let programs = prog_ids_in(&bpftool(&["prog", "show"]), "id");
    assert!(
        programs.is_disjoint(&ours),
        "programs left loaded: {:?}",
        programs.intersection(&ours)
    );
    let links = prog_ids_in(&bpftool(&["link", "show"]), "prog_id");
    assert!(
        links.is_disjoint(&ours),
        "links left: {:?}",
        links.intersection(&ours)
    );
    assert!(
        !run_dir.exists(),
        "run directory {} left behind",
        run_dir.display()
    );
    // A pin (or any other reference) would keep a map in the kernel.
    assert_eq!(
        maps.remaining(Duration::from_secs(5)).unwrap(),
        Vec::<String>::new(),
        "maps left in the kernel"
    );
    let pins = run_checked("find", ["/sys/fs/bpf", "-name", "netbpf*"]).unwrap();
    assert!(pins.trim().is_empty(), "pins left: {pins}");
}

#[test]
fn sigint_stops_it_as_cleanly_as_sigterm() {
    let topology = topology();
    let policy = desktop_policy(&topology);
    let mut netbpf = start(&topology, &policy);
    let root = topology.root.path().to_str().unwrap();
    let status = netbpf.signal(nix::sys::signal::Signal::SIGINT).unwrap();
    assert!(status.success());
    assert_eq!(
        attached_to(root),
        BTreeSet::new(),
        "programs left on {root}"
    );
}

/// Under systemd (`Type=notify`), what is ordered after netbpf (Docker, a
/// container's unit) starts when netbpf says READY=1: by then its programs
/// are attached. Told when it was exec'd instead, a container started at
/// boot could connect before them.
#[test]
fn tells_systemd_it_is_ready_once_its_programs_are_attached() {
    let topology = topology();
    let root = topology.root.path().to_str().unwrap();
    let notify = topology.file("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut setup = AgentSetup::new(
        topology.work.path(),
        topology.root.path(),
        AgentOptions::default(),
    )
    .unwrap();
    setup.process.notify_socket = Some(notify);
    let told = |socket: &std::os::unix::net::UnixDatagram| {
        let mut datagram = [0; 256];
        let length = socket
            .recv(&mut datagram)
            .expect("netbpf told NOTIFY_SOCKET nothing within 30 s");
        String::from_utf8_lossy(&datagram[..length]).into_owned()
    };
    let (ready, attached_when_ready, agent) = std::thread::scope(|scope| {
        let agent = scope.spawn(|| setup.start("notify"));
        let ready = told(&socket);
        let attached = attached_to(root).len();
        (ready, attached, agent.join().unwrap())
    });
    let mut agent = agent.unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(ready, "READY=1\n");
    assert_eq!(
        attached_when_ready, 13,
        "programs attached to {root} when netbpf said it was ready"
    );
    assert!(
        agent
            .signal(nix::sys::signal::Signal::SIGTERM)
            .unwrap()
            .success()
    );
    assert_eq!(told(&socket), "STOPPING=1\n");
}

#[test]
fn a_second_instance_on_the_same_run_directory_is_refused() {
    let topology = topology();
    let policy = desktop_policy(&topology);
    let first = start(&topology, &policy);
    let root = topology.root.path().to_str().unwrap();
    let attached = attached_to(root);

    let stderr = run_to_failure(&topology, &policy, first.run_dir());
    assert!(stderr.contains("another netbpf is running"), "{stderr}");
    assert_eq!(
        attached_to(root),
        attached,
        "the second instance attached nothing"
    );
    first
        .status_json()
        .expect("the first instance still serves its status");
    assert!(first.stop().unwrap().success());
}

#[test]
fn an_invalid_policy_loads_nothing_and_says_where() {
    let topology = topology();
    let file = topology.file("policy.toml");
    std::fs::write(
        &file,
        format!(
            "version = 1\n[[scope]]\nname = \"desktop\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n  \
             {{ from = \"localhost:8082\", to = \"10.200.1.1:8082\" }},\n  \
             {{ from = \"localhost:8000-8100\", to = \"10.200.1.1:9000-9001\" }},\n]\n",
            topology.desktop.path().display()
        ),
    )
    .unwrap();
    let stderr = run_to_failure(&topology, &file, &topology.file("run"));
    let expected = format!("{}:7:", file.display());
    assert!(stderr.contains(&expected), "file and line in: {stderr}");
    assert!(
        stderr.contains("scope[0].forward[1].to"),
        "field in: {stderr}"
    );
    assert!(stderr.contains("same length"), "reason in: {stderr}");
    let root = topology.root.path().to_str().unwrap();
    assert_eq!(
        attached_to(root),
        BTreeSet::new(),
        "nothing may be attached"
    );
    assert!(!topology.file("run").exists(), "nothing may be created");
}

/// Waits for `netbpf status` to list `count` scope instances.
fn wait_for_instances(netbpf: &NetbpfRun, count: usize) {
    netbpf
        .wait_for_status(std::time::Duration::from_secs(5), |status| {
            status["scopes"]
                .as_array()
                .is_some_and(|scopes| scopes.len() == count)
        })
        .unwrap();
}

#[test]
fn a_scope_applies_to_a_cgroup_that_appears_after_netbpf_started_and_leaves_with_it() {
    let topology = topology();
    let _server = topology
        .start_http_server(BRIDGE_V4, 8082, "bridge")
        .unwrap();
    let file = topology.file("policy.toml");
    std::fs::write(
        &file,
        format!(
            "version = 1\n[[scope]]\nname = \"later\"\nmatch = {{ cgroup = \"{}/later-*\" }}\n\
             forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}]\n",
            topology.root.path().display()
        ),
    )
    .unwrap();
    let netbpf = start(&topology, &file);
    assert_eq!(
        netbpf.status_json().unwrap()["scopes"],
        serde_json::json!([]),
        "nothing matches yet"
    );

    let later = topology.root.child("later-1").unwrap();
    wait_for_instances(&netbpf, 1);
    let site = Site {
        cgroup: &later,
        netns: &topology.desktop_ns,
    };
    assert_eq!(site.curl("http://localhost:8082/").unwrap().1, "bridge");
    let status = netbpf.status_json().unwrap();
    assert_eq!(status["scopes"][0]["name"], "later/later-1", "{status}");
    assert_eq!(
        status["scopes"][0]["forwards"][0]["connects"], 1,
        "{status}"
    );
    assert_eq!(status["discovery"]["delays_measured"], 1, "{status}");
    let maps = KernelMaps::of(&netbpf).unwrap();
    assert_eq!(
        maps.cgroup_keys("CGROUP_SCOPES").unwrap(),
        [cgroup_id(later.path()).unwrap()]
    );
    assert_eq!(maps.entries("FORWARD_PORTS").unwrap(), 1);

    // Gone: nothing of it stays in the maps.
    drop(later);
    wait_for_instances(&netbpf, 0);
    for map in ["CGROUP_SCOPES", "FORWARD_PORTS", "FORWARDS"] {
        assert_eq!(maps.entries(map).unwrap(), 0, "{map} in the kernel");
    }
    assert!(netbpf.stop().unwrap().success());
}

/// The inotify watches `pid` holds, from its descriptors' fdinfo.
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        // A descriptor closed meanwhile has no fdinfo left to read.
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        watches += info
            .lines()
            .filter(|line| line.starts_with("inotify wd:"))
            .count();
    }
    watches
}

#[test]
fn cgroups_that_went_leave_no_inotify_watch_behind() {
    // The kernel ends the watch of a removed cgroup only once its inode is
    // evicted: a node that ran many containers would run out of
    // fs.inotify.max_user_watches, and the agent's memory would grow.
    let topology = topology();
    let file = topology.file("policy.toml");
    std::fs::write(
        &file,
        format!(
            "version = 1\n[[scope]]\nname = \"gone\"\nmatch = {{ cgroup = \"{}/gone-*\" }}\n\
             forward = [{{ from = \"localhost:8082\", to = \"{BRIDGE_V4}:8082\" }}]\n",
            topology.root.path().display()
        ),
    )
    .unwrap();
    let netbpf = start(&topology, &file);
    let before = inotify_watches(netbpf.pid());
    let cgroups: Vec<_> = (0..40)
        .map(|i| {
            let cgroup = topology.root.child(&format!("gone-{i}")).unwrap();
            let inner = cgroup.child("inner").unwrap();
            (cgroup, inner)
        })
        .collect();
    wait_for_instances(&netbpf, 40);
    assert_eq!(
        inotify_watches(netbpf.pid()),
        before + 80,
        "a watch per cgroup made"
    );
    drop(cgroups);
    wait_for_instances(&netbpf, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while inotify_watches(netbpf.pid()) != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        inotify_watches(netbpf.pid()),
        before,
        "the watches of the removed cgroups are ended"
    );
}

#[test]
fn coexists_with_programs_other_tools_attached_to_the_same_cgroup() {
    let topology = topology();
    let _bridge = topology
        .start_http_server(BRIDGE_V4, 8082, "bridge")
        .unwrap();
    let root = topology.root.path().to_str().unwrap();
    // Another tool's programs on the same cgroup: a second netbpf, for
    // processes outside the desktop scope.
    let other_dir = topology.file("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other_policy = other_dir.join("policy.toml");
    std::fs::write(
        &other_policy,
        format!(
            "version = 1\n[[scope]]\nname = \"other\"\nmatch = {{ cgroup = \"{}\" }}\nforward = [\n  \
             {{ from = \"localhost:9082\", to = \"{BRIDGE_V4}:8082\" }},\n]\n",
            topology.outside.path().display()
        ),
    )
    .unwrap();
    let other = NetbpfRun::start(
        &netbpf_binary(),
        &other_policy,
        topology.root.path(),
        &other_dir,
    )
    .unwrap();
    let theirs = attached_to(root);

    let ours = NetbpfRun::start(
        &netbpf_binary(),
        &desktop_policy(&topology),
        topology.root.path(),
        topology.work.path(),
    )
    .unwrap();
    assert_eq!(
        attached_to(root).len(),
        theirs.len() * 2,
        "both sets attached side by side"
    );
    let curl = |place: Place, url: &str| topology.curl(place, url).unwrap().1;
    assert_eq!(
        curl(Place::Desktop, "http://127.0.0.1:8082/"),
        "bridge",
        "ours works"
    );
    assert_eq!(
        curl(Place::Outside, "http://127.0.0.1:9082/"),
        "bridge",
        "theirs works"
    );

    assert!(ours.stop().unwrap().success());
    assert_eq!(
        attached_to(root),
        theirs,
        "stopping netbpf detaches only its own programs"
    );
    assert_eq!(
        curl(Place::Outside, "http://127.0.0.1:9082/"),
        "bridge",
        "theirs still works"
    );
    assert!(other.stop().unwrap().success());
}

#[test]
fn check_validates_a_policy_without_loading_anything() {
    let topology = topology();
    let good = desktop_policy(&topology);
    let root = topology.root.path();
    let check = |policy: &Path| {
        Command::new(netbpf_binary())
            .args(["check", "--policy"])
            .arg(policy)
            .output()
            .unwrap()
    };
    let output = check(&good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid: 1 scopes"));
    let bad = topology.file("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[scope]]\nname = \"x\"\nmatch = { cgroup = \"/no[where\" }\n",
    )
    .unwrap();
    let output = check(&bad);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":4:") && stderr.contains("scope[0].match.cgroup"),
        "{stderr}"
    );
    assert_eq!(
        attached_to(root.to_str().unwrap()),
        BTreeSet::new(),
        "check attaches nothing"
    );
}

#[test]
fn sighup_reloads_the_policy_and_a_bad_one_changes_nothing() {
    let topology = topology();
    let policy = desktop_policy(&topology);
    let _first = topology
        .start_http_server(BRIDGE_V4, 8082, "first")
        .unwrap();
    let _second = topology
        .start_http_server(BRIDGE_V4, 8083, "second")
        .unwrap();
    let mut netbpf = start(&topology, &policy);
    let curl = || {
        topology
            .curl(Place::Desktop, "http://localhost:8082/")
            .unwrap()
            .1
    };
    assert_eq!(curl(), "first");

    // Re-pointed, without restarting netbpf or the container.
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace(":8082\", proto", ":8083\", proto");
    std::fs::write(&policy, text).unwrap();
    let said = netbpf.reload().unwrap();
    assert!(said.contains("policy reloaded"), "{said}");
    assert_eq!(curl(), "second");

    // A policy that does not validate leaves the running one alone; so
    // says `netbpf reload`, which waits for the answer.
    std::fs::write(&policy, "version = 1\n[[scope]]\nname = 7\n").unwrap();
    let said = netbpf.reload().unwrap();
    assert!(
        said.contains("not reloaded") && said.contains(":3:"),
        "{said}"
    );
    let output = Command::new(netbpf_binary())
        .args(["reload", "--run-dir"])
        .arg(netbpf.run_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("policy.toml:3:"),
        "{stderr}"
    );
    assert_eq!(curl(), "second");
    assert!(netbpf.stop().unwrap().success());
}
