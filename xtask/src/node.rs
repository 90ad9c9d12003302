//! `cargo xtask node`: netbpf on a real node. A Debian trixie root file
//! system is built from Debian's packages (mmdebstrap; kept as a tarball
//! under target/node/ and unpacked afresh for each run) with systemd,
//! Docker, Podman with Quadlet, OpenSSH, WireGuard, nginx and curl, and
//! booted twice in a VM with systemd as PID 1 on a 6.12 kernel (virtme-ng
//! `--systemd --root`), with a disk of its own for what survives a reboot.
//! There `tests/node/node.sh` installs the Debian package as a user does,
//! sets up the four problems, and after the reboot checks that everything
//! came back; its results come back through the root file system.
//!
//! Trixie, not bookworm: Quadlet (seed 002's `onetime@.container`) came in
//! Podman 4.4; bookworm has 4.3 and no backport.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{cmd, excerpt::excerpt, package, setup, vm};

/// What the node has besides netbpf: what the users of the four problems
/// run, and what the checks read the kernel with.
const NODE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "iptables",
    "docker.io",
    "docker-cli",
    "docker-compose",
    "podman",
    "openssh-server",
    "openssh-client",
    "wireguard-tools",
    "nginx-light",
    "curl",
    "python3",
    "busybox-static",
    "bpftool",
    "init-system-helpers",
    "kmod",
    // Rootless Podman: subordinate ids, pasta, the user's own bus.
    "uidmap",
    "passt",
    "dbus-user-session",
];

/// What is done to the root file system once its packages are in.
const CUSTOMIZE: [&str; 2] = [
    // No network in the guest: nothing tries to reach a mirror.
    "rm -f \"$1\"/etc/apt/sources.list",
    // The rootless Podman user, with subordinate ids. Made here: on the
    // guest's 9p root, useradd cannot write /etc/shadow.
    "touch \"$1\"/etc/subuid \"$1\"/etc/subgid && chroot \"$1\" useradd -s /bin/sh dev",
];

/// The Debian release the node runs.
const SUITE: &str = "trixie";

/// The kernel the node boots: the newest of Debian's 6.12 packages.
const KERNEL: &str = "6.12";

/// Where the node's root file system is assembled, in the workspace.
const DIR: &str = "target/node";

/// How long each boot of the guest may run, but for the churn.
const GUEST_LIMIT: Duration = Duration::from_mins(30);

/// How long the churn may take per container: under emulation one is
/// made and removed every 6 s, four at a time.
const CHURN_LIMIT: Duration = Duration::from_secs(12);

/// What the node keeps on a disk of its own (an ext4 image in the root,
/// mounted through a loop device), bound over the 9p root, on which containerd's content store and the
/// overlay storage drivers fail, and inotify sees no change (a new inode
/// at each lookup), which the agent's policy directory watch needs. On a
/// node they are on a local disk too, and like there they survive the
/// reboot.
const ON_THE_DISK: [&str; 5] = [
    "var/lib/containerd",
    "var/lib/docker",
    "var/lib/containers",
    "etc/netbpf",
    "home",
];

/// The node's disk image, in its root.
const DISK_IMAGE: &str = "/var/node-disk.ext4";

/// How `cargo xtask node` runs.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// How many containers the churn makes and removes through Docker
    /// after the reboot (0: no churn).
    #[arg(long, default_value_t = 1000)]
    churn: u32,
    /// What CI runs: one boot with the package installed, seed 001, a
    /// restart and the purge; docs/node.md is left as it is.
    #[arg(long)]
    pub quick: bool,
}

impl NodeArgs {
    /// The part that fits in CI.
    #[must_use]
    pub fn quick() -> Self {
        Self {
            churn: 0,
            quick: true,
        }
    }

    /// How long a boot may run.
    fn guest_limit(&self) -> Duration {
        GUEST_LIMIT + CHURN_LIMIT * self.churn
    }

    /// Each boot's name and the script it runs.
    fn boots(&self) -> Vec<(&'static str, String)> {
        if self.quick {
            vec![("quick", "/root/node.sh quick".to_owned())]
        } else {
            vec![
                ("first", "/root/node.sh first".to_owned()),
                ("second", format!("/root/node.sh second {}", self.churn)),
            ]
        }
    }
}

/// Fetches and assembles what the node boots, none of it built here: the
/// tools that boot it, its kernel and its root file system. `cargo xtask
/// test` runs this while it compiles: it waits on the network and the
/// disk.
pub fn fetch_images(workspace: &Path) -> anyhow::Result<()> {
    setup::python_tools(workspace, "virtme-ng", &[vm::VIRTME_NG])?;
    vm::kernel_image(workspace, KERNEL)?;
    root_tarball(&workspace.join(DIR)).map(drop)
}

/// Builds the package, boots the node with it twice and prints each
/// check; fails when one failed or the guest did not finish.
pub fn node(workspace: &Path, args: &NodeArgs) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask node")?;
    setup::test_environment()?;
    let vng = setup::python_tools(workspace, "virtme-ng", &[vm::VIRTME_NG])?;
    let deb = package::build(workspace, "1")?;
    let newer = if args.quick {
        None
    } else {
        Some(package::build(workspace, "2")?)
    };
    let (_, vmlinuz) = vm::kernel_image(workspace, KERNEL)?;
    let dir = workspace.join(DIR);
    let tarball = root_tarball(&dir)?;
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    cmd::run(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&root),
    )?;
    kernel_modules(&vmlinuz, &root)?;
    node_disk(&dir, &root)?;
    fs::copy(&deb, root.join("root/netbpf.deb"))?;
    if let Some(newer) = newer {
        fs::copy(&newer, root.join("root/netbpf-newer.deb"))?;
    }
    for script in ["node.sh", "beyond.sh"] {
        fs::copy(
            workspace.join("tests/node").join(script),
            root.join("root").join(script),
        )?;
    }
    let out = root.join("root/node");
    let boots = args.boots();
    for (phase, script) in &boots {
        let console = dir.join(format!("console-{phase}.log"));
        boot(&vng, &vmlinuz, &root, script, args.guest_limit(), &console)?;
        eprintln!(
            "node: the {phase} boot is done (console: {})",
            console.display()
        );
        if !out.join(format!("finished-{phase}")).exists() {
            break;
        }
    }
    if !args.quick {
        fs::write(workspace.join("docs/node.md"), page(&out))?;
    }
    report(&out, &boots)
}

/// The root file system's tarball, built once per package list.
fn root_tarball(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let list = NODE_PACKAGES.join(",");
    let tarball = dir.join(format!(
        "{SUITE}-{:016x}.tar",
        fnv(&format!("{list}{}", CUSTOMIZE.join("")))
    ));
    if tarball.exists() {
        return Ok(tarball);
    }
    eprintln!("node: building a {SUITE} root file system with {list}");
    // mmdebstrap writes a tarball to a name ending in .tar.
    let partial = tarball.with_extension("partial.tar");
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--include"])
            .arg(&list)
            .args(CUSTOMIZE.iter().flat_map(|hook| ["--customize-hook", hook]))
            .arg(SUITE)
            .arg(&partial)
            .stdin(Stdio::null()),
    )?;
    fs::rename(&partial, &tarball)?;
    Ok(tarball)
}

/// The guest kernel's modules, in the root as its package installs them:
/// Docker loads the bridge, netfilter and overlay modules it needs.
fn kernel_modules(vmlinuz: &Path, root: &Path) -> anyhow::Result<()> {
    let package = vmlinuz
        .parent()
        .and_then(Path::parent)
        .context("the kernel is in PACKAGE/boot/")?;
    let modules = root.join("lib/modules");
    fs::create_dir_all(&modules)?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(package.join("lib/modules/."))
            .arg(&modules),
    )?;
    // The package's postinst would index them: without modules.dep,
    // modprobe finds neither loop nor ext4 for the node's disk.
    for version in fs::read_dir(package.join("lib/modules"))? {
        cmd::run(
            Command::new("depmod")
                .arg("--basedir")
                .arg(root)
                .arg(version?.file_name()),
        )?;
    }
    Ok(())
}

/// The node's disk, made afresh (a sparse image in `root`), with a
/// directory for each of [`ON_THE_DISK`], and the units that mount it and
/// bind them over the root's.
fn node_disk(dir: &Path, root: &Path) -> anyhow::Result<()> {
    let staging = dir.join("disk");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for held in ON_THE_DISK {
        fs::create_dir_all(staging.join(held.replace('/', "-")))?;
    }
    let image = root.join(DISK_IMAGE.trim_start_matches('/'));
    fs::File::create(&image)?.set_len(16 << 30)?;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "nodedisk", "-d"])
            .arg(&staging)
            .arg(&image),
    )?;
    fs::remove_dir_all(&staging)?;

    let units = root.join("etc/systemd/system");
    let wants = units.join("local-fs.target.wants");
    fs::create_dir_all(&wants)?;
    let mut mounts = vec![(
        "mnt-disk.mount".to_owned(),
        format!(
            "[Unit]\nDescription=The node's own disk (the node test)\n\n\
         [Mount]\nWhat={DISK_IMAGE}\nWhere=/mnt/disk\nType=ext4\nOptions=loop\n\n\
         [Install]\nWantedBy=local-fs.target\n"
        ),
    )];
    for held in ON_THE_DISK {
        mounts.push((
            format!("{}.mount", held.replace('/', "-")),
            format!(
                "[Unit]\nDescription=/{held} on the node's own disk (the node test)\n\
                 RequiresMountsFor=/mnt/disk\n\n\
                 [Mount]\nWhat=/mnt/disk/{}\nWhere=/{held}\nType=none\nOptions=bind\n\n\
                 [Install]\nWantedBy=local-fs.target\n",
                held.replace('/', "-")
            ),
        ));
    }
    for (unit, text) in mounts {
        fs::write(units.join(&unit), text)?;
        let link = wants.join(&unit);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("../{unit}"), link)?;
        }
    }
    Ok(())
}

/// Boots `root` with systemd as PID 1 and runs `script` in it for at most
/// `limit`; the guest powers off when it ends.
fn boot(
    vng: &Path,
    vmlinuz: &Path,
    root: &Path,
    script: &str,
    limit: Duration,
    console: &Path,
) -> anyhow::Result<()> {
    let mut guest = vm::vng_command(vng, vmlinuz);
    guest
        .arg("--root")
        .arg(root)
        .args(["--rw", "--systemd", "--exec", script]);
    vm::run_guest(&mut guest, limit, console)
}

/// Prints the guest's results; fails when a check failed or it stopped
/// before the end.
fn report(out: &Path, boots: &[(&str, String)]) -> anyhow::Result<()> {
    let results = fs::read_to_string(out.join("results.tsv"))
        .with_context(|| format!("the guest wrote no {}", out.join("results.tsv").display()))?;
    let mut failed = Vec::new();
    for line in results.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(name), Some(outcome), Some(what)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("a result line is not NAME, OUTCOME, WHAT: {line:?}");
        };
        println!("{outcome:<4} {name:<12} {what}");
        if outcome != "ok" {
            failed.push(name.to_owned());
        }
    }
    for (phase, _) in boots {
        if !out.join(format!("finished-{phase}")).exists() {
            failed.push(format!("the {phase} boot's script did not finish"));
        }
    }
    for name in &failed {
        print_tail(&out.join(format!("{name}.log")), FAILED_LOG_TAIL);
    }
    if !failed.is_empty() {
        bail!(
            "node: failed: {} (logs in {})",
            failed.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// How many of a failed check's last log lines are printed with the
/// results, so that CI's output shows why.
const FAILED_LOG_TAIL: usize = 40;

/// Prints the last `lines` lines of `log`, when the guest wrote one.
fn print_tail(log: &Path, lines: usize) {
    if let Ok(text) = fs::read_to_string(log) {
        println!(
            "--- the end of {}\n{}",
            log.display(),
            excerpt(&text, 0, lines)
        );
    }
}

/// `docs/node.md`: the checks of this run, with what a user of the node
/// sees (its boot, `netbpf status`, the agent's journal).
fn page(out: &Path) -> String {
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let mut page = String::from(
        "# netbpf on a real node\n\n\
         Written by `cargo xtask node` from one run; nothing here is typed by hand. A Debian \
         trixie root file system built from Debian's packages (systemd, docker.io, \
         docker-compose, podman, openssh, wireguard-tools, nginx, curl) boots in a VM with \
         systemd as PID 1 on a 6.12 kernel (software emulation: several times slower than a \
         real machine), with a disk of its own for the runtimes' state. There the Debian \
         package of `cargo xtask package` is installed with `dpkg -i`, as a user installs it, \
         and [`tests/node/node.sh`](../tests/node/node.sh) sets up the four problems the way \
         their users have them (the networks beyond the node are namespaces of the guest, \
         [`tests/node/beyond.sh`](../tests/node/beyond.sh)). The guest is powered off and \
         booted again; the checks from `boot-order` on are of the second boot. CI runs a part \
         of it, `cargo xtask node --quick`: one boot, the package installed, seed 001, a \
         restart, the purge. Under emulation a container takes about 6 s to be made and removed, \
         so the churn of 1,000 containers through Docker is most of the run's two hours \
         (`--churn N` sets another count); the agent's bench measures the same churn on this \
         machine without emulation ([benchmarks](benchmarks.md)).\n\n\
         | check | result | what |\n| --- | --- | --- |\n",
    );
    for line in read("results.tsv").lines() {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        if let [name, outcome, what] = fields[..] {
            let _ = writeln!(page, "| {name} | {outcome} | {what} |");
        }
    }
    for (title, file) in [
        ("The first boot", "boot-first.txt"),
        ("The second boot", "boot-second.txt"),
        ("`netbpf status` after the checks", "status.txt"),
        (
            "Warnings in the agent's journal, first boot",
            "journal-first-warnings.txt",
        ),
        (
            "Warnings in the agent's journal, second boot",
            "journal-second-warnings.txt",
        ),
    ] {
        let _ = write!(
            page,
            "\n## {title}\n\n```\n{}\n```\n",
            read(file).trim_end()
        );
    }
    let _ = write!(
        page,
        "\n## The agent's journal of the second boot (`journalctl -u netbpf -b`), its start and end\n\n```\n{}\n```\n",
        excerpt(&read("journal-second.txt"), JOURNAL_HEAD, JOURNAL_TAIL)
    );
    page
}

/// The journal's lines the page shows from its start (the agent's start,
/// the containers found at boot) and from its end.
const JOURNAL_HEAD: usize = 60;
const JOURNAL_TAIL: usize = 20;

/// FNV-1a of `text`: names the tarball after its package list.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
