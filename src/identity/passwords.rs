//! Password hashing with argon2id at OWASP's parameters (19 MiB, 2 passes,
//! 1 lane), on blocking threads and under a semaphore so that a burst of
//! logins cannot take every core or unbounded memory. Hashes are PHC strings;
//! passwords are never logged or stored.

use std::sync::Arc;

use argon2::password_hash::{
    PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Hasher {
    /// Bounds concurrent hashes: each takes ~19 MiB and a core for tens of ms.
    permits: Arc<Semaphore>,
    /// Verified against when a login names no known user, so both cases cost the same.
    dummy: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Hasher {
    pub fn new(concurrency: usize) -> Self {
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon2()
            .hash_password(b"tenantd dummy password for unknown users", &salt)
            .expect("hashing a constant succeeds")
            .to_string();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: dummy.into(),
        }
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hash password: {e}"))
        })
        .await?
    }

    /// Checks `password` against `hash`; with no hash (unknown user) checks a
    /// dummy so the answer takes as long and is always false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let known = hash.is_some();
        let hash = hash
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy.to_string());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(known && ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let h = Hasher::new(2);
        let hash = h.hash("correct horse battery staple").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            h.verify("correct horse battery staple", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("wrong horse battery staple", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("correct horse battery staple", None)
                .await
                .unwrap()
        );
    }
}
