//! Every tenant RPC reaches the tenant's own cluster: data calls (from a
//! replica that never registered the cluster itself), suspend and resume
//! (the role's LOGIN there), archive and purge (nothing left there), and
//! fleet upgrades across every cluster in one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{Fleet, create_on, tenant_of};
use crate::common::data::{exec, read};
use crate::common::fleet::{self as upgrades, eventually, migrations, path};
use crate::common::{TestServer, clients_at, lifecycle};

fn count_of(r: &pb::ExecuteResponse) -> i64 {
    match r.rows[0].values[0].kind {
        Some(pb::value::Kind::Int64(n)) => n,
        ref other => panic!("not a count: {other:?}"),
    }
}

#[tokio::test]
async fn a_tenant_on_another_cluster_is_served_and_managed_there() {
    let fleet = Fleet::create().await;
    let a = fleet.serve().await;
    // A second replica that learns of the clusters from the catalog alone.
    let b = TestServer::run(fleet.config()).await.unwrap();
    let mut ca = clients_at(&format!("http://{}", a.local_addr())).await;
    let mut cb = clients_at(&format!("http://{}", b.local_addr())).await;
    let t = create_on(&mut ca, "west").await;
    let west = &fleet.remotes[1];

    // Written through one replica, read through the other, stored on west.
    ca.data
        .execute(exec(
            &t.id,
            "INSERT INTO locations (name, email) VALUES ($1, 'hq@example.com')",
            vec![pb::Value {
                kind: Some(pb::value::Kind::Text("Head office".into())),
            }],
        ))
        .await
        .unwrap();
    let seen = cb
        .data
        .execute(read(&t.id, "SELECT count(*) FROM locations"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count_of(&seen), 1);
    let mut on_west = west.connect().await;
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".locations WHERE name = 'Head office'",
        t.schema_name
    ))
    .fetch_one(&mut on_west)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    // Isolation holds there as on the catalog's database: the tenant's role
    // reaches neither the catalog's schema (absent there) nor another
    // tenant's schema on the same cluster.
    let neighbour = create_on(&mut ca, "west").await;
    let e = cb
        .data
        .execute(read(
            &t.id,
            &format!("SELECT * FROM \"{}\".locations", neighbour.schema_name),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Suspend: the role stops logging in on west, and calls on either
    // replica are refused within the revocation window.
    ca.tenants.suspend_tenant(lifecycle(&t.id)).await.unwrap();
    assert!(!west.can_login(&t.schema_name).await);
    eventually("the other replica refuses", Duration::from_secs(10), || {
        let mut cb = cb.clone();
        let id = t.id.clone();
        async move {
            let r = cb.data.execute(read(&id, "SELECT 1")).await;
            r.is_err_and(|e| e.code() == Code::FailedPrecondition)
                .then_some(())
        }
    })
    .await;
    ca.tenants.resume_tenant(lifecycle(&t.id)).await.unwrap();
    assert!(west.can_login(&t.schema_name).await);
    eventually(
        "the other replica serves again",
        Duration::from_secs(10),
        || {
            let mut cb = cb.clone();
            let id = t.id.clone();
            async move {
                cb.data
                    .execute(read(&id, "SELECT count(*) FROM locations"))
                    .await
                    .ok()
                    .map(drop)
            }
        },
    )
    .await;

    // Archive and purge: nothing of the tenant left on west.
    ca.tenants.archive_tenant(lifecycle(&t.id)).await.unwrap();
    assert!(!west.can_login(&t.schema_name).await);
    let purged = cb
        .tenants
        .purge_tenant(pb::PurgeTenantRequest {
            id: t.id.clone(),
            confirm_slug: t.slug.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.status, pb::TenantStatus::Purged as i32);
    assert_eq!(west.holds(&t.schema_name).await, (false, false));
    assert_eq!(west.holds(&neighbour.schema_name).await, (true, true));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A cluster that cannot be reached fails only its own tenants' calls,
/// with UNAVAILABLE, and the others go on.
#[tokio::test]
async fn an_unreachable_cluster_fails_only_its_tenants() {
    let fleet = Fleet::create().await;
    let a = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", a.local_addr())).await;
    let on_east = create_on(&mut c, "east").await;
    let on_default = create_on(&mut c, "default").await;
    a.stop().await.unwrap();
    // Its password file gone, a fresh replica cannot log in to east.
    std::fs::remove_file(fleet.secrets.path().join("east.password")).unwrap();
    let b = TestServer::run(fleet.config()).await.unwrap();
    let mut c = clients_at(&format!("http://{}", b.local_addr())).await;
    let e = c
        .data
        .execute(read(&on_east.id, "SELECT 1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c
        .tenants
        .suspend_tenant(lifecycle(&on_east.id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    c.data
        .execute(read(&on_default.id, "SELECT 1"))
        .await
        .expect("a tenant on another cluster is served");
    // The east tenant was left as it was.
    let t = tenant_of(&mut c, &on_east.id).await;
    assert_eq!(t.status, pb::TenantStatus::Active as i32);
    b.stop().await.unwrap();
}

/// One run upgrades the tenants of every cluster, each on its own cluster.
/// How long the test migration's step sleeps (seconds), as its text says.
const SLOW_STEP: &str = "0.3";

/// Until `stop`: the most upgrades seen running at once on each database,
/// and the most databases seen with one running at the same moment.
async fn most_upgrading_at_once(
    mut databases: Vec<sqlx::PgConnection>,
    stop: Arc<AtomicBool>,
) -> (Vec<i64>, usize) {
    let mut most = vec![0; databases.len()];
    let mut side_by_side = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut busy = 0;
        for (db, most) in databases.iter_mut().zip(most.iter_mut()) {
            let running: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND state = 'active' AND pid <> pg_backend_pid() \
                  AND query LIKE '%pg_sleep({SLOW_STEP})%'"
            ))
            .fetch_one(db)
            .await
            .unwrap();
            *most = (*most).max(running);
            busy += usize::from(running > 0);
        }
        side_by_side = side_by_side.max(busy);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (most, side_by_side)
}

#[tokio::test]
async fn a_fleet_upgrade_reaches_every_cluster() {
    let fleet = Fleet::create().await;
    let v1 = migrations(&[]);
    let mut config = fleet.config();
    config.tenant_migrations = Some(path(&v1));
    let a = TestServer::run(config).await.unwrap();
    let mut c = clients_at(&format!("http://{}", a.local_addr())).await;
    for r in &fleet.remotes {
        c.clusters.add_cluster(r.add_request()).await.unwrap();
    }
    let mut tenants = Vec::new();
    for cluster in ["default", "east", "west"] {
        for _ in 0..4 {
            tenants.push(create_on(&mut c, cluster).await);
        }
    }
    a.stop().await.unwrap();
    // Slow enough that the runs on the three clusters overlap.
    let slow = format!("{}SELECT pg_sleep({SLOW_STEP});\n", upgrades::ADD_TIMEZONE);
    let v2 = migrations(&[("add_timezone", &slow)]);
    let mut config = fleet.config();
    config.tenant_migrations = Some(path(&v2));
    let b = TestServer::run(config).await.unwrap();
    let endpoint = format!("http://{}", b.local_addr());
    let mut m = upgrades::migration_client(endpoint).await;
    let plan_request = pb::PlanUpgradeRequest {
        check_drift: true,
        ..Default::default()
    };
    let plan = m
        .plan_upgrade(plan_request.clone())
        .await
        .unwrap()
        .into_inner();
    let per_cluster: Vec<(&str, i64, i64)> = plan
        .clusters
        .iter()
        .map(|c| (c.cluster.as_str(), c.tenants, c.behind))
        .collect();
    assert_eq!(
        per_cluster,
        [("default", 4, 4), ("east", 4, 4), ("west", 4, 4)]
    );
    assert!(
        plan.drifted.is_empty(),
        "ledgers read on each cluster: {plan:?}"
    );
    // A ledger on east that disagrees with the catalog is found there.
    let drifting = tenants.iter().find(|t| t.cluster == "east").unwrap();
    let mut on_east = fleet.remotes[0].connect().await;
    sqlx::raw_sql(&format!(
        "INSERT INTO \"{}\".schema_migrations (version, name, checksum) VALUES (7, 'stray', '\\x00')",
        drifting.schema_name
    ))
    .execute(&mut on_east)
    .await
    .unwrap();
    let plan = m.plan_upgrade(plan_request).await.unwrap().into_inner();
    let drifted: Vec<(&str, i64, i64)> = plan
        .drifted
        .iter()
        .map(|d| (d.tenant_id.as_str(), d.catalog_version, d.ledger_version))
        .collect();
    assert_eq!(drifted, [(drifting.id.as_str(), 1, 7)]);
    sqlx::raw_sql(&format!(
        "DELETE FROM \"{}\".schema_migrations WHERE version = 7",
        drifting.schema_name
    ))
    .execute(&mut on_east)
    .await
    .unwrap();
    // Concurrency 1: one tenant at a time on each cluster, the three
    // clusters at once.
    let stop = Arc::new(AtomicBool::new(false));
    let mut databases = vec![fleet.catalog.connect().await];
    for r in &fleet.remotes {
        databases.push(r.connect().await);
    }
    let sampler = tokio::spawn(most_upgrading_at_once(databases, stop.clone()));
    let run = upgrades::start(&mut m, upgrades::start_request(1, 0)).await;
    let run = upgrades::wait_for_end(&mut m, &run.id, upgrades::WAIT).await;
    stop.store(true, Ordering::Relaxed);
    upgrades::assert_status(&run, pb::UpgradeStatus::Succeeded);
    assert_eq!(upgrades::totals(&run).done, 12, "{run:?}");
    let (per_cluster, clusters_at_once) = sampler.await.unwrap();
    assert_eq!(
        per_cluster,
        [1, 1, 1],
        "tenants upgrading at once per cluster"
    );
    assert!(
        clusters_at_once >= 2,
        "the clusters upgrade side by side: {clusters_at_once}"
    );
    // Each tenant's ledger, on its own cluster, and the catalog say 2.
    let mut catalog = fleet.catalog.connect().await;
    for t in &tenants {
        let ledger: i64 = match t.cluster.as_str() {
            "default" => sqlx::query_scalar(&format!(
                "SELECT max(version) FROM \"{}\".schema_migrations",
                t.schema_name
            ))
            .fetch_one(&mut catalog)
            .await
            .unwrap(),
            name => {
                let remote = fleet.remotes.iter().find(|r| r.cluster == name).unwrap();
                let mut conn = remote.connect().await;
                sqlx::query_scalar(&format!(
                    "SELECT max(version) FROM \"{}\".schema_migrations",
                    t.schema_name
                ))
                .fetch_one(&mut conn)
                .await
                .unwrap()
            }
        };
        assert_eq!(ledger, 2, "{} on {}", t.slug, t.cluster);
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT schema_version FROM tenantd.tenants")
        .fetch_all(&mut catalog)
        .await
        .unwrap();
    assert!(versions.iter().all(|&v| v == 2), "{versions:?}");
    b.stop().await.unwrap();
}
