//! Host networking without port collisions, with real containers: three
//! Podman containers of one image share one network namespace (host
//! networking, in a namespace of the test's own) and each runs the same
//! server on :3000. Without netbpf the second and third cannot bind; with
//! netbpf each gets its own port, and each reaches "maindb" through an
//! alias that is re-pointed without restarting them.
//!
//! Privileged: run as root (`cargo xtask test`).

use std::{path::Path, process::Command, time::Duration};

use netbpf_testenv::{
    AgentOptions, AgentSetup, Cgroup, NetbpfRun, Netns, Process, Site, Spawn, ensure_podman_image,
    netbpf_binary, podman_run_args, require_root, run_checked, unique_name,
};

const IMAGE: &str = "localhost/netbpf-test-busybox:3";
const INSTANCES: [(&str, u16); 3] = [("one", 7041), ("two", 7042), ("three", 7043)];

/// Podman containers started by a test, removed when dropped.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "0", name])
                .output();
        }
    }
}

/// The shared "host" network namespace, two databases beyond it, and a
/// cgroup per instance under the cgroup netbpf attaches to.
struct Hosts {
    containers: Containers,
    _databases: Vec<Process>,
    root: Cgroup,
    instances: Vec<Cgroup>,
    helpers: Cgroup,
    host: Netns,
    _database_nets: [Netns; 2],
    work: tempfile::TempDir,
}

impl Hosts {
    fn new() -> Self {
        require_root();
        ensure_podman_image(IMAGE).unwrap();
        let root = Cgroup::new_test_root(&unique_name("nbp")).unwrap();
        // Named as systemd and Quadlet name template instances: the port
        // each instance gets is in its name.
        let instances = INSTANCES
            .iter()
            .map(|(_, port)| root.child(&format!("onetime@{port}")).unwrap())
            .collect();
        let helpers = root.child("helpers").unwrap();
        let host = Netns::new("nbhnet").unwrap();
        let databases = [Netns::new("nbdb").unwrap(), Netns::new("nbdb").unwrap()];
        let work = tempfile::Builder::new()
            .prefix("netbpf-hostnet-")
            .tempdir()
            .unwrap();
        let mut servers = Vec::new();
        for (index, (database, answer)) in databases.iter().zip(["db-one", "db-two"]).enumerate() {
            let (host_side, db_side) = host.veth_to(database).unwrap();
            host.ip(&[
                "addr",
                "add",
                &format!("10.60.{index}.1/24"),
                "dev",
                &host_side,
            ])
            .unwrap();
            host.ip(&["link", "set", &host_side, "up"]).unwrap();
            database
                .ip(&[
                    "addr",
                    "add",
                    &format!("10.60.{index}.2/24"),
                    "dev",
                    &db_side,
                ])
                .unwrap();
            database.ip(&["link", "set", &db_side, "up"]).unwrap();
            let reply = format!("SYSTEM:echo {answer}");
            let site = Site {
                cgroup: &helpers,
                netns: database,
            };
            let server = site
                .start_server(
                    "socat",
                    &["TCP-LISTEN:6379,fork,reuseaddr", &reply],
                    6379,
                    "tcp",
                    &work.path().join(format!("{answer}.log")),
                )
                .unwrap();
            servers.push(server);
        }
        Self {
            containers: Containers(Vec::new()),
            _databases: servers,
            root,
            instances,
            helpers,
            host,
            _database_nets: databases,
            work,
        }
    }

    /// Starts instance `index` of the image: the same server on :3000.
    fn start_instance(&mut self, index: usize) -> String {
        let name = unique_name("nbi");
        let command = self.instance_command(&name, &self.instances[index], index, &[], &[]);
        run_checked("podman", &command).unwrap_or_else(|error| panic!("{error:#}"));
        self.containers.0.push(name.clone());
        name
    }

    /// The `podman` arguments that start instance `index` as `name` in
    /// `cgroup`, on the shared network, its server on :3000 from its first
    /// instruction; `global` go before `run`, `options` after it.
    fn instance_command(
        &self,
        name: &str,
        cgroup: &Cgroup,
        index: usize,
        global: &[&str],
        options: &[&str],
    ) -> Vec<String> {
        let server = format!(
            "echo instance-{} > /www/index.html; exec httpd -f -p 3000 -h /www",
            INSTANCES[index].0
        );
        self.run_command(name, cgroup, global, options, &server)
    }

    /// The `podman` arguments that run `script` in a container `name` in
    /// `cgroup`, on the shared network; `global` go before `run`, `options`
    /// after it.
    fn run_command(
        &self,
        name: &str,
        cgroup: &Cgroup,
        global: &[&str],
        options: &[&str],
        script: &str,
    ) -> Vec<String> {
        podman_run_args(
            name,
            cgroup,
            &self.host,
            global,
            options,
            IMAGE,
            &["/bin/sh", "-c", script],
        )
        .unwrap()
    }

    /// The container's state after a moment: running, or its exit code.
    fn exit_code(name: &str) -> Option<i32> {
        std::thread::sleep(Duration::from_millis(500));
        let state = run_checked(
            "podman",
            [
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                name,
            ],
        )
        .unwrap();
        let mut fields = state.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("true"), _) => None,
            (_, Some(code)) => Some(code.parse().unwrap()),
            _ => panic!("podman inspect said {state:?}"),
        }
    }

    /// What `port` on the shared network's loopback answers.
    fn get(&self, port: u16) -> String {
        self.curl(port).1
    }

    /// curl of `port` on the shared network's loopback: its exit code and
    /// the body it got.
    fn curl(&self, port: u16) -> (i32, String) {
        let url = format!("http://127.0.0.1:{port}/");
        let helpers = Site {
            cgroup: &self.helpers,
            netns: &self.host,
        };
        helpers.curl(&url).unwrap()
    }

    /// Nothing listens on :`port`: curl's connection is refused (exit 7),
    /// rather than timing out or answered.
    fn assert_refused(&self, port: u16, what: &str) {
        assert_eq!(self.curl(port), (7, String::new()), "{what}");
    }

    /// What "maindb" answers to a container, through its alias.
    fn ask_maindb(name: &str) -> String {
        run_checked(
            "podman",
            ["exec", name, "nc", "-w", "3", "10.99.99.99", "6379"],
        )
        .unwrap_or_else(|error| panic!("{error:#}"))
        .trim()
        .to_owned()
    }

    /// What the instance's own server answers it at `localhost:3000`: the
    /// port it asked for, not the one it got.
    fn ask_itself(name: &str) -> String {
        run_checked(
            "podman",
            [
                "exec",
                name,
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:3000/",
            ],
        )
        .unwrap_or_else(|error| panic!("{error:#}"))
        .trim()
        .to_owned()
    }

    /// A policy: one scope for every instance (a glob), each bind of :3000
    /// getting the port in the instance's name, and maindb at `database`.
    fn policy(&self, database: &str) -> std::path::PathBuf {
        let policy = format!(
            "version = 1\n\n[[scope]]\nname = \"onetime\"\nmatch = {{ cgroup = \"{}/onetime@*\" }}\n\
             bind = [{{ port = 3000, to = \"@\" }}]\n\
             alias = [{{ from = \"10.99.99.99:6379\", to = \"{database}:6379\" }}]\n",
            self.root.path().display()
        );
        let file = self.work.path().join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        file
    }

    fn netbpf(&self, policy: &Path) -> NetbpfRun {
        let dir = self.work.path().join(unique_name("run"));
        std::fs::create_dir(&dir).unwrap();
        NetbpfRun::start_with(
            &netbpf_binary(),
            policy,
            self.root.path(),
            &dir,
            &["--netns", self.host.path().to_str().unwrap()],
        )
        .unwrap()
    }
}

#[test]
fn three_instances_on_one_network_each_get_their_port_and_reach_maindb_by_alias() {
    let mut hosts = Hosts::new();

    // Today: the second and third instance cannot bind :3000.
    let first = hosts.start_instance(0);
    let second = hosts.start_instance(1);
    let third = hosts.start_instance(2);
    assert_eq!(Hosts::exit_code(&first), None, "the first instance runs");
    assert_ne!(
        Hosts::exit_code(&second),
        None,
        "the second fails to bind :3000"
    );
    assert_ne!(
        Hosts::exit_code(&third),
        None,
        "the third fails to bind :3000"
    );
    assert_eq!(hosts.get(3000), "instance-one");
    drop(std::mem::replace(
        &mut hosts.containers,
        Containers(Vec::new()),
    ));

    // With netbpf, all three run, each on its own port.
    let mut netbpf = hosts.netbpf(&hosts.policy("10.60.0.2"));
    let names: Vec<String> = (0..INSTANCES.len())
        .map(|index| hosts.start_instance(index))
        .collect();
    for (name, (instance, port)) in names.iter().zip(INSTANCES) {
        assert_eq!(Hosts::exit_code(name), None, "instance {instance} runs");
        assert_eq!(
            hosts.get(port),
            format!("instance-{instance}"),
            "instance {instance} answers on :{port}"
        );
        assert_eq!(
            Hosts::ask_maindb(name),
            "db-one",
            "instance {instance} reaches maindb"
        );
        assert_eq!(
            Hosts::ask_itself(name),
            format!("instance-{instance}"),
            "instance {instance} reaches itself at :3000"
        );
    }
    hosts.assert_refused(3000, "no instance got :3000 itself");
    let status = netbpf.status_json().unwrap();
    assert_eq!(status["scopes"][2]["binds"][0]["binds"], 1, "{status}");
    assert_eq!(status["scopes"][0]["aliases"][0]["connects"], 1, "{status}");

    // maindb moves: the alias is re-pointed (SIGHUP), the containers and
    // netbpf keep running.
    hosts.policy("10.60.1.2");
    let said = netbpf.reload().unwrap();
    assert!(said.contains("policy reloaded"), "{said}");
    for (name, (instance, port)) in names.iter().zip(INSTANCES) {
        assert_eq!(
            Hosts::ask_maindb(name),
            "db-two",
            "instance {instance} follows the alias"
        );
        assert_eq!(
            hosts.get(port),
            format!("instance-{instance}"),
            "instance {instance} still answers"
        );
    }
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn a_remap_never_gives_an_unprivileged_process_a_privileged_port() {
    require_root();
    let root = Cgroup::new_test_root(&unique_name("nbq")).unwrap();
    let app = root.child("app").unwrap();
    let netns = Netns::new("nbpriv").unwrap();
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[[scope]]\nname = \"app\"\nmatch = {{ cgroup = \"{}\" }}\n\
             bind = [{{ port = 3000, to = 80 }}, {{ port = 3001, to = 8080 }}]\n",
            app.path().display()
        ),
    )
    .unwrap();
    let netbpf = NetbpfRun::start(&netbpf_binary(), &policy, root.path(), work.path()).unwrap();
    // As nobody: :3000 would become :80 and is refused, :3001 becomes
    // :8080, and getsockname() tells the port the kernel gave.
    let script = "import os, socket\n\
                  os.setuid(65534)\n\
                  for port in (3000, 3001):\n    \
                      s = socket.socket()\n    \
                      try:\n        \
                          s.bind(('127.0.0.1', port)); print(port, 'got', s.getsockname()[1])\n    \
                      except PermissionError:\n        \
                          print(port, 'refused')\n";
    let output = Spawn::new(app.path(), Some(&netns.path()), "python3", ["-c", script])
        .unwrap()
        .output(Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "3000 refused\n3001 got 8080\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(netbpf.stop().unwrap().success());
}

#[test]
fn instances_started_at_once_each_get_the_port_in_their_name_before_they_run() {
    let mut hosts = Hosts::new();
    let hooked = hosts.root.child("hooked").unwrap();
    let setup = AgentSetup::new(
        hosts.work.path(),
        hosts.root.path(),
        AgentOptions::default(),
    )
    .unwrap();
    setup
        .policy(
            "onetime.toml",
            "version = 1\n[[scope]]\nname = \"onetime\"\nmatch = { container = \"onetime-{port}\" }\n\
             bind = [{ port = 3000, to = \"{port}\" }]\n",
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    // The hook Podman runs before each container's first process: it
    // returns once the container's remap is in the maps.
    let hooks = hosts.work.path().join("hooks.d");
    std::fs::create_dir(&hooks).unwrap();
    let run_dir = agent.run_dir().display().to_string();
    std::fs::write(
        hooks.join("netbpf.json"),
        serde_json::json!({
            "version": "1.0.0",
            "hook": {
                "path": netbpf_binary(),
                "args": ["netbpf", "hook", "--require", "--run-dir", run_dir],
            },
            "when": { "always": true },
            "stages": ["createRuntime"],
        })
        .to_string(),
    )
    .unwrap();
    let hooks = hooks.display().to_string();

    for round in 0..3 {
        // Three instances at once, each binding :3000 as its first act;
        // after the first round, as Quadlet's units run them: removed when
        // they stop, which Podman's storage lists apart.
        let options: &[&str] = if round == 0 {
            &[]
        } else {
            &["--rm", "--replace"]
        };
        let starts: Vec<std::process::Child> = INSTANCES
            .iter()
            .enumerate()
            .map(|(index, (_, port))| {
                let name = format!("onetime-{port}");
                hosts.containers.0.push(name.clone());
                let command = hosts.instance_command(
                    &name,
                    &hooked,
                    index,
                    &["--hooks-dir", &hooks],
                    options,
                );
                Command::new("podman")
                    .args(&command)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for start in starts {
            let output = start.wait_with_output().unwrap();
            assert!(output.status.success(), "round {round}: podman run failed");
        }
        for (instance, port) in INSTANCES {
            let name = format!("onetime-{port}");
            assert_eq!(Hosts::exit_code(&name), None, "round {round}: {name} runs");
            assert_eq!(
                hosts.get(port),
                format!("instance-{instance}"),
                "round {round}: {name} answers on :{port}"
            );
        }
        hosts.assert_refused(
            3000,
            &format!("round {round}: no instance got :3000 itself"),
        );
        drop(std::mem::replace(
            &mut hosts.containers,
            Containers(Vec::new()),
        ));
    }
    assert!(agent.stop().unwrap().success());
}

/// Podman's events through a file, for the API service and the `podman
/// run` it reports on alike: the default, journald, is missing where no
/// systemd runs (the kernel VMs), and the service then reports nothing.
const EVENTS_TO_FILE: [&str; 2] = ["--events-backend", "file"];

/// The API service's own options: cgroups by hand, as the runs' (no
/// systemd to ask in the kernel VMs), and a log that says what it does.
const SERVICE_OPTIONS: [&str; 4] = ["--cgroup-manager", "cgroupfs", "--log-level", "debug"];

#[test]
fn podman_containers_are_named_by_its_api_service() {
    let mut hosts = Hosts::new();
    let socket = hosts.work.path().join("podman.sock");
    let _service = Spawn::new(
        hosts.helpers.path(),
        None,
        "podman",
        EVENTS_TO_FILE
            .iter()
            .chain(&SERVICE_OPTIONS)
            .copied()
            .chain([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ]),
    )
    .unwrap()
    .start(&hosts.work.path().join("podman-service.log"))
    .unwrap();
    let setup = AgentSetup::new(
        hosts.work.path(),
        hosts.root.path(),
        AgentOptions {
            podman: Some(&socket),
            ..AgentOptions::default()
        },
    )
    .unwrap();
    // The port comes from a label this time.
    setup
        .policy(
            "labelled.toml",
            "version = 1\n[[scope]]\nname = \"labelled\"\nmatch = { label = { \"app.port\" = \"{port}\" } }\n\
             bind = [{ port = 3000, to = \"{port}\" }]\n",
        )
        .unwrap();
    let agent = setup
        .start("agent")
        .unwrap_or_else(|error| panic!("{error:#}"));
    agent
        .wait_for_status(Duration::from_secs(10), |_| socket.exists())
        .unwrap();

    // No hook: the API's events name the container. It waits a moment
    // before it binds, as a server that starts slowly would.
    let name = unique_name("nbapi");
    run_checked(
        "podman",
        hosts.run_command(
            &name,
            &hosts.instances[0],
            &EVENTS_TO_FILE,
            &["--label", "app.port=7051"],
            "echo labelled > /www/index.html; sleep 2; exec httpd -f -p 3000 -h /www",
        ),
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    hosts.containers.0.push(name.clone());
    // A ceiling, not a measure: the kernel VMs emulate their CPU.
    let status = agent
        .wait_for_status(Duration::from_mins(1), |status| {
            status["scopes"][0]["instance"] == name.as_str()
        })
        .unwrap_or_else(|error| {
            let service = std::fs::read_to_string(hosts.work.path().join("podman-service.log"))
                .unwrap_or_default();
            panic!(
                "{error:#}\nthe agent's log:\n{}\nthe Podman API service's log:\n{service}",
                agent.log()
            )
        });
    assert_eq!(status["scopes"][0]["binds"][0]["to"], 7051, "{status}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hosts.get(7051), "labelled");
    assert!(agent.stop().unwrap().success());
}
