//! The `tenantd.clusters` registry and `tenantd.cluster_intents`. Each
//! function runs one statement on the caller's connection; transactions and
//! checks belong to the caller.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{
    ClusterLimits, ClusterName, ClusterState, NewCluster, PasswordSource, TenantId,
};

/// A registered cluster, with how many tenants (not purged) it holds.
#[derive(Debug, Clone)]
pub struct ClusterRecord {
    pub name: ClusterName,
    /// `None` for `default`, the catalog's own database.
    pub url: Option<String>,
    pub password: PasswordSource,
    pub state: ClusterState,
    pub limits: ClusterLimits,
    pub tenants: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "c.name, c.url, c.password_file, c.password_env, c.state, c.weight, \
     c.max_tenants, c.max_relations, c.connection_budget, c.created_at, c.updated_at, \
     (SELECT count(*) FROM tenantd.tenants t \
       WHERE t.placement = c.name AND t.status <> 'purged') AS tenants";

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    url: Option<String>,
    password_file: Option<String>,
    password_env: Option<String>,
    state: String,
    weight: i32,
    max_tenants: Option<i64>,
    max_relations: Option<i64>,
    connection_budget: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    tenants: i64,
}

impl TryFrom<Row> for ClusterRecord {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<Self, Self::Error> {
        let password = match (r.password_file, r.password_env) {
            (Some(file), _) => PasswordSource::File(file),
            (None, Some(env)) => PasswordSource::Env(env),
            (None, None) => PasswordSource::None,
        };
        Ok(ClusterRecord {
            name: ClusterName::from_catalog(r.name),
            url: r.url,
            password,
            state: super::decode(&r.state)?,
            limits: ClusterLimits {
                weight: r.weight,
                max_tenants: r.max_tenants,
                max_relations: r.max_relations,
                connection_budget: r.connection_budget,
            },
            tenants: r.tenants,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Registers a cluster; `None` when the name is taken.
pub async fn insert(
    conn: &mut PgConnection,
    new: &NewCluster,
) -> Result<Option<ClusterRecord>, sqlx::Error> {
    let (file, env) = match &new.password {
        PasswordSource::None => (None, None),
        PasswordSource::File(f) => (Some(f.as_str()), None),
        PasswordSource::Env(e) => (None, Some(e.as_str())),
    };
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO tenantd.clusters \
             (name, url, password_file, password_env, weight, max_tenants, max_relations, \
              connection_budget) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING name",
    )
    .bind(new.name.as_str())
    .bind(&new.url)
    .bind(file)
    .bind(env)
    .bind(new.limits.weight)
    .bind(new.limits.max_tenants)
    .bind(new.limits.max_relations)
    .bind(new.limits.connection_budget)
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(_) => get(conn, &new.name).await,
        None => Ok(None),
    }
}

pub async fn get(
    conn: &mut PgConnection,
    name: &ClusterName,
) -> Result<Option<ClusterRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenantd.clusters c WHERE c.name = $1");
    sqlx::query_as::<_, Row>(&sql)
        .bind(name.as_str())
        .fetch_optional(conn)
        .await?
        .map(ClusterRecord::try_from)
        .transpose()
}

/// Every cluster, `default` first, then by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<ClusterRecord>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM tenantd.clusters c ORDER BY c.name <> 'default', c.name");
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(conn).await?;
    rows.into_iter().map(ClusterRecord::try_from).collect()
}

/// Changes a cluster's state and limits; `None` when there is none.
pub async fn update(
    conn: &mut PgConnection,
    name: &ClusterName,
    state: ClusterState,
    limits: &ClusterLimits,
) -> Result<Option<ClusterRecord>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tenantd.clusters SET state = $2, weight = $3, max_tenants = $4, \
             max_relations = $5, connection_budget = $6, updated_at = now() WHERE name = $1",
    )
    .bind(name.as_str())
    .bind(state.as_str())
    .bind(limits.weight)
    .bind(limits.max_tenants)
    .bind(limits.max_relations)
    .bind(limits.connection_budget)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(conn, name).await
}

/// Locks a cluster's row: `exclusive` against placements on it (a cap is
/// checked under it), shared against its removal and state changes.
/// Answers its state and limits; `None` when there is no such cluster.
pub async fn lock(
    conn: &mut PgConnection,
    name: &ClusterName,
    exclusive: bool,
) -> Result<Option<(ClusterState, ClusterLimits)>, sqlx::Error> {
    // NO KEY UPDATE, not UPDATE: the foreign key of a create's intent
    // (committed on another connection while the row is held) takes KEY
    // SHARE, which UPDATE would block.
    let mode = if exclusive { "NO KEY UPDATE" } else { "SHARE" };
    #[derive(sqlx::FromRow)]
    struct Locked {
        state: String,
        weight: i32,
        max_tenants: Option<i64>,
        max_relations: Option<i64>,
        connection_budget: Option<i32>,
    }
    let row: Option<Locked> = sqlx::query_as(&format!(
        "SELECT state, weight, max_tenants, max_relations, connection_budget \
           FROM tenantd.clusters WHERE name = $1 FOR {mode}"
    ))
    .bind(name.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok((
            super::decode(&r.state)?,
            ClusterLimits {
                weight: r.weight,
                max_tenants: r.max_tenants,
                max_relations: r.max_relations,
                connection_budget: r.connection_budget,
            },
        ))
    })
    .transpose()
}

/// Tenants (not purged) on a cluster.
pub async fn tenants_on(conn: &mut PgConnection, name: &ClusterName) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.tenants WHERE placement = $1 AND status <> 'purged'",
    )
    .bind(name.as_str())
    .fetch_one(conn)
    .await
}

/// Creates of tenants on a cluster that have not ended (or died half-way).
pub async fn intents_on(conn: &mut PgConnection, name: &ClusterName) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM tenantd.cluster_intents WHERE cluster = $1")
        .bind(name.as_str())
        .fetch_one(conn)
        .await
}

/// A cluster new tenants may land on, as placement weighs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: ClusterName,
    pub limits: ClusterLimits,
    /// Tenants on it; 0 (not counted) when it is the only open cluster and
    /// has no cap, so the common one-cluster create counts nothing.
    pub tenants: i64,
}

/// The open clusters, fewest tenants per unit of weight first.
pub async fn candidates(conn: &mut PgConnection) -> Result<Vec<Candidate>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Open {
        name: String,
        weight: i32,
        max_tenants: Option<i64>,
        max_relations: Option<i64>,
        connection_budget: Option<i32>,
        tenants: i64,
    }
    let rows: Vec<Open> = sqlx::query_as(
        "WITH open AS (SELECT name, weight, max_tenants, max_relations, connection_budget \
                         FROM tenantd.clusters WHERE state = 'open') \
         SELECT * FROM ( \
             SELECT o.name, o.weight, o.max_tenants, o.max_relations, o.connection_budget, \
                    CASE WHEN (SELECT count(*) FROM open) > 1 OR o.max_tenants IS NOT NULL \
                         THEN (SELECT count(*) FROM tenantd.tenants t \
                                WHERE t.placement = o.name AND t.status <> 'purged') \
                         ELSE 0 END AS tenants \
               FROM open o) c \
          ORDER BY c.tenants::float8 / c.weight, c.name",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|o| Candidate {
            name: ClusterName::from_catalog(o.name),
            limits: ClusterLimits {
                weight: o.weight,
                max_tenants: o.max_tenants,
                max_relations: o.max_relations,
                connection_budget: o.connection_budget,
            },
            tenants: o.tenants,
        })
        .collect())
}

/// Removes a cluster; false when there is none.
pub async fn delete(conn: &mut PgConnection, name: &ClusterName) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM tenantd.clusters WHERE name = $1")
        .bind(name.as_str())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A cluster's caps that each replica applies itself: the relation cap
/// placement checks, and the connection budget of its tenant pools.
#[derive(Debug, Clone)]
pub struct Caps {
    pub name: ClusterName,
    pub max_relations: Option<i64>,
    pub connection_budget: Option<i32>,
}

/// The clusters with a relation cap or a connection budget, in one read.
pub async fn caps(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<Caps>, sqlx::Error> {
    let rows: Vec<(String, Option<i64>, Option<i32>)> = sqlx::query_as(
        "SELECT name, max_relations, connection_budget FROM tenantd.clusters \
          WHERE max_relations IS NOT NULL OR connection_budget IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, max_relations, connection_budget)| Caps {
            name: ClusterName::from_catalog(name),
            max_relations,
            connection_budget,
        })
        .collect())
}

/// Each cluster's name and registration time: a name registered again
/// (removed, then added with another URL) has a new time.
pub async fn generations(
    db: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT name, created_at FROM tenantd.clusters")
        .fetch_all(db)
        .await
}

/// Records, committed on its own, that tenant `id` is being made on
/// `cluster`.
pub async fn add_intent(
    db: impl sqlx::PgExecutor<'_>,
    id: TenantId,
    cluster: &ClusterName,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO tenantd.cluster_intents (tenant_id, cluster) VALUES ($1, $2)")
        .bind(id.as_uuid())
        .bind(cluster.as_str())
        .execute(db)
        .await
        .map(drop)
}

pub async fn remove_intent(db: impl sqlx::PgExecutor<'_>, id: TenantId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tenantd.cluster_intents WHERE tenant_id = $1")
        .bind(id.as_uuid())
        .execute(db)
        .await
        .map(drop)
}

pub async fn has_intent(db: impl sqlx::PgExecutor<'_>, id: TenantId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM tenantd.cluster_intents WHERE tenant_id = $1)")
        .bind(id.as_uuid())
        .fetch_one(db)
        .await
}

/// Intents older than `min_age_ms`, oldest first, with whether their
/// tenant's catalog row exists.
pub async fn intents(
    db: impl sqlx::PgExecutor<'_>,
    min_age_ms: i64,
) -> Result<Vec<(TenantId, ClusterName, bool)>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, String, bool)> = sqlx::query_as(
        "SELECT i.tenant_id, i.cluster, \
                EXISTS (SELECT FROM tenantd.tenants t WHERE t.id = i.tenant_id) \
           FROM tenantd.cluster_intents i \
          WHERE i.created_at < now() - make_interval(secs => $1 / 1000.0) \
          ORDER BY i.created_at",
    )
    .bind(min_age_ms)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, c, exists)| {
            (
                TenantId::from_uuid(id),
                ClusterName::from_catalog(c),
                exists,
            )
        })
        .collect())
}
