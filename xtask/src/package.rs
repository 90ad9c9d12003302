//! `cargo xtask package`: the release build as a Debian package and as a
//! tarball for other distributions, both from one staged file tree. The
//! package is built with dpkg-deb from files of `deploy/` (the unit, the
//! configuration, the example policy, the OCI hook, the maintainer
//! scripts), the man pages and shell completions `netbpf assets` writes,
//! and a control file made here; lintian checks it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{build_release, cmd, setup};

/// Where the packages are written.
pub const OUT: &str = "target/package";

/// The Debian revision of the package `cargo xtask package` builds.
const REVISION: &str = "1";

/// Where the manual install puts the binary (deploy/ says so), and where
/// the package does.
const MANUAL_BINARY: &str = "/usr/local/bin/netbpf";
const PACKAGED_BINARY: &str = "/usr/bin/netbpf";

/// The configuration files: dpkg keeps an administrator's changes to them
/// across upgrades and removes them on purge.
const CONFFILES: [(&str, &str); 2] = [
    ("deploy/systemd/config.toml", "etc/netbpf/config.toml"),
    (
        "deploy/systemd/policy.d/10-example.toml",
        "etc/netbpf/policy.d/10-example.toml",
    ),
];

/// lintian's findings that are expected, each with why.
const EXPECTED_LINTIAN: &[(&str, &str)] = &[(
    "initial-upload-closes-no-bugs",
    "a package Debian itself uploads closes its ITP bug; this one is built \
     by the project, for its users, and closes none",
)];

/// Builds both packages, lintian-checked; returns the Debian package's
/// path.
pub fn package(workspace: &Path) -> anyhow::Result<PathBuf> {
    build(workspace, REVISION)
}

/// Builds both packages of Debian revision `revision` (a later one is an
/// upgrade of an earlier one); returns the Debian package's path.
pub fn build(workspace: &Path, revision: &str) -> anyhow::Result<PathBuf> {
    setup::debian_packages()?;
    let binary = build_release(workspace)?;
    let upstream = netbpf_version(workspace)?;
    let out = workspace.join(OUT);
    fs::create_dir_all(&out)?;
    let version = format!("{upstream}-{revision}");
    let name = format!("netbpf_{version}_amd64");
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    stage_files(workspace, &binary, &stage, &version)?;
    let tarball = out.join(format!("netbpf-{upstream}-x86_64-linux.tar.gz"));
    cmd::run(
        Command::new("tar")
            .arg("--create")
            .arg("--gzip")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&stage)
            .args(["--transform", &format!("s,^\\.,netbpf-{upstream},")])
            .arg("."),
    )?;
    debian_control(workspace, &stage, &version)?;
    let deb = out.join(format!("{name}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    lintian(&deb)?;
    println!("{}\n{}", deb.display(), tarball.display());
    Ok(deb)
}

/// The version of the `netbpf` crate.
fn netbpf_version(workspace: &Path) -> anyhow::Result<String> {
    let metadata = cmd::output(Command::new("cargo").current_dir(workspace).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata)?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|package| package["name"] == "netbpf"))
        .and_then(|package| package["version"].as_str())
        .map(str::to_owned)
        .context("cargo metadata lists the netbpf package with its version")
}

/// The files both packages install, below `stage` as below `/`.
fn stage_files(workspace: &Path, binary: &Path, stage: &Path, version: &str) -> anyhow::Result<()> {
    let bin = stage.join("usr/bin/netbpf");
    install(binary, &bin, 0o755)?;
    cmd::run(
        Command::new("strip")
            .args(["--strip-unneeded", "--remove-section=.comment"])
            .arg(&bin),
    )?;
    let packaged = |source: &str| -> anyhow::Result<String> {
        Ok(fs::read_to_string(workspace.join(source))
            .with_context(|| format!("reading {source}"))?
            .replace(MANUAL_BINARY, PACKAGED_BINARY))
    };
    write(
        &stage.join("lib/systemd/system/netbpf.service"),
        &packaged("deploy/systemd/netbpf.service")?,
        0o644,
    )?;
    write(
        &stage.join("usr/share/containers/oci/hooks.d/netbpf.json"),
        &packaged("deploy/oci-hooks.d/netbpf.json")?,
        0o644,
    )?;
    for (source, target) in CONFFILES {
        install(&workspace.join(source), &stage.join(target), 0o644)?;
    }
    let assets = tempfile::tempdir()?;
    cmd::run(
        Command::new(&bin)
            .arg("assets")
            .arg("--out")
            .arg(assets.path()),
    )?;
    let man = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    for page in fs::read_dir(assets.path().join("man"))? {
        let page = page?.path();
        let name = page.file_name().context("a man page has a name")?;
        let target = man.join(name).with_extension("1.gz");
        gzip(&page, &target)?;
    }
    let completions = assets.path().join("completions");
    for (file, target) in [
        (
            "netbpf.bash",
            "usr/share/bash-completion/completions/netbpf",
        ),
        ("_netbpf", "usr/share/zsh/vendor-completions/_netbpf"),
        (
            "netbpf.fish",
            "usr/share/fish/vendor_completions.d/netbpf.fish",
        ),
    ] {
        install(&completions.join(file), &stage.join(target), 0o644)?;
    }
    let doc = stage.join("usr/share/doc/netbpf");
    install(
        &workspace.join("deploy/debian/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;
    let changelog = tempfile::NamedTempFile::new()?;
    fs::write(changelog.path(), changelog_entry(version)?)?;
    gzip(changelog.path(), &doc.join("changelog.Debian.gz"))
}

/// The control area: the control file, conffiles, maintainer scripts
/// and checksums.
fn debian_control(workspace: &Path, stage: &Path, version: &str) -> anyhow::Result<()> {
    let control = stage.join("DEBIAN");
    fs::create_dir_all(&control)?;
    let installed_kib = cmd::output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )?
    .split_whitespace()
    .next()
    .context("du names a size")?
    .to_owned();
    write(
        &control.join("control"),
        &format!(
            "Package: netbpf\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: {MAINTAINER}\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6 (>= 2.34), libgcc-s1, init-system-helpers (>= 1.54)\n\
             Section: net\n\
             Priority: optional\n\
             Description: container-to-host networking fixed in the kernel, with eBPF\n \
             netbpf's node agent follows the node's containers (Docker, Podman,\n \
             containerd, CRI-O, systemd units) and gives each the rules its policy\n \
             names: localhost forwards to services published elsewhere, host\n \
             services granted to some containers only, localhost binds moved to\n \
             ports of their own, and MSS clamps for tunnels. It replaces network_mode\n \
             host, iptables DNAT with route_localnet, tunnels bound to 0.0.0.0 and\n \
             TCPMSS rules.\n"
        ),
        0o644,
    )?;
    let conffiles = CONFFILES.iter().fold(String::new(), |list, (_, target)| {
        list + "/" + target + "\n"
    });
    write(&control.join("conffiles"), &conffiles, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &workspace.join("deploy/debian").join(script),
            &control.join(script),
            0o755,
        )?;
    }
    let sums = cmd::output(Command::new("sh").current_dir(stage).args([
        "-c",
        "find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum",
    ]))?;
    write(&control.join("md5sums"), &sums, 0o644)
}

const MAINTAINER: &str = "netbpf developers <netbpf@lists.netbpf.dev>";

/// The changelog entry of this build.
fn changelog_entry(version: &str) -> anyhow::Result<String> {
    let date = cmd::output(Command::new("date").arg("-R"))?;
    Ok(format!(
        "netbpf ({version}) unstable; urgency=medium\n\n  \
         * netbpf, packaged by `cargo xtask package`.\n\n \
         -- {MAINTAINER}  {}\n",
        date.trim()
    ))
}

/// lintian of `deb`: fails on an error, or on a warning not expected.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let output = Command::new("lintian")
        .args(["--no-tag-display-limit", "--display-info"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let report = String::from_utf8_lossy(&output.stdout);
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("E: ") || line.starts_with("W: "))
        .filter(|line| !EXPECTED_LINTIAN.iter().any(|(tag, _)| line.contains(tag)))
        .collect();
    if !unexpected.is_empty() {
        bail!("lintian found:\n{}", unexpected.join("\n"));
    }
    for line in report.lines() {
        let why = EXPECTED_LINTIAN
            .iter()
            .find(|(tag, _)| line.contains(tag))
            .map_or(String::new(), |(_, why)| format!(" (expected: {why})"));
        println!("lintian: {line}{why}");
    }
    Ok(())
}

/// Copies `source` to `target` (its directories made) with `mode`.
fn install(source: &Path, target: &Path, mode: u32) -> anyhow::Result<()> {
    let text = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    write_bytes(target, &text, mode)
}

fn write(target: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    write_bytes(target, text.as_bytes(), mode)
}

fn write_bytes(target: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(target, bytes).with_context(|| format!("writing {}", target.display()))?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n` of `source` into `target`, as Debian compresses docs.
fn gzip(source: &Path, target: &Path) -> anyhow::Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = fs::File::create(target).with_context(|| format!("writing {}", target.display()))?;
    cmd::run(
        Command::new("gzip")
            .args(["-9n", "--stdout"])
            .arg(source)
            .stdout(file),
    )
}
