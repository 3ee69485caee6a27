//! Helpers for fleet-upgrade tests: migration sets on disk, a fleet of
//! tenants created at version 1, and waiting for a run to end.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tenantd::app::{AppConfig, Running};
use tenantd::pb::{self, migration_service_client::MigrationServiceClient};

use super::TestServer;

pub const DEFAULT_TABLES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tenant_sql/0001_default_tables.sql"
));

/// Version 2 of the test migrations: one column and one index, as in the benchmark.
pub const ADD_TIMEZONE: &str = "ALTER TABLE locations ADD COLUMN timezone text;\nCREATE INDEX inventory_items_sku_idx ON inventory_items (sku);\n";

/// Fails with 23502 on a tenant that has a location without an email.
pub const EMAIL_REQUIRED: &str = "ALTER TABLE locations ALTER COLUMN email SET NOT NULL;\n";

/// About 20 ms per tenant, so that a run can be caught in the middle (and
/// lasts long enough for every replica to join).
pub const SLOW_COLUMN: &str = "SELECT pg_sleep(0.02);\nALTER TABLE locations ADD COLUMN tz text;\n";

/// Bound on every wait for a run.
pub const WAIT: Duration = Duration::from_secs(120);

/// A directory holding `0001_default_tables.sql` and then `extra`, numbered from 2.
pub fn migrations(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0001_default_tables.sql"), DEFAULT_TABLES).unwrap();
    for (i, (name, sql)) in extra.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{:04}_{name}.sql", i + 2)), sql).unwrap();
    }
    dir
}

pub type MigrationClient = MigrationServiceClient<super::Authed>;

pub fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

pub async fn migration_client(endpoint: String) -> MigrationClient {
    MigrationServiceClient::new(super::authed_channel(&endpoint, super::admin_key()).await)
}

/// Creates `n` tenants on a server that knows only version 1 (eight
/// clients at once), then restarts it over the same database knowing
/// `extra` migrations too, its configuration adjusted by `adjust`.
pub async fn fleet_at_v1_with(
    n: usize,
    extra: &[(&str, &str)],
    adjust: impl FnOnce(&mut AppConfig),
) -> (TestServer, tempfile::TempDir, Vec<pb::Tenant>) {
    let v1 = migrations(&[]);
    let p1 = path(&v1);
    let mut server = TestServer::start_with(|c| c.tenant_migrations = Some(p1)).await;
    let tenants = create_tenants(&server.endpoint(), "fleet", n, 8).await;
    let dir = migrations(extra);
    let p2 = path(&dir);
    server
        .restart_with(|c| {
            c.tenant_migrations = Some(p2);
            adjust(c);
        })
        .await;
    (server, dir, tenants)
}

/// [`fleet_at_v1_with`] with the configuration as it is.
pub async fn fleet_at_v1(
    n: usize,
    extra: &[(&str, &str)],
) -> (TestServer, tempfile::TempDir, Vec<pb::Tenant>) {
    fleet_at_v1_with(n, extra, |_| {}).await
}

pub fn status_of(run: &pb::UpgradeRun) -> pb::UpgradeStatus {
    pb::UpgradeStatus::try_from(run.status).unwrap_or(pb::UpgradeStatus::Unspecified)
}

#[track_caller]
pub fn assert_status(run: &pb::UpgradeRun, expected: pb::UpgradeStatus) {
    assert_eq!(status_of(run), expected, "{run:#?}");
}

/// Polls GetUpgrade until the run is no longer RUNNING (or `timeout`).
pub async fn wait_for_end(
    client: &mut MigrationClient,
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

/// Creates `n` tenants through `clients` gRPC connections working at once.
pub async fn create_tenants(
    endpoint: &str,
    prefix: &str,
    n: usize,
    clients: usize,
) -> Vec<pb::Tenant> {
    let clients = clients.clamp(1, n.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let count = n / clients + usize::from(c < n % clients);
        let endpoint = endpoint.to_owned();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut client = super::tenant_client(&endpoint).await;
            let mut made = Vec::with_capacity(count);
            for i in 0..count {
                let request = super::new_tenant(&format!("{prefix}{c}-{i}"));
                made.push(
                    client
                        .create_tenant(request)
                        .await
                        .expect("create a tenant")
                        .into_inner(),
                );
            }
            made
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(made) = tasks.join_next().await {
        all.extend(made.expect("tenant creation task"));
    }
    assert_eq!(all.len(), n);
    all
}

pub async fn get_run(client: &mut MigrationClient, run_id: &str) -> pb::UpgradeRun {
    client
        .get_upgrade(pb::GetUpgradeRequest {
            run_id: run_id.to_owned(),
        })
        .await
        .expect("GetUpgrade")
        .into_inner()
}

/// Starts a run (or, dry, plans one).
pub async fn start(
    client: &mut MigrationClient,
    request: pb::StartUpgradeRequest,
) -> pb::UpgradeRun {
    client
        .start_upgrade(request)
        .await
        .expect("StartUpgrade")
        .into_inner()
}

/// A run request for every tenant behind the latest version.
pub fn start_request(concurrency: i32, max_failures: i32) -> pb::StartUpgradeRequest {
    pb::StartUpgradeRequest {
        concurrency,
        max_failures,
        ..Default::default()
    }
}

/// A selector naming exactly these tenants.
pub fn selector<'a>(tenants: impl IntoIterator<Item = &'a pb::Tenant>) -> pb::TenantSelector {
    pb::TenantSelector {
        tenant_ids: tenants.into_iter().map(|t| t.id.clone()).collect(),
        slugs: vec![],
    }
}

/// Polls `check` every 20 ms until it gives a value; panics naming `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a WatchUpgrade stream delivered.
#[derive(Debug, Default)]
pub struct Watched {
    pub outcomes: Vec<pb::TenantOutcome>,
    pub progress: Vec<pb::UpgradeRun>,
    /// The last event was a progress event (not an outcome).
    pub last_was_progress: bool,
    /// The server ended the stream (rather than the timeout).
    pub ended: bool,
}

/// Reads a WatchUpgrade stream until the server ends it; panics after `timeout`.
pub async fn watch(
    client: &mut MigrationClient,
    run_id: &str,
    from_start: bool,
    timeout: Duration,
) -> Watched {
    let mut stream = client
        .watch_upgrade(pb::WatchUpgradeRequest {
            run_id: run_id.to_owned(),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            from_start,
        })
        .await
        .expect("WatchUpgrade")
        .into_inner();
    let mut watched = Watched::default();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("watch of {run_id} did not end within {timeout:?}: {watched:?}")
            })
            .expect("watch stream error");
        match next.and_then(|e| e.event) {
            None => {
                watched.ended = true;
                return watched;
            }
            Some(pb::upgrade_event::Event::Tenant(o)) => {
                watched.outcomes.push(o);
                watched.last_was_progress = false;
            }
            Some(pb::upgrade_event::Event::Progress(p)) => {
                watched.progress.push(p);
                watched.last_was_progress = true;
            }
        }
    }
}

/// One row of `tenantd.upgrade_items`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    pub tenant_id: uuid::Uuid,
    pub canary: bool,
    pub status: String,
    pub attempts: i32,
    pub from_version: i64,
    pub to_version: Option<i64>,
    pub lease_owner: Option<String>,
    pub last_sqlstate: Option<String>,
}

/// The items of a run, by tenant id.
pub async fn items(db: &mut PgConnection, run_id: &str) -> Vec<Item> {
    sqlx::query_as(
        "SELECT tenant_id, canary, status, attempts, from_version, to_version, lease_owner, \
                last_sqlstate \
         FROM tenantd.upgrade_items WHERE run_id = $1::uuid ORDER BY tenant_id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .expect("read upgrade items")
}

/// Every tenant's catalog version by tenant id (as text).
pub async fn versions(db: &mut PgConnection) -> HashMap<String, i64> {
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT id, schema_version FROM tenantd.tenants")
            .fetch_all(db)
            .await
            .expect("read tenant versions");
    rows.into_iter()
        .map(|(id, v)| (id.to_string(), v))
        .collect()
}

/// Adds a location without an email to each tenant's schema (as the
/// superuser), so that `email SET NOT NULL` fails there with 23502.
pub async fn add_location_without_email(db: &mut PgConnection, tenants: &[&pb::Tenant]) {
    for t in tenants {
        sqlx::raw_sql(&format!(
            "INSERT INTO \"{}\".locations (name) VALUES ('No email')",
            t.schema_name
        ))
        .execute(&mut *db)
        .await
        .expect("insert a location without email");
    }
}

/// Gives every location of these tenants an email again.
pub async fn fill_location_emails(db: &mut PgConnection, tenants: &[&pb::Tenant]) {
    for t in tenants {
        sqlx::raw_sql(&format!(
            "UPDATE \"{}\".locations SET email = 'fixed@example.com' WHERE email IS NULL",
            t.schema_name
        ))
        .execute(&mut *db)
        .await
        .expect("fill location emails");
    }
}

/// An in-process server that is told to stop when dropped (also on panic).
pub struct Replica {
    running: Option<Running>,
    pub addr: std::net::SocketAddr,
}

impl Replica {
    pub async fn start(config: AppConfig) -> Replica {
        let running = super::TestServer::run(config)
            .await
            .expect("start a replica");
        Replica {
            addr: running.local_addr(),
            running: Some(running),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop, waiting for it.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("graceful stop");
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown_token().cancel();
        }
    }
}
