//! The tenant lifecycle: create, read, list, update, suspend, resume, archive
//! and purge. Every change is one catalog transaction that also carries the
//! DDL it needs and its audit event, so it commits whole or not at all.

use std::sync::Arc;

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{TenantMigrations, create_tenant_ddl, purge_tenant_ddl, role_login_ddl, role_verifier};
use crate::catalog::{self, DbFailure, Engine, audit::Audited, tenants};
use crate::domain::{LifecycleAction, NewTenant, Tenant, TenantId, TenantPatch, TenantStatus};

/// Why a tenant operation failed. The gRPC layer maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant not found")]
    NotFound,
    #[error("slug {0:?} is already taken")]
    SlugTaken(String),
    #[error("idempotency key was already used to create the tenant {slug:?}")]
    IdempotencyKeyReused { slug: String },
    #[error("owner user {0} does not exist or is not active")]
    OwnerNotFound(Uuid),
    #[error("tenant is at version {actual}, not the expected {expected}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("cannot {action} a tenant that is {status}")]
    InvalidTransition {
        action: &'static str,
        status: TenantStatus,
    },
    #[error("confirm_slug does not match the tenant's slug")]
    ConfirmationMismatch,
    #[error(transparent)]
    Db(#[from] DbFailure),
}

impl TenantError {
    fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> TenantError {
        DbFailure::of(context)
    }
}

/// The tenant lifecycle over the catalog pool.
#[derive(Clone)]
pub struct Tenants {
    pool: PgPool,
    migrations: Arc<TenantMigrations>,
    /// Key of the per-tenant role passwords; see [`super::role_password`].
    role_secret: Arc<[u8]>,
    /// Plain PostgreSQL, or a Citus coordinator (each tenant schema a
    /// distributed schema).
    engine: Engine,
}

/// One page of [`Tenants::list`].
#[derive(Debug)]
pub struct Page {
    pub tenants: Vec<Tenant>,
    /// The last tenant of this page when another page follows.
    pub next_after: Option<TenantId>,
}

impl Tenants {
    pub fn new(
        pool: PgPool,
        migrations: Arc<TenantMigrations>,
        role_secret: Vec<u8>,
        engine: Engine,
    ) -> Self {
        Self {
            pool,
            migrations,
            role_secret: role_secret.into(),
            engine,
        }
    }

    pub fn migrations(&self) -> &TenantMigrations {
        &self.migrations
    }

    /// Creates a tenant: catalog row, owner membership, role, schema, every
    /// tenant migration, ledger and audit event in one transaction. Returns
    /// the tenant and whether this call created it (false: an idempotent
    /// replay of an earlier request with the same key).
    pub async fn create(&self, new: NewTenant, actor: &str) -> Result<(Tenant, bool), TenantError> {
        let id = TenantId::new();
        let verifier = role_verifier(&self.role_secret, id);
        let ddl = create_tenant_ddl(id, &verifier, &self.migrations);

        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(TenantError::db("begin create tenant"))?;
        let inserted = tenants::insert(&mut tx, id, &new, self.migrations.latest())
            .await
            .map_err(TenantError::db("insert tenant row"))?;
        let Some(tenant) = inserted else {
            tx.rollback()
                .await
                .map_err(TenantError::db("roll back create tenant"))?;
            return self.resolve_create_conflict(&new).await;
        };
        if let Some(owner) = new.owner_user_id {
            let added = tenants::add_owner(&mut tx, id, owner)
                .await
                .map_err(TenantError::db("add tenant owner"))?;
            if !added {
                return Err(TenantError::OwnerNotFound(owner));
            }
        }
        if self.engine == Engine::Citus {
            // The schema (and every table in it) becomes a distributed
            // schema, placed on a worker, whatever the database's default.
            catalog::execute_batch(&mut tx, "SET LOCAL citus.enable_schema_based_sharding = on")
                .await
                .map_err(TenantError::db("make the tenant schema distributed"))?;
        }
        self.engine
            .execute_ddl(&mut tx, &ddl)
            .await
            .map_err(TenantError::db("create tenant schema"))?;
        let details = json!({
            "slug": tenant.slug,
            "name": tenant.name,
            "schema": tenant.schema_name.as_str(),
            "schema_version": tenant.schema_version,
            "owner_user_id": new.owner_user_id,
        });
        tx.commit(actor, "tenant.create", &target(id), &details)
            .await
            .map_err(TenantError::db("commit create tenant"))?;
        Ok((tenant, true))
    }

    /// After an insert that hit a unique index: an idempotent replay returns
    /// the first result, anything else is a taken slug.
    async fn resolve_create_conflict(
        &self,
        new: &NewTenant,
    ) -> Result<(Tenant, bool), TenantError> {
        let mut conn = self.conn().await?;
        if let Some(key) = &new.idempotency_key {
            let first = tenants::get_by_idempotency_key(&mut conn, key)
                .await
                .map_err(TenantError::db("look up idempotency key"))?;
            if let Some(first) = first {
                if first.slug == new.slug.as_str() {
                    return Ok((first, false));
                }
                return Err(TenantError::IdempotencyKeyReused { slug: first.slug });
            }
        }
        Err(TenantError::SlugTaken(new.slug.as_str().to_owned()))
    }

    pub async fn get(&self, id: TenantId) -> Result<Tenant, TenantError> {
        let mut conn = self.conn().await?;
        tenants::get(&mut conn, id)
            .await
            .map_err(TenantError::db("get tenant"))?
            .ok_or(TenantError::NotFound)
    }

    /// On Citus, `host:port` of the node holding the tenant's schema.
    pub async fn node_of(&self, id: TenantId) -> Result<Option<String>, TenantError> {
        if self.engine != Engine::Citus {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        crate::placement::node_of(&mut conn, id.schema_name().as_str())
            .await
            .map_err(TenantError::db("find the tenant's Citus node"))
    }

    pub async fn get_by_slug(&self, slug: &str) -> Result<Tenant, TenantError> {
        let mut conn = self.conn().await?;
        tenants::get_by_slug(&mut conn, slug)
            .await
            .map_err(TenantError::db("get tenant by slug"))?
            .ok_or(TenantError::NotFound)
    }

    /// Up to `page_size` tenants after `after`, in creation order.
    pub async fn list(
        &self,
        status: Option<TenantStatus>,
        after: Option<TenantId>,
        page_size: usize,
    ) -> Result<Page, TenantError> {
        let mut conn = self.conn().await?;
        let mut rows = tenants::list(&mut conn, status, after, page_size as i64 + 1)
            .await
            .map_err(TenantError::db("list tenants"))?;
        let next_after = if rows.len() > page_size {
            rows.truncate(page_size);
            rows.last().map(|t| t.id)
        } else {
            None
        };
        Ok(Page {
            tenants: rows,
            next_after,
        })
    }

    pub async fn update(
        &self,
        id: TenantId,
        patch: TenantPatch,
        actor: &str,
    ) -> Result<Tenant, TenantError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(TenantError::db("begin update tenant"))?;
        let current = lock(&mut tx, id, patch.expected_version).await?;
        if current.status == TenantStatus::Purged {
            return Err(TenantError::InvalidTransition {
                action: "update",
                status: current.status,
            });
        }
        if patch.is_empty() {
            return Ok(current);
        }
        let updated = tenants::update(&mut tx, id, &patch)
            .await
            .map_err(TenantError::db("update tenant"))?;
        let details = json!({
            "name": patch.name.as_ref().map(|n| n.as_str()),
            "industry": patch.industry.as_ref().map(|t| t.as_str()),
            "description": patch.description.as_ref().map(|t| t.as_str()),
            "country": patch.country.map(|c| c.map(|c| c.as_str().to_owned())),
            "version": updated.version,
        });
        tx.commit(actor, "tenant.update", &target(id), &details)
            .await
            .map_err(TenantError::db("commit update tenant"))?;
        Ok(updated)
    }

    /// Suspend, resume or archive. Asking for the status a tenant already
    /// has changes nothing and returns it as it is.
    pub async fn change_status(
        &self,
        id: TenantId,
        action: LifecycleAction,
        expected_version: Option<i64>,
        reason: &str,
        actor: &str,
    ) -> Result<Tenant, TenantError> {
        debug_assert_ne!(action, LifecycleAction::Purge, "purge has its own method");
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(TenantError::db("begin tenant status change"))?;
        let current = lock(&mut tx, id, expected_version).await?;
        let Some(next) = transition(&current, action)? else {
            return Ok(current);
        };
        let changed = tenants::set_status(&mut tx, id, next)
            .await
            .map_err(TenantError::db("change tenant status"))?;
        // PostgreSQL enforces it too: only an active tenant's role logs in.
        self.engine
            .execute_ddl(&mut tx, &role_login_ddl(id, next == TenantStatus::Active))
            .await
            .map_err(TenantError::db("change the tenant role's login"))?;
        let details =
            json!({ "from": current.status.as_str(), "to": next.as_str(), "reason": reason });
        tx.commit(
            actor,
            &format!("tenant.{}", action.as_str()),
            &target(id),
            &details,
        )
        .await
        .map_err(TenantError::db("commit tenant status change"))?;
        if next != TenantStatus::Active {
            // Sessions already logged in end too (needs a superuser or
            // pg_signal_backend; otherwise they end with their pools).
            if let Err(e) = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = $1 AND datname = current_database()",
            )
            .bind(id.role_name().as_str())
            .execute(&self.pool)
            .await
            {
                tracing::warn!(tenant_id = %id, error = %e, "cannot end the tenant's sessions");
            }
        }
        Ok(changed)
    }

    /// Drops an archived tenant's schema and role; the catalog row stays as a
    /// PURGED tombstone. `confirm_slug` must repeat the tenant's slug.
    pub async fn purge(
        &self,
        id: TenantId,
        confirm_slug: &str,
        expected_version: Option<i64>,
        reason: &str,
        actor: &str,
    ) -> Result<Tenant, TenantError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(TenantError::db("begin purge tenant"))?;
        let current = lock(&mut tx, id, expected_version).await?;
        if current.slug != confirm_slug {
            return Err(TenantError::ConfirmationMismatch);
        }
        let Some(next) = transition(&current, LifecycleAction::Purge)? else {
            return Ok(current);
        };
        self.engine
            .execute_ddl(&mut tx, &purge_tenant_ddl(id))
            .await
            .map_err(TenantError::db("drop tenant schema and role"))?;
        let purged = tenants::set_status(&mut tx, id, next)
            .await
            .map_err(TenantError::db("mark tenant purged"))?;
        let details = json!({ "slug": current.slug, "schema": current.schema_name.as_str(), "reason": reason });
        tx.commit(actor, "tenant.purge", &target(id), &details)
            .await
            .map_err(TenantError::db("commit purge tenant"))?;
        Ok(purged)
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, TenantError> {
        self.pool
            .acquire()
            .await
            .map_err(TenantError::db("acquire catalog connection"))
    }
}

fn target(id: TenantId) -> String {
    format!("tenant:{id}")
}

/// Locks the tenant's row for the rest of the transaction and checks the
/// caller's expected version.
async fn lock(
    conn: &mut PgConnection,
    id: TenantId,
    expected_version: Option<i64>,
) -> Result<Tenant, TenantError> {
    let current = tenants::get_for_update(conn, id)
        .await
        .map_err(TenantError::db("lock tenant"))?
        .ok_or(TenantError::NotFound)?;
    match expected_version {
        Some(expected) if expected != current.version => Err(TenantError::VersionConflict {
            expected,
            actual: current.version,
        }),
        _ => Ok(current),
    }
}

fn transition(
    current: &Tenant,
    action: LifecycleAction,
) -> Result<Option<TenantStatus>, TenantError> {
    current
        .status
        .after(action)
        .map_err(|()| TenantError::InvalidTransition {
            action: action.as_str(),
            status: current.status,
        })
}
