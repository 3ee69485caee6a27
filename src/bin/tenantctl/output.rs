//! Output mechanics shared by every command group: the `--output` format,
//! the table style, timestamps as RFC 3339, enum values as words, the hint
//! under a page that is not the last, and writing to stdout without
//! panicking when the reader goes away.

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};

use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A table in the style every command uses; with `header`, a header row.
pub fn table(header: Option<&[&str]>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(header) = header {
        table.set_header(header.to_vec());
    }
    table
}

/// A two-column table of field names and values.
pub fn key_value_table(rows: Vec<(&str, String)>) -> Table {
    let mut table = table(None);
    for (key, value) in rows {
        table.add_row(vec![key.to_owned(), value]);
    }
    table
}

/// RFC 3339 in UTC with as many fraction digits as the value needs; `None`
/// when the timestamp is absent or out of range.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    to_datetime(ts).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// RFC 3339 in UTC to the second, for tables; empty when absent.
pub fn rfc3339_seconds(ts: Option<&prost_types::Timestamp>) -> String {
    to_datetime(ts)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn to_datetime(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<chrono::Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// A proto enum value as a lower-case word without its prefix
/// (`TENANT_STATUS_ACTIVE` -> `active`), given the value's name when the
/// number is known; unknown numbers stay visible as `unknown(7)`.
pub fn enum_word(name: Option<&str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(name) => name.trim_start_matches(prefix).to_ascii_lowercase(),
        None => format!("unknown({raw})"),
    }
}

/// Under a table that is not the last page: the token and how to go on
/// (`or_all`: the command also takes `--all`). Nothing on the last page.
pub fn print_next_page(next_page_token: &str, or_all: bool) -> Result<(), CliError> {
    if next_page_token.is_empty() {
        return Ok(());
    }
    let all = if or_all { ", or --all" } else { "" };
    print_text(&format!(
        "next page token: {next_page_token}\n  \
         (pass --page-token {next_page_token} for the next page{all})"
    ))
}

/// Writes `value` as one pretty-printed JSON document.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot encode the output as JSON: {e}")))?;
    print_text(&text)
}

/// Writes `value` as one line of compact JSON (a stream of them is JSON
/// Lines).
pub fn print_json_line(value: &serde_json::Value) -> Result<(), CliError> {
    print_text(&value.to_string())
}

/// Writes `text` and a newline to stdout. A closed pipe (`| head`) ends the
/// output quietly; other write errors fail the command.
pub fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Failed(format!("cannot write the output: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 250_000_000,
        };
        assert_eq!(
            rfc3339(Some(&ts)).as_deref(),
            Some("2023-11-14T22:13:20.250Z")
        );
        assert_eq!(rfc3339_seconds(Some(&ts)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(None), None);
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(rfc3339(Some(&bad)), None);
    }
}
