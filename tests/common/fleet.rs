//! Helpers for fleet-upgrade tests: migration sets on disk, a fleet of
//! tenants created at version 1, and waiting for a run to end.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tenantd::pb::{self, migration_service_client::MigrationServiceClient};
use tonic::transport::Channel;

pub const DEFAULT_TABLES: &str = include_str!("../../tenant_sql/0001_default_tables.sql");

/// Version 2 of the test migrations: one column and one index, as in the benchmark.
pub const ADD_TIMEZONE: &str = "ALTER TABLE locations ADD COLUMN timezone text;\nCREATE INDEX inventory_items_sku_idx ON inventory_items (sku);\n";

/// A directory holding `0001_default_tables.sql` and then `extra`, numbered from 2.
pub fn migrations(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0001_default_tables.sql"), DEFAULT_TABLES).unwrap();
    for (i, (name, sql)) in extra.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{:04}_{name}.sql", i + 2)), sql).unwrap();
    }
    dir
}

pub fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

pub fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

pub async fn migration_client(endpoint: String) -> MigrationServiceClient<Channel> {
    MigrationServiceClient::connect(endpoint).await.unwrap()
}

/// Polls GetUpgrade until the run is no longer RUNNING (or `timeout`).
pub async fn wait_for_end(
    client: &mut MigrationServiceClient<Channel>,
    run_id: &str,
    timeout: Duration,
) -> pb::UpgradeRun {
    let deadline = Instant::now() + timeout;
    loop {
        let run = client
            .get_upgrade(pb::GetUpgradeRequest {
                run_id: run_id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        if run.status != pb::UpgradeStatus::Running as i32 {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run still running after {timeout:?}: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every tenant's ledger agrees with the catalog; returns (tenant, version) pairs.
pub async fn ledgers_agree(db: &mut PgConnection) -> Vec<(String, i64)> {
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT schema_name, schema_version, tenantd.ledger_version(schema_name) FROM tenantd.tenants \
         WHERE status <> 'purged' ORDER BY id",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    for (schema, catalog, ledger) in &rows {
        assert_eq!(
            Some(*catalog),
            *ledger,
            "{schema}: catalog and ledger agree"
        );
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".schema_migrations"
        ))
        .fetch_one(&mut *db)
        .await
        .unwrap();
        assert_eq!(
            count, *catalog,
            "{schema}: one ledger row per version, none twice"
        );
    }
    rows.into_iter().map(|(s, v, _)| (s, v)).collect()
}

pub fn totals(run: &pb::UpgradeRun) -> pb::UpgradeTotals {
    run.totals.unwrap_or_default()
}
