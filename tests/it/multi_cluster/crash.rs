//! A crash at each step of a change that spans the catalog and another
//! cluster: the real binary, aborted (as `kill -9` would) at a crash point
//! (`TENANTD_CRASH_AT`), leaves nothing half-made that the next tenantd
//! does not finish or remove.

use std::time::Duration;

use tenantd::pb;

use super::Fleet;
use crate::common::binary::Tenantd;
use crate::common::fleet::{self as upgrades, eventually, migrations, path};
use crate::common::{TestServer, clients_at, database_url, new_tenant};

/// CreateTenant on `east` through a binary that dies at `point`.
async fn create_dying_at(fleet: &Fleet, point: &str, request: pb::CreateTenantRequest) {
    let secrets = fleet.secrets.path().to_str().unwrap().to_owned();
    let mut dying = Tenantd::start_with_env(
        &database_url(&fleet.catalog),
        &["--cluster-secrets-dir", &secrets],
        &[("TENANTD_CRASH_AT", point)],
    );
    let mut c = clients_at(&dying.endpoint()).await;
    let e = c.tenants.create_tenant(request).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{point}: the call dies with the process: {e:?}"
    );
    let status = dying.exited(Duration::from_secs(30)).await;
    assert!(!status.success(), "{point}: aborted, {status:?}");
}

#[tokio::test]
async fn a_create_that_dies_at_any_step_leaves_nothing_on_either_side() {
    let fleet = Fleet::create().await;
    fleet.serve().await.stop().await.unwrap();
    let east = &fleet.remotes[0];
    for point in ["create.after_intent", "create.after_cluster_ddl"] {
        let mut request = new_tenant("crash");
        request.cluster = "east".into();
        request.idempotency_key = format!("crash-{point}");
        create_dying_at(&fleet, point, request.clone()).await;

        // What the dead create left: its intent, no catalog row and, past
        // the cluster's commit, the role and schema on east.
        let mut catalog = fleet.catalog.connect().await;
        let intents: Vec<String> = sqlx::query_scalar(
            "SELECT 'tenant_' || replace(tenant_id::text, '-', '') FROM tenantd.cluster_intents",
        )
        .fetch_all(&mut catalog)
        .await
        .unwrap();
        assert_eq!(intents.len(), 1, "{point}");
        let role = intents[0].clone();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.tenants WHERE slug = $1")
            .bind(&request.slug)
            .fetch_one(&mut catalog)
            .await
            .unwrap();
        assert_eq!(rows, 0, "{point}: no catalog row");
        let made = point == "create.after_cluster_ddl";
        assert_eq!(east.holds(&role).await, (made, made), "{point}");

        // The next tenantd sweeps it away at its start.
        let running = TestServer::run(fleet.config()).await.unwrap();
        eventually(
            &format!("{point}: the half-made tenant swept"),
            Duration::from_secs(30),
            || {
                let role = role.clone();
                let fleet = &fleet;
                async move {
                    let mut catalog = fleet.catalog.connect().await;
                    let left: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM tenantd.cluster_intents")
                            .fetch_one(&mut catalog)
                            .await
                            .unwrap();
                    (left == 0 && east.holds(&role).await == (false, false)).then_some(())
                }
            },
        )
        .await;
        let undone: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenantd.audit_log WHERE action = 'tenant.create_undone' \
               AND target = 'tenant:' || $1",
        )
        .bind(
            uuid::Uuid::parse_str(role.trim_start_matches("tenant_"))
                .unwrap()
                .to_string(),
        )
        .fetch_one(&mut catalog)
        .await
        .unwrap();
        assert_eq!(undone, 1, "{point}: audited");

        // The same request again makes the tenant, whole, and it serves.
        let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
        let t = c.tenants.create_tenant(request).await.unwrap().into_inner();
        assert_eq!(t.cluster, "east");
        assert_eq!(east.holds(&t.schema_name).await, (true, true));
        c.data
            .execute(crate::common::data::read(
                &t.id,
                "SELECT count(*) FROM locations",
            ))
            .await
            .unwrap();
        running.stop().await.unwrap();
    }
}

/// An upgrade that dies after a cluster committed a tenant's migrations
/// but before the catalog recorded them: the next worker records the
/// ledger's version, and runs nothing twice.
#[tokio::test]
async fn an_upgrade_that_dies_between_the_two_commits_is_finished_once() {
    let fleet = Fleet::create().await;
    let v1 = migrations(&[]);
    let mut config = fleet.config();
    config.tenant_migrations = Some(path(&v1));
    let a = TestServer::run(config).await.unwrap();
    let mut c = clients_at(&format!("http://{}", a.local_addr())).await;
    c.clusters
        .add_cluster(fleet.remotes[0].add_request())
        .await
        .unwrap();
    let mut tenants = Vec::new();
    for _ in 0..3 {
        let mut request = new_tenant("upgraded");
        request.cluster = "east".into();
        tenants.push(c.tenants.create_tenant(request).await.unwrap().into_inner());
    }
    a.stop().await.unwrap();

    let v2 = migrations(&[("add_timezone", upgrades::ADD_TIMEZONE)]);
    let secrets = fleet.secrets.path().to_str().unwrap().to_owned();
    let dir = path(&v2).to_str().unwrap().to_owned();
    let mut dying = Tenantd::start_with_env(
        &database_url(&fleet.catalog),
        &[
            "--cluster-secrets-dir",
            &secrets,
            "--tenant-migrations",
            &dir,
            "--upgrade-lease",
            "2s",
        ],
        &[("TENANTD_CRASH_AT", "upgrade.after_cluster_commit")],
    );
    let mut m = upgrades::migration_client(dying.endpoint()).await;
    let run = upgrades::start(&mut m, upgrades::start_request(1, 0)).await;
    let status = dying.exited(Duration::from_secs(60)).await;
    assert!(!status.success(), "aborted: {status:?}");

    // One tenant's ledger is at 2 on east while the catalog still says 1.
    let east = &fleet.remotes[0];
    let mut on_east = east.connect().await;
    let mut ahead = 0;
    for t in &tenants {
        let v: i64 = sqlx::query_scalar(&format!(
            "SELECT max(version) FROM \"{}\".schema_migrations",
            t.schema_name
        ))
        .fetch_one(&mut on_east)
        .await
        .unwrap();
        ahead += i32::from(v == 2);
    }
    assert_eq!(ahead, 1, "the crash came after one tenant's cluster commit");

    let mut config = fleet.config();
    config.tenant_migrations = Some(path(&v2));
    let b = TestServer::run(config).await.unwrap();
    let mut m = upgrades::migration_client(format!("http://{}", b.local_addr())).await;
    let run = upgrades::wait_for_end(&mut m, &run.id, upgrades::WAIT).await;
    upgrades::assert_status(&run, pb::UpgradeStatus::Succeeded);
    assert_eq!(upgrades::totals(&run).done, 3, "{run:?}");
    let mut catalog = fleet.catalog.connect().await;
    for t in &tenants {
        let rows: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM \"{}\".schema_migrations ORDER BY version",
            t.schema_name
        ))
        .fetch_all(&mut on_east)
        .await
        .unwrap();
        assert_eq!(rows, [1, 2], "{}: each migration once", t.slug);
        let column: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM information_schema.columns \
              WHERE table_schema = $1 AND table_name = 'locations' AND column_name = 'timezone')",
        )
        .bind(&t.schema_name)
        .fetch_one(&mut on_east)
        .await
        .unwrap();
        assert!(column, "{}", t.slug);
        let v: i64 =
            sqlx::query_scalar("SELECT schema_version FROM tenantd.tenants WHERE slug = $1")
                .bind(&t.slug)
                .fetch_one(&mut catalog)
                .await
                .unwrap();
        assert_eq!(v, 2, "{}", t.slug);
    }
    b.stop().await.unwrap();
}
