//! Runs that go to their end: plan and upgrade every tenant, requests that
//! name the bad field, a fleet of two hundred, and a migration that cannot
//! run in a transaction.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tenantd::pb;
use tonic::Code;

use super::{counts, ids, tenants_with_column};
use crate::common::fleet::{self, ADD_TIMEZONE, WAIT, assert_status, fleet_at_v1};
use crate::common::{TestServer, bad_fields, create_tenant, tenant_client};

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

    let dry = fleet::start(
        &mut client,
        pb::StartUpgradeRequest {
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(dry.status, pb::UpgradeStatus::Planned as i32);
    assert_eq!(fleet::totals(&dry).total, 12);

    let run = fleet::start(
        &mut client,
        pb::StartUpgradeRequest {
            concurrency: 4,
            ..Default::default()
        },
    )
    .await;
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
    let mut tc = tenant_client(&server.endpoint()).await;
    let fresh = create_tenant(&mut tc, "fresh").await;
    assert_eq!(fresh.schema_version, 2);

    let again = fleet::start(&mut client, pb::StartUpgradeRequest::default()).await;
    assert_eq!(fleet::totals(&again).total, 0);
    assert_eq!(
        again.status,
        pb::UpgradeStatus::Succeeded as i32,
        "nothing pending: done at once"
    );
    let drift = pb::PlanUpgradeRequest {
        check_drift: true,
        ..Default::default()
    };
    let plan = client
        .plan_upgrade(drift.clone())
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
    let plan = client.plan_upgrade(drift).await.unwrap().into_inner();
    assert_eq!(plan.drifted.len(), 1, "{:?}", plan.drifted);
    assert_eq!(plan.drifted[0].tenant_id, tenants[1].id);
}

/// A StartUpgrade refused, naming `field`.
struct Invalid {
    field: &'static str,
    request: pb::StartUpgradeRequest,
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let server = TestServer::start().await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let cases = vec![
        Invalid {
            field: "target_version",
            request: pb::StartUpgradeRequest {
                target_version: Some(99),
                ..Default::default()
            },
        },
        Invalid {
            field: "concurrency",
            request: pb::StartUpgradeRequest {
                concurrency: 65,
                ..Default::default()
            },
        },
        Invalid {
            field: "max_failures",
            request: pb::StartUpgradeRequest {
                max_failures: -1,
                ..Default::default()
            },
        },
        Invalid {
            field: "lock_timeout",
            request: pb::StartUpgradeRequest {
                lock_timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        },
        Invalid {
            field: "selector.tenant_ids[0]",
            request: pb::StartUpgradeRequest {
                selector: Some(pb::TenantSelector {
                    tenant_ids: vec!["x".into()],
                    slugs: vec![],
                }),
                ..Default::default()
            },
        },
    ];
    for Invalid { field, request } in cases {
        let err = client.start_upgrade(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), [field]);
    }
    let err = client
        .get_upgrade(pb::GetUpgradeRequest {
            run_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn two_hundred_tenants_upgrade_with_concurrency_four() {
    let t0 = Instant::now();
    let (server, _dir, tenants) = fleet_at_v1(210, &[("add_timezone", ADD_TIMEZONE)]).await;
    eprintln!("210 tenants created by 8 clients in {:?}", t0.elapsed());
    let mut client = fleet::migration_client(server.endpoint()).await;
    let t1 = Instant::now();
    let run = fleet::start(&mut client, fleet::start_request(4, 0)).await;
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

/// A migration that cannot run in a transaction.
const CITY_INDEX: &str = "-- tenantd:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS locations_city_idx ON locations (city);\n";

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
    let first = fleet::start(
        &mut client,
        pb::StartUpgradeRequest {
            target_version: Some(2),
            selector: Some(fleet::selector(&tenants[..5])),
            ..fleet::start_request(2, 0)
        },
    )
    .await;
    let ended = fleet::wait_for_end(&mut client, &first.id, WAIT).await;
    assert_status(&ended, pb::UpgradeStatus::Succeeded);
    assert_eq!(counts(&ended), (5, 0, 0, 0, 0));

    let run = fleet::start(&mut client, fleet::start_request(4, 0)).await;
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

    let mut tc = tenant_client(&server.endpoint()).await;
    let fresh = create_tenant(&mut tc, "fresh").await;
    assert_eq!(fresh.schema_version, 3);
    assert_eq!(
        city_index_valid(&mut db, &fresh.schema_name).await,
        Some(true)
    );
    fleet::ledgers_agree(&mut db).await;
}
