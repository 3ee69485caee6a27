//! Service-wide secrets generated once and kept in the catalog, so every
//! replica derives the same values without extra configuration.

use anyhow::Context;
use rand::RngCore;
use sqlx::PgPool;

/// The value of the secret `key`; the first process that asks creates it (32
/// random bytes) and every later one reads the same value.
async fn secret(pool: &PgPool, key: &str) -> anyhow::Result<Vec<u8>> {
    let mut fresh = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    sqlx::query(
        "INSERT INTO tenantd.settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(&fresh)
    .execute(pool)
    .await
    .with_context(|| format!("store the {key}"))?;
    sqlx::query_scalar("SELECT value FROM tenantd.settings WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .with_context(|| format!("read the {key}"))
}

/// The key from which each tenant role's password is derived (HMAC of the
/// tenant id), so that no tenant password is ever stored.
pub async fn role_secret(pool: &PgPool) -> anyhow::Result<Vec<u8>> {
    secret(pool, "tenant_role_secret").await
}

/// The HS256 key of access tokens, shared by every replica.
pub async fn token_signing_key(pool: &PgPool) -> anyhow::Result<Vec<u8>> {
    secret(pool, "token_signing_key").await
}
