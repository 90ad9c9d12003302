//! `netbpf assets`: the man pages and shell completions, made from the
//! command line's own definition, for packagers (`cargo xtask package`
//! installs them).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Where `man/` (a page per command, section 1) and `completions/`
    /// (bash, zsh, fish) are written.
    #[arg(long)]
    out: PathBuf,
}

pub fn assets(args: &AssetsArgs) -> anyhow::Result<()> {
    let man = args.out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(super::Cli::command(), &man)
        .with_context(|| format!("writing the man pages to {}", man.display()))?;
    let completions = args.out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut super::Cli::command(), "netbpf", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}
