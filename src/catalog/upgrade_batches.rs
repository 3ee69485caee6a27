//! The catalog's part of a tenant upgrade, as SQL text.
//!
//! A tenant upgrade runs the tenant's migrations, its ledger rows and the
//! catalog's bookkeeping in one transaction, sent as one simple-query batch
//! so the common case is a single round trip (fleet/apply.rs composes the
//! batch). The catalog statements of that batch are written here, beside the
//! rest of the catalog's SQL. Every value interpolated is a UUID or an
//! integer, never text from a request.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::domain::upgrade::{RunId, RunStatus};
use crate::domain::{TenantId, TenantStatus};

/// SQLSTATE raised by `tenantd.stale_upgrade()`: the tenant or the run is no
/// longer as the batch expected.
pub const STALE: &str = "TD001";

/// Locks the tenant's catalog row and checks that it is still at `from` and
/// the run still running; raises [`STALE`] otherwise.
pub fn lock_expected(run: RunId, tenant: TenantId, from: i64) -> String {
    format!(
        "SELECT CASE WHEN t.status <> 'purged' AND t.schema_version = {from} \
                      AND (SELECT r.status FROM tenantd.upgrade_runs r WHERE r.id = '{run}') = 'running' \
                     THEN 0 ELSE tenantd.stale_upgrade() END \
         FROM tenantd.tenants t WHERE t.id = '{id}' FOR UPDATE OF t;",
        run = run.0,
        id = tenant.as_uuid(),
    )
}

/// Locks the tenant's catalog row and reads, in this order: its status, its
/// catalog version, its ledger's version (NULL without a schema) and the
/// run's status (NULL without the run).
pub fn lock_and_read(run: RunId, tenant: TenantId) -> String {
    format!(
        "SELECT t.status, t.schema_version, tenantd.ledger_version(t.schema_name), \
                (SELECT r.status FROM tenantd.upgrade_runs r WHERE r.id = '{run}') \
         FROM tenantd.tenants t WHERE t.id = '{id}' FOR UPDATE OF t",
        run = run.0,
        id = tenant.as_uuid(),
    )
}

/// What [`lock_and_read`] returns, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedTenant {
    pub status: TenantStatus,
    pub catalog_version: i64,
    /// `None` when the schema or its ledger is gone.
    pub ledger_version: Option<i64>,
    /// `None` when the run is gone.
    pub run_status: Option<RunStatus>,
}

impl LockedTenant {
    /// Reads the last row of a batch that ended with [`lock_and_read`];
    /// `None` when the tenant has no catalog row.
    pub fn from_batch(rows: &[PgRow]) -> Result<Option<Self>, sqlx::Error> {
        let Some(row) = rows.last().filter(|r| r.columns().len() == 4) else {
            return Ok(None);
        };
        Ok(Some(Self {
            status: super::decode(&row.try_get::<String, _>(0)?)?,
            catalog_version: row.try_get(1)?,
            ledger_version: row.try_get(2)?,
            run_status: row
                .try_get::<Option<String>, _>(3)?
                .map(|s| super::decode(&s))
                .transpose()?,
        }))
    }
}

/// Records the tenant's schema version in the catalog.
pub fn set_version(tenant: TenantId, to: i64) -> String {
    format!(
        "UPDATE tenantd.tenants SET schema_version = {to}, updated_at = now() WHERE id = '{}';",
        tenant.as_uuid()
    )
}

fn item(run: RunId, tenant: TenantId) -> String {
    format!(
        "run_id = '{}' AND tenant_id = '{}'",
        run.0,
        tenant.as_uuid()
    )
}

/// Marks the run's item of the tenant done at `to`, and appends its event
/// (`upgrade.tenant_done`). Last in its transaction: the event holds the
/// audit chain's head only for the commit.
pub fn item_done(run: RunId, tenant: TenantId, to: i64) -> String {
    format!(
        "UPDATE tenantd.upgrade_items SET status = 'done', to_version = {to}, finished_at = now(), \
             finished_xid = pg_current_xact_id(), lease_owner = NULL, lease_expires_at = NULL, \
             last_sqlstate = NULL, last_error = NULL WHERE {};\n\
         SELECT tenantd.append_audit('tenantd', 'upgrade.tenant_done', 'tenant:{id}', \
             jsonb_build_object('run', '{run}', 'to', {to}));",
        item(run, tenant),
        id = tenant.as_uuid(),
        run = run.0,
    )
}

/// Marks the run's item of a tenant without a schema skipped.
pub fn item_gone(run: RunId, tenant: TenantId) -> String {
    format!(
        "UPDATE tenantd.upgrade_items SET status = 'skipped', finished_at = now(), \
             finished_xid = pg_current_xact_id(), lease_owner = NULL, \
             last_error = 'tenant has no schema any more' WHERE {};",
        item(run, tenant)
    )
}

/// The version of the newest migration in the schema's ledger; `None` when
/// the schema or its ledger does not exist.
pub async fn ledger_version(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT tenantd.ledger_version($1)")
        .bind(tenant.schema_name().as_str())
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn only_ids_and_numbers_are_interpolated() {
        let run = RunId(Uuid::nil());
        let tenant = TenantId::from_uuid(Uuid::from_u128(7));
        for sql in [
            lock_expected(run, tenant, 3),
            lock_and_read(run, tenant),
            set_version(tenant, 4),
            item_done(run, tenant, 4),
            item_gone(run, tenant),
        ] {
            assert!(
                sql.contains("00000000-0000-0000-0000-000000000007"),
                "{sql}"
            );
            assert_eq!(sql.matches('\'').count() % 2, 0, "{sql}");
        }
    }
}
