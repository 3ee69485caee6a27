//! Fleet upgrades end to end: plan, run, failures and retries, canaries, the
//! failure budget, pause/resume/cancel, watching.

mod common;

use std::time::Duration;

use common::fleet::{self, ADD_TIMEZONE};
use common::{TestServer, new_tenant};
use tenantd::pb::{self, tenant_service_client::TenantServiceClient};
use tonic::Code;

/// Creates `n` tenants on a server that knows only version 1, then returns a
/// server over the same database that knows `extra` migrations too.
async fn fleet_at_v1(
    n: usize,
    extra: &[(&str, &str)],
) -> (TestServer, tempfile::TempDir, Vec<pb::Tenant>) {
    let v1 = fleet::migrations(&[]);
    let p1 = fleet::path(&v1);
    let mut first = TestServer::start_with(|c| c.tenant_migrations = Some(p1)).await;
    let mut client = first.client().await;
    let mut tenants = Vec::with_capacity(n);
    for i in 0..n {
        tenants.push(
            client
                .create_tenant(new_tenant(&format!("fleet{i}")))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let dir = fleet::migrations(extra);
    let p2 = fleet::path(&dir);
    first.restart_with(|c| c.tenant_migrations = Some(p2)).await;
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
    let mut tc = TenantServiceClient::connect(server.endpoint())
        .await
        .unwrap();
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
