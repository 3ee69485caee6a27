//! Steering and watching a run: pause and resume, and a watcher that sees
//! every tenant once and the end.

use std::collections::HashSet;
use std::time::Duration;

use tenantd::pb;

use super::counts;
use crate::common::fleet::{self, SLOW_COLUMN, WAIT, assert_status, fleet_at_v1};

/// 0-30 ms per tenant: with several workers, tenant transactions commit in
/// another order than they began.
const JITTERY_COLUMN: &str =
    "SELECT pg_sleep(random() * 0.03);\nALTER TABLE locations ADD COLUMN tz text;\n";

#[tokio::test]
async fn pause_stops_the_run_and_resume_finishes_it() {
    let (server, _dir, _tenants) = fleet_at_v1(60, &[("slow_column", SLOW_COLUMN)]).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(1, 0)).await;
    fleet::eventually("three tenants upgraded", WAIT, || {
        let mut c = client.clone();
        let id = run.id.clone();
        async move { (fleet::totals(&fleet::get_run(&mut c, &id).await).done >= 3).then_some(()) }
    })
    .await;
    let paused = client
        .pause_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "operator pause".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_status(&paused, pb::UpgradeStatus::Paused);
    assert_eq!(paused.status_reason, "operator pause");
    let at_pause = fleet::totals(&paused).done;
    assert!(
        at_pause < 60,
        "paused too late to test anything: {paused:#?}"
    );

    // The tenant in flight may finish; then nothing moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = fleet::get_run(&mut client, &run.id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = fleet::get_run(&mut client, &run.id).await;
    assert_status(&later, pb::UpgradeStatus::Paused);
    assert_eq!(
        counts(&settled),
        counts(&later),
        "a paused run makes no progress"
    );
    let (done, failed, _, pending, running) = counts(&later);
    assert!(
        done <= at_pause + 1,
        "with concurrency 1 at most the tenant in flight finishes after the pause: \
         {at_pause} done at the pause, {done} later"
    );
    assert_eq!((failed, running), (0, 0), "{later:#?}");
    assert_eq!(done + pending, 60);

    let resumed = client
        .resume_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "go on".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_status(&resumed, pb::UpgradeStatus::Running);
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (60, 0, 0, 0, 0));
    let mut db = server.db.connect().await;
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
}

#[tokio::test]
async fn a_watcher_sees_every_tenant_once_and_the_end() {
    let (server, _dir, tenants) = fleet_at_v1(100, &[("jittery_column", JITTERY_COLUMN)]).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(4, 0)).await;
    let mut watcher = client.clone();
    let id = run.id.clone();
    let watching = tokio::spawn(async move { fleet::watch(&mut watcher, &id, true, WAIT).await });
    let watched = watching.await.unwrap();

    assert!(
        watched.ended && watched.last_was_progress,
        "{:?}",
        watched.progress.last()
    );
    let last = watched.progress.last().unwrap();
    assert_status(last, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(last), (100, 0, 0, 0, 0));
    let seen: Vec<&str> = watched
        .outcomes
        .iter()
        .map(|o| o.tenant_id.as_str())
        .collect();
    let unique: HashSet<&str> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no outcome twice");
    let missing: Vec<&String> = tenants
        .iter()
        .map(|t| &t.id)
        .filter(|id| !unique.contains(id.as_str()))
        .collect();
    if !missing.is_empty() {
        // Where the lost ones sit in finishing order (1-100), for the report.
        let mut db = server.db.connect().await;
        let order: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenantd.upgrade_items WHERE run_id = $1::uuid ORDER BY finished_at, tenant_id",
        )
        .bind(&run.id)
        .fetch_all(&mut db)
        .await
        .unwrap();
        let places: Vec<usize> = missing
            .iter()
            .filter_map(|id| order.iter().position(|t| t.to_string() == **id))
            .map(|p| p + 1)
            .collect();
        panic!(
            "{} of 100 outcomes never reached the watcher: {missing:?}, places in finishing order: {places:?}",
            missing.len()
        );
    }
    assert_eq!(seen.len(), 100);
    for o in &watched.outcomes {
        assert!(o.ok && o.from_version == 1 && o.to_version == 2, "{o:?}");
        assert!(o.finished_at.is_some());
    }
    // Only progress events after the last outcome; every one with sane totals.
    for p in &watched.progress {
        let t = fleet::totals(p);
        assert_eq!(t.total, 100);
        assert_eq!(t.done + t.failed + t.skipped + t.pending + t.running, 100);
    }

    // Watching an ended run for new outcomes only: its end, at once.
    let late = fleet::watch(&mut client, &run.id, false, Duration::from_secs(30)).await;
    assert!(late.outcomes.is_empty(), "{late:?}");
    assert_eq!(late.progress.len(), 1);
    assert_status(&late.progress[0], pb::UpgradeStatus::Succeeded);
    assert!(late.ended);
}
