//! The catalog's record of the tenant migrations this build ships
//! (`tenantd.tenant_migrations`), which every replica checks its own set
//! against at start.

use sqlx::PgConnection;

/// Transaction-scoped advisory lock key under which replicas register their
/// tenant migrations one at a time ("tenmig" in ASCII).
const REGISTER_LOCK_KEY: i64 = 0x7465_6e6d_6967;

/// Waits until no other replica is registering migrations; held until the
/// caller's transaction ends.
pub async fn lock_registration(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REGISTER_LOCK_KEY)
        .execute(conn)
        .await?;
    Ok(())
}

/// A registered migration: version, name, checksum.
pub type Registered = (i64, String, Vec<u8>);

/// Every registered migration, oldest first.
pub async fn registered(conn: &mut PgConnection) -> Result<Vec<Registered>, sqlx::Error> {
    sqlx::query_as("SELECT version, name, checksum FROM tenantd.tenant_migrations ORDER BY version")
        .fetch_all(conn)
        .await
}

/// Registers a migration unless its version is registered already.
pub async fn register(
    conn: &mut PgConnection,
    version: i64,
    name: &str,
    checksum: &[u8],
    transactional: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenantd.tenant_migrations (version, name, checksum, transactional) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(name)
    .bind(checksum)
    .bind(transactional)
    .execute(conn)
    .await?;
    Ok(())
}
