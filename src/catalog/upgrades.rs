//! The `upgrade_runs`, `upgrade_items` and `upgrade_slots` tables: creating
//! runs, reading them with their totals, and the statements workers use to
//! claim slots and items under leases, record failures and finish runs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::domain::upgrade::{Outcome, Run, RunId, RunSettings, RunStatus, TenantSelector, Totals};
use crate::domain::{ClusterName, TenantId};

/// Tenant statuses whose schema exists and is upgraded.
pub const UPGRADABLE: &[&str] = &["active", "suspended", "archived"];

/// The selector as SQL parameters: ids and slugs, each empty for "any".
fn selector_params(s: &TenantSelector) -> (Vec<Uuid>, Vec<String>) {
    (s.tenant_ids.clone(), s.slugs.clone())
}

/// `t` is `tenantd.tenants`; `$1`/`$2` are ids/slugs (empty: any), `$3` the statuses.
const SELECTED: &str = "t.status = ANY($3) \
     AND (cardinality($1::uuid[]) = 0 AND cardinality($2::text[]) = 0 \
          OR t.id = ANY($1) OR t.slug = ANY($2))";

/// Tenants per schema version among the selected ones.
pub async fn version_counts(
    conn: &mut PgConnection,
    selector: &TenantSelector,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    sqlx::query_as(&format!(
        "SELECT schema_version, count(*) FROM tenantd.tenants t WHERE {SELECTED} GROUP BY 1 ORDER BY 1"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .fetch_all(conn)
    .await
}

/// Selected tenants and those behind `target`, per cluster, by name.
pub async fn cluster_counts(
    conn: &mut PgConnection,
    selector: &TenantSelector,
    target: i64,
) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    sqlx::query_as(&format!(
        "SELECT placement, count(*), count(*) FILTER (WHERE schema_version < $4) \
           FROM tenantd.tenants t WHERE {SELECTED} GROUP BY 1 ORDER BY 1"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .bind(target)
    .fetch_all(conn)
    .await
}

/// Selected tenants placed outside `default`: (id, catalog version,
/// cluster), whose ledgers live on their clusters.
pub async fn placed_elsewhere(
    conn: &mut PgConnection,
    selector: &TenantSelector,
) -> Result<Vec<(Uuid, i64, String)>, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    sqlx::query_as(&format!(
        "SELECT id, schema_version, placement FROM tenantd.tenants t \
          WHERE {SELECTED} AND placement <> 'default' ORDER BY placement, id"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .fetch_all(conn)
    .await
}

/// Up to `limit` selected tenants behind `target`.
pub async fn behind_sample(
    conn: &mut PgConnection,
    selector: &TenantSelector,
    target: i64,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    sqlx::query_scalar(&format!(
        "SELECT id FROM tenantd.tenants t WHERE {SELECTED} AND schema_version < $4 ORDER BY id LIMIT $5"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .bind(target)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Selected tenants still behind `target` whose latest attempt, in any run,
/// failed: (count, sample of (tenant, run, sqlstate, error, from_version)).
pub async fn failed_before(
    conn: &mut PgConnection,
    selector: &TenantSelector,
    target: i64,
    limit: i64,
) -> Result<(i64, Vec<(Uuid, Uuid, String, String, i64)>), sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    // Starts from the (few) failed items, newest per tenant, and keeps
    // those that are the tenant's latest item of any run.
    let rows: Vec<(i64, Uuid, Uuid, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT count(*) OVER (), t.id, f.run_id, coalesce(f.last_sqlstate, ''), coalesce(f.last_error, ''), \
                t.schema_version \
         FROM (SELECT DISTINCT ON (tenant_id) tenant_id, run_id, last_sqlstate, last_error \
               FROM tenantd.upgrade_items WHERE status = 'failed' ORDER BY tenant_id, run_id DESC) f \
         JOIN tenantd.tenants t ON t.id = f.tenant_id \
         WHERE {SELECTED} AND t.schema_version < $4 \
           AND NOT EXISTS (SELECT FROM tenantd.upgrade_items later \
                           WHERE later.tenant_id = f.tenant_id AND later.run_id > f.run_id) \
         ORDER BY t.id LIMIT $5"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .bind(target)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let count = rows.first().map(|r| r.0).unwrap_or(0);
    Ok((
        count,
        rows.into_iter()
            .map(|(_, t, r, s, e, v)| (t, r, s, e, v))
            .collect(),
    ))
}

/// Tenants whose ledgers one drift-check statement reads. Reading a ledger
/// locks it until the statement ends; all of a large fleet at once would
/// exhaust PostgreSQL's lock table ("out of shared memory").
const DRIFT_CHUNK: i64 = 500;

/// Every selected tenant whose ledger and catalog versions disagree: one
/// ledger read per tenant, a chunk of tenants per statement.
pub async fn drifted(
    conn: &mut PgConnection,
    selector: &TenantSelector,
) -> Result<Vec<(Uuid, i64, Option<i64>)>, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    let mut drifted = Vec::new();
    let mut after = Uuid::nil();
    loop {
        // (id, catalog version, ledger version, drifted?) of the next chunk.
        let rows: Vec<(Uuid, i64, Option<i64>, bool)> = sqlx::query_as(&format!(
            "SELECT id, schema_version, ledger, ledger IS DISTINCT FROM schema_version FROM ( \
                 SELECT t.id, t.schema_version, tenantd.ledger_version(t.schema_name) AS ledger \
                 FROM tenantd.tenants t WHERE {SELECTED} AND t.placement = 'default' \
                  AND t.id > $4 ORDER BY t.id LIMIT $5) x \
             ORDER BY id"
        ))
        .bind(&ids)
        .bind(&slugs)
        .bind(UPGRADABLE)
        .bind(after)
        .bind(DRIFT_CHUNK)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(drifted);
        };
        after = last.0;
        let full = rows.len() as i64 == DRIFT_CHUNK;
        drifted.extend(
            rows.into_iter()
                .filter(|r| r.3)
                .map(|(id, version, ledger, _)| (id, version, ledger)),
        );
        if !full {
            return Ok(drifted);
        }
    }
}

/// Inserts a run, one item per selected tenant behind the target (a random
/// `canary_count` of them marked canary), and its slots. Returns the number
/// of items.
pub async fn create_run(
    conn: &mut PgConnection,
    id: RunId,
    settings: &RunSettings,
    selector: &TenantSelector,
    created_by: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenantd.upgrade_runs (id, target_version, status, concurrency, canary_count, \
             max_failures, max_attempts, lock_timeout_ms, statement_timeout_ms, selector, created_by) \
         VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id.0)
    .bind(settings.target_version)
    .bind(settings.concurrency)
    .bind(settings.canary_count)
    .bind(settings.max_failures)
    .bind(settings.max_attempts)
    .bind(settings.lock_timeout.as_millis() as i32)
    .bind(settings.statement_timeout.as_millis() as i32)
    .bind(serde_json::to_value(selector).unwrap_or_default())
    .bind(created_by)
    .execute(&mut *conn)
    .await?;
    let (ids, slugs) = selector_params(selector);
    let items = sqlx::query(&format!(
        "INSERT INTO tenantd.upgrade_items (run_id, tenant_id, canary, from_version) \
         SELECT $6, id, row_number() OVER (ORDER BY random()) <= $5, schema_version \
         FROM tenantd.tenants t WHERE {SELECTED} AND schema_version < $4"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .bind(settings.target_version)
    .bind(i64::from(settings.canary_count))
    .bind(id.0)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // `concurrency` per cluster: as many slots for each cluster the run's
    // tenants are on (tenants moved meanwhile are caught by the per-cluster
    // count in claim_items).
    sqlx::query(
        "INSERT INTO tenantd.upgrade_slots (run_id, slot) \
         SELECT $1, generate_series(1, $2 * greatest(1, ( \
             SELECT count(DISTINCT t.placement) FROM tenantd.upgrade_items i \
               JOIN tenantd.tenants t ON t.id = i.tenant_id WHERE i.run_id = $1)))",
    )
    .bind(id.0)
    .bind(settings.concurrency)
    .execute(&mut *conn)
    .await?;
    Ok(items as i64)
}

/// Counts of what a dry run would create.
pub async fn count_behind(
    conn: &mut PgConnection,
    selector: &TenantSelector,
    target: i64,
) -> Result<i64, sqlx::Error> {
    let (ids, slugs) = selector_params(selector);
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM tenantd.tenants t WHERE {SELECTED} AND schema_version < $4"
    ))
    .bind(ids)
    .bind(slugs)
    .bind(UPGRADABLE)
    .bind(target)
    .fetch_one(conn)
    .await
}

const RUN_COLUMNS: &str = "id, target_version, status, status_reason, concurrency, canary_count, max_failures, \
     max_attempts, lock_timeout_ms, statement_timeout_ms, created_at, updated_at, finished_at";

#[derive(sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    target_version: i64,
    status: String,
    status_reason: String,
    concurrency: i32,
    canary_count: i32,
    max_failures: i32,
    max_attempts: i32,
    lock_timeout_ms: i32,
    statement_timeout_ms: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl RunRow {
    fn into_run(self, totals: Totals) -> Result<Run, sqlx::Error> {
        Ok(Run {
            id: RunId(self.id),
            settings: RunSettings {
                target_version: self.target_version,
                concurrency: self.concurrency,
                canary_count: self.canary_count,
                max_failures: self.max_failures,
                max_attempts: self.max_attempts,
                lock_timeout: Duration::from_millis(self.lock_timeout_ms as u64),
                statement_timeout: Duration::from_millis(self.statement_timeout_ms as u64),
            },
            status: super::decode(&self.status)?,
            status_reason: self.status_reason,
            totals,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

/// Items by state and the finishing rate over the last five seconds.
pub async fn totals(conn: &mut PgConnection, id: RunId) -> Result<Totals, sqlx::Error> {
    let (total, pending, running, done, failed, skipped, recent, window): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f64,
    ) = sqlx::query_as(
        "SELECT count(*), \
                    count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'running'), \
                    count(*) FILTER (WHERE status = 'done'), \
                    count(*) FILTER (WHERE status = 'failed'), \
                    count(*) FILTER (WHERE status = 'skipped'), \
                    count(*) FILTER (WHERE finished_at > now() - interval '5 seconds'), \
                    coalesce(least(5.0, extract(epoch FROM now() - min(started_at)))::float8, 0) \
             FROM tenantd.upgrade_items WHERE run_id = $1",
    )
    .bind(id.0)
    .fetch_one(conn)
    .await?;
    let rate = if window > 0.05 {
        recent as f64 / window
    } else {
        0.0
    };
    Ok(Totals {
        total,
        pending,
        running,
        done,
        failed,
        skipped,
        rate,
    })
}

pub async fn get_run(conn: &mut PgConnection, id: RunId) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM tenantd.upgrade_runs WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => {
            let totals = totals(conn, id).await?;
            row.into_run(totals).map(Some)
        }
        None => Ok(None),
    }
}

/// Newest first, before `before`.
pub async fn list_runs(
    conn: &mut PgConnection,
    before: Option<RunId>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM tenantd.upgrade_runs WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    ))
    .bind(before.map(|b| b.0))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut runs = Vec::with_capacity(rows.len());
    for row in rows {
        let totals = totals(conn, RunId(row.id)).await?;
        runs.push(row.into_run(totals)?);
    }
    Ok(runs)
}

/// Locks the run row for the caller's transaction; its status.
pub async fn lock_run(
    conn: &mut PgConnection,
    id: RunId,
) -> Result<Option<RunStatus>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM tenantd.upgrade_runs WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(conn)
            .await?;
    status.map(|s| super::decode(&s)).transpose()
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: RunId,
    status: RunStatus,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.upgrade_runs SET status = $2, status_reason = $3, updated_at = now(), \
             finished_at = CASE WHEN $2 IN ('cancelled', 'succeeded', 'failed') THEN now() END \
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(status.as_str())
    .bind(reason)
    .execute(conn)
    .await
    .map(drop)
}

/// Cancelling: pending items will not run.
pub async fn skip_pending(conn: &mut PgConnection, id: RunId) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.upgrade_items SET status = 'skipped', finished_at = now(), finished_xid = pg_current_xact_id(), \
             last_error = 'run cancelled' \
         WHERE run_id = $1 AND status = 'pending'",
    )
    .bind(id.0)
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

/// RetryFailed: failed items become pending with fresh attempts.
pub async fn retry_failed(conn: &mut PgConnection, id: RunId) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.upgrade_items SET status = 'pending', attempts = 0, next_attempt_at = now(), \
             finished_at = NULL, finished_xid = NULL, lease_owner = NULL, lease_expires_at = NULL \
         WHERE run_id = $1 AND status = 'failed'",
    )
    .bind(id.0)
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

/// tenant, status, from, to, attempts, sqlstate, error, finished_at, finished_xid
type OutcomeRow = (
    Uuid,
    String,
    i64,
    Option<i64>,
    i32,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    i64,
);

/// Outcomes finished by transactions after `after` (a transaction id), in
/// transaction order, each with its transaction id, and the oldest
/// transaction id still running anywhere in the cluster. Transactions below
/// that one have all ended, so a reader may move its cursor up to it; rows at
/// or above it can still be joined by late commits and are read again.
pub async fn outcomes_after(
    conn: &mut PgConnection,
    id: RunId,
    after: Option<i64>,
    limit: i64,
) -> Result<(Vec<(Outcome, i64)>, i64), sqlx::Error> {
    let xmin: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&mut *conn)
            .await?;
    let rows: Vec<OutcomeRow> = sqlx::query_as(
        "SELECT tenant_id, status, from_version, to_version, attempts, last_sqlstate, last_error, finished_at, \
                finished_xid::text::bigint \
         FROM tenantd.upgrade_items \
         WHERE run_id = $1 AND finished_xid IS NOT NULL AND status IN ('done', 'failed') \
           AND ($2::bigint IS NULL OR finished_xid > $2::text::xid8) \
         ORDER BY finished_xid, tenant_id LIMIT $3",
    )
    .bind(id.0)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let outcomes = rows
        .into_iter()
        .map(
            |(tenant, status, from, to, attempts, sqlstate, error, finished_at, xid)| {
                let outcome = Outcome {
                    tenant_id: TenantId::from_uuid(tenant),
                    ok: status == "done",
                    from_version: from,
                    to_version: to.unwrap_or(from),
                    attempts,
                    sqlstate: sqlstate.unwrap_or_default(),
                    message: if status == "done" {
                        String::new()
                    } else {
                        error.unwrap_or_default()
                    },
                    finished_at,
                };
                (outcome, xid)
            },
        )
        .collect();
    Ok((outcomes, xmin))
}

// ---- worker side ----

/// Takes a free or expired slot of the oldest running run.
///
/// Only runs whose target this process knows (`known_latest`): during a
/// rolling deploy an older replica must leave a newer run to newer replicas.
pub async fn claim_slot(
    conn: &mut PgConnection,
    owner: &str,
    lease: Duration,
    known_latest: i64,
) -> Result<Option<(RunId, i32)>, sqlx::Error> {
    let row: Option<(Uuid, i32)> = sqlx::query_as(
        // MATERIALIZED: evaluated once, so the LIMIT holds whatever plan
        // PostgreSQL picks for the join (it could otherwise re-run the
        // subquery per row and claim more than asked).
        "WITH free AS MATERIALIZED ( \
             SELECT s.run_id, s.slot FROM tenantd.upgrade_slots s \
             JOIN tenantd.upgrade_runs r ON r.id = s.run_id \
             WHERE r.status = 'running' AND r.target_version <= $3 \
               AND (s.owner IS NULL OR s.lease_expires_at < now()) \
             ORDER BY r.id, s.slot LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
         UPDATE tenantd.upgrade_slots s SET owner = $1, lease_expires_at = now() + $2 \
         FROM free WHERE s.run_id = free.run_id AND s.slot = free.slot \
         RETURNING s.run_id, s.slot",
    )
    .bind(owner)
    .bind(lease)
    .bind(known_latest)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(r, s)| (RunId(r), s)))
}

pub async fn release_slot(
    conn: &mut PgConnection,
    run: RunId,
    slot: i32,
    owner: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.upgrade_slots SET owner = NULL, lease_expires_at = NULL, cluster = NULL \
         WHERE run_id = $1 AND slot = $2 AND owner = $3",
    )
    .bind(run.0)
    .bind(slot)
    .bind(owner)
    .execute(conn)
    .await
    .map(drop)
}

/// Extends every lease this process holds.
pub async fn renew_leases(
    conn: &mut PgConnection,
    owner: &str,
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH s AS (UPDATE tenantd.upgrade_slots SET lease_expires_at = now() + $2 WHERE owner = $1) \
         UPDATE tenantd.upgrade_items SET lease_expires_at = now() + $2 WHERE lease_owner = $1 AND status = 'running'",
    )
    .bind(owner)
    .bind(lease)
    .execute(conn)
    .await
    .map(drop)
}

/// A claimed item.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub tenant: TenantId,
    pub attempts: i32,
    pub canary: bool,
    /// The tenant's version when the run was planned.
    pub from_version: i64,
    /// The tenant's cluster now.
    pub cluster: ClusterName,
}

/// Claims up to `batch` claimable items of `run`: pending ones whose backoff
/// is over and running ones whose lease expired (their worker died).
/// Canaries first; other tenants only once no canary is left to run (a
/// failed canary has paused the run; an operator who resumes it goes on). Nothing
/// once the run is no longer running (paused, halted, cancelled).
/// Which of a run's items may be claimed now (`$1`: the run).
const CLAIMABLE: &str = "c.run_id = $1 \
    AND EXISTS (SELECT FROM tenantd.upgrade_runs r WHERE r.id = $1 AND r.status = 'running') \
    AND (c.status = 'pending' AND c.next_attempt_at <= now() \
         OR c.status = 'running' AND c.lease_expires_at < now()) \
    AND (c.canary OR NOT EXISTS ( \
         SELECT FROM tenantd.upgrade_items k \
         WHERE k.run_id = $1 AND k.canary AND k.status IN ('pending', 'running')))";

/// Claims up to `batch` of the run's items for the worker holding `slot`,
/// all on one cluster: the one with claimable items where the fewest of the
/// run's other slots work now, among those where fewer than the run's
/// concurrency do. So a run upgrades at most `concurrency` tenants at once
/// on each cluster. Claims of one run are serialized (a transaction-scoped
/// advisory lock), so two workers cannot both take a cluster's last place.
pub async fn claim_items(
    conn: &mut PgConnection,
    run: RunId,
    slot: i32,
    owner: &str,
    lease: Duration,
    batch: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(1970, hashtext($1::text))")
        .bind(run.0)
        .execute(&mut *tx)
        .await?;
    let cluster: Option<String> = sqlx::query_scalar(&format!(
        "WITH busy AS ( \
             SELECT s.cluster, count(*) AS n FROM tenantd.upgrade_slots s \
              WHERE s.run_id = $1 AND s.slot <> $2 AND s.cluster IS NOT NULL \
                AND s.owner IS NOT NULL AND s.lease_expires_at >= now() \
              GROUP BY s.cluster), \
         open AS ( \
             SELECT DISTINCT t.placement AS cluster FROM tenantd.upgrade_items c \
               JOIN tenantd.tenants t ON t.id = c.tenant_id WHERE {CLAIMABLE}) \
         SELECT o.cluster FROM open o LEFT JOIN busy b USING (cluster) \
          WHERE coalesce(b.n, 0) < (SELECT concurrency FROM tenantd.upgrade_runs WHERE id = $1) \
          ORDER BY coalesce(b.n, 0), random() LIMIT 1"
    ))
    .bind(run.0)
    .bind(slot)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE tenantd.upgrade_slots SET cluster = $3 WHERE run_id = $1 AND slot = $2 AND owner = $4",
    )
    .bind(run.0)
    .bind(slot)
    .bind(&cluster)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    let Some(cluster) = cluster else {
        tx.commit().await?;
        return Ok(Vec::new());
    };
    let rows: Vec<(Uuid, i32, bool, i64, Option<String>)> = sqlx::query_as(&format!(
        // MATERIALIZED: see claim_slot; the batch size must hold.
        "WITH free AS MATERIALIZED ( \
             SELECT tenant_id FROM tenantd.upgrade_items c \
             WHERE {CLAIMABLE} \
               AND EXISTS (SELECT FROM tenantd.tenants t WHERE t.id = c.tenant_id AND t.placement = $5) \
             ORDER BY c.canary DESC, c.next_attempt_at \
             LIMIT $4 FOR UPDATE SKIP LOCKED) \
         UPDATE tenantd.upgrade_items i \
         SET status = 'running', lease_owner = $2, lease_expires_at = now() + $3, attempts = i.attempts + 1, \
             started_at = coalesce(i.started_at, now()) \
         FROM free WHERE i.run_id = $1 AND i.tenant_id = free.tenant_id \
         RETURNING i.tenant_id, i.attempts, i.canary, i.from_version, \
                   (SELECT t.placement FROM tenantd.tenants t WHERE t.id = i.tenant_id)",
    ))
    .bind(run.0)
    .bind(owner)
    .bind(lease)
    .bind(batch)
    .bind(&cluster)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(t, attempts, canary, from_version, cluster)| Claimed {
            tenant: TenantId::from_uuid(t),
            attempts,
            canary,
            from_version,
            cluster: cluster.map_or_else(ClusterName::default_cluster, ClusterName::from_catalog),
        })
        .collect())
}

/// Gives back claimed items this worker will not start (pause, cancel,
/// shutdown): they become pending again without using up an attempt.
pub async fn release_items(
    conn: &mut PgConnection,
    run: RunId,
    owner: &str,
    tenants: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.upgrade_items SET status = 'pending', attempts = greatest(attempts - 1, 0), \
             lease_owner = NULL, lease_expires_at = NULL \
         WHERE run_id = $1 AND lease_owner = $2 AND status = 'running' AND tenant_id = ANY($3)",
    )
    .bind(run.0)
    .bind(owner)
    .bind(tenants)
    .execute(conn)
    .await
    .map(drop)
}

/// What a failure did to its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureEffect {
    /// The tenant will be tried again later.
    Retrying,
    /// The tenant failed for good; the run goes on.
    Failed,
    /// A canary failed: the run is paused.
    PausedRun,
    /// The failure budget is spent: the run is halted.
    HaltedRun,
}

/// Records a failed attempt in the caller's transaction: back to pending
/// after `retry_in`, or failed for good (which may pause or halt the run).
pub async fn record_failure(
    conn: &mut PgConnection,
    run: RunId,
    tenant: TenantId,
    sqlstate: &str,
    message: &str,
    retry_in: Option<Duration>,
) -> Result<FailureEffect, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as(
        "UPDATE tenantd.upgrade_items SET \
             status = CASE WHEN $5::interval IS NULL THEN 'failed' ELSE 'pending' END, \
             next_attempt_at = now() + coalesce($5::interval, interval '0'), \
             finished_at = CASE WHEN $5::interval IS NULL THEN now() END, \
             finished_xid = CASE WHEN $5::interval IS NULL THEN pg_current_xact_id() END, \
             lease_owner = NULL, lease_expires_at = NULL, last_sqlstate = $3, last_error = $4 \
         WHERE run_id = $1 AND tenant_id = $2 RETURNING canary",
    )
    .bind(run.0)
    .bind(tenant.as_uuid())
    .bind(sqlstate)
    .bind(message)
    .bind(retry_in)
    .fetch_optional(&mut *conn)
    .await?;
    if retry_in.is_some() {
        return Ok(FailureEffect::Retrying);
    }
    let canary = row.is_some_and(|(c,)| c);
    let short = message.chars().take(200).collect::<String>();
    if canary {
        let paused = sqlx::query(
            "UPDATE tenantd.upgrade_runs SET status = 'paused', updated_at = now(), \
                 status_reason = $2 WHERE id = $1 AND status = 'running'",
        )
        .bind(run.0)
        .bind(format!("canary tenant {tenant} failed: {sqlstate} {short}"))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if paused > 0 {
            return Ok(FailureEffect::PausedRun);
        }
        return Ok(FailureEffect::Failed);
    }
    let halted = sqlx::query(
        "UPDATE tenantd.upgrade_runs r SET status = 'halted', updated_at = now(), \
             status_reason = format('%s tenants failed, more than max_failures = %s; last: tenant %s: %s %s', \
                                    f.failed, r.max_failures, $2::text, $3::text, $4::text) \
         FROM (SELECT count(*) AS failed FROM tenantd.upgrade_items WHERE run_id = $1 AND status = 'failed') f \
         WHERE r.id = $1 AND r.status = 'running' AND f.failed > r.max_failures",
    )
    .bind(run.0)
    .bind(tenant.to_string())
    .bind(sqlstate)
    .bind(short)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if halted > 0 {
        FailureEffect::HaltedRun
    } else {
        FailureEffect::Failed
    })
}

/// Ends a running run whose items are all finished; its new status.
pub async fn finish_if_complete(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Option<RunStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE tenantd.upgrade_runs r SET \
             status = CASE WHEN EXISTS (SELECT FROM tenantd.upgrade_items WHERE run_id = $1 AND status = 'failed') \
                           THEN 'failed' ELSE 'succeeded' END, \
             status_reason = coalesce(( \
                 SELECT format('%s of %s tenants failed', count(*) FILTER (WHERE status = 'failed'), count(*)) \
                 FROM tenantd.upgrade_items WHERE run_id = $1 \
                 HAVING count(*) FILTER (WHERE status = 'failed') > 0), ''), \
             finished_at = now(), updated_at = now() \
         WHERE r.id = $1 AND r.status = 'running' \
           AND NOT EXISTS (SELECT FROM tenantd.upgrade_items WHERE run_id = $1 AND status IN ('pending', 'running')) \
         RETURNING status",
    )
    .bind(run.0)
    .fetch_optional(conn)
    .await?;
    status.map(|s| super::decode(&s)).transpose()
}

/// How many runs there are in each status, and how many items of unfinished
/// runs (running, paused, halted) are in each status, in one statement: rows
/// of ("runs" | "items", status, count), statuses with none left out.
pub async fn status_counts(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'runs', status, count(*) FROM tenantd.upgrade_runs GROUP BY status \
         UNION ALL \
         SELECT 'items', i.status, count(*) FROM tenantd.upgrade_items i \
           JOIN tenantd.upgrade_runs r ON r.id = i.run_id \
          WHERE r.status IN ('running', 'paused', 'halted') \
          GROUP BY i.status",
    )
    .fetch_all(conn)
    .await
}

/// A tenant that failed in a run, as the console lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedItem {
    pub tenant_id: uuid::Uuid,
    pub slug: String,
    pub sqlstate: String,
    pub message: String,
    pub attempts: i32,
}

/// Up to `limit` failed tenants of the run, the most recent first.
pub async fn failed_items(
    conn: &mut PgConnection,
    run: RunId,
    limit: i64,
) -> Result<Vec<FailedItem>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.tenant_id, coalesce(t.slug, '') AS slug, coalesce(i.last_sqlstate, '') AS sqlstate, \
                coalesce(i.last_error, '') AS message, i.attempts \
         FROM tenantd.upgrade_items i LEFT JOIN tenantd.tenants t ON t.id = i.tenant_id \
         WHERE i.run_id = $1 AND i.status = 'failed' \
         ORDER BY i.finished_at DESC NULLS LAST, i.tenant_id LIMIT $2",
    )
    .bind(run.0)
    .bind(limit)
    .fetch_all(conn)
    .await
}
