//! What every subcommand prints besides its own figures: its targets
//! ([`Check`]) as lines and as a markdown table, the markdown footnote that
//! says where the run ran, figures that may be missing, and the markdown
//! section itself, printed only with --markdown.

use std::fmt::Write as _;

use crate::Target;
use crate::pg::PgServer;

/// A target: a figure of the run and the limit it must keep.
#[derive(Clone)]
pub struct Check {
    pub label: &'static str,
    pub markdown: &'static str,
    pub value: Option<f64>,
    pub limit: Limit,
    /// Why the figure can be missing, shown in its place.
    pub missing: &'static str,
}

#[derive(Clone, Copy)]
pub enum Limit {
    AtMost(f64),
    AtLeast(f64),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::AtMost(v) => write!(f, "≤ {v:.2}"),
            Limit::AtLeast(v) => write!(f, "≥ {v:.2}"),
        }
    }
}

impl Check {
    pub fn verdict(&self, value: f64) -> &'static str {
        let pass = match self.limit {
            Limit::AtMost(limit) => value <= limit,
            Limit::AtLeast(limit) => value >= limit,
        };
        if pass { "PASS" } else { "FAIL" }
    }

    pub fn line(&self) -> String {
        match self.value {
            Some(v) => format!(
                "{}: {v:.2} (target {}) {}",
                self.label,
                self.limit,
                self.verdict(v)
            ),
            None => format!("{}: n/a ({})", self.label, self.missing),
        }
    }
}

/// Each check's line on stdout.
pub fn print_checks(checks: &[Check]) {
    for check in checks {
        println!("{}", check.line());
    }
}

/// The markdown table of the checks, after a blank line: `| target |
/// <column> | result |`, the values with `digits` decimals.
pub fn targets_table(md: &mut String, column: &str, checks: &[Check], digits: usize) {
    let _ = write!(md, "\n| target | {column} | result |\n|---|---:|---|\n");
    for check in checks {
        let (value, verdict) = match check.value {
            Some(v) => (format!("{v:.digits$}"), check.verdict(v)),
            None => ("n/a".to_owned(), check.missing),
        };
        let _ = writeln!(
            md,
            "| {} {} | {value} | {verdict} |",
            check.markdown, check.limit
        );
    }
}

/// The markdown footnote, after a blank line: where the run ran
/// ([`PgServer::setting`]), then `details`.
pub fn footnote(md: &mut String, server: &PgServer, details: std::fmt::Arguments<'_>) {
    let _ = writeln!(md, "\n{}; {details}", server.setting());
}

/// `value` with `digits` decimals, or `n/a`.
pub fn or_na(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// With --markdown, a blank line and then the markdown section.
pub fn print_markdown(target: &Target, markdown: impl FnOnce() -> String) {
    if target.markdown {
        println!();
        print!("{}", markdown());
    }
}
