//! Container images built here, never pulled: a root file system of
//! Debian's busybox-static, imported into Podman or a test's Docker.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::run_checked;

/// The busybox applets the test images carry.
const APPLETS: [&str; 10] = [
    "sh", "echo", "printf", "httpd", "nc", "cat", "wget", "sleep", "ls", "grep",
];

/// Writes `rootfs.tar` (busybox and its applets, `/www`, `/tmp`) into `dir`;
/// returns its path.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let root = dir.join("rootfs");
    for sub in ["bin", "www", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is installed (cargo xtask setup)")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let tar = dir.join("rootfs.tar");
    let (root_text, tar_text) = (
        root.to_str().context("UTF-8 path")?,
        tar.to_str().context("UTF-8 path")?,
    );
    run_checked(
        "tar",
        ["-C", root_text, "-cf", tar_text, "bin", "www", "tmp"],
    )?;
    Ok(tar)
}

/// Imports the busybox image into Podman as `name`, once.
pub fn ensure_podman_image(name: &str) -> anyhow::Result<()> {
    import_busybox(name, &[])
}

/// Imports the busybox image into Podman as `name`, once, made to sleep
/// for an hour: the infra container of a pod (there is no pause image to
/// pull).
pub fn ensure_podman_infra_image(name: &str) -> anyhow::Result<()> {
    import_busybox(name, &["--change", r#"ENTRYPOINT ["sleep", "3600"]"#])
}

/// Imports the busybox root file system as Podman's image `name`, with
/// `podman import` `options`, unless Podman has it.
fn import_busybox(name: &str, options: &[&str]) -> anyhow::Result<()> {
    if Command::new("podman")
        .args(["image", "exists", name])
        .status()
        .is_ok_and(|status| status.success())
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let tar = busybox_rootfs(dir.path())?;
    let mut args = vec!["import", "--quiet"];
    args.extend_from_slice(options);
    args.extend([tar.to_str().context("UTF-8 path")?, name]);
    run_checked("podman", args)?;
    Ok(())
}
