//! `upgrade watch` (and `upgrade start --watch`): follows a run's
//! WatchUpgrade stream until the run ends. On a terminal a live progress bar
//! on stderr with failed tenants printed above it; otherwise one line per
//! failed tenant and per progress event; with `--output json` one JSON
//! object per event per line. Ends with a summary, and succeeds only when the
//! run did: a failed, halted or cancelled run, or a broken stream, is a
//! failure that says why.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tenantd::pb::{self, migration_service_client::MigrationServiceClient, upgrade_event::Event};
use tonic::Streaming;
use tonic::transport::Channel;

use super::json;
use super::print::{self, status_word, totals};
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

pub struct Options {
    /// Time between the server's progress events.
    pub interval: Duration,
    /// Also replay the outcomes of tenants finished before the watch began.
    pub from_start: bool,
}

pub async fn watch(
    session: &Session,
    client: &mut MigrationServiceClient<Channel>,
    run_id: &str,
    options: Options,
) -> Result<(), CliError> {
    let request = pb::WatchUpgradeRequest {
        run_id: run_id.to_owned(),
        interval: prost_types::Duration::try_from(options.interval).ok(),
        from_start: options.from_start,
    };
    let mut stream = session
        .call(client.watch_upgrade(session.stream_request(request)))
        .await?;
    // A progress event comes every interval: this much silence means the
    // server or the connection is gone.
    let silence = options.interval + session.timeout();
    let mut view = View::new(session.output);
    let ended = follow(session, &mut stream, &mut view, silence).await;
    view.close();
    match ended {
        Ok(run) => conclude(session.output, &run),
        Err((err, last)) => Err(broken(run_id, &err, last.as_ref())),
    }
}

/// Shows every event until a progress event says the run ended; that run.
/// On failure, the error and the last run seen.
async fn follow(
    session: &Session,
    stream: &mut Streaming<pb::UpgradeEvent>,
    view: &mut View,
    silence: Duration,
) -> Result<pb::UpgradeRun, (CliError, Option<pb::UpgradeRun>)> {
    let mut last = None;
    loop {
        let event = match session.next_message(stream, silence).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                let err =
                    CliError::Failed("the server ended the stream before the run ended".to_owned());
                return Err((err, last));
            }
            Err(err) => return Err((err, last)),
        };
        let shown = match event.event {
            Some(Event::Tenant(outcome)) => view.outcome(&outcome),
            Some(Event::Progress(run)) => {
                let shown = view.progress(&run);
                if shown.is_ok() && has_ended(run.status) {
                    return Ok(run);
                }
                last = Some(run);
                shown
            }
            // An event of a newer server that this client does not know.
            None => Ok(()),
        };
        if let Err(err) = shown {
            return Err((err, last));
        }
    }
}

/// The statuses after which the server sends nothing more.
fn has_ended(status: i32) -> bool {
    use pb::UpgradeStatus as S;
    matches!(
        S::try_from(status),
        Ok(S::Succeeded | S::Failed | S::Halted | S::Cancelled | S::Planned)
    )
}

/// Prints the summary; a run that did not succeed is an error saying why.
fn conclude(format: OutputFormat, run: &pb::UpgradeRun) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => json::print_json_line(&json!({ "summary": json::run_json(run) }))?,
        OutputFormat::Table => output::print_text(&print::summary_line(run))?,
    }
    if run.status == pb::UpgradeStatus::Succeeded as i32 {
        return Ok(());
    }
    Err(CliError::Failed(why(run)))
}

/// `run <id> ended failed: 2 of 5 tenants failed`, the server's reason, and
/// what the operator can do next.
fn why(run: &pb::UpgradeRun) -> String {
    use pb::UpgradeStatus as S;
    let t = totals(run);
    let status = S::try_from(run.status).ok();
    let mut text = format!("run {} ended {}", run.id, status_word(run.status));
    match status {
        Some(S::Failed) => text.push_str(&format!(": {} of {} tenants failed", t.failed, t.total)),
        Some(S::Halted) => text.push_str(&format!(
            ": {} tenants failed, more than max_failures = {}",
            t.failed, run.max_failures
        )),
        Some(S::Cancelled) => {
            text.push_str(&format!(": {} of {} tenants skipped", t.skipped, t.total))
        }
        _ => {}
    }
    if !run.status_reason.is_empty() {
        text.push_str(&format!("; status reason: {}", run.status_reason));
    }
    if matches!(status, Some(S::Failed | S::Halted)) {
        text.push_str(&format!(
            "\n  fix what failed (tenantctl upgrade plan lists it), then: tenantctl upgrade retry {}",
            run.id
        ));
    }
    text
}

/// A watch that stopped before the run ended: why, what was last seen, and
/// that the run itself is not affected.
fn broken(run_id: &str, err: &CliError, last: Option<&pb::UpgradeRun>) -> CliError {
    let reason = match err {
        CliError::Timeout { endpoint, after } => format!(
            "no event from tenantd at {endpoint} for {}",
            humantime::format_duration(*after)
        ),
        other => other.to_string(),
    };
    let seen = last
        .map(|run| format!("\n  last seen: {}", print::progress_line(run)))
        .unwrap_or_default();
    CliError::Failed(format!(
        "watching run {run_id} broke: {reason}{seen}\n  \
         the run itself is not affected; watch again with: tenantctl upgrade watch {run_id}"
    ))
}

/// Where and how events are shown.
enum Mode {
    /// A live bar on stderr; failures and notices printed above it.
    Bar(ProgressBar),
    /// Plain lines on stdout.
    Lines,
    /// JSON Lines on stdout; notices on stderr.
    Json,
}

struct View {
    mode: Mode,
    /// The run was paused at the last progress event.
    paused: bool,
}

impl View {
    fn new(format: OutputFormat) -> View {
        let mode = match format {
            OutputFormat::Json => Mode::Json,
            OutputFormat::Table if std::io::stderr().is_terminal() => Mode::Bar(progress_bar()),
            OutputFormat::Table => Mode::Lines,
        };
        View {
            mode,
            paused: false,
        }
    }

    fn outcome(&self, o: &pb::TenantOutcome) -> Result<(), CliError> {
        match &self.mode {
            Mode::Json => json::print_json_line(&json!({ "tenant": json::outcome_json(o) })),
            _ if o.ok => Ok(()),
            Mode::Bar(bar) => {
                bar.println(print::outcome_line(o));
                Ok(())
            }
            Mode::Lines => output::print_text(&print::outcome_line(o)),
        }
    }

    fn progress(&mut self, run: &pb::UpgradeRun) -> Result<(), CliError> {
        let notice = self.pause_notice(run);
        match &self.mode {
            Mode::Json => {
                if let Some(notice) = notice {
                    // Nothing sensible is left to do if stderr itself is gone.
                    let _ = writeln!(std::io::stderr().lock(), "{notice}");
                }
                json::print_json_line(&json!({ "progress": json::run_json(run) }))
            }
            Mode::Bar(bar) => {
                if let Some(notice) = notice {
                    bar.println(notice);
                }
                let t = totals(run);
                bar.set_length(u64::try_from(t.total).unwrap_or(0));
                bar.set_position(u64::try_from(print::finished(&t)).unwrap_or(0));
                bar.set_message(format!(
                    "{} {}",
                    status_word(run.status),
                    print::counts_text(&t)
                ));
                Ok(())
            }
            Mode::Lines => {
                if let Some(notice) = notice {
                    output::print_text(&notice)?;
                }
                output::print_text(&print::progress_line(run))
            }
        }
    }

    /// Once when the run becomes paused (with the reason), once when it runs
    /// again; the server keeps streaming a paused run.
    fn pause_notice(&mut self, run: &pb::UpgradeRun) -> Option<String> {
        let paused = run.status == pb::UpgradeStatus::Paused as i32;
        let was_paused = std::mem::replace(&mut self.paused, paused);
        if paused && !was_paused {
            let reason = if run.status_reason.is_empty() {
                "no reason given"
            } else {
                &run.status_reason
            };
            return Some(format!(
                "run {} paused: {reason}\n  still watching; continue it with: tenantctl upgrade resume {}",
                run.id, run.id
            ));
        }
        if was_paused && run.status == pb::UpgradeStatus::Running as i32 {
            return Some(format!("run {} running again", run.id));
        }
        None
    }

    fn close(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

fn progress_bar() -> ProgressBar {
    let style =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = ProgressBar::new(0).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: pb::UpgradeStatus, reason: &str) -> pb::UpgradeRun {
        pb::UpgradeRun {
            id: "r1".into(),
            status: status as i32,
            status_reason: reason.into(),
            max_failures: 1,
            totals: Some(pb::UpgradeTotals {
                total: 5,
                done: 3,
                failed: 2,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_finished_runs_end_the_watch() {
        assert!(!has_ended(pb::UpgradeStatus::Running as i32));
        assert!(!has_ended(pb::UpgradeStatus::Paused as i32));
        assert!(!has_ended(99));
        assert!(has_ended(pb::UpgradeStatus::Halted as i32));
        assert!(has_ended(pb::UpgradeStatus::Succeeded as i32));
    }

    #[test]
    fn a_failed_run_says_why_and_what_next() {
        let text = why(&run(pb::UpgradeStatus::Failed, ""));
        assert!(
            text.starts_with("run r1 ended failed: 2 of 5 tenants failed"),
            "{text}"
        );
        assert!(text.contains("tenantctl upgrade retry r1"), "{text}");
        let text = why(&run(pb::UpgradeStatus::Halted, "2 tenants failed"));
        assert!(
            text.contains("halted") && text.contains("status reason: 2 tenants failed"),
            "{text}"
        );
    }

    #[test]
    fn a_pause_is_told_once_with_its_reason() {
        let mut view = View {
            mode: Mode::Lines,
            paused: false,
        };
        assert_eq!(
            view.pause_notice(&run(pb::UpgradeStatus::Running, "")),
            None
        );
        let notice = view.pause_notice(&run(pb::UpgradeStatus::Paused, "canary failed"));
        assert!(notice.is_some_and(|n| n.starts_with("run r1 paused: canary failed")));
        assert_eq!(
            view.pause_notice(&run(pb::UpgradeStatus::Paused, "canary failed")),
            None
        );
        assert_eq!(
            view.pause_notice(&run(pb::UpgradeStatus::Running, ""))
                .as_deref(),
            Some("run r1 running again")
        );
    }
}
