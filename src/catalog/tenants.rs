//! The `tenantd.tenants` table. Each function runs one statement on the
//! caller's connection; transactions and checks belong to the caller.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{ClusterName, NewTenant, Tenant, TenantId, TenantPatch, TenantStatus};

const COLUMNS: &str = "id, slug, name, industry, description, country, status, schema_name, \
                       schema_version, version, created_at, updated_at, placement";

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    slug: String,
    name: String,
    industry: String,
    description: String,
    country: Option<String>,
    status: String,
    #[allow(dead_code)]
    schema_name: String,
    schema_version: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    placement: String,
}

impl TryFrom<Row> for Tenant {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<Self, Self::Error> {
        let status: TenantStatus = super::decode(&r.status)?;
        let id = TenantId::from_uuid(r.id);
        Ok(Tenant {
            id,
            slug: r.slug,
            name: r.name,
            industry: r.industry,
            description: r.description,
            country: r.country,
            status,
            schema_name: id.schema_name(),
            schema_version: r.schema_version,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            placement: ClusterName::from_catalog(r.placement),
        })
    }
}

fn convert(row: Option<Row>) -> Result<Option<Tenant>, sqlx::Error> {
    row.map(Tenant::try_from).transpose()
}

/// Inserts an ACTIVE tenant at `schema_version`, placed on `cluster`.
/// `None` when the slug (among tenants not purged) or the idempotency key
/// is already taken.
pub async fn insert(
    conn: &mut PgConnection,
    id: TenantId,
    new: &NewTenant,
    schema_version: i64,
    cluster: &ClusterName,
) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO tenantd.tenants (id, slug, name, industry, description, country, status, \
                                      schema_name, schema_version, idempotency_key, placement) \
         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10) \
         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    );
    let row = sqlx::query_as::<_, Row>(&sql)
        .bind(id.as_uuid())
        .bind(new.slug.as_str())
        .bind(new.name.as_str())
        .bind(new.industry.as_str())
        .bind(new.description.as_str())
        .bind(new.country.map(|c| c.as_str().to_owned()))
        .bind(id.schema_name().as_str())
        .bind(schema_version)
        .bind(new.idempotency_key.as_deref())
        .bind(cluster.as_str())
        .fetch_optional(conn)
        .await?;
    convert(row)
}

pub async fn get(conn: &mut PgConnection, id: TenantId) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenantd.tenants WHERE id = $1");
    convert(
        sqlx::query_as(&sql)
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await?,
    )
}

/// Locks the row until the caller's transaction ends.
pub async fn get_for_update(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenantd.tenants WHERE id = $1 FOR UPDATE");
    convert(
        sqlx::query_as(&sql)
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await?,
    )
}

/// The live tenant with this slug, or else the most recent purged one.
pub async fn get_by_slug(
    conn: &mut PgConnection,
    slug: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenantd.tenants WHERE slug = $1 \
         ORDER BY status = 'purged', id DESC LIMIT 1"
    );
    convert(sqlx::query_as(&sql).bind(slug).fetch_optional(conn).await?)
}

pub async fn get_by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenantd.tenants WHERE idempotency_key = $1");
    convert(sqlx::query_as(&sql).bind(key).fetch_optional(conn).await?)
}

/// One page in id (= creation) order after `after`. Without a status filter
/// purged tombstones are left out.
pub async fn list(
    conn: &mut PgConnection,
    status: Option<TenantStatus>,
    after: Option<TenantId>,
    limit: i64,
) -> Result<Vec<Tenant>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenantd.tenants \
         WHERE (CASE WHEN $1::text IS NULL THEN status <> 'purged' ELSE status = $1 END) \
           AND ($2::uuid IS NULL OR id > $2) \
         ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(status.map(TenantStatus::as_str))
        .bind(after.map(|a| *a.as_uuid()))
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Tenant::try_from).collect()
}

/// Applies a patch and bumps the row version.
pub async fn update(
    conn: &mut PgConnection,
    id: TenantId,
    patch: &TenantPatch,
) -> Result<Tenant, sqlx::Error> {
    let sql = format!(
        "UPDATE tenantd.tenants SET \
             name = COALESCE($2, name), \
             industry = COALESCE($3, industry), \
             description = COALESCE($4, description), \
             country = CASE WHEN $5 THEN $6 ELSE country END, \
             version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(&sql)
        .bind(id.as_uuid())
        .bind(patch.name.as_ref().map(|n| n.as_str()))
        .bind(patch.industry.as_ref().map(|t| t.as_str()))
        .bind(patch.description.as_ref().map(|t| t.as_str()))
        .bind(patch.country.is_some())
        .bind(patch.country.flatten().map(|c| c.as_str().to_owned()))
        .fetch_one(conn)
        .await?;
    row.try_into()
}

/// Moves a tenant to `status` and bumps the row version. `status_changed_at`
/// is the clock when the row is written, not when the transaction began: an
/// access token issued under a share lock of the row before then is older.
pub async fn set_status(
    conn: &mut PgConnection,
    id: TenantId,
    status: TenantStatus,
) -> Result<Tenant, sqlx::Error> {
    let sql = format!(
        "UPDATE tenantd.tenants SET status = $2, version = version + 1, updated_at = now(), \
             status_changed_at = clock_timestamp(), \
             purged_at = CASE WHEN $2 = 'purged' THEN now() ELSE purged_at END \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(&sql)
        .bind(id.as_uuid())
        .bind(status.as_str())
        .fetch_one(conn)
        .await?;
    row.try_into()
}

/// When the tenant's status last changed, if it ever did.
pub async fn status_changed_at(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT status_changed_at FROM tenantd.tenants WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await
        .map(Option::flatten)
}

/// Makes `user_id` an OWNER of the tenant; false when no active user has that id.
pub async fn add_owner(
    conn: &mut PgConnection,
    tenant: TenantId,
    user_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO tenantd.user_tenants (tenant_id, user_id, role) \
         SELECT $1, id, 'OWNER' FROM tenantd.users WHERE id = $2 AND status = 'active'",
    )
    .bind(tenant.as_uuid())
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The tenant's status and cluster; `None` when there is no such tenant.
pub async fn status_of(
    db: impl sqlx::PgExecutor<'_>,
    id: TenantId,
) -> Result<Option<(TenantStatus, ClusterName)>, sqlx::Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT status, placement FROM tenantd.tenants WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(db)
            .await?;
    row.map(|(s, c)| Ok((super::decode(&s)?, ClusterName::from_catalog(c))))
        .transpose()
}

/// The database's clock now.
pub async fn now(db: impl sqlx::PgExecutor<'_>) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(db).await
}

/// Tenants not ACTIVE whose row changed since `since`, with 30 s of slack
/// for transactions that committed late.
pub async fn left_active_since(
    db: impl sqlx::PgExecutor<'_>,
    since: DateTime<Utc>,
) -> Result<Vec<TenantId>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM tenantd.tenants \
         WHERE updated_at >= $1 - interval '30 seconds' AND status <> 'active'",
    )
    .bind(since)
    .fetch_all(db)
    .await?;
    Ok(ids.into_iter().map(TenantId::from_uuid).collect())
}

/// Every tenant that has a schema (active, suspended, archived): id, slug,
/// schema and cluster, for sampling their sizes.
pub async fn placed(
    db: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<(Uuid, String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, slug, schema_name, placement FROM tenantd.tenants \
         WHERE status IN ('active', 'suspended', 'archived')",
    )
    .fetch_all(db)
    .await
}

/// How many tenants there are in each (status, schema version), purged
/// left out.
pub async fn census(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, schema_version, count(*) FROM tenantd.tenants \
         WHERE status <> 'purged' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(db)
    .await
}
