//! `cargo xtask test`: the whole suite. The binaries and the agent's image
//! first, lints (they are quick), then every test of the workspace, the
//! privileged ones included: they load the programs into this kernel and
//! fail, never skip, where they cannot.
//! Then the benchmarks' verifier check and their quick mode, so a program
//! that grew or a benchmark that broke fails the suite; the Debian package,
//! which lintian checks, installed, restarted and purged on a node booted
//! under systemd in a VM (`cargo xtask node --quick`); last a subset of the
//! privileged tests on the oldest kernel of the matrix, in a VM.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bench::{self, BenchArgs},
    build, build_next, cmd, deploy,
    image::{self, ImageArgs},
    node, package, setup, vm,
};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Run the privileged tests in a VM on this kernel instead: `6.1` or
    /// `6.12` (the newest Debian package of it), or a vmlinuz path; or
    /// `host`, here, in the same table. Repeatable.
    #[arg(long)]
    kernel: Vec<String>,
    /// Run them on every kernel of the matrix (6.1 and 6.12 in VMs, then
    /// this host), with one summary table.
    #[arg(long, value_parser = ["all"])]
    kernels: Option<String>,
    /// With --kernel or --kernels: only these test binaries (the file
    /// names of tests/tests/, e.g. `localhost_forwarding`). Repeatable.
    #[arg(long = "test")]
    tests: Vec<String>,
}

pub fn test(workspace: &Path, args: &TestArgs) -> anyhow::Result<()> {
    let mut kernels = args.kernel.clone();
    if args.kernels.is_some() {
        kernels.extend(vm::MATRIX.map(str::to_owned));
    }
    if !kernels.is_empty() {
        return vm::run(workspace, &kernels, &args.tests);
    }
    anyhow::ensure!(
        args.tests.is_empty(),
        "--test picks test binaries for --kernel or --kernels; the suite here runs them all"
    );
    cmd::require_root("cargo xtask test")?;
    setup::test_environment()?;
    let mut steps = Steps::default();
    // What the VMs boot is downloaded and assembled while the suite
    // compiles and runs here: it waits on the network and the disk.
    let downloads = Downloads::start(workspace);
    let (netbpf, next, image) = steps.run("build", || {
        let next = build_next(workspace)?;
        let netbpf = build(workspace)?;
        let image = image::image(workspace, &ImageArgs { debug: true })?;
        Ok((netbpf, next, image))
    })?;
    steps.run("lints", || {
        cmd::cargo(workspace, &["fmt", "--all", "--", "--check"])?;
        cmd::cargo(
            workspace,
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        )?;
        clippy_ebpf(workspace)?;
        deploy::check(workspace)
    })?;
    steps.run("tests", || {
        cmd::run(
            cmd::workspace_tests(workspace)
                .env("NETBPF_BIN", &netbpf)
                .env("NETBPF_NEXT_BIN", &next)
                .env("NETBPF_IMAGE", &image),
        )
    })?;
    steps.run("downloads (waited for)", || downloads.wait())?;
    steps.run("bench", || {
        for args in [
            BenchArgs {
                check: true,
                ..BenchArgs::default()
            },
            BenchArgs {
                quick: true,
                ..BenchArgs::default()
            },
        ] {
            bench::bench(workspace, args)?;
        }
        Ok(())
    })?;
    steps.run("package", || package::package(workspace).map(drop))?;
    steps.run("node", || node::node(workspace, &node::NodeArgs::quick()))?;
    steps.run("vm", || {
        let (kernel, tests) = vm::CI_SUBSET;
        vm::run(workspace, &[kernel.to_owned()], &tests.map(str::to_owned))
    })?;
    steps.summary();
    Ok(())
}

/// What the VMs boot, fetched by a thread of its own. Waited for before
/// the bench (whose figures it would disturb), and also when the suite
/// fails before: no download is left running, half written.
struct Downloads(Option<thread::JoinHandle<anyhow::Result<()>>>);

impl Downloads {
    fn start(workspace: &Path) -> Self {
        let workspace = workspace.to_owned();
        Self(Some(thread::spawn(move || {
            node::fetch_images(&workspace)?;
            vm::kernel_image(&workspace, vm::CI_SUBSET.0).map(drop)
        })))
    }

    fn wait(mut self) -> anyhow::Result<()> {
        self.0.take().map_or(Ok(()), |thread| {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the thread fetching the VMs' images panicked"))?
        })
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// How long each step of the suite took: CI gives it 30 minutes.
#[derive(Default)]
struct Steps {
    took: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Runs step `name`, and says how long it took, whether it passed or not.
    fn run<T>(
        &mut self,
        name: &'static str,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        let result = step().with_context(|| format!("the suite's step {name:?}"));
        let took = start.elapsed();
        eprintln!("xtask test: {name} took {} s", took.as_secs());
        self.took.push((name, took));
        result
    }

    /// Every step's time, and their sum.
    fn summary(&self) {
        let total: Duration = self.took.iter().map(|(_, took)| *took).sum();
        eprintln!("xtask test: passed in {} s:", total.as_secs());
        for (name, took) in &self.took {
            eprintln!("  {name:<24} {:>5} s", took.as_secs());
        }
    }
}

/// Clippy on the kernel crates (netbpf's and the bench's), for the target
/// they are built for.
fn clippy_ebpf(workspace: &Path) -> anyhow::Result<()> {
    let tools = setup::tools_dir(workspace).join("bin");
    let path = std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    cmd::run(
        Command::new("cargo")
            .args(["+nightly", "clippy", "--release"])
            .args(
                cmd::KERNEL_CRATES
                    .iter()
                    .flat_map(|name| ["--package", name]),
            )
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(workspace)
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )
}
