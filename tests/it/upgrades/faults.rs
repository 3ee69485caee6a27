//! Fleet upgrades under faults: several replicas serving one run, a replica
//! that does not know the run's target, and the real binary killed with
//! SIGKILL in the middle of a run and started again.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tenantd::pb;

use crate::common::binary::Tenantd;
use crate::common::fleet::{self, Replica, SLOW_COLUMN, WAIT, assert_status, status_of};
use crate::common::{TestServer, database_url, test_config};

/// About 50 ms per tenant: a run can be caught in the middle and killed.
const SLOWER_COLUMN: &str = "SELECT pg_sleep(0.05);\nALTER TABLE locations ADD COLUMN tz text;\n";

/// A fresh database with `n` tenants at version 1 (made by an in-process
/// server that is stopped again); the returned server only owns the database.
async fn v1_fleet(n: usize) -> (TestServer, Vec<pb::Tenant>) {
    let v1 = fleet::migrations(&[]);
    let p1 = fleet::path(&v1);
    let mut seed = TestServer::start_with(|c| c.tenant_migrations = Some(p1)).await;
    let tenants = fleet::create_tenants(&seed.endpoint(), "fault", n, 8).await;
    seed.stop().await.expect("stop the seeding server");
    (seed, tenants)
}

/// Every tenant is at `version`, by its ledger (one row per version: nothing
/// ran twice) and by the catalog.
async fn all_at(db: &mut sqlx::PgConnection, tenants: usize, version: i64) {
    let versions = fleet::ledgers_agree(db).await;
    assert_eq!(versions.len(), tenants);
    let behind: Vec<_> = versions.iter().filter(|(_, v)| *v != version).collect();
    assert!(
        behind.is_empty(),
        "{} tenants not at {version}: {behind:?}",
        behind.len()
    );
}

#[tokio::test]
async fn two_replicas_share_one_run_and_upgrade_each_tenant_once() {
    let (seed, _tenants) = v1_fleet(100).await;
    let dir = fleet::migrations(&[("slow_column", SLOW_COLUMN)]);
    // Two workers each: the run's four slots need both replicas.
    let config = || {
        let mut c = test_config(&seed.db);
        c.tenant_migrations = Some(fleet::path(&dir));
        c.runner.workers = 2;
        c
    };
    let (a, b) = tokio::join!(Replica::start(config()), Replica::start(config()));
    let mut client = fleet::migration_client(a.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(4, 0)).await;
    assert_eq!(fleet::totals(&run).total, 100);

    // Lease owners are cleared when a tenant is done: watch them meanwhile.
    let mut db = seed.db.connect().await;
    let mut owners = HashSet::new();
    let deadline = Instant::now() + WAIT;
    let ended = loop {
        let leased: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT lease_owner FROM tenantd.upgrade_items \
             WHERE run_id = $1::uuid AND lease_owner IS NOT NULL",
        )
        .bind(&run.id)
        .fetch_all(&mut db)
        .await
        .unwrap();
        owners.extend(leased);
        let now = fleet::get_run(&mut client, &run.id).await;
        if status_of(&now) != pb::UpgradeStatus::Running {
            break now;
        }
        assert!(Instant::now() < deadline, "run still running: {now:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(fleet::totals(&ended).done, 100);
    assert_eq!(
        owners.len(),
        2,
        "both replicas claimed tenants of the run: {owners:?}"
    );
    all_at(&mut db, 100, 2).await;
    // The other replica reports the same run.
    let mut other = fleet::migration_client(b.endpoint()).await;
    assert_status(
        &fleet::get_run(&mut other, &run.id).await,
        pb::UpgradeStatus::Succeeded,
    );
    a.stop().await;
    b.stop().await;
}

/// A rolling deploy: a replica still running the previous release (it knows
/// only version 1) shares the catalog with one that knows version 2, where the
/// run is started. The old replica must leave the run alone rather than mark
/// tenants done at a version short of the target.
#[tokio::test]
async fn a_replica_that_does_not_know_the_target_does_not_finish_tenants_short_of_it() {
    let (seed, _tenants) = v1_fleet(40).await;
    let v1 = fleet::migrations(&[]);
    let v2 = fleet::migrations(&[("slow_column", SLOW_COLUMN)]);
    let mut old = test_config(&seed.db);
    old.tenant_migrations = Some(fleet::path(&v1));
    let old = Replica::start(old).await;
    // One worker on the new replica: three of the run's four slots are left
    // for the old replica to take, however fast the new one starts.
    let mut new = test_config(&seed.db);
    new.tenant_migrations = Some(fleet::path(&v2));
    new.runner.workers = 1;
    let new = Replica::start(new).await;

    let mut client = fleet::migration_client(new.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(4, 0)).await;
    assert_eq!(run.target_version, 2);
    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    let mut db = seed.db.connect().await;
    let items = fleet::items(&mut db, &run.id).await;
    let short: Vec<_> = items
        .iter()
        .filter(|i| i.to_version != Some(2))
        .map(|i| (i.tenant_id, i.status.clone(), i.to_version))
        .collect();
    assert!(
        short.is_empty(),
        "{} tenants recorded as upgraded to less than the target: {short:?}",
        short.len()
    );
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    all_at(&mut db, 40, 2).await;
    old.stop().await;
    new.stop().await;
}

/// Polls the run until `done` exceeds `above`; None when the run ended first.
async fn wait_for_done_above(
    client: &mut fleet::MigrationClient,
    run_id: &str,
    above: i64,
) -> Option<pb::UpgradeRun> {
    let deadline = Instant::now() + WAIT;
    loop {
        let run = fleet::get_run(client, run_id).await;
        if status_of(&run) != pb::UpgradeStatus::Running {
            return None;
        }
        if fleet::totals(&run).done > above {
            return Some(run);
        }
        assert!(
            Instant::now() < deadline,
            "no progress past {above}: {run:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a SIGKILL: the run is still running in the catalog, the process
/// just killed still holds leases on tenants it had claimed, and every
/// claimed tenant is leased by a killed process (`dead`, the last one just
/// killed). Returns how many tenants are done.
async fn assert_left_mid_run(db: &mut sqlx::PgConnection, run_id: &str, dead: &[u32]) -> i64 {
    let status: String =
        sqlx::query_scalar("SELECT status FROM tenantd.upgrade_runs WHERE id = $1::uuid")
            .bind(run_id)
            .fetch_one(&mut *db)
            .await
            .unwrap();
    assert_eq!(status, "running");
    let owners: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT lease_owner, count(*) FROM tenantd.upgrade_items \
         WHERE run_id = $1::uuid AND status = 'running' GROUP BY 1",
    )
    .bind(run_id)
    .fetch_all(&mut *db)
    .await
    .unwrap();
    // Owners are `host:pid:random`.
    let pid_of = |owner: &Option<String>| -> Option<u32> {
        owner.as_deref()?.split(':').nth(1)?.parse().ok()
    };
    let last = *dead.last().unwrap();
    assert!(
        owners.iter().any(|(o, _)| pid_of(o) == Some(last)),
        "the killed process {last} held claimed tenants of the run: {owners:?}"
    );
    assert!(
        owners
            .iter()
            .all(|(o, _)| pid_of(o).is_some_and(|p| dead.contains(&p))),
        "every claim belongs to a killed process {dead:?}: {owners:?}"
    );
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.upgrade_items WHERE run_id = $1::uuid AND status = 'done'",
    )
    .bind(run_id)
    .fetch_one(&mut *db)
    .await
    .unwrap();
    done
}

#[tokio::test]
async fn a_run_survives_kill_9_of_its_process_twice_and_finishes_after_restart() {
    const TENANTS: usize = 80;
    let (seed, _tenants) = v1_fleet(TENANTS).await;
    let dir = fleet::migrations(&[("slow_tz", SLOWER_COLUMN)]);
    let url = database_url(&seed.db);
    let mut db = seed.db.connect().await;
    let t0 = Instant::now();

    let mut first = Tenantd::start(&url, &fault_flags(dir.path()));
    let mut client = fleet::migration_client(first.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(2, 0)).await;
    assert_eq!(fleet::totals(&run).total, TENANTS as i64);
    let caught = wait_for_done_above(&mut client, &run.id, 5)
        .await
        .expect("the run was still going after 5 tenants");
    assert!(fleet::totals(&caught).done < TENANTS as i64);
    first.kill();
    let done_at_first_kill = assert_left_mid_run(&mut db, &run.id, &[first.pid()]).await;
    eprintln!(
        "killed after {done_at_first_kill} of {TENANTS} tenants, {:?} in",
        t0.elapsed()
    );

    // Second life: killed again once it has made progress of its own.
    let mut second = Tenantd::start(&url, &fault_flags(dir.path()));
    let mut client = fleet::migration_client(second.endpoint()).await;
    let mut killed_twice = false;
    if let Some(run_now) = wait_for_done_above(&mut client, &run.id, done_at_first_kill + 5).await
        && fleet::totals(&run_now).done < TENANTS as i64 - 5
    {
        second.kill();
        let done = assert_left_mid_run(&mut db, &run.id, &[first.pid(), second.pid()]).await;
        eprintln!("killed again after {done} tenants, {:?} in", t0.elapsed());
        killed_twice = true;
    }
    let mut third = None;
    if killed_twice {
        let started = Tenantd::start(&url, &fault_flags(dir.path()));
        client = fleet::migration_client(started.endpoint()).await;
        third = Some(started);
    }

    let ended = fleet::wait_for_end(&mut client, &run.id, WAIT).await;
    eprintln!("run ended {:?} in", t0.elapsed());
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(fleet::totals(&ended).done, TENANTS as i64);
    all_at(&mut db, TENANTS, 2).await;
    let items = fleet::items(&mut db, &run.id).await;
    assert!(
        items
            .iter()
            .all(|i| i.status == "done" && i.to_version == Some(2) && i.lease_owner.is_none()),
        "{items:?}"
    );
    let with_column: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns c JOIN tenantd.tenants t ON t.schema_name = c.table_schema \
         WHERE c.table_name = 'locations' AND c.column_name = 'tz'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(with_column, TENANTS as i64);
    drop((second, third));
}

/// The flags the fault tests start the binary with: short leases, and the
/// test's own tenant migrations.
fn fault_flags(migrations: &Path) -> Vec<&str> {
    vec![
        "--upgrade-lease",
        "2s",
        "--tenant-migrations",
        migrations.to_str().expect("a UTF-8 path"),
    ]
}
