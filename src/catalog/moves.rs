//! `tenantd.tenant_moves`: moves of a tenant between clusters. Each
//! function runs one statement on the caller's connection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{ClusterName, TenantId};

/// A move as the catalog has it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MoveRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub source: String,
    pub target: String,
    pub status: String,
    pub phase: String,
    pub cancel_requested: bool,
    pub attempts: i32,
    pub lease_owner: Option<String>,
    pub requested_by: String,
    pub error: Option<String>,
    pub tables_total: i32,
    pub tables_copied: i32,
    pub pause_ms: Option<i32>,
    pub verified: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub switched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub source_dropped_at: Option<DateTime<Utc>>,
}

impl MoveRow {
    pub fn tenant(&self) -> TenantId {
        TenantId::from_uuid(self.tenant_id)
    }

    pub fn source(&self) -> ClusterName {
        ClusterName::from_catalog(self.source.clone())
    }

    pub fn target(&self) -> ClusterName {
        ClusterName::from_catalog(self.target.clone())
    }
}

const COLUMNS: &str = "id, tenant_id, source, target, status, phase, cancel_requested, attempts, \
     lease_owner, requested_by, error, tables_total, tables_copied, pause_ms, verified, \
     created_at, started_at, switched_at, finished_at, source_dropped_at";

/// A pending move; `None` when the tenant already has one pending or
/// running.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    tenant: TenantId,
    source: &ClusterName,
    target: &ClusterName,
    actor: &str,
) -> Result<Option<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO tenantd.tenant_moves (id, tenant_id, source, target, requested_by) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id) WHERE status IN ('pending', 'running') DO NOTHING \
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant.as_uuid())
    .bind(source.as_str())
    .bind(target.as_str())
    .bind(actor)
    .fetch_optional(conn)
    .await
}

pub async fn get(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<Option<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tenantd.tenant_moves WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Newest first; of one tenant when given.
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    tenant: Option<TenantId>,
    limit: i64,
) -> Result<Vec<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tenantd.tenant_moves \
          WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(tenant.map(|t| *t.as_uuid()))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Takes the oldest pending move, or a running one whose owner's lease ran
/// out (the owner died), under a lease for `owner`.
pub async fn claim(
    db: impl sqlx::PgExecutor<'_>,
    owner: &str,
    lease: Duration,
) -> Result<Option<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tenantd.tenant_moves SET status = 'running', lease_owner = $1, \
             lease_expires_at = now() + $2, attempts = attempts + 1, \
             started_at = coalesce(started_at, now()) \
          WHERE id = (SELECT id FROM tenantd.tenant_moves \
                       WHERE status = 'pending' \
                          OR status = 'running' AND lease_expires_at < now() \
                       ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
          RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(lease)
    .fetch_optional(db)
    .await
}

/// Extends `owner`'s lease; false when the move is no longer its own.
/// Answers, too, whether a cancel was asked for.
pub async fn heartbeat(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tenantd.tenant_moves SET lease_expires_at = now() + $3 \
          WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
          RETURNING cancel_requested",
    )
    .bind(id)
    .bind(owner)
    .bind(lease)
    .fetch_optional(db)
    .await
}

/// Records the phase (and copy progress) of `owner`'s move.
pub async fn set_phase(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    phase: &str,
    tables: Option<(i32, i32)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.tenant_moves SET phase = $3, \
             tables_total = coalesce($4, tables_total), tables_copied = coalesce($5, tables_copied) \
          WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(phase)
    .bind(tables.map(|t| t.0))
    .bind(tables.map(|t| t.1))
    .execute(db)
    .await
    .map(drop)
}

/// The switch: the tenant's placement flips from the move's source to its
/// target, and the move records it. False when the tenant is no longer on
/// the source (nothing changed).
pub async fn switch(
    conn: &mut PgConnection,
    m: &MoveRow,
    pause_ms: i32,
    verified: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE tenantd.tenants SET placement = $3, version = version + 1, updated_at = now() \
          WHERE id = $1 AND placement = $2",
    )
    .bind(m.tenant_id)
    .bind(&m.source)
    .bind(&m.target)
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE tenantd.tenant_moves SET phase = 'switched', switched_at = now(), \
             pause_ms = $2, verified = $3 WHERE id = $1",
    )
    .bind(m.id)
    .bind(pause_ms)
    .bind(verified)
    .execute(conn)
    .await?;
    Ok(true)
}

/// Asks for a cancel; answers the move.
pub async fn request_cancel(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tenantd.tenant_moves SET cancel_requested = true, \
             status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END, \
             finished_at = CASE WHEN status = 'pending' THEN now() ELSE finished_at END \
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Ends `owner`'s move.
pub async fn finish(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenantd.tenant_moves SET status = $3, error = $4, finished_at = now(), \
             phase = CASE WHEN $3 = 'succeeded' THEN 'done' ELSE phase END, \
             lease_owner = NULL, lease_expires_at = NULL \
          WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(status)
    .bind(error)
    .execute(db)
    .await
    .map(drop)
}

/// Moves that succeeded at least `grace` ago whose source schema and role
/// are still to drop.
pub async fn sources_left(
    db: impl sqlx::PgExecutor<'_>,
    grace: Duration,
) -> Result<Vec<MoveRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tenantd.tenant_moves \
          WHERE status = 'succeeded' AND source_dropped_at IS NULL \
            AND switched_at < now() - $1 ORDER BY switched_at LIMIT 20"
    ))
    .bind(grace)
    .fetch_all(db)
    .await
}

pub async fn source_dropped(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tenantd.tenant_moves SET source_dropped_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(drop)
}

/// The tenant's pending or running move, if any.
pub async fn active_for(
    db: impl sqlx::PgExecutor<'_>,
    tenant: TenantId,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM tenantd.tenant_moves WHERE tenant_id = $1 AND status IN ('pending', 'running')",
    )
    .bind(tenant.as_uuid())
    .fetch_optional(db)
    .await
}

/// Pending or running moves from or to a cluster.
pub async fn active_on(
    db: impl sqlx::PgExecutor<'_>,
    cluster: &ClusterName,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.tenant_moves \
          WHERE status IN ('pending', 'running') AND (source = $1 OR target = $1)",
    )
    .bind(cluster.as_str())
    .fetch_one(db)
    .await
}

/// In the switch's catalog transaction: locks the move's row (a cancel
/// waits for the switch to commit) and answers whether a cancel came
/// first; then locks the tenant's row (a lifecycle change waits too) and
/// answers its status now.
pub async fn lock_for_switch(
    conn: &mut PgConnection,
    m: &MoveRow,
) -> Result<(bool, Option<String>), sqlx::Error> {
    let cancelled: bool = sqlx::query_scalar(
        "SELECT cancel_requested FROM tenantd.tenant_moves WHERE id = $1 FOR UPDATE",
    )
    .bind(m.id)
    .fetch_one(&mut *conn)
    .await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM tenantd.tenants WHERE id = $1 FOR UPDATE")
            .bind(m.tenant_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok((cancelled, status))
}
