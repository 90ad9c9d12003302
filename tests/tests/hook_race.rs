//! The OCI hook's guarantee, raced: `netbpf hook --require` returns only
//! once the container's rules are in the maps, so a first process that
//! binds :3000 the instant the hook returns gets the port its scope remaps
//! it to, every time. A control run, whose hook the runtime does not wait
//! for, shows the race is real: it loses at least once.
//!
//! Each round is a container as Podman lays it out for the hook (its
//! cgroup `libpod-ID.scope`, its name in the storage's `containers.json`,
//! the OCI state on stdin), with a first process that waits for a signal
//! to bind.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, NetbpfRun, Netns, Process, Spawn, netbpf_binary,
    require_root, unique_name,
};
use nix::sys::signal::Signal;

/// Rounds of each run.
const ROUNDS: usize = 100;
/// The port the scope's processes bind, and where the remap puts it.
const ASKED: u16 = 3000;
const REMAPPED: u16 = 7100;

/// The container's first process: ready, then blocked until SIGUSR1, then
/// it binds :3000 and prints the port it got.
const FIRST_PROCESS: &str = "\
import signal, socket
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print('ready', flush=True)
signal.sigwait({signal.SIGUSR1})
s = socket.socket()
s.bind(('127.0.0.1', 3000))
print(s.getsockname()[1], flush=True)
";

/// An agent whose scope remaps :3000 for the containers named `raced-*`,
/// and the cgroup, namespace and Podman storage the rounds' containers
/// use.
struct Race {
    agent: NetbpfRun,
    _setup: AgentSetup,
    root: Cgroup,
    netns: Netns,
    storage: PathBuf,
    /// The containers so far, as Podman's `containers.json` lists them.
    stored: Vec<serde_json::Value>,
    work: tempfile::TempDir,
}

/// How the runtime treats the hook.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// Waits for it (as Podman does for `createRuntime`).
    WaitsForHook,
    /// Starts it and goes on at once: a hook that returns before the rules
    /// are in the maps.
    GoesOnAtOnce,
}

impl Race {
    fn new() -> Self {
        require_root();
        let root = Cgroup::new_test_root(&unique_name("nbrace")).unwrap();
        let netns = Netns::new("nbrace").unwrap();
        let work = tempfile::Builder::new()
            .prefix("netbpf-race-")
            .tempdir()
            .unwrap();
        let setup = AgentSetup::new(work.path(), root.path(), AgentOptions::default()).unwrap();
        setup
            .policy(
                "raced.toml",
                &format!(
                    "version = 1\n[[scope]]\nname = \"raced\"\nmatch = {{ container = \"raced-*\" }}\n\
                     bind = [{{ port = {ASKED}, to = {REMAPPED} }}]\n"
                ),
            )
            .unwrap();
        let agent = setup
            .start("agent")
            .unwrap_or_else(|error| panic!("{error:#}"));
        let storage = work.path().join("storage/overlay-containers");
        std::fs::create_dir_all(&storage).unwrap();
        Self {
            agent,
            _setup: setup,
            root,
            netns,
            storage,
            stored: Vec::new(),
            work,
        }
    }

    /// One round: a new container whose first process binds :3000 the
    /// instant `runtime` lets it run; the port it got.
    fn round(&mut self, round: usize, runtime: Runtime) -> u16 {
        let id = format!("{round:04x}{}", "ab".repeat(30));
        let bundle = self.storage.join(&id).join("userdata");
        std::fs::create_dir_all(&bundle).unwrap();
        self.stored
            .push(serde_json::json!({ "id": id, "names": [format!("raced-{round}")] }));
        std::fs::write(
            self.storage.join("containers.json"),
            serde_json::Value::Array(self.stored.clone()).to_string(),
        )
        .unwrap();
        let cgroup = self.root.child(&format!("libpod-{id}.scope")).unwrap();
        let mut first = self.first_process(&cgroup, round);
        let state = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": id,
            "status": "created",
            "pid": first.id(),
            "bundle": bundle,
            "annotations": { "io.container.manager": "libpod" },
        });
        let hook = self.hook(&state);
        match runtime {
            Runtime::WaitsForHook => {
                let output = hook.wait_with_output().unwrap();
                assert!(
                    output.status.success(),
                    "round {round}: the hook failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                first.signal(Signal::SIGUSR1).unwrap();
            }
            Runtime::GoesOnAtOnce => {
                first.signal(Signal::SIGUSR1).unwrap();
                assert!(hook.wait_with_output().unwrap().status.success());
            }
        }
        first.wait(Duration::from_secs(10)).unwrap();
        let said = first.log();
        let port = said
            .lines()
            .nth(1)
            .and_then(|line| line.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: the first process said {said:?}"));
        drop(first);
        self.forget(cgroup);
        port
    }

    /// The container's first process, in its cgroup, ready and waiting.
    fn first_process(&self, cgroup: &Cgroup, round: usize) -> Process {
        let process = Spawn::new(
            cgroup.path(),
            Some(&self.netns.path()),
            "python3",
            ["-c", FIRST_PROCESS],
        )
        .unwrap()
        .start(&self.work.path().join(format!("first-{round}.log")))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.log().starts_with("ready") {
            assert!(Instant::now() < deadline, "{}", process.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        process
    }

    /// `netbpf hook --require`, the container's OCI state on its stdin.
    fn hook(&self, state: &serde_json::Value) -> Child {
        let mut hook = Command::new(netbpf_binary())
            .args(["hook", "--require", "--run-dir"])
            .arg(self.agent.run_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = hook.stdin.take().unwrap();
        serde_json::to_writer(stdin, state).unwrap();
        hook
    }

    /// Removes the round's cgroup, and waits until the agent forgot it.
    fn forget(&self, cgroup: Cgroup) {
        drop(cgroup);
        self.agent
            .wait_for_status(Duration::from_secs(10), |status| {
                status["scopes"].as_array().is_some_and(Vec::is_empty)
            })
            .unwrap();
    }
}

/// The ports a run's rounds got, and how many got each.
fn tally(ports: &[u16]) -> Vec<(u16, usize)> {
    let mut tally: Vec<(u16, usize)> = Vec::new();
    for &port in ports {
        match tally.iter_mut().find(|(seen, _)| *seen == port) {
            Some((_, count)) => *count += 1,
            None => tally.push((port, 1)),
        }
    }
    tally
}

#[test]
fn a_first_process_binding_the_instant_the_hook_returns_gets_its_remap() {
    let mut race = Race::new();
    let ports: Vec<u16> = (0..ROUNDS)
        .map(|round| race.round(round, Runtime::WaitsForHook))
        .collect();
    assert_eq!(
        tally(&ports),
        [(REMAPPED, ROUNDS)],
        "the ports the first processes got"
    );
    assert!(race.agent.stop().unwrap().success());
}

#[test]
fn a_runtime_that_does_not_wait_for_the_hook_loses_the_race() {
    let mut race = Race::new();
    let mut ports = Vec::new();
    for round in 0..ROUNDS {
        ports.push(race.round(round, Runtime::GoesOnAtOnce));
        if ports.contains(&ASKED) {
            break;
        }
    }
    eprintln!("without waiting for the hook: {:?}", tally(&ports));
    assert!(
        ports.contains(&ASKED),
        "{ROUNDS} first processes all got their remap without waiting: the race is not raced"
    );
    assert!(race.agent.stop().unwrap().success());
}
