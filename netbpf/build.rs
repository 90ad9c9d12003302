//! Builds netbpf's kernel programs (the `netbpf-ebpf` crate) for
//! `bpfel-unknown-none` with the nightly toolchain and bpf-linker, into
//! `OUT_DIR`, where `datapath.rs` embeds them.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("netbpf/ has a parent")?;
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

    let ebpf = workspace.join("netbpf-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "netbpf-ebpf",
            root_dir: ebpf.to_str().context("the workspace path is UTF-8")?,
            ..Package::default()
        }],
        Toolchain::Nightly,
    )
}
