//! `tenantctl upgrade …` end to end: the real binary against the real server
//! over a fleet created at version 1 — plan, start and watch to success, a
//! failing migration fixed and retried, listing runs, and steering a finished
//! run refused.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::Ctl;
use crate::common::fleet::{self, ADD_TIMEZONE, EMAIL_REQUIRED, fleet_at_v1};

/// Version 2 that takes a while on every tenant.
const SLOW: &str = "SELECT pg_sleep(0.4);\nALTER TABLE locations ADD COLUMN timezone text;\n";

/// Asserts exit code 1 and returns stdout and stderr together.
async fn fails(ctl: &Ctl, args: &[&str]) -> String {
    let (code, out) = ctl.fails_saying(args).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code, 1, "tenantctl {args:?}:\n{text}");
    text
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// The run id of the newest run, as `upgrade list` shows it.
async fn newest_run(ctl: &Ctl) -> String {
    let list = ctl.json(&["upgrade", "list"]).await;
    list["runs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run listed: {list}"))
        .to_owned()
}

/// Starts a run with concurrency 1; answers its id.
async fn start_slowly(ctl: &Ctl) -> String {
    let run = ctl.json(&["upgrade", "start", "--concurrency", "1"]).await;
    run["id"].as_str().expect("run id").to_owned()
}

/// `tenantctl upgrade watch RUN` running, and the lines it prints.
fn watch(ctl: &Ctl, run_id: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = ctl
        .command(&["upgrade", "watch", run_id, "--interval", "100ms"])
        .spawn()
        .expect("start tenantctl");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// The next line a running tenantctl printed; `None` at its end.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("a line within 60s")
        .expect("read tenantctl's output")
}
#[tokio::test]
async fn plan_start_and_watch_upgrade_the_fleet_and_finished_runs_refuse_steering() {
    let (server, _dir, tenants) = fleet_at_v1(6, &[("add_timezone", ADD_TIMEZONE)]).await;
    let ctl = Ctl::new(server.endpoint());

    let plan = ctl.json(&["upgrade", "plan"]).await;
    assert_eq!(plan["target_version"], 2, "{plan}");
    assert_eq!(
        plan["versions"],
        serde_json::json!([{ "version": 1, "tenants": 6 }]),
        "{plan}"
    );
    assert_eq!(plan["behind"], 6, "{plan}");
    assert_eq!(plan["behind_sample"].as_array().map(Vec::len), Some(6));
    let table = ctl.ok(&["upgrade", "plan", "--check-drift"]).await;
    assert!(
        table.contains("behind") && table.contains("no drift"),
        "{table}"
    );

    let args = ["upgrade", "start", "--concurrency", "2", "--watch"];
    let text = ctl.ok(&args).await;
    let run_id = newest_run(&ctl).await;
    let progress: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("run {run_id} ")) && l.contains("/6 done="))
        .collect();
    assert!(!progress.is_empty(), "no progress lines:\n{text}");
    let summary = last_line(&text);
    assert!(
        summary.starts_with(&format!("run {run_id} succeeded: 6 of 6 tenants done")),
        "{text}"
    );

    let mut db = server.db.connect().await;
    let versions = fleet::ledgers_agree(&mut db).await;
    assert_eq!(versions.len(), tenants.len());
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");

    // Replayed from the start as JSON Lines: every tenant, then the end.
    let args = [
        "upgrade",
        "watch",
        &run_id,
        "--from-start",
        "--interval",
        "200ms",
    ];
    let text = ctl.ok(&[&args[..], &["--output", "json"]].concat()).await;
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let outcomes = events.iter().filter(|e| e["tenant"]["ok"] == true).count();
    assert_eq!(outcomes, 6, "{text}");
    let last = events.last().expect("events");
    assert_eq!(last["summary"]["status"], "succeeded", "{text}");
    assert_eq!(last["summary"]["totals"]["done"], 6, "{text}");

    // Nothing is behind any more: the second run is done at once.
    let second = ctl.json(&["upgrade", "start"]).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["totals"]["total"], 0, "{second}");
    let list = ctl.ok(&["upgrade", "list"]).await;
    assert!(list.contains(&run_id), "{list}");
    assert!(
        list.contains(second["id"].as_str().unwrap_or("?")),
        "{list}"
    );
    let page = ctl.json(&["upgrade", "list", "--page-size", "1"]).await;
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(!page["next_page_token"].as_str().unwrap_or("").is_empty());

    for action in ["pause", "resume", "cancel", "retry"] {
        let text = fails(&ctl, &["upgrade", action, &run_id, "--reason", "test"]).await;
        assert!(text.contains("FAILED_PRECONDITION"), "{action}: {text}");
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let text = fails(&ctl, &["upgrade", "get", &unknown]).await;
    assert!(text.contains("NOT_FOUND"), "{text}");
}

#[tokio::test]
async fn a_failing_migration_is_reported_then_fixed_and_retried() {
    let (server, _dir, tenants) = fleet_at_v1(5, &[("email_required", EMAIL_REQUIRED)]).await;
    let ctl = Ctl::new(server.endpoint());
    let bad = [&tenants[1], &tenants[3]];
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;

    let text = fails(
        &ctl,
        &["upgrade", "start", "--max-failures", "5", "--watch"],
    )
    .await;
    for t in bad {
        assert!(
            text.lines()
                .any(|l| l.contains(&t.id) && l.contains("SQLSTATE 23502")),
            "{} not reported with 23502:\n{text}",
            t.id
        );
    }
    assert!(
        text.contains("ended failed: 2 of 5 tenants failed"),
        "{text}"
    );
    let run_id = newest_run(&ctl).await;

    let run = ctl.json(&["upgrade", "get", &run_id]).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["totals"]["failed"], 2, "{run}");
    assert_eq!(run["totals"]["done"], 3, "{run}");
    let plan = ctl.json(&["upgrade", "plan"]).await;
    assert_eq!(plan["failed_before"], 2, "{plan}");
    assert_eq!(plan["failed_sample"][0]["sqlstate"], "23502", "{plan}");
    let table = ctl.ok(&["upgrade", "plan"]).await;
    assert!(
        table.contains("23502") && table.contains(&tenants[1].id),
        "{table}"
    );

    fleet::fill_location_emails(&mut db, &bad).await;
    let retried = ctl
        .ok(&["upgrade", "retry", &run_id, "--reason", "emails filled"])
        .await;
    assert!(retried.contains(&run_id), "{retried}");
    let text = ctl
        .ok(&["upgrade", "watch", &run_id, "--interval", "200ms"])
        .await;
    assert!(
        last_line(&text).starts_with(&format!("run {run_id} succeeded: 5 of 5 tenants done")),
        "{text}"
    );
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
}

#[tokio::test]
async fn a_paused_run_is_told_once_and_watched_until_it_succeeds() {
    let (server, _dir, _tenants) = fleet_at_v1(6, &[("slow", SLOW)]).await;
    let ctl = Ctl::new(server.endpoint());
    let run_id = start_slowly(&ctl).await;

    let (mut child, mut lines) = watch(&ctl, &run_id);
    let mut seen = Vec::new();
    let first = next_line(&mut lines).await.expect("a first progress line");
    assert!(
        first.starts_with(&format!("run {run_id} running: ")),
        "{first}"
    );
    seen.push(first);

    ctl.ok(&[
        "upgrade",
        "pause",
        &run_id,
        "--reason",
        "maintenance window",
    ])
    .await;
    // Told once, then watched on: more progress lines, all paused.
    let mut paused_lines = 0;
    while paused_lines < 3 {
        let line = next_line(&mut lines).await.expect("watching a paused run");
        if line.starts_with(&format!("run {run_id} paused: ")) && line.contains(" done=") {
            paused_lines += 1;
        }
        seen.push(line);
    }
    ctl.ok(&["upgrade", "resume", &run_id]).await;
    while let Some(line) = next_line(&mut lines).await {
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("tenantctl ends")
        .expect("wait for tenantctl");
    let text = seen.join("\n");
    assert!(status.success(), "{status}:\n{text}");
    assert_eq!(text.matches("maintenance window").count(), 1, "{text}");
    assert!(
        text.contains(&format!("run {run_id} paused: maintenance window")),
        "{text}"
    );
    assert!(
        text.contains(&format!("run {run_id} running again")),
        "{text}"
    );
    assert!(
        last_line(&text).starts_with(&format!("run {run_id} succeeded: 6 of 6 tenants done")),
        "{text}"
    );
}

#[tokio::test]
async fn a_watch_whose_stream_breaks_fails_and_says_why() {
    let (mut server, _dir, _tenants) = fleet_at_v1(4, &[("slow", SLOW)]).await;
    let ctl = Ctl::new(server.endpoint());
    let run_id = start_slowly(&ctl).await;
    ctl.ok(&["upgrade", "pause", &run_id]).await;

    let (child, mut lines) = watch(&ctl, &run_id);
    let notice = next_line(&mut lines).await.expect("the pause notice");
    assert!(
        notice.starts_with(&format!("run {run_id} paused: ")),
        "{notice}"
    );
    server.stop().await.expect("graceful stop");

    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("tenantctl ends")
        .expect("wait for tenantctl");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("watching run {run_id} broke")),
        "{text}"
    );
    assert!(text.contains("UNAVAILABLE"), "{text}");
}
