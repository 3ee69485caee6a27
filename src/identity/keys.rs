//! Service keys: `tdk_<id>_<secret>`, with scopes. Only SHA-256 of the secret
//! is stored; the plain key is shown once, when it is made. Every replica
//! keeps the active keys in memory (refreshed from the catalog), so checking a
//! caller costs one hash and a map look-up.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use subtle::ConstantTimeEq;

use crate::domain::identity::Scope;

const PREFIX: &str = "tdk_";

/// An authenticated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl ServiceKey {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || scope.implied_by().is_some_and(|s| self.scopes.contains(&s))
    }
}

fn split(plain: &str) -> Option<(&str, &str)> {
    let rest = plain.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && !secret.is_empty()).then_some((id, secret))
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh plain key: `tdk_` + 12 hex digits of id + `_` + 256 random bits.
pub fn generate() -> String {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    format!(
        "{PREFIX}{}_{}",
        hex::encode(id),
        URL_SAFE_NO_PAD.encode(secret)
    )
}

/// Whether `plain` has the shape of a service key.
pub fn is_well_formed(plain: &str) -> bool {
    split(plain).is_some()
}

/// Stores the hash of `plain` under its id unless that id exists already;
/// returns the key as stored.
pub async fn ensure(
    conn: &mut PgConnection,
    plain: &str,
    name: &str,
    scopes: &[Scope],
) -> Result<Option<ServiceKey>, sqlx::Error> {
    let Some((id, secret)) = split(plain) else {
        return Ok(None);
    };
    let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    crate::catalog::identity::insert_service_key(
        conn,
        id,
        name,
        hash(secret).as_slice(),
        &scope_names,
    )
    .await?;
    Ok(Some(ServiceKey {
        id: id.to_owned(),
        name: name.to_owned(),
        scopes: scopes.to_vec(),
    }))
}

/// Makes a key and stores its hash; returns the plain key (shown once).
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    scopes: &[Scope],
) -> Result<(String, ServiceKey), sqlx::Error> {
    let plain = generate();
    let key = ensure(conn, &plain, name, scopes)
        .await?
        .expect("a generated key is well formed");
    Ok((plain, key))
}

/// id → (SHA-256 of the secret, key).
type KeyMap = HashMap<String, ([u8; 32], ServiceKey)>;

/// The active keys, in memory.
#[derive(Clone, Default)]
pub struct KeyCache {
    /// id → (secret hash, key). Replaced whole on refresh.
    keys: Arc<RwLock<KeyMap>>,
}

impl KeyCache {
    /// The key a caller presented, if it is one of ours and not revoked.
    pub fn verify(&self, plain: &str) -> Option<ServiceKey> {
        let (id, secret) = split(plain)?;
        let keys = self.keys.read().ok()?;
        let (stored, key) = keys.get(id)?;
        bool::from(stored.ct_eq(&hash(secret))).then(|| key.clone())
    }

    pub fn insert(&self, key: ServiceKey, plain: &str) {
        if let (Some((_, secret)), Ok(mut keys)) = (split(plain), self.keys.write()) {
            keys.insert(key.id.clone(), (hash(secret), key));
        }
    }

    /// Reloads every active key from the catalog.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows =
            crate::catalog::identity::active_service_keys(&mut *pool.acquire().await?).await?;
        let mut fresh = HashMap::with_capacity(rows.len());
        for (id, name, secret_hash, scopes) in rows {
            let Ok(stored) = <[u8; 32]>::try_from(secret_hash.as_slice()) else {
                continue;
            };
            let scopes = scopes.iter().filter_map(|s| s.parse().ok()).collect();
            fresh.insert(id.clone(), (stored, ServiceKey { id, name, scopes }));
        }
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_with_their_secret() {
        let cache = KeyCache::default();
        let key = ServiceKey {
            id: "0123456789ab".into(),
            name: "onboarding".into(),
            scopes: vec![Scope::TenantsWrite],
        };
        let plain = "tdk_0123456789ab_s3cr3t";
        cache.insert(key.clone(), plain);
        assert_eq!(cache.verify(plain), Some(key.clone()));
        assert_eq!(cache.verify("tdk_0123456789ab_wrong"), None);
        assert_eq!(cache.verify("tdk_ba9876543210_s3cr3t"), None);
        assert_eq!(cache.verify("Bearer nonsense"), None);
        assert!(key.has(Scope::TenantsRead), "write implies read");
        assert!(!key.has(Scope::IdentityAdmin));
    }
}
