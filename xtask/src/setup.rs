//! `cargo xtask setup`: everything building and testing netbpf needs,
//! installed by the project itself and idempotently (each step checks
//! first and does nothing when already done).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// The bpf-linker release that fits the installed nightly (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and the demo run: the real clients, servers
/// and tools they drive.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",        // ip, ss: namespaces, veths, bridges
    "procps",          // sysctl, inside the tests' own namespaces only
    "iptables",        // iptables-save: netbpf must leave the rules alone
    "bpftool",         // the kernel's view of programs, links and cgroups
    "curl",            // the client users type
    "socat",           // TCP banner and UDP echo servers
    "python3",         // http.server and the probe client
    "openssl",         // the TLS server behind the MSS black hole
    "wireguard-go",    // a real WireGuard tunnel, in userspace on TUN
    "wireguard-tools", // wg: its keys and configuration
    "openssh-server",  // sshd on the "GPU box" of the host service test
    "openssh-client",  // ssh -L: the tunnel bound to the node's loopback
    "podman",          // real containers for the host-networking test
    "docker.io",       // a real Docker daemon (and containerd), run by tests in their own namespace
    "runc",            // podman's runtime here (crun refuses hybrid cgroups)
    "busybox-static",  // the root file system of the test image
    "iperf3",          // the throughput benchmark
    "dnsmasq-base",    // the node-local DNS cache of the local-redirect test
    "passt",           // pasta: rootless networking, for the rootless test
    "systemd",         // systemd-analyze: the unit's check
    "libcap2-bin",     // capsh: the capabilities the unit names
    "python3-venv",    // the manifest's validators and virtme-ng, in virtualenvs of their own
    "qemu-system-x86", // the VMs of `cargo xtask test --kernel` (and virtiofsd, in /usr/lib/qemu)
    "kmod",            // depmod: virtme-ng indexes a kernel package's modules
    "lintian",         // the Debian package's check (`cargo xtask package`)
    "mmdebstrap",      // the node's root file system (`cargo xtask node`)
];

/// Where bpf-linker is installed; `netbpf/build.rs` looks here too.
pub fn tools_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/tools")
}

/// A virtualenv under target/tools/`name` with the Python `packages`
/// (pinned), made once and remade when the list changes.
pub fn python_tools(workspace: &Path, name: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = tools_dir(workspace).join(name);
    let stamp = venv.join("installed");
    let wanted = packages.join(" ");
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(venv);
    }
    eprintln!("setup: installing {wanted} into {}", venv.display());
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
    )?;
    fs::write(&stamp, wanted)?;
    Ok(venv)
}

/// Everything: the eBPF toolchain, the test packages and bpffs.
pub fn setup(workspace: &Path) -> anyhow::Result<()> {
    build_toolchain(workspace)?;
    test_environment()
}

/// What building the eBPF programs needs: rust-src and bpf-linker.
pub fn build_toolchain(workspace: &Path) -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker(workspace)
}

/// What the privileged tests and the demo need: packages and bpffs.
pub fn test_environment() -> anyhow::Result<()> {
    debian_packages()?;
    bpffs()
}

/// `-Z build-std=core` needs the nightly's standard library sources.
fn rust_src() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "the nightly toolchain is needed to build the eBPF programs (rustup toolchain list)",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// bpf-linker, built from crates.io against the nightly's own libLLVM
/// (its prebuilt binaries cannot be downloaded here).
fn bpf_linker(workspace: &Path) -> anyhow::Result<()> {
    let root = tools_dir(workspace);
    let linker = root.join("bin/bpf-linker");
    if let Ok(version) = cmd::output(Command::new(&linker).arg("--version"))
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let llvm_dir = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = nightly_llvm_library(&llvm_dir)?;
    let llvm_major = llvm_major_version()?;
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm} (LLVM {llvm_major})");
    let rustflags = format!(
        "-L {dir} -l dylib={llvm} -C link-arg=-Wl,-rpath,{dir}",
        dir = llvm_dir.display()
    );
    cmd::run(
        Command::new(env!("CARGO"))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
            .arg("--root")
            .arg(&root)
            .env("RUSTFLAGS", rustflags),
    )
}

/// The link name of the nightly's LLVM shared library, e.g.
/// `LLVM-22-rust-1.97.0-nightly` for `libLLVM-22-rust-1.97.0-nightly.so`.
fn nightly_llvm_library(dir: &Path) -> anyhow::Result<String> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(link) = name
            .strip_prefix("lib")
            .and_then(|rest| rest.strip_suffix(".so"))
            && link.starts_with("LLVM-")
            && link.contains("-rust-")
        {
            return Ok(link.to_owned());
        }
    }
    bail!(
        "the nightly toolchain ships no libLLVM-*-rust-*.so in {}",
        dir.display()
    )
}

/// The LLVM major version of the nightly, from `rustc -vV`.
fn llvm_major_version() -> anyhow::Result<String> {
    let verbose = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .map(str::to_owned)
        .context("rustc +nightly -vV names no LLVM version")
}

pub fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .map_or(true, |status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (it is not at boot
/// on these machines).
fn bpffs() -> anyhow::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mounted = mountinfo.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(mount, filesystem)| {
            filesystem.starts_with("bpf ") && mount.split_whitespace().nth(4) == Some("/sys/fs/bpf")
        })
    });
    if mounted {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
