//! Sessions ended before their access tokens expire. Every replica keeps the
//! ids of sessions revoked within the access-token lifetime in memory,
//! reloaded from the catalog every few seconds; a revocation made here is
//! added at once. So ValidateToken needs no database round trip, and a
//! revocation anywhere takes effect everywhere within the refresh interval.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// How often the cache is reloaded: the bound on how long a revoked session's
/// access tokens keep validating on another replica.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Revocations {
    sessions: Arc<RwLock<HashSet<Uuid>>>,
}

impl Revocations {
    pub fn is_revoked(&self, session: &Uuid) -> bool {
        self.sessions
            .read()
            .map(|s| s.contains(session))
            .unwrap_or(true)
    }

    pub fn add(&self, sessions: impl IntoIterator<Item = Uuid>) {
        if let Ok(mut s) = self.sessions.write() {
            s.extend(sessions);
        }
    }

    /// Reloads the sessions revoked within `window` (the access-token
    /// lifetime plus leeway): older ones have no live token left.
    pub async fn refresh(&self, pool: &PgPool, window: Duration) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tenantd.sessions WHERE revoked_at > now() - $1 \
             UNION SELECT s.id FROM tenantd.sessions s JOIN tenantd.users u ON u.id = s.user_id \
             WHERE u.status = 'deactivated' AND s.expires_at > now()",
        )
        .bind(window)
        .fetch_all(pool)
        .await?;
        if let Ok(mut s) = self.sessions.write() {
            *s = ids.into_iter().collect();
        }
        Ok(())
    }
}
