//! `cargo xtask image`: the agent's container image, built offline with
//! Podman from `deploy/image/Containerfile` and a root file system
//! assembled here (the binary and the shared libraries it links), and
//! saved as an archive that `docker load` and `ctr images import` take.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd;

#[derive(Debug, Default, clap::Args)]
pub struct ImageArgs {
    /// Package the debug build (`localhost/netbpf:dev`), as the test suite
    /// does, instead of a release build (`localhost/netbpf:VERSION` and
    /// `:latest`).
    #[arg(long)]
    pub debug: bool,
}

/// The image the suite tests: the debug build.
pub const DEV_TAG: &str = "localhost/netbpf:dev";

/// Builds the binary and the image; returns the image's first tag.
pub fn image(workspace: &Path, args: &ImageArgs) -> anyhow::Result<String> {
    let binary = if args.debug {
        crate::build(workspace)?
    } else {
        crate::build_release(workspace)?
    };
    let tags = if args.debug {
        vec![DEV_TAG.to_owned()]
    } else {
        let version = cmd::output(Command::new(&binary).arg("--version"))?;
        let version = version
            .split_whitespace()
            .nth(1)
            .context("`netbpf --version` prints its version")?
            .to_owned();
        vec![
            format!("localhost/netbpf:{version}"),
            "localhost/netbpf:latest".to_owned(),
        ]
    };
    let out = workspace.join("target/image");
    let context = out.join("context");
    if context.exists() {
        fs::remove_dir_all(&context)?;
    }
    assemble_rootfs(&binary, &context.join("rootfs"))?;
    fs::copy(
        workspace.join("deploy/image/Containerfile"),
        context.join("Containerfile"),
    )?;
    let mut build = Command::new("podman");
    build.args(["build", "--pull=never", "--quiet"]);
    for tag in &tags {
        build.args(["--tag", tag]);
    }
    cmd::run(build.arg(&context))?;
    let archive = archive(workspace, args.debug);
    if archive.exists() {
        fs::remove_file(&archive)?;
    }
    // Every tag in the archive: the nodes get the one the manifest names.
    cmd::run(
        Command::new("podman")
            .args(["save", "--quiet", "--multi-image-archive"])
            .args(["--format", "docker-archive", "--output"])
            .arg(&archive)
            .args(&tags),
    )?;
    println!("built {} (saved as {})", tags.join(", "), archive.display());
    Ok(tags[0].clone())
}

/// Puts `binary` at `/usr/bin/netbpf` under `root`, with each shared
/// library `ldd` says it loads at the same path, and the directories the
/// agent expects.
fn assemble_rootfs(binary: &Path, root: &Path) -> anyhow::Result<()> {
    let place = |path: &Path, source: &Path| -> anyhow::Result<()> {
        let target = root.join(path.strip_prefix("/").unwrap_or(path));
        fs::create_dir_all(target.parent().context("a file has a directory")?)?;
        // Copied through symbolic links: the file itself lands there.
        fs::copy(source, &target)
            .with_context(|| format!("copying {} into the image", source.display()))?;
        Ok(())
    };
    place(Path::new("/usr/bin/netbpf"), binary)?;
    for library in shared_libraries(binary)? {
        place(&library, &library)?;
    }
    for dir in ["etc/netbpf/policy.d", "run/netbpf", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader among them.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = cmd::output(Command::new("ldd").arg(binary))?;
    let libraries: Vec<PathBuf> = listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if libraries.is_empty() {
        bail!("ldd found no libraries in {}: {listing}", binary.display());
    }
    Ok(libraries)
}

/// Where [`image`] saves the image (and its tags) as an archive.
pub fn archive(workspace: &Path, debug: bool) -> PathBuf {
    workspace.join("target/image").join(if debug {
        "netbpf-dev.tar"
    } else {
        "netbpf.tar"
    })
}
