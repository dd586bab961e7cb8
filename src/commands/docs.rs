//! `mdrec completions` and `mdrec man`: the command line described for shells and `man`.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;

#[derive(Clone, Copy, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// Prints the completion script of `cli` for `shell`.
pub fn completions(shell: ShellArg, mut cli: clap::Command) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
        ShellArg::Elvish => Shell::Elvish,
        ShellArg::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut cli, "mdrec", &mut std::io::stdout());
    Ok(())
}

/// Prints the man page of `cli`, or with `dir` writes one page per command there.
pub fn man(dir: Option<PathBuf>, cli: clap::Command) -> anyhow::Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(cli)
            .render(&mut std::io::stdout())
            .context("printing the man page")?,
    }
    Ok(())
}
