//! The offline checks of `deploy/`: the systemd unit as systemd reads it,
//! and the Kubernetes manifest against the API's own schemas, unknown
//! fields and duplicate keys rejected. No cluster and no network needed.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

/// The validators, pinned: `kubernetes-validate` bundles the API schemas of
/// each Kubernetes release; yamllint finds the duplicate keys it lets by.
const PYTHON_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0", "yamllint==1.38.0"];

/// The oldest Kubernetes the manifest is for (`appArmorProfile` is 1.30's),
/// checked besides the validator's newest.
const OLDEST_KUBERNETES: &str = "1.30.0";

const UNIT: &str = "deploy/systemd/netbpf.service";
const MANIFEST: &str = "deploy/kubernetes/netbpf.yaml";

/// Checks the unit and the manifest; fails naming what is wrong.
pub fn check(workspace: &Path) -> anyhow::Result<()> {
    verify_unit(&workspace.join(UNIT))?;
    let venv = setup::python_tools(workspace, "deploy-validators", PYTHON_PACKAGES)?;
    let manifest = workspace.join(MANIFEST);
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut validate = Command::new(venv.join("bin/kubernetes-validate"));
        validate.args(["--strict", "--quiet"]);
        if let Some(version) = version {
            validate.args(["-k", version]);
        }
        cmd::run(validate.arg(&manifest))
            .with_context(|| format!("{MANIFEST} against the Kubernetes API schemas"))?;
    }
    cmd::run(
        Command::new(venv.join("bin/yamllint"))
            .args(["-d", "{rules: {key-duplicates: enable}}"])
            .arg(&manifest),
    )
    .with_context(|| format!("{MANIFEST} has a key twice"))?;
    println!("deploy: {UNIT} and {MANIFEST} are valid");
    Ok(())
}

/// `systemd-analyze verify` of the unit in a throw-away root (this machine
/// need not run systemd, nor have netbpf installed), and each capability
/// it names, which verify would drop silently if misspelled.
fn verify_unit(unit: &Path) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let at = |path: &str| root.path().join(path);
    for dir in [
        "usr/local/bin",
        "usr/bin",
        "etc/systemd/system",
        "usr/lib/systemd",
    ] {
        fs::create_dir_all(at(dir))?;
    }
    std::os::unix::fs::symlink("usr/bin", at("bin"))?;
    cmd::run(
        Command::new("cp")
            .args(["-r", "/usr/lib/systemd/system"])
            .arg(at("usr/lib/systemd")),
    )?;
    // Stand-ins for the programs the unit runs.
    for program in ["usr/local/bin/netbpf", "usr/bin/kill"] {
        fs::write(at(program), "")?;
        cmd::run(Command::new("chmod").arg("755").arg(at(program)))?;
    }
    let installed = at("etc/systemd/system/netbpf.service");
    fs::copy(unit, &installed)?;
    let verify = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.path().display()))
        .arg("verify")
        // The man pages the unit names come with the package (lintian
        // checks them there), not with this throw-away root.
        .arg("--man=no")
        .arg(&installed)
        .output()
        .context("running systemd-analyze (Debian's systemd)")?;
    // verify exits 0 on lines it ignores: any word from it is a failure.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    if !verify.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify {UNIT}: {}", said.trim());
    }
    let text = fs::read_to_string(unit)?;
    for capability in text
        .lines()
        .filter_map(|line| {
            line.strip_prefix("CapabilityBoundingSet=")
                .or_else(|| line.strip_prefix("AmbientCapabilities="))
        })
        .flat_map(str::split_whitespace)
    {
        let supported = Command::new("capsh")
            .arg(format!("--supports={}", capability.to_lowercase()))
            .output()
            .context("running capsh (Debian's libcap2-bin)")?;
        if !supported.status.success() {
            bail!("{UNIT} names {capability}, which capsh does not know");
        }
    }
    Ok(())
}
