//! Every tenant RPC reaches the tenant's own cluster: data calls (from a
//! replica that never registered the cluster itself), suspend and resume
//! (the role's LOGIN there), archive and purge (nothing left there), and
//! fleet upgrades across every cluster in one run.

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

async fn can_login(remote: &super::Remote, role: &str) -> bool {
    let mut c = remote.connect().await;
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(&mut c)
        .await
        .unwrap()
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
    assert!(!can_login(west, &t.schema_name).await);
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
    assert!(can_login(west, &t.schema_name).await);
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
    assert!(!can_login(west, &t.schema_name).await);
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
    let v2 = migrations(&[("add_timezone", upgrades::ADD_TIMEZONE)]);
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
    let run = upgrades::start(&mut m, upgrades::start_request(4, 0)).await;
    let run = upgrades::wait_for_end(&mut m, &run.id, upgrades::WAIT).await;
    upgrades::assert_status(&run, pb::UpgradeStatus::Succeeded);
    assert_eq!(upgrades::totals(&run).done, 12, "{run:?}");
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
