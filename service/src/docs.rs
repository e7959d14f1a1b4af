//! Shell completions and man pages generated from a binary's clap
//! definition (the packages ship them, and `completion SHELL` prints one).
//! Shared by both binaries.

use anyhow::{Context, Result};

/// Write `<name>.bash`, `_<name>` (zsh), `<name>.fish`, `<name>.1` and one
/// `<name>-<sub>[-<subsub>...].1` per visible subcommand at every depth (the
/// pages name each other so in SEE ALSO) into `dir`.
pub fn generate_docs(mut cmd: clap::Command, dir: &std::path::Path) -> Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir)
            .with_context(|| format!("failed to write {shell} completions"))?;
    }
    cmd.build();
    for (page, c) in man_pages(&cmd) {
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

/// Every man page of `cmd` as (page name, the command named so): the command
/// itself and each visible subcommand, recursively.
pub fn man_pages(cmd: &clap::Command) -> Vec<(String, clap::Command)> {
    let mut pages = Vec::new();
    collect(cmd, cmd.get_name(), &mut pages);
    pages
}

fn collect(cmd: &clap::Command, page: &str, out: &mut Vec<(String, clap::Command)>) {
    // clap_mangen names sub-pages `<page>-<sub>`: the page's own name must
    // be that dashed form for the references to resolve.
    out.push((page.to_owned(), cmd.clone().name(page.to_owned())));
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let name = format!("{page}-{}", sub.get_name());
        if sub.get_name() == "help" {
            // Listed among the subcommands, so it gets its page; its own
            // subcommands only mirror the tree.
            let mut help = clap::Command::new(name.clone()).bin_name(
                sub.get_bin_name()
                    .map_or_else(|| name.replace('-', " "), ToOwned::to_owned),
            );
            if let Some(about) = sub.get_about() {
                help = help.about(about.clone());
            }
            let help = help.arg(
                clap::Arg::new("command")
                    .num_args(0..)
                    .help("The subcommand to describe (as in `... --help`)"),
            );
            out.push((name, help));
            continue;
        }
        collect(sub, &name, out);
    }
}

/// The man pages in `dir` that name a `<prefix>...(1)` page which is not
/// there, as "page.1 -> missing(1)" (a test helper for both binaries).
pub fn dangling_references(dir: &std::path::Path, prefix: &str) -> Result<Vec<String>> {
    let mut pages = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        if let Some(n) = e?.file_name().to_str().and_then(|n| n.strip_suffix(".1")) {
            pages.insert(n.to_owned());
        }
    }
    let mut dangling = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1")))?;
        // roff escapes the dashes: `wardnet\-controller\-sites\-add(1)`.
        let plain = text.replace("\\-", "-");
        for (i, _) in plain.match_indices("(1)") {
            let start = plain[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |p| p + 1);
            let named = &plain[start..i];
            if named.starts_with(prefix) && !pages.contains(named) {
                dangling.push(format!("{page}.1 -> {named}(1)"));
            }
        }
    }
    Ok(dangling)
}

/// Print the completion script for `shell` to standard output.
pub fn print_completion(mut cmd: clap::Command, shell: clap_complete::Shell) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

pub use clap_complete::Shell;
