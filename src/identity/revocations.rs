//! What access tokens still stand for. Every replica keeps in memory, for the
//! access-token lifetime (plus leeway):
//!
//! - the ids of sessions revoked or of deactivated users: their tokens are
//!   refused;
//! - when each membership changed (added, given another role, removed) and
//!   when each tenant's status changed: a token issued at or before such a
//!   change no longer vouches for the role it names in that tenant, and the
//!   catalog decides instead.
//!
//! The cache is reloaded from the catalog every few seconds, and a change
//! made here is added at once. So validating a token needs no database round
//! trip, and a change anywhere takes effect everywhere within the refresh
//! interval.
//!
//! Times compare on the database's clock: tokens are issued at
//! `clock_timestamp()` read while the membership and tenant rows are
//! share-locked, and a change is stamped with `clock_timestamp()` after it
//! has locked them, so a token that names the old role is never later than
//! the change. A token's `iat` has whole seconds: one issued in the same
//! second as a change counts as older than it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalog::identity as store;

/// How often the cache is reloaded: the bound on how long a revoked session's
/// access tokens, or a changed role, keep validating on another replica.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Cache {
    sessions: HashSet<Uuid>,
    /// (tenant, user) → the last change of that membership.
    members: HashMap<(Uuid, Uuid), DateTime<Utc>>,
    /// tenant → the last change of its status.
    tenants: HashMap<Uuid, DateTime<Utc>>,
}

#[derive(Clone, Default)]
pub struct Revocations {
    /// Read on every call, written by the reload and by local changes.
    cache: Arc<RwLock<Cache>>,
}

/// Whether a token issued at `iat` (whole seconds) is later than `change`:
/// only from the second after the change's.
fn issued_after(iat: i64, change: &DateTime<Utc>) -> bool {
    iat > change.timestamp()
}

impl Revocations {
    pub fn is_revoked(&self, session: &Uuid) -> bool {
        self.cache
            .read()
            .map(|c| c.sessions.contains(session))
            .unwrap_or(true)
    }

    pub fn add(&self, sessions: impl IntoIterator<Item = Uuid>) {
        if let Ok(mut c) = self.cache.write() {
            c.sessions.extend(sessions);
        }
    }

    /// The user's membership of the tenant changed at `at`.
    pub fn membership_changed(&self, tenant: Uuid, user: Uuid, at: DateTime<Utc>) {
        if let Ok(mut c) = self.cache.write() {
            let e = c.members.entry((tenant, user)).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// The tenant's status changed at `at`.
    pub fn tenant_changed(&self, tenant: Uuid, at: DateTime<Utc>) {
        if let Ok(mut c) = self.cache.write() {
            let e = c.tenants.entry(tenant).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Whether a token issued at `iat` for `user` in `tenant` still names the
    /// user's role there: neither the membership nor the tenant's status has
    /// changed since. When unsure, no.
    pub fn role_is_current(&self, tenant: Uuid, user: Uuid, iat: i64) -> bool {
        self.cache
            .read()
            .map(|c| {
                c.members
                    .get(&(tenant, user))
                    .is_none_or(|at| issued_after(iat, at))
                    && c.tenants
                        .get(&tenant)
                        .is_none_or(|at| issued_after(iat, at))
            })
            .unwrap_or(false)
    }

    /// Reloads what happened within `window` (the access-token lifetime plus
    /// leeway): anything older has no live token left. Changes added here
    /// since the last reload stay until they are that old, in case the reload
    /// read the catalog before they committed.
    pub async fn refresh(&self, pool: &PgPool, window: Duration) -> Result<(), sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let ids = store::ended_sessions(&mut conn, window).await?;
        let changes = store::access_changes(&mut conn, window).await?;
        drop(conn);
        let mut fresh = Cache {
            sessions: ids.into_iter().collect(),
            ..Cache::default()
        };
        for change in changes {
            let at = change.changed_at;
            match change.user_id {
                Some(user) => fresh.members.insert((change.tenant_id, user), at),
                None => fresh.tenants.insert(change.tenant_id, at),
            };
        }
        let cutoff = Utc::now() - window;
        if let Ok(mut c) = self.cache.write() {
            for (key, at) in c.members.drain().filter(|(_, at)| *at > cutoff) {
                let e = fresh.members.entry(key).or_insert(at);
                *e = (*e).max(at);
            }
            for (key, at) in c.tenants.drain().filter(|(_, at)| *at > cutoff) {
                let e = fresh.tenants.entry(key).or_insert(at);
                *e = (*e).max(at);
            }
            *c = fresh;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(seconds: i64, millis: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, millis * 1_000_000).unwrap()
    }

    #[test]
    fn a_token_of_the_same_second_as_a_change_is_older_than_it() {
        let (tenant, user, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let r = Revocations::default();
        assert!(r.role_is_current(tenant, user, 100), "nothing changed");
        r.membership_changed(tenant, user, at(100, 300));
        assert!(!r.role_is_current(tenant, user, 99), "issued before");
        assert!(
            !r.role_is_current(tenant, user, 100),
            "the same second, before or after"
        );
        assert!(r.role_is_current(tenant, user, 101), "the next second");
        assert!(r.role_is_current(tenant, other, 100), "another member");
        r.membership_changed(tenant, user, at(90, 0));
        assert!(
            r.role_is_current(tenant, user, 101),
            "an older change adds nothing"
        );

        r.tenant_changed(tenant, at(200, 0));
        for u in [user, other] {
            assert!(
                !r.role_is_current(tenant, u, 200),
                "a change at a whole second"
            );
            assert!(r.role_is_current(tenant, u, 201));
        }
        assert!(
            r.role_is_current(Uuid::now_v7(), user, 150),
            "another tenant"
        );
    }
}
