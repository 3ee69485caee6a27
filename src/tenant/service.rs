//! The tenant lifecycle: create, read, list, update, suspend, resume, archive
//! and purge. Every change is one catalog transaction that also carries the
//! DDL it needs and its audit event, so it commits whole or not at all.

use std::sync::Arc;

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    TenantMigrations, create_tenant_ddl, purge_tenant_ddl, purge_tenant_ddl_if_exists,
    role_login_ddl, role_verifier,
};
use crate::catalog::clusters as registry;
use crate::catalog::{self, DbFailure, Engine, audit::Audited, tenants};
use crate::clusters::{Cluster, ClusterError, Clusters, sweeper};
use crate::domain::{
    ClusterName, ClusterState, LifecycleAction, NewTenant, Tenant, TenantId, TenantPatch,
    TenantStatus,
};

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
    #[error("cluster {0:?} is not registered")]
    UnknownCluster(String),
    #[error("cannot place a tenant on cluster {name:?}: {why}")]
    ClusterRefused { name: String, why: String },
    #[error("no open cluster has room for another tenant (see ListClusters)")]
    NoClusterRoom,
    #[error("the tenant is being moved (move {0}): cancel the move or wait for its end")]
    Moving(Uuid),
    #[error(transparent)]
    Cluster(ClusterError),
    #[error(transparent)]
    Db(#[from] DbFailure),
}

impl From<ClusterError> for TenantError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NotFound(name) => TenantError::UnknownCluster(name),
            ClusterError::Db(failure) => TenantError::Db(failure),
            other => TenantError::Cluster(other),
        }
    }
}

impl TenantError {
    fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> TenantError {
        DbFailure::of(context)
    }
}

/// The tenant lifecycle over the catalog pool and the clusters.
#[derive(Clone)]
pub struct Tenants {
    pool: PgPool,
    clusters: Clusters,
    migrations: Arc<TenantMigrations>,
    /// Key of the per-tenant role passwords; see [`super::role_password`].
    role_secret: Arc<[u8]>,
    /// The catalog database's: plain PostgreSQL, or a Citus coordinator
    /// (each tenant schema a distributed schema).
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
        clusters: Clusters,
        migrations: Arc<TenantMigrations>,
        role_secret: Vec<u8>,
    ) -> Self {
        Self {
            pool: clusters.catalog().clone(),
            engine: clusters.default_cluster().engine,
            clusters,
            migrations,
            role_secret: role_secret.into(),
        }
    }

    pub fn migrations(&self) -> &TenantMigrations {
        &self.migrations
    }

    /// Creates a tenant: catalog row, owner membership, role, schema, every
    /// tenant migration, ledger and audit event in one transaction. Returns
    /// the tenant and whether this call created it (false: an idempotent
    /// replay of an earlier request with the same key).
    ///
    /// On a cluster other than `default` the role and schema are made in a
    /// transaction of that cluster, committed while the catalog's is still
    /// open (holding the tenant's lock), after an intent committed on its
    /// own; the catalog's commit removes the intent. A create that dies
    /// between the two leaves the intent, and the sweeper drops what it
    /// made (see [`crate::clusters::sweep_intents`]).
    pub async fn create(&self, new: NewTenant, actor: &str) -> Result<(Tenant, bool), TenantError> {
        let id = TenantId::new();
        let verifier = role_verifier(&self.role_secret, id);
        let ddl = create_tenant_ddl(id, &verifier, &self.migrations);

        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(TenantError::db("begin create tenant"))?;
        let cluster = self.place(&mut tx, new.cluster.as_ref()).await?;
        let inserted = tenants::insert(&mut tx, id, &new, self.migrations.latest(), &cluster)
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
        if cluster.is_default() {
            provision(self.engine, &mut tx, &ddl)
                .await
                .map_err(TenantError::db("create tenant schema"))?;
        } else if let Err(e) = self.provision_elsewhere(&mut tx, id, &cluster, &ddl).await {
            // Whatever the cluster did (a failed commit may still have
            // committed) is undone once the rollback has let the lock go.
            let _ = tx.rollback().await;
            if let Err(sweep) = sweeper::sweep_one(&self.clusters, id, &cluster).await {
                tracing::warn!(tenant_id = %id, %cluster, error = %format!("{sweep:#}"),
                    "cannot undo a failed create on its cluster yet; the sweeper will");
            }
            return Err(e);
        }
        let details = json!({
            "slug": tenant.slug,
            "name": tenant.name,
            "schema": tenant.schema_name.as_str(),
            "schema_version": tenant.schema_version,
            "owner_user_id": new.owner_user_id,
            "cluster": cluster.as_str(),
        });
        tx.commit(actor, "tenant.create", &target(id), &details)
            .await
            .map_err(TenantError::db("commit create tenant"))?;
        Ok((tenant, true))
    }

    /// Makes tenant `id`'s role and schema on `cluster` (not `default`),
    /// inside the open catalog transaction `tx`, which then only has to
    /// commit.
    async fn provision_elsewhere(
        &self,
        tx: &mut Audited,
        id: TenantId,
        cluster: &ClusterName,
        ddl: &str,
    ) -> Result<(), TenantError> {
        // The sweeper leaves the intent alone while this is held.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::fleet::apply::lock_key(id))
            .execute(&mut **tx)
            .await
            .map_err(TenantError::db("take the tenant's lock"))?;
        let target = self.clusters.get(cluster).await?;
        registry::add_intent(&self.pool, id, cluster)
            .await
            .map_err(TenantError::db("record the create's intent"))?;
        crate::crash::point("create.after_intent");
        let made = async {
            let mut remote = target.admin.begin().await?;
            provision(target.engine, &mut remote, ddl).await?;
            remote.commit().await
        }
        .await;
        made.map_err(TenantError::db("create tenant schema on its cluster"))?;
        crate::crash::point("create.after_cluster_ddl");
        registry::remove_intent(&mut **tx, id)
            .await
            .map_err(TenantError::db("clear the create's intent"))?;
        Ok(())
    }

    /// Picks the cluster for a new tenant inside its create transaction:
    /// the one asked for, or the open cluster with the fewest tenants per
    /// unit of weight; never one past a cap. Its row stays locked until the
    /// create ends: shared (no state change or removal meanwhile), or, on a
    /// cluster with a tenant cap, exclusive, so two creates cannot both
    /// take its last place.
    async fn place(
        &self,
        tx: &mut Audited,
        asked: Option<&ClusterName>,
    ) -> Result<ClusterName, TenantError> {
        let over_relations = self.clusters.over_relation_cap();
        if let Some(name) = asked {
            let candidates = registry::candidates(tx)
                .await
                .map_err(TenantError::db("read the open clusters"))?;
            let capped = candidates
                .iter()
                .find(|c| &c.name == name)
                .is_some_and(|c| c.limits.max_tenants.is_some());
            return match self.claim(tx, name, capped, &over_relations).await? {
                Ok(()) => Ok(name.clone()),
                Err(why) => Err(why),
            };
        }
        let candidates = registry::candidates(tx)
            .await
            .map_err(TenantError::db("read the open clusters"))?;
        for c in candidates {
            if c.limits.max_tenants.is_some_and(|cap| c.tenants >= cap) {
                continue;
            }
            let capped = c.limits.max_tenants.is_some();
            if self
                .claim(tx, &c.name, capped, &over_relations)
                .await?
                .is_ok()
            {
                return Ok(c.name);
            }
        }
        Err(TenantError::NoClusterRoom)
    }

    /// Locks cluster `name` for a placement and checks, under the lock,
    /// that it is open and short of its caps. The inner error says why not.
    async fn claim(
        &self,
        tx: &mut Audited,
        name: &ClusterName,
        exclusive: bool,
        over_relations: &std::collections::HashSet<ClusterName>,
    ) -> Result<Result<(), TenantError>, TenantError> {
        let refused = |why: String| {
            Ok(Err(TenantError::ClusterRefused {
                name: name.to_string(),
                why,
            }))
        };
        let Some((state, limits)) = registry::lock(tx, name, exclusive)
            .await
            .map_err(TenantError::db("lock the cluster"))?
        else {
            return Ok(Err(TenantError::UnknownCluster(name.to_string())));
        };
        if state != ClusterState::Open {
            return refused(format!("it is {state}"));
        }
        if let Some(cap) = limits.max_tenants {
            let tenants = registry::tenants_on(tx, name)
                .await
                .map_err(TenantError::db("count the cluster's tenants"))?;
            if tenants >= cap {
                return refused(format!(
                    "it holds {tenants} tenants, its max_tenants is {cap}"
                ));
            }
        }
        if over_relations.contains(name) {
            return refused("its database holds max_relations relations or more".into());
        }
        Ok(Ok(()))
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
    pub async fn node_of(&self, tenant: &Tenant) -> Result<Option<String>, TenantError> {
        let id = tenant.id;
        if self.engine != Engine::Citus || !tenant.placement.is_default() {
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
        let login = role_login_ddl(id, next == TenantStatus::Active);
        let cluster = self.clusters.get(&current.placement).await?;
        if current.placement.is_default() {
            self.engine
                .execute_ddl(&mut tx, &login)
                .await
                .map_err(TenantError::db("change the tenant role's login"))?;
        } else {
            // On its cluster, before the catalog commits: a tenant the
            // catalog calls suspended never has a role that logs in.
            run_ddl(&cluster, &login).await.map_err(TenantError::db(
                "change the tenant role's login on its cluster",
            ))?;
        }
        let details =
            json!({ "from": current.status.as_str(), "to": next.as_str(), "reason": reason });
        let committed = tx
            .commit(
                actor,
                &format!("tenant.{}", action.as_str()),
                &target(id),
                &details,
            )
            .await
            .map_err(TenantError::db("commit tenant status change"));
        if let Err(e) = committed {
            if !current.placement.is_default() {
                self.restore_login(&cluster, &current).await;
            }
            return Err(e);
        }
        if next != TenantStatus::Active {
            // Sessions already logged in end too (needs a superuser or
            // pg_signal_backend; otherwise they end with their pools).
            if let Err(e) = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = $1 AND datname = current_database()",
            )
            .bind(id.role_name().as_str())
            .execute(&cluster.admin)
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
        // A move copies the schema this would drop (and, after its switch,
        // drops the source itself).
        if let Some(moving) = crate::catalog::moves::active_for(&mut *tx, id)
            .await
            .map_err(TenantError::db("look for a move of the tenant"))?
        {
            return Err(TenantError::Moving(moving));
        }
        if current.placement.is_default() {
            self.engine
                .execute_ddl(&mut tx, &purge_tenant_ddl(id))
                .await
                .map_err(TenantError::db("drop tenant schema and role"))?;
        } else {
            // On its cluster first, in a form that may run again: should
            // the catalog's commit fail, the tenant stays ARCHIVED and a
            // second purge finishes.
            let cluster = self.clusters.get(&current.placement).await?;
            run_ddl(&cluster, &purge_tenant_ddl_if_exists(id))
                .await
                .map_err(TenantError::db(
                    "drop tenant schema and role on its cluster",
                ))?;
        }
        let purged = tenants::set_status(&mut tx, id, next)
            .await
            .map_err(TenantError::db("mark tenant purged"))?;
        let details = json!({ "slug": current.slug, "schema": current.schema_name.as_str(), "reason": reason });
        tx.commit(actor, "tenant.purge", &target(id), &details)
            .await
            .map_err(TenantError::db("commit purge tenant"))?;
        Ok(purged)
    }

    /// After a status change whose catalog commit failed: the role's login
    /// on its cluster as the catalog has it, when the catalog still has the
    /// tenant's old status (a commit whose answer was lost may have gone
    /// through).
    async fn restore_login(&self, cluster: &Cluster, before: &Tenant) {
        let still = tenants::status_of(&self.pool, before.id).await;
        if let Ok(Some((status, _))) = still
            && status == before.status
        {
            let login = role_login_ddl(before.id, status == TenantStatus::Active);
            if let Err(e) = run_ddl(cluster, &login).await {
                tracing::warn!(tenant_id = %before.id, cluster = %cluster.name, error = %e,
                    "cannot restore the tenant role's login after a failed status change");
            }
        }
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, TenantError> {
        self.pool
            .acquire()
            .await
            .map_err(TenantError::db("acquire catalog connection"))
    }
}

/// Runs tenant DDL in one transaction: on a Citus coordinator the schema
/// becomes a distributed schema (and every table in it), placed on a
/// worker, whatever the database's default.
async fn provision(
    engine: Engine,
    conn: &mut sqlx::PgConnection,
    ddl: &str,
) -> Result<(), sqlx::Error> {
    if engine == Engine::Citus {
        catalog::execute_batch(conn, "SET LOCAL citus.enable_schema_based_sharding = on").await?;
    }
    engine.execute_ddl(conn, ddl).await
}

/// Runs DDL on a cluster's own connection, committed on its own.
async fn run_ddl(cluster: &Cluster, ddl: &str) -> Result<(), sqlx::Error> {
    let mut conn = cluster.admin.acquire().await?;
    cluster.engine.execute_ddl(&mut conn, ddl).await
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
