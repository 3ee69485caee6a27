//! The identity service: its errors, settings and caches. Its operations
//! live by concern in `users`, `memberships` and `sessions`. Each state change
//! is one transaction with its audit event; reads of tokens and keys are
//! answered from memory.
//!
//! Authority over a tenant is read from the catalog whenever it matters:
//! membership changes check the acting user's current role, in the change's
//! transaction, against the role ceiling; a token's role is trusted only
//! until its membership or its tenant's status changes (see `revocations`).
//! Every membership change of a tenant holds the tenant's row lock, and
//! every token naming a role is issued under a share lock of that row, so
//! the two are ordered.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::keys::KeyCache;
use super::passwords::Hasher;
use super::revocations::{REFRESH_INTERVAL, Revocations};
use super::tokens::Tokens;
use crate::catalog::{DbFailure, audit};
use crate::domain::ValidationError;
use crate::domain::identity::Role;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("user is at version {actual}, not the expected {expected}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("the last OWNER of a tenant can be neither removed nor demoted")]
    LastOwner,
    /// The acting user's role does not allow it; says why.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Precondition(String),
    /// Unknown user, wrong password, deactivated user: one answer for all.
    #[error("invalid credentials")]
    BadCredentials,
    #[error("invalid or expired token")]
    BadToken,
    #[error("too many attempts; try again later")]
    RateLimited,
    #[error(transparent)]
    Db(#[from] DbFailure),
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

pub(super) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> IdentityError {
    DbFailure::of(context)
}

pub(super) fn internal(context: &'static str) -> impl FnOnce(anyhow::Error) -> IdentityError {
    move |source| IdentityError::Internal { context, source }
}

/// Lifetimes and limits.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Concurrent password hashes.
    pub hash_concurrency: usize,
    /// Login attempts per minute per account and per client address.
    pub logins_per_minute_account: u32,
    pub logins_per_minute_address: u32,
    /// The key access tokens are signed with, from a file the operator
    /// manages; `None`: the key generated once and kept in the catalog.
    pub signing_key: Option<SigningKey>,
}

/// Key material that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes)", self.0.len())
    }
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            hash_concurrency: 2,
            logins_per_minute_account: 10,
            logins_per_minute_address: 60,
            signing_key: None,
        }
    }
}

/// A validated access token that is not revoked.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The tenant the token is bound to, if any.
    pub tenant_id: Option<Uuid>,
    /// The user's role in that tenant, when it is known to be current: as
    /// the token names it until the membership or the tenant's status
    /// changes (then `None`, and the catalog decides), or as just read.
    pub role: Option<Role>,
    pub expires_at: DateTime<Utc>,
}

/// Users, memberships and sessions over the catalog pool.
#[derive(Clone)]
pub struct Identity {
    pub(super) pool: PgPool,
    pub(super) hasher: Hasher,
    pub(super) tokens: Tokens,
    pub keys: KeyCache,
    pub(super) revocations: Revocations,
    pub(super) settings: IdentitySettings,
    /// Login attempts per account (lower-cased identifier) and per address.
    pub(super) by_account: Arc<DefaultKeyedRateLimiter<String>>,
    pub(super) by_address: Arc<DefaultKeyedRateLimiter<String>>,
}

pub(super) fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(super) fn new_refresh_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("tdr_{}", URL_SAFE_NO_PAD.encode(b))
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl Identity {
    /// `signing_key` comes from the catalog so every replica shares it.
    pub fn new(pool: PgPool, signing_key: &[u8], settings: IdentitySettings) -> Self {
        Self {
            hasher: Hasher::new(settings.hash_concurrency),
            tokens: Tokens::new(signing_key, settings.access_ttl),
            keys: KeyCache::default(),
            revocations: Revocations::default(),
            by_account: Arc::new(RateLimiter::keyed(per_minute(
                settings.logins_per_minute_account,
            ))),
            by_address: Arc::new(RateLimiter::keyed(per_minute(
                settings.logins_per_minute_address,
            ))),
            pool,
            settings,
        }
    }

    /// Reloads service keys and revoked sessions; call every few seconds.
    pub async fn refresh_caches(&self) -> Result<(), sqlx::Error> {
        self.keys.refresh(&self.pool).await?;
        self.revocations
            .refresh(
                &self.pool,
                self.settings.access_ttl + Duration::from_secs(60),
            )
            .await?;
        self.by_account.retain_recent();
        self.by_address.retain_recent();
        Ok(())
    }

    /// Keeps the caches fresh until `stop`.
    pub async fn refresh_loop(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            if let Err(e) = self.refresh_caches().await {
                tracing::warn!(error = %e, "could not refresh identity caches");
            }
        }
    }

    pub async fn verify_audit(&self) -> Result<audit::Verification, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        audit::verify(&mut c)
            .await
            .map_err(internal("verify the audit chain"))
    }
}
