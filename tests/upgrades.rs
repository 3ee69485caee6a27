//! Fleet upgrades end to end: plan, run, failures and retries, canaries, the
//! failure budget, pause/resume/cancel, watching.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::fleet::{self, ADD_TIMEZONE};
use common::{TestServer, new_tenant};
use tenantd::app::AppConfig;
use tenantd::pb;
use tonic::Code;

/// Creates `n` tenants on a server that knows only version 1 (eight
/// clients at once), then returns a server over the same database that knows
/// `extra` migrations too.
async fn fleet_at_v1(
    n: usize,
    extra: &[(&str, &str)],
) -> (TestServer, tempfile::TempDir, Vec<pb::Tenant>) {
    fleet_at_v1_with(n, extra, |_| {}).await
}

/// [`fleet_at_v1`], with the second server's configuration adjusted.
async fn fleet_at_v1_with(
    n: usize,
    extra: &[(&str, &str)],
    adjust: impl FnOnce(&mut AppConfig),
) -> (TestServer, tempfile::TempDir, Vec<pb::Tenant>) {
    let v1 = fleet::migrations(&[]);
    let p1 = fleet::path(&v1);
    let mut first = TestServer::start_with(|c| c.tenant_migrations = Some(p1)).await;
    let tenants = fleet::create_tenants(&first.endpoint(), "fleet", n, 8).await;
    let dir = fleet::migrations(extra);
    let p2 = fleet::path(&dir);
    first
        .restart_with(|c| {
            c.tenant_migrations = Some(p2);
            adjust(c);
        })
        .await;
    (first, dir, tenants)
}

#[tokio::test]
async fn plan_then_upgrade_every_tenant_and_a_second_run_is_a_no_op() {
    let (server, _dir, tenants) = fleet_at_v1(12, &[("add_timezone", ADD_TIMEZONE)]).await;
    let mut client = fleet::migration_client(server.endpoint()).await;

    let plan = client
        .plan_upgrade(pb::PlanUpgradeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.target_version, 2);
    assert_eq!(plan.latest_version, 2);
    assert_eq!(
        plan.versions,
        [pb::VersionCount {
            version: 1,
            tenants: 12
        }]
    );
    assert_eq!(plan.behind, 12);
    assert_eq!(plan.behind_sample.len(), 12);

    let dry = client
        .start_upgrade(pb::StartUpgradeRequest {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.status, pb::UpgradeStatus::Planned as i32);
    assert_eq!(fleet::totals(&dry).total, 12);

    let run = client
        .start_upgrade(pb::StartUpgradeRequest {
            concurrency: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fleet::totals(&run).total, 12);
    let done = fleet::wait_for_end(&mut client, &run.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, pb::UpgradeStatus::Succeeded as i32, "{done:?}");
    assert_eq!(fleet::totals(&done).done, 12);

    let mut db = server.db.connect().await;
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
    let column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'locations' AND column_name = 'timezone')",
    )
    .bind(&tenants[0].schema_name)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(column);

    // New tenants are created at the latest version.
    let mut tc = common::tenant_client(&server.endpoint()).await;
    let fresh = tc
        .create_tenant(new_tenant("fresh"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.schema_version, 2);

    let again = client
        .start_upgrade(pb::StartUpgradeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fleet::totals(&again).total, 0);
    assert_eq!(
        again.status,
        pb::UpgradeStatus::Succeeded as i32,
        "nothing pending: done at once"
    );
    let plan = client
        .plan_upgrade(pb::PlanUpgradeRequest {
            check_drift: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.behind, 0);
    assert!(plan.drift_checked && plan.drifted.is_empty());

    // A ledger edited behind tenantd's back is found.
    sqlx::query(&format!(
        "DELETE FROM {}.schema_migrations WHERE version = 2",
        tenants[1].schema_name
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let plan = client
        .plan_upgrade(pb::PlanUpgradeRequest {
            check_drift: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.drifted.len(), 1, "{:?}", plan.drifted);
    assert_eq!(plan.drifted[0].tenant_id, tenants[1].id);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let server = TestServer::start().await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let cases: Vec<(&str, pb::StartUpgradeRequest)> = vec![
        (
            "target_version",
            pb::StartUpgradeRequest {
                target_version: Some(99),
                ..Default::default()
            },
        ),
        (
            "concurrency",
            pb::StartUpgradeRequest {
                concurrency: 65,
                ..Default::default()
            },
        ),
        (
            "max_failures",
            pb::StartUpgradeRequest {
                max_failures: -1,
                ..Default::default()
            },
        ),
        (
            "lock_timeout",
            pb::StartUpgradeRequest {
                lock_timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
        (
            "selector.tenant_ids[0]",
            pb::StartUpgradeRequest {
                selector: Some(pb::TenantSelector {
                    tenant_ids: vec!["x".into()],
                    slugs: vec![],
                }),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let err = client.start_upgrade(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(common::bad_fields(&err), [field]);
    }
    let err = client
        .get_upgrade(pb::GetUpgradeRequest {
            run_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// Bound on every wait for a run.
const WAIT: Duration = Duration::from_secs(120);

/// Fails with 23502 on a tenant that has a location without an email.
const EMAIL_REQUIRED: &str = "ALTER TABLE locations ALTER COLUMN email SET NOT NULL;\n";

/// About 20 ms per tenant, so that a run can be caught in the middle.
const SLOW_COLUMN: &str = "SELECT pg_sleep(0.02);\nALTER TABLE locations ADD COLUMN tz text;\n";

/// 0-30 ms per tenant: with several workers, tenant transactions commit in
/// another order than they began.
const JITTERY_COLUMN: &str =
    "SELECT pg_sleep(random() * 0.03);\nALTER TABLE locations ADD COLUMN tz text;\n";

/// A migration that cannot run in a transaction.
const CITY_INDEX: &str = "-- tenantd:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS locations_city_idx ON locations (city);\n";

fn status_of(run: &pb::UpgradeRun) -> pb::UpgradeStatus {
    pb::UpgradeStatus::try_from(run.status).unwrap_or(pb::UpgradeStatus::Unspecified)
}

#[track_caller]
fn assert_status(run: &pb::UpgradeRun, expected: pb::UpgradeStatus) {
    assert_eq!(status_of(run), expected, "{run:#?}");
}

/// (done, failed, skipped, pending, running)
fn counts(run: &pb::UpgradeRun) -> (i64, i64, i64, i64, i64) {
    let t = fleet::totals(run);
    (t.done, t.failed, t.skipped, t.pending, t.running)
}

/// Tenants whose `locations` table has `column`.
async fn tenants_with_column(db: &mut sqlx::PgConnection, column: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns c JOIN tenantd.tenants t ON t.schema_name = c.table_schema \
         WHERE c.table_name = 'locations' AND c.column_name = $1",
    )
    .bind(column)
    .fetch_one(db)
    .await
    .unwrap()
}

fn ids<'a>(tenants: impl IntoIterator<Item = &'a pb::Tenant>) -> HashSet<String> {
    tenants.into_iter().map(|t| t.id.clone()).collect()
}

#[tokio::test]
async fn two_hundred_tenants_upgrade_with_concurrency_four() {
    let t0 = Instant::now();
    let (server, _dir, tenants) = fleet_at_v1(210, &[("add_timezone", ADD_TIMEZONE)]).await;
    eprintln!("210 tenants created by 8 clients in {:?}", t0.elapsed());
    let mut client = fleet::migration_client(server.endpoint()).await;
    let t1 = Instant::now();
    let run = client
        .start_upgrade(fleet::start_request(4, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fleet::totals(&run).total, 210);
    assert_eq!(run.concurrency, 4);
    let done = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    eprintln!("210 tenants upgraded in {:?}", t1.elapsed());
    assert_status(&done, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&done), (210, 0, 0, 0, 0));
    assert!(done.finished_at.is_some());

    let mut db = server.db.connect().await;
    let versions = fleet::ledgers_agree(&mut db).await;
    assert_eq!(versions.len(), 210);
    assert!(versions.iter().all(|(_, v)| *v == 2), "{versions:?}");
    let items = fleet::items(&mut db, &run.id).await;
    assert_eq!(
        items
            .iter()
            .map(|i| i.tenant_id.to_string())
            .collect::<HashSet<_>>(),
        ids(&tenants)
    );
    for i in &items {
        assert_eq!(
            (i.status.as_str(), i.from_version, i.to_version),
            ("done", 1, Some(2)),
            "{i:?}"
        );
        assert!(i.lease_owner.is_none(), "{i:?}");
    }
    assert_eq!(tenants_with_column(&mut db, "timezone").await, 210);
}

#[tokio::test]
async fn data_failures_are_recorded_per_tenant_and_retried_after_a_fix() {
    let (server, _dir, tenants) = fleet_at_v1(20, &[("email_required", EMAIL_REQUIRED)]).await;
    let bad: Vec<&pb::Tenant> = tenants[..3].iter().collect();
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;
    let mut client = fleet::migration_client(server.endpoint()).await;

    let run = client
        .start_upgrade(fleet::start_request(4, 5))
        .await
        .unwrap()
        .into_inner();
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
    let run = client
        .start_upgrade(pb::StartUpgradeRequest {
            canary_count: canaries,
            ..fleet::start_request(2, 5)
        })
        .await
        .unwrap()
        .into_inner();
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

    let run = client
        .start_upgrade(fleet::start_request(1, 1))
        .await
        .unwrap()
        .into_inner();
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

#[tokio::test]
async fn pause_stops_the_run_and_resume_finishes_it() {
    let (server, _dir, _tenants) = fleet_at_v1(60, &[("slow_column", SLOW_COLUMN)]).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = client
        .start_upgrade(fleet::start_request(1, 0))
        .await
        .unwrap()
        .into_inner();
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
    let run = client
        .start_upgrade(fleet::start_request(4, 0))
        .await
        .unwrap()
        .into_inner();
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

async fn city_index_valid(db: &mut sqlx::PgConnection, schema: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'locations_city_idx'",
    )
    .bind(schema)
    .fetch_optional(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_non_transactional_migration_upgrades_the_fleet_and_new_tenants() {
    let (server, _dir, tenants) = fleet_at_v1(
        10,
        &[("add_timezone", ADD_TIMEZONE), ("city_index", CITY_INDEX)],
    )
    .await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    // Half the fleet to 2 first: the rest then jumps 1 → 3, these go 2 → 3.
    let first = client
        .start_upgrade(pb::StartUpgradeRequest {
            target_version: Some(2),
            selector: Some(fleet::selector(&tenants[..5])),
            ..fleet::start_request(2, 0)
        })
        .await
        .unwrap()
        .into_inner();
    let ended = fleet::wait_for_end(&mut client, &first.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (5, 0, 0, 0, 0));

    let run = client
        .start_upgrade(fleet::start_request(4, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.target_version, 3);
    assert_eq!(fleet::totals(&run).total, 10);
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (10, 0, 0, 0, 0));

    let mut db = server.db.connect().await;
    let versions = fleet::ledgers_agree(&mut db).await;
    assert!(versions.iter().all(|(_, v)| *v == 3), "{versions:?}");
    for t in &tenants {
        assert_eq!(
            city_index_valid(&mut db, &t.schema_name).await,
            Some(true),
            "{}",
            t.schema_name
        );
    }
    let items = fleet::items(&mut db, &run.id).await;
    let from: HashMap<String, i64> = items
        .iter()
        .map(|i| (i.tenant_id.to_string(), i.from_version))
        .collect();
    for (n, t) in tenants.iter().enumerate() {
        assert_eq!(from[&t.id], if n < 5 { 2 } else { 1 });
    }
    assert!(items.iter().all(|i| i.to_version == Some(3)), "{items:?}");
    // Nothing left behind by the step-by-step path: no session settings, no
    // advisory locks held by idle connections.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(locks, 0, "advisory locks left behind");

    let mut tc = common::tenant_client(&server.endpoint()).await;
    let fresh = tc
        .create_tenant(new_tenant("fresh"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.schema_version, 3);
    assert_eq!(
        city_index_valid(&mut db, &fresh.schema_name).await,
        Some(true)
    );
    fleet::ledgers_agree(&mut db).await;
}
