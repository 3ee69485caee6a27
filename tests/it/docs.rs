//! The operator docs under `docs/` stay true to the code. The configuration
//! reference in docs/configuration.md is generated from the clap definitions
//! (`tenantd serve`'s flags, `tenantctl --help`) and must match them exactly;
//! `TENANTD_BLESS=1 cargo test --test it -- docs::` rewrites those sections
//! after a flag changes. Every relative link in docs/ (and the README) must
//! lead to a file and, with a `#fragment`, to one of its headings; every
//! `TENANTD_*` variable the docs name must exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory};

use crate::common::cli::{Serve, env_vars, tenantctl_help};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BLESS: &str = "TENANTD_BLESS";

/// Variables the docs may name that are not flags: the test harness's own.
const NOT_FLAGS: &[&str] = &["TENANTD_BLESS", "TENANTD_TEST_DATABASE_URL"];

fn docs_dir() -> PathBuf {
    Path::new(ROOT).join("docs")
}

/// One line of text: clap's help with its line breaks and runs of spaces
/// folded, and `|`, `<` and `>` escaped for a Markdown table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The reference table of `tenantd serve`, one row per flag, in the order
/// of the definition.
fn serve_reference() -> String {
    let mut out =
        String::from("| Flag | Environment variable | Default | Meaning |\n|---|---|---|---|\n");
    for arg in Serve::command().get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let Some(long) = arg.get_long() else {
            continue;
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "—".to_owned());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| format!("`{}`", d.to_string_lossy()))
            .collect();
        let default = if defaults.is_empty() {
            "—".to_owned()
        } else {
            defaults.join(", ")
        };
        let mut meaning = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let trimmed = meaning.trim_end().to_owned();
        meaning = if trimmed.ends_with('.') || trimmed.is_empty() {
            trimmed
        } else {
            format!("{trimmed}.")
        };
        let flag_like = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !flag_like {
            meaning.push_str(&format!(" One of {}.", values.join(", ")));
        }
        out.push_str(&format!(
            "| `--{long}` | {env} | {default} | {} |\n",
            cell(&meaning)
        ));
    }
    out
}

/// `tenantctl --help`, with no `TENANTD_*` variable of this shell shown in it.
fn tenantctl_reference() -> String {
    let help = tenantctl_help();
    let mut text = String::from("```text\n$ tenantctl --help\n");
    for line in help.trim_end().lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text.push_str("```\n");
    text
}

/// Replaces the text between `<!-- BEGIN GENERATED: {name} … -->` and
/// `<!-- END GENERATED: {name} -->` in `doc`; `None` when the markers are missing.
fn replace_section(doc: &str, name: &str, body: &str) -> Option<String> {
    let begin = format!("<!-- BEGIN GENERATED: {name} ");
    let end = format!("<!-- END GENERATED: {name} -->");
    let start = doc.find(&begin)?;
    let body_start = start + doc[start..].find('\n')? + 1;
    let body_end = body_start + doc[body_start..].find(&end)?;
    Some(format!(
        "{}{}{}",
        &doc[..body_start],
        body,
        &doc[body_end..]
    ))
}

/// Checks (or, with TENANTD_BLESS=1, rewrites) one generated section.
fn check_generated(file: &str, name: &str, body: &str) {
    let path = docs_dir().join(file);
    let doc =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let expected = replace_section(&doc, name, body).unwrap_or_else(|| {
        panic!(
            "docs/{file} lacks the markers `<!-- BEGIN GENERATED: {name} … -->` and \
             `<!-- END GENERATED: {name} -->`"
        )
    });
    if expected == doc {
        return;
    }
    if std::env::var(BLESS).is_ok_and(|v| v == "1") {
        std::fs::write(&path, &expected)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("rewrote the `{name}` section of docs/{file}");
        return;
    }
    let first_difference = doc
        .lines()
        .zip(expected.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("line {}:\n  docs:      {a}\n  generated: {b}", i + 1))
        .unwrap_or_else(|| "the sections differ in length".to_owned());
    panic!(
        "docs/{file}: the `{name}` reference is out of date with the code \
         ({first_difference}).\nRegenerate it with:\n  {BLESS}=1 cargo test --test it -- docs::\n\
         and commit docs/{file} together with the flag change."
    );
}

#[test]
fn configuration_reference_matches_tenantd_serve() {
    check_generated("configuration.md", "tenantd serve", &serve_reference());
}

#[test]
fn configuration_reference_matches_tenantctl() {
    check_generated("configuration.md", "tenantctl", &tenantctl_reference());
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(docs_dir())
        .expect("read docs/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("md"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "docs/ holds no Markdown file");
    files
}

/// The targets of the inline links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            rest.find(')').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown file (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn relative_links_in_the_docs_lead_to_files_and_headings() {
    let mut files = markdown_files();
    files.push(Path::new(ROOT).join("README.md"));
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a Markdown file");
        let dir = file.parent().unwrap();
        let name = file.strip_prefix(ROOT).unwrap().display().to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            assert!(linked.exists(), "{name}: the link ({target}) leads nowhere");
            if fragment.is_empty() || linked.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let linked_text = std::fs::read_to_string(&linked).expect("read a Markdown file");
            assert!(
                anchors(&linked_text).contains(fragment),
                "{name}: the link ({target}) names no heading of {}",
                linked.display()
            );
        }
    }
}

#[test]
fn the_docs_name_only_real_variables() {
    let mut known: BTreeSet<String> = Serve::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    known.extend(NOT_FLAGS.iter().map(|s| (*s).to_owned()));
    known.extend(env_vars(&tenantctl_help()));
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read a Markdown file");
        for (i, _) in text.match_indices("TENANTD_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.ends_with('_') {
                continue; // `TENANTD_*`
            }
            assert!(
                known.contains(&name),
                "docs/{}: {name} is no environment variable of tenantd serve or tenantctl",
                file.file_name().unwrap().to_string_lossy()
            );
        }
    }
}
