//! The table of localhost ports bound inside scopes, attacked: a container
//! that binds every port it can must not keep another scope's own service
//! from being left alone (never forwarded away).
//!
//! ```text
//!  victim: forward localhost:8082 -> 10.77.0.1:8083, its own server on 127.0.0.1:8082
//!  hog:    forward localhost:1024-9999 -> 10.77.0.1, binds up to 19,000
//!          sockets (the table holds 512 here)
//!  target  10.77.0.1:8083 answers "forwarded away", beyond the victim's veth
//! ```
//!
//! Privileged: run as root (`cargo xtask test`).

use std::time::{Duration, Instant};

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, Netns, Process, Site, require_root, unique_name,
};

/// Capacity of the local-binds table in this test: what the hog fills
/// many times over within its descriptors, wherever the test runs.
const LOCAL_BINDS: u32 = 512;

/// Raises its descriptor limit as far as it may, binds TCP and UDP ports
/// of 127.0.0.1 until it holds 19,000 sockets or nearly all it may, says
/// how many, and holds them.
const HOG: &str = "import resource, socket, time\n\
                   _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
                   resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
                   most = min(19000, hard - 64)\n\
                   held = []\n\
                   for port in range(1024, 65536):\n    \
                   for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n        \
                   if len(held) < most:\n            \
                   s = socket.socket(socket.AF_INET, kind)\n            \
                   try:\n                s.bind(('127.0.0.1', port))\n                held.append(s)\n            \
                   except OSError:\n                s.close()\n\
                   print(len(held), flush=True)\n\
                   time.sleep(600)\n";

#[test]
fn a_scope_that_binds_every_port_leaves_another_scopes_own_service_alone() {
    require_root();
    let root = Cgroup::new_test_root(&unique_name("nblb")).unwrap();
    let [victim_procs, hog_procs, helpers] =
        ["victim", "hog", "helpers"].map(|name| root.child(name).unwrap());
    let [victim, hog, target] =
        ["nblbv", "nblbh", "nblbt"].map(|prefix| Netns::new(prefix).unwrap());
    let work = tempfile::Builder::new()
        .prefix("netbpf-local-binds-")
        .tempdir()
        .unwrap();
    let (inside, outside) = victim.veth_to(&target).unwrap();
    victim
        .ip(&["addr", "add", "10.77.0.2/24", "dev", &inside])
        .unwrap();
    victim.ip(&["link", "set", &inside, "up"]).unwrap();
    target
        .ip(&["addr", "add", "10.77.0.1/24", "dev", &outside])
        .unwrap();
    target.ip(&["link", "set", &outside, "up"]).unwrap();
    let _target_server = Site {
        cgroup: &helpers,
        netns: &target,
    }
    .start_http_server(work.path(), "10.77.0.1", 8083, "forwarded away")
    .unwrap();

    let policy = format!(
        "version = 1\n\
         [[scope]]\nname = \"victim\"\nmatch = {{ cgroup = \"{}\" }}\n\
         forward = [{{ from = \"localhost:8082\", to = \"10.77.0.1:8083\" }}]\n\
         [[scope]]\nname = \"hog\"\nmatch = {{ cgroup = \"{}\" }}\n\
         forward = [{{ from = \"localhost:1024-9999\", to = \"10.77.0.1\" }}]\n",
        victim_procs.path().display(),
        hog_procs.path().display()
    );
    let setup = AgentSetup::new(work.path(), root.path(), AgentOptions::default()).unwrap();
    setup
        .configure(&format!("[capacity]\nlocal_binds = {LOCAL_BINDS}\n"))
        .unwrap();
    setup.policy("50-test.toml", &policy).unwrap();
    let netbpf = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    let victim_site = Site {
        cgroup: &victim_procs,
        netns: &victim,
    };
    assert_eq!(
        victim_site.curl("http://127.0.0.1:8082/").unwrap(),
        (0, "forwarded away".to_owned()),
        "the forward works while the victim serves nothing itself"
    );

    let hog_log = work.path().join("hog.log");
    let _hog: Process = Site {
        cgroup: &hog_procs,
        netns: &hog,
    }
    .spawn("python3", &["-c", HOG])
    .unwrap()
    .start(&hog_log)
    .unwrap();
    let deadline = Instant::now() + Duration::from_mins(2);
    let held: u64 = loop {
        let said = std::fs::read_to_string(&hog_log).unwrap_or_default();
        if let Ok(held) = said.trim().parse() {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the hog did not finish binding: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        held > 2 * u64::from(LOCAL_BINDS),
        "the hog holds only {held} sockets"
    );

    // The victim's own service starts after the hog took what it could.
    let _own = victim_site
        .start_http_server(work.path(), "127.0.0.1", 8082, "the victim's own")
        .unwrap();
    assert_eq!(
        victim_site.curl("http://127.0.0.1:8082/").unwrap(),
        (0, "the victim's own".to_owned()),
        "the victim's connection to its own service was forwarded away"
    );
    let status = netbpf.status_json().unwrap();
    let hog_forward = &status["scopes"][1]["forwards"][0];
    assert_eq!(status["scopes"][1]["scope"], "hog", "{status}");
    assert!(
        hog_forward["unrecorded_binds"].as_u64().unwrap() >= 500,
        "the hog's binds beyond its 16 ports are counted: {status}"
    );
    assert!(netbpf.stop().unwrap().success());
}
