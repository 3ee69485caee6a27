//! Runs that meet failing tenants: failures recorded per tenant and retried
//! after a fix, a failing canary that pauses the run, and the failure budget
//! that halts it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{counts, ids};
use crate::common::TestServer;
use crate::common::fleet::{
    self, EMAIL_REQUIRED, WAIT, assert_status, fleet_at_v1, fleet_at_v1_with,
};

#[tokio::test]
async fn data_failures_are_recorded_per_tenant_and_retried_after_a_fix() {
    let (server, _dir, tenants) = fleet_at_v1(20, &[("email_required", EMAIL_REQUIRED)]).await;
    let bad: Vec<&pb::Tenant> = tenants[..3].iter().collect();
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;
    let mut client = fleet::migration_client(server.endpoint()).await;

    let run = fleet::start(&mut client, fleet::start_request(4, 5)).await;
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Failed);
    assert_eq!(counts(&ended), (17, 3, 0, 0, 0));
    assert!(ended.finished_at.is_some());

    // The watcher replays every outcome of the finished run, then its end.
    let watched = fleet::watch(&mut client, &run.id, true, WAIT).await;
    assert!(watched.ended && watched.last_was_progress, "{watched:?}");
    assert_status(watched.progress.last().unwrap(), pb::UpgradeStatus::Failed);
    assert_eq!(watched.outcomes.len(), 20, "{watched:?}");
    let by_tenant: HashMap<&str, &pb::TenantOutcome> = watched
        .outcomes
        .iter()
        .map(|o| (o.tenant_id.as_str(), o))
        .collect();
    assert_eq!(by_tenant.len(), 20, "one outcome per tenant");
    let failed: HashSet<String> = watched
        .outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.tenant_id.clone())
        .collect();
    assert_eq!(failed, ids(bad.iter().copied()));
    for o in &watched.outcomes {
        if o.ok {
            assert_eq!(
                (o.from_version, o.to_version, o.sqlstate.as_str()),
                (1, 2, ""),
                "{o:?}"
            );
        } else {
            assert_eq!(
                (o.from_version, o.to_version, o.sqlstate.as_str()),
                (1, 1, "23502"),
                "{o:?}"
            );
            assert!(o.message.contains("email"), "{o:?}");
            assert_eq!(o.attempts, 1, "a data error is not retried: {o:?}");
        }
    }

    let plan = client
        .plan_upgrade(pb::PlanUpgradeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((plan.behind, plan.failed_before), (3, 3), "{plan:?}");
    assert_eq!(
        plan.failed_sample
            .iter()
            .map(|f| f.tenant_id.clone())
            .collect::<HashSet<_>>(),
        ids(bad.iter().copied())
    );
    for f in &plan.failed_sample {
        assert_eq!(
            (f.run_id.as_str(), f.sqlstate.as_str(), f.version),
            (run.id.as_str(), "23502", 1),
            "{f:?}"
        );
    }
    let versions = fleet::versions(&mut db).await;
    for t in &tenants {
        let expected = if failed.contains(&t.id) { 1 } else { 2 };
        assert_eq!(versions[&t.id], expected, "{}", t.id);
    }
    fleet::ledgers_agree(&mut db).await;

    // Fix the data, retry the failed tenants only.
    fleet::fill_location_emails(&mut db, &bad).await;
    let retried = client
        .retry_failed(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "emails filled in".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_status(&retried, pb::UpgradeStatus::Running);
    assert_eq!(fleet::totals(&retried).failed, 0);
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (20, 0, 0, 0, 0));
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
    let plan = client
        .plan_upgrade(pb::PlanUpgradeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((plan.behind, plan.failed_before), (0, 0), "{plan:?}");
}

/// Starts a run on a server without workers, makes one of its canaries fail
/// (a location without an email), then lets a server with workers run it.
/// Returns the server, the run, the bad canary and the other canaries.
async fn run_with_a_failing_canary(
    tenants: usize,
    canaries: i32,
) -> (
    TestServer,
    tempfile::TempDir,
    Vec<pb::Tenant>,
    pb::UpgradeRun,
    String,
) {
    let (mut server, dir, fleet_tenants) =
        fleet_at_v1_with(tenants, &[("email_required", EMAIL_REQUIRED)], |c| {
            c.runner.workers = 0
        })
        .await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(
        &mut client,
        pb::StartUpgradeRequest {
            canary_count: canaries,
            ..fleet::start_request(2, 5)
        },
    )
    .await;
    let mut db = server.db.connect().await;
    let items = fleet::items(&mut db, &run.id).await;
    let canary_ids: Vec<String> = items
        .iter()
        .filter(|i| i.canary)
        .map(|i| i.tenant_id.to_string())
        .collect();
    assert_eq!(canary_ids.len(), canaries as usize, "{items:?}");
    assert!(
        items.iter().all(|i| i.status == "pending"),
        "no workers yet: {items:?}"
    );
    let bad = fleet_tenants
        .iter()
        .find(|t| t.id == canary_ids[0])
        .unwrap();
    fleet::add_location_without_email(&mut db, &[bad]).await;
    let bad = bad.id.clone();
    let p = fleet::path(&dir);
    server.restart_with(|c| c.tenant_migrations = Some(p)).await;
    (server, dir, fleet_tenants, run, bad)
}

#[tokio::test]
async fn a_failing_canary_pauses_the_run_before_any_other_tenant() {
    let (server, _dir, tenants, run, bad) = run_with_a_failing_canary(12, 3).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let paused = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&paused, pb::UpgradeStatus::Paused);
    assert!(
        paused.status_reason.contains("canary") && paused.status_reason.contains(&bad),
        "the reason names the canary: {:?}",
        paused.status_reason
    );
    assert!(
        paused.status_reason.contains("23502"),
        "{:?}",
        paused.status_reason
    );
    assert!(paused.finished_at.is_none());

    // A paused run stays put: check once a canary in flight has had time to
    // finish, and again a while later.
    let mut db = server.db.connect().await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let items = fleet::items(&mut db, &run.id).await;
        let versions = fleet::versions(&mut db).await;
        for i in &items {
            let id = i.tenant_id.to_string();
            if !i.canary {
                assert_eq!(
                    (i.status.as_str(), i.attempts, versions[&id]),
                    ("pending", 0, 1),
                    "non-canary tenant untouched: {i:?}"
                );
            } else if id == bad {
                assert_eq!(i.status, "failed", "{i:?}");
                assert_eq!(i.last_sqlstate.as_deref(), Some("23502"), "{i:?}");
                assert_eq!(versions[&id], 1);
            } else {
                assert!(
                    i.status == "done" || i.status == "pending",
                    "a good canary is upgraded or waits: {i:?}"
                );
            }
        }
    }
    assert_status(
        &fleet::get_run(&mut client, &run.id).await,
        pb::UpgradeStatus::Paused,
    );

    // Fixed and retried, the canary passes and the rest follows.
    let bad_tenant = tenants.iter().find(|t| t.id == bad).unwrap();
    fleet::fill_location_emails(&mut db, &[bad_tenant]).await;
    client
        .retry_failed(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "canary data fixed".into(),
        })
        .await
        .unwrap();
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (12, 0, 0, 0, 0));
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
}

/// An operator who resumes a run paused by a failed canary (without
/// retrying it) gets either a refusal or a run that goes on and ends — never
/// a run that says RUNNING for ever while nothing can be claimed.
#[tokio::test]
async fn resuming_after_a_canary_failure_never_leaves_the_run_stuck() {
    let (server, _dir, _tenants, run, _bad) = run_with_a_failing_canary(6, 1).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let paused = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&paused, pb::UpgradeStatus::Paused);
    let resumed = client
        .resume_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "go on without the canary".into(),
        })
        .await;
    match resumed {
        Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        Ok(_) => {
            let ended = fleet::wait_for_end(&mut client, &run.id, Duration::from_secs(20)).await;
            let (_, _, _, pending, running) = counts(&ended);
            assert_eq!((pending, running), (0, 0), "{ended:#?}");
        }
    }
}

#[tokio::test]
async fn the_failure_budget_halts_the_run_and_cancel_skips_the_rest() {
    // Four bad tenants among six: whatever the order, the second failure
    // comes with at least two tenants left, all of them within the one batch
    // (8) the single worker claims.
    let (server, _dir, tenants) = fleet_at_v1(6, &[("email_required", EMAIL_REQUIRED)]).await;
    let bad: Vec<&pb::Tenant> = tenants[..4].iter().collect();
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;
    let mut client = fleet::migration_client(server.endpoint()).await;

    let run = fleet::start(&mut client, fleet::start_request(1, 1)).await;
    let halted = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&halted, pb::UpgradeStatus::Halted);
    assert!(
        halted.status_reason.contains("max_failures"),
        "{:?}",
        halted.status_reason
    );
    // Whatever was in flight has finished by now; nothing else may start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let halted = fleet::get_run(&mut client, &run.id).await;
    assert_status(&halted, pb::UpgradeStatus::Halted);
    let (done, failed, skipped, pending, running) = counts(&halted);
    assert_eq!(failed, 2, "halted after the second failure: {halted:#?}");
    assert_eq!((skipped, running), (0, 0), "{halted:#?}");
    assert_eq!(done + failed + pending, 6);
    assert!(pending >= 2, "{halted:#?}");
    let after_halt: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.upgrade_items i JOIN tenantd.upgrade_runs r ON r.id = i.run_id \
         WHERE i.run_id = $1::uuid AND i.finished_at > r.updated_at",
    )
    .bind(&run.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(after_halt, 0, "no tenant finished after the run halted");

    let items = fleet::items(&mut db, &run.id).await;
    let versions = fleet::versions(&mut db).await;
    let bad_ids = ids(bad.iter().copied());
    let mut untried = Vec::new();
    for i in &items {
        let id = i.tenant_id.to_string();
        match i.status.as_str() {
            "failed" => {
                assert!(bad_ids.contains(&id), "{i:?}");
                assert_eq!(i.last_sqlstate.as_deref(), Some("23502"));
                assert_eq!(versions[&id], 1);
            }
            "done" => assert_eq!(versions[&id], 2, "{i:?}"),
            "pending" => {
                assert_eq!(i.attempts, 0, "{i:?}");
                assert_eq!(versions[&id], 1, "not tried yet: {i:?}");
                untried.push(id);
            }
            _ => panic!("unexpected item state after a halt: {i:?}"),
        }
    }
    assert_eq!(untried.len() as i64, pending);

    let cancelled = client
        .cancel_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "bad data".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_status(&cancelled, pb::UpgradeStatus::Cancelled);
    assert_eq!(counts(&cancelled), (done, 2, pending, 0, 0));
    assert!(cancelled.finished_at.is_some());
    assert_eq!(cancelled.status_reason, "bad data");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let items = fleet::items(&mut db, &run.id).await;
    let versions = fleet::versions(&mut db).await;
    for id in &untried {
        let item = items
            .iter()
            .find(|i| i.tenant_id.to_string() == *id)
            .unwrap();
        assert_eq!(
            (item.status.as_str(), versions[id]),
            ("skipped", 1),
            "{item:?}"
        );
    }
    fleet::ledgers_agree(&mut db).await;
    // A cancelled run stays cancelled.
    let err = client
        .resume_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
