//! How plans, runs and tenant outcomes print: tables and one-line texts for
//! people; with `--output json`, the documents of `json.rs`.

use std::time::Duration;

use serde_json::json;
use tenantd::pb;

use super::json;
use crate::error::CliError;
use crate::output::{self, OutputFormat};

/// The lower-case status word ("running"); unknown numbers stay visible.
pub fn status_word(status: i32) -> String {
    let name = pb::UpgradeStatus::try_from(status).ok();
    output::enum_word(name.map(|s| s.as_str_name()), "UPGRADE_STATUS_", status)
}

pub fn totals(run: &pb::UpgradeRun) -> pb::UpgradeTotals {
    run.totals.unwrap_or_default()
}

/// Tenants that will not be worked on again in this run.
pub fn finished(t: &pb::UpgradeTotals) -> i64 {
    t.done + t.failed + t.skipped
}

/// A duration for people ("5m", "1s 500ms"); empty when absent or negative.
fn human(d: Option<&prost_types::Duration>) -> String {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default()
}

/// Time left in whole seconds, rounded up, without spaces ("1m5s"); "?"
/// while the server cannot tell.
pub fn eta_text(t: &pb::UpgradeTotals) -> String {
    t.eta
        .and_then(|d| Duration::try_from(d).ok())
        .map_or_else(|| "?".to_owned(), whole_seconds)
}

/// A duration rounded up to whole seconds, without spaces ("1m5s").
fn whole_seconds(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs))
        .to_string()
        .replace(' ', "")
}

/// From `start` to `end`; `None` when either is absent or time ran backwards.
fn elapsed(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Option<Duration> {
    let (start, end) = (start?, end?);
    let nanos = i128::from(end.seconds - start.seconds) * 1_000_000_000
        + i128::from(end.nanos - start.nanos);
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// `done=118 failed=2 rate=95.3/s eta=1s`, with `skipped=` when any were.
pub fn counts_text(t: &pb::UpgradeTotals) -> String {
    let skipped = if t.skipped > 0 {
        format!(" skipped={}", t.skipped)
    } else {
        String::new()
    };
    format!(
        "done={} failed={}{skipped} rate={:.1}/s eta={}",
        t.done,
        t.failed,
        t.rate,
        eta_text(t)
    )
}

/// `run <id> running: 120/200 done=118 failed=2 rate=95.3/s eta=1s`
pub fn progress_line(run: &pb::UpgradeRun) -> String {
    let t = totals(run);
    format!(
        "run {} {}: {}/{} {}",
        run.id,
        status_word(run.status),
        finished(&t),
        t.total,
        counts_text(&t)
    )
}

/// One tenant's outcome; a failure with its SQLSTATE and message.
pub fn outcome_line(o: &pb::TenantOutcome) -> String {
    let plural = if o.attempts == 1 { "" } else { "s" };
    if o.ok {
        return format!(
            "tenant {} upgraded (version {} -> {}, {} attempt{plural})",
            o.tenant_id, o.from_version, o.to_version, o.attempts
        );
    }
    let mut line = format!("tenant {} failed", o.tenant_id);
    if !o.sqlstate.is_empty() {
        line.push_str(&format!(": SQLSTATE {}", o.sqlstate));
    }
    if !o.message.is_empty() {
        line.push_str(&format!(": {}", o.message));
    }
    line.push_str(&format!(
        " (still at version {}, {} attempt{plural})",
        o.from_version, o.attempts
    ));
    line
}

/// How a run ended, on one line: `run <id> succeeded: 12 of 12 tenants done,
/// 0 failed, 0 skipped (target version 2, took 3s)`.
pub fn summary_line(run: &pb::UpgradeRun) -> String {
    let t = totals(run);
    let took = elapsed(run.created_at.as_ref(), run.finished_at.as_ref())
        .map(|d| format!(", took {}", whole_seconds(d)))
        .unwrap_or_default();
    let mut line = format!(
        "run {} {}: {} of {} tenants done, {} failed, {} skipped (target version {}{took})",
        run.id,
        status_word(run.status),
        t.done,
        t.total,
        t.failed,
        t.skipped,
        run.target_version
    );
    if !run.status_reason.is_empty() {
        line.push_str(&format!("; status reason: {}", run.status_reason));
    }
    line
}

pub fn print_run(format: OutputFormat, r: &pb::UpgradeRun) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&json::run_json(r));
    }
    let t = totals(r);
    let table = output::key_value_table(vec![
        ("id", r.id.clone()),
        ("status", status_word(r.status)),
        ("status_reason", r.status_reason.clone()),
        ("target_version", r.target_version.to_string()),
        ("tenants", format!("{}/{} finished", finished(&t), t.total)),
        (
            "totals",
            format!(
                "pending={} running={} done={} failed={} skipped={}",
                t.pending, t.running, t.done, t.failed, t.skipped
            ),
        ),
        ("rate", format!("{:.1}/s", t.rate)),
        ("eta", eta_text(&t)),
        ("concurrency", r.concurrency.to_string()),
        ("canary_count", r.canary_count.to_string()),
        ("max_failures", r.max_failures.to_string()),
        ("max_attempts", r.max_attempts.to_string()),
        ("lock_timeout", human(r.lock_timeout.as_ref())),
        ("statement_timeout", human(r.statement_timeout.as_ref())),
        ("created_at", output::rfc3339_seconds(r.created_at.as_ref())),
        ("updated_at", output::rfc3339_seconds(r.updated_at.as_ref())),
        (
            "finished_at",
            output::rfc3339_seconds(r.finished_at.as_ref()),
        ),
    ]);
    output::print_text(&table.to_string())
}

/// The run `start --watch` created: its table, or with JSON the first
/// record of the watch's JSON Lines, `{"started": run}`.
pub fn print_started(format: OutputFormat, r: &pb::UpgradeRun) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => json::print_json_line(&json!({ "started": json::run_json(r) })),
        OutputFormat::Table => print_run(format, r),
    }
}

pub fn print_list(
    format: OutputFormat,
    runs: &[pb::UpgradeRun],
    next_page_token: &str,
) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&json!({
            "runs": runs.iter().map(json::run_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        }));
    }
    if runs.is_empty() {
        output::print_text("no upgrade runs")?;
    } else {
        let mut table = output::table(Some(&[
            "ID", "STATUS", "TARGET", "TOTAL", "DONE", "FAILED", "SKIPPED", "CREATED", "FINISHED",
        ]));
        for r in runs {
            let t = totals(r);
            table.add_row(vec![
                r.id.clone(),
                status_word(r.status),
                r.target_version.to_string(),
                t.total.to_string(),
                t.done.to_string(),
                t.failed.to_string(),
                t.skipped.to_string(),
                output::rfc3339_seconds(r.created_at.as_ref()),
                output::rfc3339_seconds(r.finished_at.as_ref()),
            ]);
        }
        output::print_text(&table.to_string())?;
    }
    output::print_next_page(next_page_token, false)
}

pub fn print_plan(format: OutputFormat, p: &pb::UpgradePlan) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&json::plan_json(p));
    }
    let summary = output::key_value_table(vec![
        ("target_version", p.target_version.to_string()),
        ("latest_version", p.latest_version.to_string()),
        ("total_tenants", p.total_tenants.to_string()),
        ("behind", p.behind.to_string()),
        ("failed_before", p.failed_before.to_string()),
        ("behind_sample", p.behind_sample.join("\n")),
    ]);
    output::print_text(&summary.to_string())?;

    let mut versions = output::table(Some(&["VERSION", "TENANTS"]));
    for v in &p.versions {
        versions.add_row(vec![v.version.to_string(), v.tenants.to_string()]);
    }
    output::print_text(&versions.to_string())?;

    let mut clusters = output::table(Some(&["CLUSTER", "TENANTS", "BEHIND"]));
    for c in &p.clusters {
        clusters.add_row(vec![
            c.cluster.clone(),
            c.tenants.to_string(),
            c.behind.to_string(),
        ]);
    }
    output::print_text(&clusters.to_string())?;

    if !p.failed_sample.is_empty() {
        let mut failures = output::table(Some(&[
            "FAILED TENANT",
            "RUN",
            "VERSION",
            "SQLSTATE",
            "MESSAGE",
        ]));
        for f in &p.failed_sample {
            failures.add_row(vec![
                f.tenant_id.clone(),
                f.run_id.clone(),
                f.version.to_string(),
                f.sqlstate.clone(),
                f.message.clone(),
            ]);
        }
        output::print_text(&failures.to_string())?;
    }

    if !p.drift_checked {
        return output::print_text("drift not checked (pass --check-drift)");
    }
    if p.drifted.is_empty() {
        return output::print_text("no drift: every ledger agrees with the catalog");
    }
    let mut drifted = output::table(Some(&[
        "DRIFTED TENANT",
        "CATALOG VERSION",
        "LEDGER VERSION",
    ]));
    for d in &p.drifted {
        let ledger = if d.ledger_version < 0 {
            "no ledger".to_owned()
        } else {
            d.ledger_version.to_string()
        };
        drifted.add_row(vec![
            d.tenant_id.clone(),
            d.catalog_version.to_string(),
            ledger,
        ]);
    }
    output::print_text(&drifted.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: pb::UpgradeStatus, totals: pb::UpgradeTotals) -> pb::UpgradeRun {
        pb::UpgradeRun {
            id: "r1".into(),
            target_version: 2,
            status: status as i32,
            totals: Some(totals),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_are_lower_case_words() {
        assert_eq!(status_word(pb::UpgradeStatus::Running as i32), "running");
        assert_eq!(
            status_word(pb::UpgradeStatus::Cancelled as i32),
            "cancelled"
        );
        assert_eq!(status_word(pb::UpgradeStatus::Planned as i32), "planned");
        assert_eq!(status_word(42), "unknown(42)");
    }

    #[test]
    fn progress_reads_as_one_line() {
        let totals = pb::UpgradeTotals {
            total: 200,
            pending: 70,
            running: 10,
            done: 118,
            failed: 2,
            rate: 95.25,
            eta: Some(prost_types::Duration {
                seconds: 0,
                nanos: 840_000_000,
            }),
            ..Default::default()
        };
        let r = run(pb::UpgradeStatus::Running, totals);
        assert_eq!(
            progress_line(&r),
            "run r1 running: 120/200 done=118 failed=2 rate=95.2/s eta=1s"
        );
        let unknown = run(pb::UpgradeStatus::Paused, pb::UpgradeTotals::default());
        assert!(progress_line(&unknown).ends_with("eta=?"));
        let long = pb::UpgradeTotals {
            eta: Some(prost_types::Duration {
                seconds: 65,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(eta_text(&long), "1m5s");
    }

    #[test]
    fn failures_name_tenant_and_sqlstate() {
        let o = pb::TenantOutcome {
            tenant_id: "t1".into(),
            ok: false,
            from_version: 1,
            to_version: 1,
            attempts: 1,
            sqlstate: "23502".into(),
            message: "column \"email\" contains null values".into(),
            ..Default::default()
        };
        assert_eq!(
            outcome_line(&o),
            "tenant t1 failed: SQLSTATE 23502: column \"email\" contains null values \
             (still at version 1, 1 attempt)"
        );
        let summary = summary_line(&run(pb::UpgradeStatus::Succeeded, Default::default()));
        assert!(
            summary.starts_with("run r1 succeeded: 0 of 0 tenants done"),
            "{summary}"
        );
    }
}
