//! Service-wide secrets generated once and kept in the catalog, so every
//! replica derives the same values without extra configuration.

use anyhow::Context;
use rand::RngCore;
use sqlx::PgPool;

/// The key from which each tenant role's password is derived (HMAC of the
/// tenant id), so that no tenant password is ever stored. Created by the first
/// process that asks; every later one reads the same value.
pub async fn role_secret(pool: &PgPool) -> anyhow::Result<Vec<u8>> {
    let mut fresh = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    sqlx::query("INSERT INTO tenantd.settings (key, value) VALUES ('tenant_role_secret', $1) ON CONFLICT (key) DO NOTHING")
        .bind(&fresh)
        .execute(pool)
        .await
        .context("store the tenant role secret")?;
    let (secret,): (Vec<u8>,) =
        sqlx::query_as("SELECT value FROM tenantd.settings WHERE key = 'tenant_role_secret'")
            .fetch_one(pool)
            .await
            .context("read the tenant role secret")?;
    Ok(secret)
}
