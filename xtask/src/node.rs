//! `cargo xtask node`: netbpf on a real node. A Debian bookworm root file
//! system is built from Debian's packages (mmdebstrap; kept as a tarball
//! under target/node/ and unpacked afresh for each run) with systemd,
//! Docker, Podman, OpenSSH, WireGuard, nginx and curl, and booted in a VM
//! with systemd as PID 1 on bookworm's own kernel (virtme-ng `--systemd
//! --root`). There `tests/node/node.sh` installs the Debian package as a
//! user does and checks what the node's users expect; its results come
//! back through the root file system.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{cmd, package, setup, vm};

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
];

/// How long the guest may run.
const GUEST_LIMIT: Duration = Duration::from_mins(30);

/// Builds the package, boots the node with it and prints each check;
/// fails when one failed or the guest did not finish.
pub fn node(workspace: &Path) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask node")?;
    setup::test_environment()?;
    let vng = setup::python_tools(workspace, "virtme-ng", &[vm::VIRTME_NG])?;
    let deb = package::build(workspace, "1")?;
    let newer = package::build(workspace, "2")?;
    let (_, vmlinuz) = vm::kernel_image(workspace, "6.1")?;
    let dir = workspace.join("target/node");
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
    local_disks(&root)?;
    fs::copy(&deb, root.join("root/netbpf.deb"))?;
    fs::copy(&newer, root.join("root/netbpf-newer.deb"))?;
    fs::copy(
        workspace.join("tests/node/node.sh"),
        root.join("root/node.sh"),
    )?;
    boot(&vng, &vmlinuz, &root, &dir.join("console.log"))?;
    eprintln!(
        "node: the guest is done (console: {})",
        dir.join("console.log").display()
    );
    let out = root.join("root/node");
    fs::write(workspace.join("docs/node.md"), page(&out))?;
    report(&out)
}

/// The root file system's tarball, built once per package list.
fn root_tarball(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let list = NODE_PACKAGES.join(",");
    let tarball = dir.join(format!("bookworm-{:016x}.tar", fnv(&list)));
    if tarball.exists() {
        return Ok(tarball);
    }
    eprintln!("node: building a bookworm root file system with {list}");
    // mmdebstrap writes a tarball to a name ending in .tar.
    let partial = tarball.with_extension("partial.tar");
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--include"])
            .arg(&list)
            // No network in the guest: nothing tries to reach a mirror.
            .args(["--customize-hook", "rm -f \"$1\"/etc/apt/sources.list"])
            .arg("bookworm")
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
    )
}

/// The guest's root is this host's directory over 9p, on which
/// containerd's content store and the overlay storage drivers fail, and
/// inotify sees no change (a new inode at each lookup), which the agent's
/// policy directory watch needs: the runtimes' state and `/etc/netbpf` are
/// on tmpfs, as on a node they are on a local disk.
fn local_disks(root: &Path) -> anyhow::Result<()> {
    let units = root.join("etc/systemd/system");
    let wants = units.join("local-fs.target.wants");
    fs::create_dir_all(&wants)?;
    for dir in [
        "var/lib/containerd",
        "var/lib/docker",
        "var/lib/containers",
        "etc/netbpf",
    ] {
        let unit = format!("{}.mount", dir.replace('/', "-"));
        fs::write(
            units.join(&unit),
            format!(
                "[Unit]\nDescription=/{dir} on tmpfs (the node test)\n\
                 Before=containerd.service docker.service podman.service netbpf.service\n\n\
                 [Mount]\nWhat=tmpfs\nWhere=/{dir}\nType=tmpfs\n\n\
                 [Install]\nWantedBy=local-fs.target\n"
            ),
        )?;
        let link = wants.join(&unit);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("../{unit}"), link)?;
        }
    }
    Ok(())
}

/// Boots `root` with systemd as PID 1 and runs the node script in it.
fn boot(vng: &Path, vmlinuz: &Path, root: &Path, console: &Path) -> anyhow::Result<()> {
    let mut guest = vm::vng_command(vng, vmlinuz);
    guest
        .arg("--root")
        .arg(root)
        .args(["--rw", "--systemd", "--exec", "/root/node.sh"]);
    vm::run_guest(&mut guest, GUEST_LIMIT, console)
}

/// Prints the guest's results; fails when a check failed or it stopped
/// before the end.
fn report(out: &Path) -> anyhow::Result<()> {
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
    if !out.join("finished").exists() {
        failed.push("the script did not finish".to_owned());
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

/// `docs/node.md`: the checks of this run, with what a user of the node
/// sees (its boot, `netbpf status`, the agent's journal).
fn page(out: &Path) -> String {
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let mut page = String::from(
        "# netbpf on a real node\n\n\
         Written by `cargo xtask node` from one run; nothing here is typed by hand. A Debian \
         bookworm root file system built from Debian's packages (systemd, docker.io, \
         docker-compose, podman, openssh, wireguard-tools, nginx, curl) boots in a VM with \
         systemd as PID 1 on bookworm's kernel (6.1, software emulation: several times slower \
         than a real machine). There the Debian package of `cargo xtask package` is installed \
         with `dpkg -i`, as a user installs it, and [`tests/node/node.sh`](../tests/node/node.sh) \
         checks what the node's users expect.\n\n\
         | check | result | what |\n| --- | --- | --- |\n",
    );
    for line in read("results.tsv").lines() {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        if let [name, outcome, what] = fields[..] {
            let _ = writeln!(page, "| {name} | {outcome} | {what} |");
        }
    }
    for (title, file) in [
        ("The boot", "boot.txt"),
        ("`netbpf status` after the checks", "status.txt"),
        (
            "The agent's journal (`journalctl -u netbpf`)",
            "journal.txt",
        ),
    ] {
        let _ = write!(
            page,
            "\n## {title}\n\n```\n{}\n```\n",
            read(file).trim_end()
        );
    }
    page
}

/// FNV-1a of `text`: names the tarball after its package list.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
