//! Shell completions and man pages generated from a binary's clap
//! definition (the packages ship them). Shared by both binaries.

use anyhow::{Context, Result};

/// Write `<name>.bash`, `_<name>` (zsh), `<name>.fish`, `<name>.1` and one
/// `<name>-<sub>.1` per visible subcommand into `dir`.
pub fn generate_docs(mut cmd: clap::Command, dir: &std::path::Path) -> Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir)
            .with_context(|| format!("failed to write {shell} completions"))?;
    }
    let pages = std::iter::once((name.clone(), cmd.clone())).chain(
        cmd.get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .map(|c| {
                let n = format!("{name}-{}", c.get_name());
                (n.clone(), c.clone().name(n))
            }),
    );
    for (page, c) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .render(&mut out)
            .context("failed to render a man page")?;
        let path = dir.join(format!("{page}.1"));
        std::fs::write(&path, out)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}
