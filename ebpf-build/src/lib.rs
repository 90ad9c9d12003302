//! What the build scripts of netbpf and of its bench share: building a
//! crate of kernel programs for `bpfel-unknown-none` with the nightly
//! toolchain and the bpf-linker that `cargo xtask setup` installs, into
//! the calling crate's `OUT_DIR`, where it embeds them.

use std::{env, path::Path};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// Builds the kernel programs of `package`, whose crate is at `dir` (from
/// the workspace's root), for the build script of a crate one directory
/// below the root. The script runs again when `dir` or `netbpf-common`
/// (the types the programs share with userspace) change.
pub fn build_programs(package: &str, dir: &str) -> anyhow::Result<()> {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").context("run from a build script")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .context("the calling crate has a parent directory")?;
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("netbpf-common").display()
    );

    // `cargo xtask setup` installs bpf-linker here, built against the
    // nightly toolchain's own LLVM.
    let tools = workspace.join("target/tools/bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(tools.clone()).chain(env::split_paths(&path)))?;
    if !env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()) {
        bail!(
            "bpf-linker is not installed (looked in {} and PATH): run `cargo xtask setup`",
            tools.display()
        );
    }
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PATH", path) };

    let root_dir = workspace.join(dir);
    aya_build::build_ebpf(
        [Package {
            name: package,
            root_dir: root_dir.to_str().context("the workspace path is UTF-8")?,
            ..Package::default()
        }],
        Toolchain::Nightly,
    )
}
