//! The privileged tests on other kernels: a Debian kernel package booted
//! with virtme-ng in QEMU, the host's root file system shared in (so the
//! test binaries built here run there unchanged), cgroup v2 alone at
//! `/sys/fs/cgroup` as on most nodes. Each test binary's output and exit
//! code go to `target/vm/KERNEL/`, the one directory the guest may write.
//!
//! The VM runs without KVM (the nested CPU crashes the guest here), in
//! software emulation: several times slower than the host.
//!
//! The matrix's last column is this host itself (`--kernel host`): the
//! same binaries run here, on its kernel and its cgroup layout, so one
//! table covers both layouts.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    build, build_next, cmd, excerpt,
    image::{self, ImageArgs},
    setup,
};

/// `--kernel host`: not a VM, this machine.
const HOST: &str = "host";

/// The kernels `--kernels all` runs: two by the Debian package family that
/// carries each, then this host's.
pub const MATRIX: [&str; 3] = ["6.1", "6.12", HOST];

/// What `cargo xtask test` (and so CI) runs in a VM after the suite here:
/// the oldest kernel of the matrix, the one that differs most from this
/// host (an older verifier, no TCX, cgroup v2 alone), with the tests of the
/// socket hooks on every protocol, the largest program (the MSS clamp,
/// through the older verifier and a clsact qdisc) and the agent's start
/// (its probes, its policy directory). A few minutes; the whole matrix is
/// `--kernels all`.
/// `restart` and `host_services` differ most across kernels (pinned links
/// and their adoption; `sk_lookup` and the ingress interface it reads).
pub const CI_SUBSET: (&str, [&str; 5]) = (
    "6.1",
    [
        "lifecycle",
        "mss_differential",
        "agent",
        "restart",
        "host_services",
    ],
);

/// How long a guest may run before it is killed: a hung guest must not
/// hang CI. The whole matrix of one kernel takes about half of it.
const GUEST_LIMIT: Duration = Duration::from_mins(45);
/// The same for a guest that runs some test binaries only: CI's subset
/// takes about 5 minutes, and CI's whole run must end within 30.
const SUBSET_GUEST_LIMIT: Duration = Duration::from_mins(15);

/// How long the guest running `tests` (none named: all) may run.
fn guest_limit(tests: &[String]) -> Duration {
    if tests.is_empty() {
        GUEST_LIMIT
    } else {
        SUBSET_GUEST_LIMIT
    }
}

/// virtme-ng, pinned.
pub const VIRTME_NG: &str = "virtme-ng==1.42";

/// One test binary's outcome on one kernel.
struct Outcome {
    test: String,
    passed: usize,
    failed: usize,
    /// Whether the binary exited 0 (None: it never finished).
    success: Option<bool>,
    /// What its log says of its failure, when it did not succeed.
    failure: Option<String>,
}

/// Runs the test binaries `tests` (all privileged ones when empty) on each
/// of `kernels` (`6.1`, `6.12`, a vmlinuz path, or `host`) and prints one
/// table.
pub fn run(workspace: &Path, kernels: &[String], tests: &[String]) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask test --kernel")?;
    setup::test_environment()?;
    let vng = setup::python_tools(workspace, "virtme-ng", &[VIRTME_NG])?;
    let next = build_next(workspace)?;
    let netbpf = build(workspace)?;
    let binaries = test_binaries(workspace, tests)?;
    let image = if binaries.iter().any(|(name, _)| name == "deploy") {
        Some(image_archive(workspace)?)
    } else {
        None
    };
    let guest = Guest {
        netbpf: &netbpf,
        next: &next,
        image: image.as_deref(),
    };
    let mut table = Vec::new();
    for kernel in kernels {
        // The kernel to boot, or none: this host.
        let vm = (kernel != HOST)
            .then(|| kernel_image(workspace, kernel))
            .transpose()?;
        let (label, setup) = match &vm {
            Some((label, _)) => (label.clone(), guest_setup(guest.image)),
            None => (host_label()?, host_setup(guest.image)),
        };
        eprintln!("vm: {label}: {} test binaries", binaries.len());
        let out = workspace.join("target/vm").join(&label);
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        fs::create_dir_all(&out)?;
        let script = test_script(workspace, &binaries, &out, &guest, &setup)?;
        if let Some((_, vmlinuz)) = &vm {
            boot(&vng, vmlinuz, &script, &out, guest_limit(tests))?;
        } else {
            cmd::run(&mut Command::new(&script))?;
        }
        table.push((label, outcomes(&binaries, &out)));
    }
    print!("{}", summary(&table));
    let failed: Vec<String> = table
        .iter()
        .flat_map(|(label, outcomes)| {
            outcomes
                .iter()
                .filter(|outcome| outcome.success != Some(true))
                .map(move |outcome| {
                    let log = format!("target/vm/{label}/{}.log", outcome.test);
                    // The log stays in the guest's output directory, which a
                    // CI run does not keep: what failed is printed here.
                    if let Some(failure) = &outcome.failure {
                        eprintln!("\n==> {log}: how it failed\n{failure}");
                    }
                    format!("{} on {label} ({log})", outcome.test)
                })
        })
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The integration test binaries of the tests crate, built now as the
/// suite builds them (so `cargo xtask test` builds nothing twice): their
/// names (`localhost_forwarding`) and paths; only `wanted` ones if any.
fn test_binaries(workspace: &Path, wanted: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let listing = cmd::output(
        cmd::workspace_tests(workspace)
            .args(["--tests", "--no-run", "--message-format=json"])
            .stderr(Stdio::inherit()),
    )?;
    let tests_crate = workspace.join("tests/Cargo.toml");
    let mut binaries = Vec::new();
    for line in listing.lines() {
        let message: serde_json::Value = serde_json::from_str(line)?;
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"))
            && message["manifest_path"]
                .as_str()
                .is_some_and(|manifest| Path::new(manifest) == tests_crate);
        if let (true, Some(name), Some(path)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) && (wanted.is_empty() || wanted.iter().any(|test| test == name))
        {
            binaries.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    for test in wanted {
        if !binaries.iter().any(|(name, _)| name == test) {
            bail!("no test binary {test} in tests/tests/");
        }
    }
    binaries.sort();
    Ok(binaries)
}

/// The vmlinuz of `kernel`: a path as given, or the newest Debian package
/// of the family (`6.1`, `6.12`), downloaded and unpacked once under
/// target/kernels/. Its label names the release.
pub fn kernel_image(workspace: &Path, kernel: &str) -> anyhow::Result<(String, PathBuf)> {
    let path = Path::new(kernel);
    if path.is_file() {
        let label = path
            .file_name()
            .and_then(|name| name.to_str())
            .map_or("kernel", |name| name.trim_start_matches("vmlinuz-"))
            .to_owned();
        return Ok((label, path.to_owned()));
    }
    let pattern = match kernel {
        "6.1" => r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        "6.12" => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        other => bail!("--kernel {other}: give 6.1, 6.12, host or the path of a vmlinuz"),
    };
    let found = cmd::output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    let package = found
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by_key(|name| version_key(name))
        .with_context(|| format!("no Debian package matches {pattern} (apt-get update?)"))?
        .to_owned();
    let dir = workspace.join("target/kernels").join(&package);
    if !dir.join("boot").exists() {
        let downloads = workspace.join("target/kernels");
        fs::create_dir_all(&downloads)?;
        eprintln!("vm: downloading {package}");
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&downloads),
        )?;
        let deb = fs::read_dir(&downloads)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.extension().is_some_and(|extension| extension == "deb")
                    && path.file_name().is_some_and(|name| {
                        name.to_string_lossy().starts_with(&format!("{package}_"))
                    })
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        fs::remove_file(deb)?;
    }
    let vmlinuz = fs::read_dir(dir.join("boot"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    let label = vmlinuz
        .file_name()
        .map(|name| {
            name.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_owned()
        })
        .unwrap_or(package);
    Ok((label, vmlinuz))
}

/// The numbers in a package name, in order: what orders its versions.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|number| number.parse().ok())
        .collect()
}

/// What the guest's tests are given: the binaries they run, and the
/// agent's image for the deployment test.
struct Guest<'a> {
    netbpf: &'a Path,
    next: &'a Path,
    /// The agent's image saved as an archive, loaded into the guest's
    /// (empty) Podman storage.
    image: Option<&'a Path>,
}

/// The agent's debug image (`cargo xtask image --debug`), as the archive
/// it is saved in.
fn image_archive(workspace: &Path) -> anyhow::Result<PathBuf> {
    image::image(workspace, &ImageArgs { debug: true })?;
    Ok(image::archive(workspace, true))
}

/// What the guest does before the tests: bpffs mounted, the host's
/// `/etc/shadow`, `/dev/net/tun`, tmpfs where container runtimes keep their
/// storage (the guest sees the host's directories through an overlay,
/// which overlay storage drivers refuse to sit on), and the agent's image
/// loaded there if given.
fn guest_setup(image: Option<&Path>) -> String {
    // virtme-ng binds a shadow file of its own over /etc/shadow, with every
    // account locked; OpenSSH's server refuses a locked root, so the host
    // services test's tunnel could not log in. The host's own is used.
    let mut setup = String::from("mount -t bpf bpf /sys/fs/bpf\numount /etc/shadow 2>/dev/null\n");
    // wireguard-go needs /dev/net/tun, which 6.1's guest lacks: its module
    // loaded, its node made.
    setup.push_str(
        "modprobe tun 2>/dev/null\n[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }\n",
    );
    for dir in ["/tmp", "/var/lib/containers", "/var/lib/docker", "/var/tmp"] {
        let _ = writeln!(setup, "mkdir -p {dir} && mount -t tmpfs tmpfs {dir}");
    }
    if let Some(image) = image {
        let _ = writeln!(
            setup,
            "podman load --quiet --input '{}' && export NETBPF_IMAGE='{}'",
            image.display(),
            image::DEV_TAG
        );
    }
    setup
}

/// What this host does before the tests (`--kernel host`): nothing but
/// name the agent's image, already in its Podman storage, if given.
fn host_setup(image: Option<&Path>) -> String {
    image.map_or_else(String::new, |_| {
        format!("export NETBPF_IMAGE='{}'\n", image::DEV_TAG)
    })
}

/// The executable `out/run.sh`: `setup`, then each test binary in turn,
/// its output to `out/NAME.log` and its exit code to `out/NAME.rc`.
fn test_script(
    workspace: &Path,
    binaries: &[(String, PathBuf)],
    out: &Path,
    guest: &Guest<'_>,
    setup: &str,
) -> anyhow::Result<PathBuf> {
    let mut script = format!(
        "#!/bin/sh\n{setup}cd '{}'\n",
        workspace.join("tests").display()
    );
    for (name, binary) in binaries {
        let log = out.join(format!("{name}.log"));
        let _ = writeln!(
            script,
            // The guest emulates its CPU: the differential fuzz tests run
            // fewer cases there (their kernel differences show in any).
            "NETBPF_FUZZ_CASES=5000 NETBPF_BIN='{}' NETBPF_NEXT_BIN='{}' '{}' --test-threads 2 > '{}' 2>&1; echo $? > '{}'",
            guest.netbpf.display(),
            guest.next.display(),
            binary.display(),
            log.display(),
            out.join(format!("{name}.rc")).display()
        );
    }
    let path = out.join("run.sh");
    fs::write(&path, script)?;
    cmd::run(Command::new("chmod").arg("+x").arg(&path))?;
    Ok(path)
}

/// This host's column: `host-` and its kernel's release.
fn host_label() -> anyhow::Result<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    Ok(format!("host-{}", release.trim()))
}

/// Boots `vmlinuz` and runs `script` in it; the console goes to
/// `out/console.log`. virtme-ng's exit code is not the script's (no
/// virtio-serial here): the outcomes are read from `out`.
fn boot(
    vng: &Path,
    vmlinuz: &Path,
    script: &Path,
    out: &Path,
    limit: Duration,
) -> anyhow::Result<()> {
    let mut guest = vng_command(vng, vmlinuz);
    guest.arg("--rwdir").arg(out).arg("--").arg(script);
    run_guest(&mut guest, limit, &out.join("console.log"))
}

/// virtme-ng (installed in `vng`) booting `vmlinuz` as every guest here
/// boots: software emulation, 4 GiB, `apparmor=0`. The caller adds the
/// root and what the guest runs.
pub fn vng_command(vng: &Path, vmlinuz: &Path) -> Command {
    let mut command = Command::new(vng.join("bin/vng"));
    command
        .arg("--run")
        .arg(vmlinuz)
        .args([
            "--disable-kvm",
            "--memory",
            "4G",
            // One vCPU per host core: QEMU runs them on threads of their
            // own (multi-threaded TCG), and the tests run two at a time.
            "--cpus",
            "2",
            "--verbose",
        ])
        // Debian's kernels enable AppArmor, which the nodes these tests
        // stand for (and this host) do not run: dockerd would need
        // apparmor_parser for its profile.
        .args(["--append", "apparmor=0"]);
    command
}

/// Runs the virtme-ng `guest` for at most `limit`, its console to
/// `console`, with QEMU, virtiofsd and the tools vng calls on its PATH.
pub fn run_guest(guest: &mut Command, limit: Duration, console: &Path) -> anyhow::Result<()> {
    let vng_bin = Path::new(guest.get_program())
        .parent()
        .context("vng is in a bin directory")?
        .to_owned();
    let path = std::env::join_paths(
        [
            vng_bin,
            "/usr/sbin".into(),
            "/sbin".into(),
            "/usr/lib/qemu".into(),
        ]
        .into_iter()
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )?;
    let log = fs::File::create(console)?;
    let ran = Command::new("timeout")
        .args(["--kill-after=30", &limit.as_secs().to_string()])
        .arg(guest.get_program())
        .args(guest.get_args())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {}", guest.get_program().display()))?;
    // timeout(1) says 124 when it stopped the guest (137 when it killed it).
    anyhow::ensure!(
        !matches!(ran.code(), Some(124 | 137)),
        "the guest ran past {} minutes and was stopped: see {}",
        limit.as_secs() / 60,
        console.display()
    );
    Ok(())
}

/// What each binary did, from its files in `out`.
fn outcomes(binaries: &[(String, PathBuf)], out: &Path) -> Vec<Outcome> {
    binaries
        .iter()
        .map(|(name, _)| {
            let log = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
            let count = |word: &str| -> usize {
                log.lines()
                    .filter(|line| line.starts_with("test result:"))
                    .filter_map(|line| {
                        let before = line.split(&format!(" {word}")).next()?;
                        before.rsplit(' ').next()?.parse::<usize>().ok()
                    })
                    .sum()
            };
            let success = fs::read_to_string(out.join(format!("{name}.rc")))
                .ok()
                .map(|code| code.trim() == "0");
            Outcome {
                test: name.clone(),
                passed: count("passed"),
                failed: count("failed"),
                success,
                failure: (success != Some(true)).then(|| excerpt::test_failure(&log)),
            }
        })
        .collect()
}

/// One row per test binary, one column per kernel: passed/failed, or
/// `did not finish`.
fn summary(table: &[(String, Vec<Outcome>)]) -> String {
    let mut text = String::from("\n| test |");
    for (label, _) in table {
        let _ = write!(text, " {label} |");
    }
    text.push_str("\n| --- |");
    text.push_str(&" --- |".repeat(table.len()));
    text.push('\n');
    let Some((_, first)) = table.first() else {
        return text;
    };
    for (row, outcome) in first.iter().enumerate() {
        let _ = write!(text, "| {} |", outcome.test);
        for (_, outcomes) in table {
            let outcome = &outcomes[row];
            let cell = match outcome.success {
                Some(true) => format!("ok ({} passed)", outcome.passed),
                Some(false) => format!(
                    "**FAILED** ({} passed, {} failed)",
                    outcome.passed, outcome.failed
                ),
                None => "**did not finish**".to_owned(),
            };
            let _ = write!(text, " {cell} |");
        }
        text.push('\n');
    }
    text
}
