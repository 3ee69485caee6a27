//! The global catalog: tenants, users, memberships, sessions, the tenant
//! migration catalog and the audit chain, in the `tenantd` schema, through
//! sqlx. Functions here take a connection or transaction from the caller, so
//! a caller composes several of them into one transaction.

pub mod audit;
pub mod clusters;
pub(crate) mod error;
pub mod events;
pub(crate) mod identity;
pub(crate) mod metrics;
pub mod moves;
pub mod privileges;
pub mod settings;
pub(crate) mod tenant_migrations;
pub(crate) mod tenants;
pub(crate) mod upgrade_batches;
pub(crate) mod upgrades;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

pub(crate) use error::decode;
pub use error::{DbErrorKind, DbFailure, classify};

/// The schema that holds the catalog. Never on a tenant's search path.
pub const CATALOG_SCHEMA: &str = "tenantd";

/// Serializes catalog migrations between tenantd processes starting at once.
/// The value is arbitrary but fixed: "tenantd" in ASCII.
const MIGRATE_LOCK_KEY: i64 = 0x0074_656e_616e_7464;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./global_sql");

/// Runs a multi-statement batch in one round trip (simple query protocol).
/// The text must not contain user input: it cannot take bind parameters.
pub async fn execute_batch(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    conn.execute(sqlx::raw_sql(sql)).await.map(drop)
}

/// What runs the database: plain PostgreSQL, or a Citus coordinator (the
/// extension installed in the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Postgres,
    Citus,
}

impl Engine {
    /// Reads it from the database.
    pub async fn detect(pool: &PgPool) -> Result<Engine, sqlx::Error> {
        let citus: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")
                .fetch_one(pool)
                .await?;
        Ok(if citus {
            Engine::Citus
        } else {
            Engine::Postgres
        })
    }

    /// Runs tenant DDL: one round trip on PostgreSQL; on Citus one statement
    /// per message, because Citus sends a propagated DDL statement to the
    /// workers with the text of the whole message it came in, which
    /// PostgreSQL refuses to prepare when that holds several statements.
    pub async fn execute_ddl(self, conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Engine::Postgres => execute_batch(conn, sql).await,
            Engine::Citus => {
                let statements = pg_query::split_with_parser(sql).map_err(|e| {
                    sqlx::Error::Protocol(format!("split tenant DDL into statements: {e}"))
                })?;
                for statement in statements {
                    execute_batch(conn, statement).await?;
                }
                Ok(())
            }
        }
    }
}

/// The catalog's connections: on a Citus coordinator whose database makes
/// every new schema distributed, the catalog's own stays a plain local
/// schema. (On plain PostgreSQL the setting is an inert placeholder.)
fn local_schemas(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("citus.enable_schema_based_sharding", "off")])
}

/// Sizing of the catalog pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// The names of the functions and relations of the `citus` extension: a
/// tenant's data call may use none of them. `any_value` is an aggregate
/// queries use; it reaches nothing.
pub async fn citus_objects(pool: &PgPool) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT DISTINCT coalesce(p.proname::text, c.relname::text), d.classid = 'pg_proc'::regclass \
           FROM pg_depend d \
           LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid \
           LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid \
          WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' \
            AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'citus') \
            AND d.classid IN ('pg_proc'::regclass, 'pg_class'::regclass) \
            AND coalesce(p.proname::text, c.relname::text) IS NOT NULL \
            AND coalesce(p.prokind, 'f') <> 'a'",
    )
    .fetch_all(pool)
    .await?;
    let (functions, relations): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, f)| *f);
    Ok((
        functions.into_iter().map(|(n, _)| n).collect(),
        relations.into_iter().map(|(n, _)| n).collect(),
    ))
}

/// Opens the catalog pool. Connections are retired after a while so that the
/// per-backend catalog caches of a large fleet do not grow without bound.
pub async fn connect(
    options: PgConnectOptions,
    settings: &PoolSettings,
    what: &'static str,
) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout)
        .max_lifetime(Duration::from_secs(30 * 60))
        .idle_timeout(Duration::from_secs(5 * 60))
        // No ping before every checkout: it would add a round trip to each
        // request. A connection broken by a database restart fails its next
        // query, is discarded by the pool, and the request gets UNAVAILABLE.
        .test_before_acquire(false)
        .connect_with(local_schemas(&options))
        .await
        .context(what)
}

/// Creates the catalog schema and applies every pending migration in
/// `global_sql/`, holding a session advisory lock so that several processes
/// starting at once apply them exactly once and all come up.
pub async fn migrate(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&local_schemas(options))
        .await
        .context("connect to the catalog database to migrate it")?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut conn)
        .await
        .context("take the catalog migration lock")?;
    let result = async {
        sqlx::raw_sql(
            "CREATE SCHEMA IF NOT EXISTS tenantd; \
             REVOKE ALL ON SCHEMA tenantd FROM PUBLIC; \
             SET search_path TO tenantd",
        )
        .execute(&mut conn)
        .await
        .context("create the catalog schema")?;
        MIGRATOR
            .run_direct(&mut conn)
            .await
            .context("apply the catalog migrations in global_sql/")
    }
    .await;
    // Closing the session releases the lock even if the unlock is not reached.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK_KEY)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}
