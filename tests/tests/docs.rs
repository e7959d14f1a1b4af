//! The documentation a user reads is true to the repository: every link in
//! README.md, CHANGELOG.md and docs/*.md resolves to a file (and heading)
//! inside it; nothing points outside, nor at an issue tracker the reader
//! does not have.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    for e in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push(p);
        }
    }
    docs
}

/// `[text](target)` links outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Drop code spans: `[x](y)` inside backticks is not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub-style anchors of a Markdown file's headings.
fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let mut bad = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read");
        for link in links(&text) {
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            if path.contains("://") || path.starts_with("mailto:") || path.starts_with('/') {
                bad.push(format!(
                    "{}: {link} points outside the repository",
                    doc.display()
                ));
                continue;
            }
            let target = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("dir").join(path)
            };
            let Ok(target) = target.canonicalize() else {
                bad.push(format!("{}: {link} does not exist", doc.display()));
                continue;
            };
            let repo = root().canonicalize().expect("root");
            if !target.starts_with(&repo) {
                bad.push(format!("{}: {link} leaves the repository", doc.display()));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|x| x == "md") {
                let t = std::fs::read_to_string(&target).expect("read target");
                if !anchors(&t).iter().any(|a| a == anchor) {
                    bad.push(format!("{}: {link}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn no_document_or_comment_cites_an_issue_tracker() {
    let mut bad = Vec::new();
    let mut files = documents();
    for dir in [
        "common/src",
        "service/src",
        "controller/src",
        "agent/src",
        "tests/src",
        "tests/tests",
    ] {
        collect_rs(&root().join(dir), &mut files);
    }
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for (n, line) in text.lines().enumerate() {
            let l = line.to_lowercase();
            let cites = ["(issue ", "issue #", "see issue"]
                .iter()
                .any(|p| l.contains(p))
                || l.contains("shared/design.md");
            // This test's own patterns are not citations.
            if cites && !f.ends_with("docs.rs") {
                bad.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "references the reader cannot follow:\n{}",
        bad.join("\n")
    );
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_link_checker_finds_links_and_skips_code() {
    let text = "see [a](docs/a.md) and `[b](x)`\n```\n[c](y)\n```\n[d](https://e)";
    assert_eq!(links(text), ["docs/a.md", "https://e"]);
    assert_eq!(
        anchors("## Quick start (one machine)"),
        ["quick-start-one-machine"]
    );
}
