//! The identity operations. Each state change is one transaction with its
//! audit event; reads of tokens and keys are answered from memory.
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
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::keys::KeyCache;
use super::passwords::Hasher;
use super::revocations::{REFRESH_INTERVAL, Revocations};
use super::tokens::{Claims, Tokens};
use crate::catalog::identity::{
    self as store, AccessRow, MemberRow, NewSession, NewUser, SessionRow, UserRow,
};
use crate::catalog::{
    DbErrorKind, DbFailure,
    audit::{self, Audited},
    classify,
};
use crate::domain::identity::{
    Access, Email, Permission, Phone, Role, UserStatus, check_membership_change,
};
use crate::domain::{TenantId, TenantStatus, ValidationError};

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

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> IdentityError {
    DbFailure::of(context)
}

fn internal(context: &'static str) -> impl FnOnce(anyhow::Error) -> IdentityError {
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
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            hash_concurrency: 2,
            logins_per_minute_account: 10,
            logins_per_minute_address: 60,
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

/// What a new access token says about its tenant.
#[derive(Debug, Clone, Copy)]
struct Binding {
    tenant: Uuid,
    role: Role,
    /// Whether the tenant is ACTIVE: only then does the token name the role
    /// (a token trusted for its role stands for an ACTIVE tenant's rights).
    active: bool,
}

/// The access an [`AccessRow`] describes, if the user is active and the row
/// makes sense; otherwise none (fail closed).
fn access_of(row: AccessRow) -> Option<Access> {
    if !row.user_active {
        return None;
    }
    Some(Access {
        role: row.role,
        tenant_status: row.tenant_status,
    })
}

/// A session as ListSessions shows it.
pub type Session = SessionRow;

pub struct LoginInput {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub password: String,
    pub tenant_id: Option<Uuid>,
    pub device: String,
    pub client_ip: Option<std::net::IpAddr>,
}

/// The answer to Login and Refresh.
pub struct Issued {
    pub access_token: String,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub principal: Principal,
}

#[derive(Debug, Default)]
pub struct UserPatch {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<Option<Email>>,
    pub phone: Option<Option<Phone>>,
    pub expected_version: Option<i64>,
}

impl UserPatch {
    /// Whether the patch changes what the user logs in with.
    pub fn changes_login(&self) -> bool {
        self.email.is_some() || self.phone.is_some()
    }

    /// The names of the fields the patch sets, for the audit log (the
    /// values stay out of it: they are personal data).
    fn fields(&self) -> Vec<&'static str> {
        [
            ("first_name", self.first_name.is_some()),
            ("last_name", self.last_name.is_some()),
            ("email", self.email.is_some()),
            ("phone", self.phone.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Users, memberships and sessions over the catalog pool.
#[derive(Clone)]
pub struct Identity {
    pool: PgPool,
    hasher: Hasher,
    tokens: Tokens,
    pub keys: KeyCache,
    revocations: Revocations,
    settings: IdentitySettings,
    /// Login attempts per account (lower-cased identifier) and per address.
    by_account: Arc<DefaultKeyedRateLimiter<String>>,
    by_address: Arc<DefaultKeyedRateLimiter<String>>,
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_refresh_token() -> String {
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

    // ---- users ----

    pub async fn create_user(
        &self,
        first_name: String,
        last_name: String,
        email: Option<Email>,
        phone: Option<Phone>,
        password: &str,
        actor: &str,
    ) -> Result<UserRow, IdentityError> {
        let hash = self
            .hasher
            .hash(password)
            .await
            .map_err(internal("hash password"))?;
        let id = Uuid::now_v7();
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin create user"))?;
        let new = NewUser {
            id,
            first_name: &first_name,
            last_name: &last_name,
            email: email.as_ref().map(Email::as_str),
            phone: phone.as_ref().map(Phone::as_str),
            password_hash: &hash,
        };
        let user = store::insert_user(&mut tx, &new)
            .await
            .map_err(db("insert user"))?
            .ok_or_else(|| {
                IdentityError::AlreadyExists("a user with this e-mail or phone exists".into())
            })?;
        tx.commit(
            actor,
            "user.create",
            &format!("user:{id}"),
            &json!({ "email": user.email, "phone": user.phone }),
        )
        .await
        .map_err(db("commit create user"))?;
        Ok(user)
    }

    pub async fn get_user(&self, id: Uuid) -> Result<UserRow, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        store::get_user(&mut c, id)
            .await
            .map_err(db("get user"))?
            .ok_or(IdentityError::NotFound("user"))
    }

    pub async fn update_user(
        &self,
        id: Uuid,
        patch: UserPatch,
        current_password: Option<&str>,
        actor: &str,
    ) -> Result<UserRow, IdentityError> {
        if let Some(current) = current_password {
            self.verify_current_password(id, current).await?;
        }
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin update user"))?;
        let current = store::lock_user(&mut tx, id)
            .await
            .map_err(db("lock user"))?
            .ok_or(IdentityError::NotFound("user"))?;
        if let Some(expected) = patch.expected_version {
            if expected != current.version {
                return Err(IdentityError::VersionConflict {
                    expected,
                    actual: current.version,
                });
            }
        }
        let email = patch.email.as_ref().map(|e| e.as_ref().map(Email::as_str));
        let phone = patch.phone.as_ref().map(|p| p.as_ref().map(Phone::as_str));
        let updated = store::update_user(
            &mut tx,
            id,
            patch.first_name.as_deref(),
            patch.last_name.as_deref(),
            email,
            phone,
        )
        .await
        .map_err(|e| match classify(&e) {
            DbErrorKind::UniqueViolation => {
                IdentityError::AlreadyExists("a user with this e-mail or phone exists".into())
            }
            _ if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23514") => {
                ValidationError::single("email", "a user needs an e-mail address or a phone number")
                    .into()
            }
            _ => db("update user")(e),
        })?;
        tx.commit(
            actor,
            "user.update",
            &format!("user:{id}"),
            &json!({ "version": updated.version, "fields": patch.fields() }),
        )
        .await
        .map_err(db("commit update user"))?;
        Ok(updated)
    }

    /// Checks the password a user gave to confirm a sensitive change of its
    /// own account. Guesses count against the same per-account limit as
    /// logins, so a stolen token cannot be used to try passwords at speed.
    async fn verify_current_password(&self, id: Uuid, password: &str) -> Result<(), IdentityError> {
        self.rate_limit(&format!("user:{id}"), None)?;
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let hash = store::password_hash(&mut c, id)
            .await
            .map_err(db("read password hash"))?;
        drop(c);
        if self
            .hasher
            .verify(password, hash.as_deref())
            .await
            .map_err(internal("verify password"))?
        {
            Ok(())
        } else {
            Err(ValidationError::single("current_password", "does not match").into())
        }
    }

    /// Deactivates the user and ends every session.
    pub async fn deactivate_user(
        &self,
        id: Uuid,
        reason: &str,
        actor: &str,
    ) -> Result<UserRow, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin deactivate user"))?;
        let current = store::lock_user(&mut tx, id)
            .await
            .map_err(db("lock user"))?
            .ok_or(IdentityError::NotFound("user"))?;
        if current.status == UserStatus::Deactivated {
            return Ok(current);
        }
        let user = store::deactivate_user(&mut tx, id)
            .await
            .map_err(db("deactivate user"))?;
        let ended = store::revoke_sessions(&mut tx, None, Some(id), None, "user deactivated")
            .await
            .map_err(db("revoke sessions"))?;
        tx.commit(
            actor,
            "user.deactivate",
            &format!("user:{id}"),
            &json!({ "reason": reason, "sessions_revoked": ended.len() }),
        )
        .await
        .map_err(db("commit deactivate user"))?;
        self.revocations.add(ended);
        Ok(user)
    }

    /// Sets a new password; `current` must match when given (a user changing
    /// their own). Every other session of the user ends.
    pub async fn change_password(
        &self,
        id: Uuid,
        current: Option<&str>,
        new: &str,
        keep_session: Option<Uuid>,
        actor: &str,
    ) -> Result<usize, IdentityError> {
        if let Some(current) = current {
            self.verify_current_password(id, current).await?;
        }
        let hash = self
            .hasher
            .hash(new)
            .await
            .map_err(internal("hash password"))?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin change password"))?;
        store::lock_user(&mut tx, id)
            .await
            .map_err(db("lock user"))?
            .ok_or(IdentityError::NotFound("user"))?;
        store::set_password(&mut tx, id, &hash)
            .await
            .map_err(db("store password hash"))?;
        // Every other session ends; the one that made the change stays.
        let ended =
            store::revoke_sessions(&mut tx, None, Some(id), keep_session, "password changed")
                .await
                .map_err(db("revoke sessions"))?;
        tx.commit(
            actor,
            "user.change_password",
            &format!("user:{id}"),
            &json!({ "sessions_revoked": ended.len() }),
        )
        .await
        .map_err(db("commit change password"))?;
        let n = ended.len();
        self.revocations.add(ended);
        Ok(n)
    }

    // ---- memberships ----
    //
    // `by` is the acting user; `None` for a service key, which is above the
    // role ceiling (but not the last-OWNER rule).

    /// Checks, in the change's transaction, that the acting user may move
    /// a membership of `tenant` from `old` to `new`: their current role (not
    /// their token's) in an ACTIVE tenant, under the role ceiling.
    async fn check_actor(
        tx: &mut sqlx::PgConnection,
        tenant: Uuid,
        by: Option<Uuid>,
        old: Option<Role>,
        new: Option<Role>,
    ) -> Result<(), IdentityError> {
        let Some(by) = by else {
            return Ok(());
        };
        let access = store::access(tx, tenant, by)
            .await
            .map_err(db("read the acting user's role"))?
            .and_then(access_of)
            .ok_or_else(|| IdentityError::Forbidden("not a member of this tenant".into()))?;
        access
            .check(Permission::MembersManage)
            .map_err(IdentityError::Forbidden)?;
        check_membership_change(access.role, old, new).map_err(IdentityError::Forbidden)
    }

    pub async fn add_member(
        &self,
        tenant: Uuid,
        user: Uuid,
        role: Role,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<MemberRow, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin add member"))?;
        let live = store::lock_tenant_members(&mut tx, tenant)
            .await
            .map_err(db("lock tenant"))?;
        Self::check_actor(&mut tx, tenant, by, None, Some(role)).await?;
        if matches!(live, None | Some(TenantStatus::Purged)) {
            return Err(IdentityError::NotFound("tenant"));
        }
        let user_row = store::get_user(&mut tx, user)
            .await
            .map_err(db("look up user"))?
            .ok_or(IdentityError::NotFound("user"))?;
        if user_row.status != UserStatus::Active {
            return Err(IdentityError::Precondition(
                "the user is deactivated".into(),
            ));
        }
        let member = store::insert_member(&mut tx, tenant, user, role)
            .await
            .map_err(db("add member"))?
            .ok_or_else(|| {
                IdentityError::AlreadyExists("the user is a member of this tenant already".into())
            })?;
        let changed = store::note_membership_change(&mut tx, tenant, user)
            .await
            .map_err(db("note membership change"))?;
        tx.commit(
            actor,
            "member.add",
            &format!("tenant:{tenant}"),
            &json!({ "user_id": user, "role": role.as_str() }),
        )
        .await
        .map_err(db("commit add member"))?;
        self.revocations.membership_changed(tenant, user, changed);
        Ok(member)
    }

    pub async fn change_role(
        &self,
        tenant: Uuid,
        user: Uuid,
        role: Role,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<MemberRow, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin change role"))?;
        store::lock_tenant_members(&mut tx, tenant)
            .await
            .map_err(db("lock tenant"))?;
        let owners = store::lock_owners(&mut tx, tenant)
            .await
            .map_err(db("lock owners"))?;
        let current = store::get_member(&mut tx, tenant, user)
            .await
            .map_err(db("get member"))?;
        Self::check_actor(
            &mut tx,
            tenant,
            by,
            current.as_ref().map(|m| m.role),
            Some(role),
        )
        .await?;
        let current = current.ok_or(IdentityError::NotFound("membership"))?;
        if current.role == Role::Owner && role != Role::Owner && owners <= 1 {
            return Err(IdentityError::LastOwner);
        }
        let member = store::set_role(&mut tx, tenant, user, role)
            .await
            .map_err(db("change role"))?
            .ok_or(IdentityError::NotFound("membership"))?;
        let changed = store::note_membership_change(&mut tx, tenant, user)
            .await
            .map_err(db("note membership change"))?;
        tx.commit(
            actor,
            "member.change_role",
            &format!("tenant:{tenant}"),
            &json!({ "user_id": user, "from": current.role.as_str(), "to": role.as_str() }),
        )
        .await
        .map_err(db("commit change role"))?;
        self.revocations.membership_changed(tenant, user, changed);
        Ok(member)
    }

    pub async fn remove_member(
        &self,
        tenant: Uuid,
        user: Uuid,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<(), IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin remove member"))?;
        store::lock_tenant_members(&mut tx, tenant)
            .await
            .map_err(db("lock tenant"))?;
        let owners = store::lock_owners(&mut tx, tenant)
            .await
            .map_err(db("lock owners"))?;
        let current = store::get_member(&mut tx, tenant, user)
            .await
            .map_err(db("get member"))?;
        Self::check_actor(&mut tx, tenant, by, current.as_ref().map(|m| m.role), None).await?;
        let current = current.ok_or(IdentityError::NotFound("membership"))?;
        if current.role == Role::Owner && owners <= 1 {
            return Err(IdentityError::LastOwner);
        }
        store::delete_member(&mut tx, tenant, user)
            .await
            .map_err(db("remove member"))?;
        let changed = store::note_membership_change(&mut tx, tenant, user)
            .await
            .map_err(db("note membership change"))?;
        tx.commit(
            actor,
            "member.remove",
            &format!("tenant:{tenant}"),
            &json!({ "user_id": user, "role": current.role.as_str() }),
        )
        .await
        .map_err(db("commit remove member"))?;
        self.revocations.membership_changed(tenant, user, changed);
        Ok(())
    }

    pub async fn list_members(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        size: usize,
    ) -> Result<(Vec<MemberRow>, Option<Uuid>), IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let mut rows = store::list_members(&mut c, tenant, after, size as i64 + 1)
            .await
            .map_err(db("list members"))?;
        let next = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|m| m.user_id)
        } else {
            None
        };
        Ok((rows, next))
    }

    pub async fn user_tenants(&self, user: Uuid) -> Result<Vec<MemberRow>, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        store::user_tenants(&mut c, user)
            .await
            .map_err(db("list user tenants"))
    }

    /// What `user` holds in `tenant` by the catalog now; `None` when not a
    /// member (or deactivated).
    async fn access_in_catalog(
        &self,
        tenant: Uuid,
        user: Uuid,
    ) -> Result<Option<Access>, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        Ok(store::access(&mut c, tenant, user)
            .await
            .map_err(db("read the user's role"))?
            .and_then(access_of))
    }

    /// What the principal holds in `tenant` for deciding `permission`: the
    /// token's role while it is current and bound to that tenant (then the
    /// tenant is ACTIVE), except for permissions that change authority; the
    /// catalog's otherwise.
    pub async fn access(
        &self,
        p: &Principal,
        tenant: Uuid,
        permission: Permission,
    ) -> Result<Option<Access>, IdentityError> {
        match p.role {
            Some(role) if p.tenant_id == Some(tenant) && !permission.changes_authority() => {
                Ok(Some(Access {
                    role,
                    tenant_status: TenantStatus::Active,
                }))
            }
            _ => self.access_in_catalog(tenant, p.user_id).await,
        }
    }

    /// The principal with its role read from the catalog when the token's
    /// own is not current (or it named none).
    pub async fn with_current_role(&self, mut p: Principal) -> Result<Principal, IdentityError> {
        if let (Some(tenant), None) = (p.tenant_id, p.role) {
            p.role = self
                .access_in_catalog(tenant, p.user_id)
                .await?
                .map(|a| a.role);
        }
        Ok(p)
    }

    /// A tenant's status changed here: its members' tokens stop vouching for
    /// their roles at once on this replica (elsewhere at the next reload).
    pub async fn tenant_status_changed(&self, tenant: TenantId) {
        let at = match self.pool.acquire().await {
            Ok(mut c) => crate::catalog::tenants::status_changed_at(&mut c, tenant).await,
            Err(e) => Err(e),
        };
        match at {
            Ok(Some(at)) => self.revocations.tenant_changed(*tenant.as_uuid(), at),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "cannot read the tenant's status change; other replicas' reload will bring it")
            }
        }
    }

    /// The user's role in `tenant` for a new token, with the tenant's row
    /// share-locked until the transaction ends: a membership or status
    /// change waits for it, so is later than the token. `None` when not a
    /// member (or deactivated).
    async fn binding(
        tx: &mut sqlx::PgConnection,
        tenant: Uuid,
        user: Uuid,
    ) -> Result<Option<Binding>, IdentityError> {
        Ok(store::lock_access(tx, tenant, user)
            .await
            .map_err(db("read the user's role"))?
            .and_then(access_of)
            .map(|a| Binding {
                tenant,
                role: a.role,
                active: a.tenant_status == TenantStatus::Active,
            }))
    }

    // ---- sessions ----

    fn rate_limit(
        &self,
        account: &str,
        address: Option<std::net::IpAddr>,
    ) -> Result<(), IdentityError> {
        let account_ok = self.by_account.check_key(&account.to_lowercase()).is_ok();
        let address_ok = address
            .map(|a| self.by_address.check_key(&a.to_string()).is_ok())
            .unwrap_or(true);
        if account_ok && address_ok {
            Ok(())
        } else {
            Err(IdentityError::RateLimited)
        }
    }

    pub async fn login(&self, input: LoginInput, actor: &str) -> Result<Issued, IdentityError> {
        let account = input
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .or_else(|| input.phone.as_ref().map(|p| p.as_str().to_owned()))
            .unwrap_or_default();
        self.rate_limit(&account, input.client_ip)?;
        let found = {
            let mut c = self
                .pool
                .acquire()
                .await
                .map_err(db("acquire catalog connection"))?;
            store::find_login(
                &mut c,
                input.email.as_ref().map(Email::as_str),
                input.phone.as_ref().map(Phone::as_str),
            )
            .await
            .map_err(db("look up login"))?
        };
        let hash = found.as_ref().and_then(|(_, h)| h.clone());
        let ok = self
            .hasher
            .verify(&input.password, hash.as_deref())
            .await
            .map_err(internal("verify password"))?;
        let Some((user, _)) = found.filter(|(u, _)| ok && u.status == UserStatus::Active) else {
            return Err(IdentityError::BadCredentials);
        };
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin login"))?;
        let tenant = match input.tenant_id {
            Some(t) => match Self::binding(&mut tx, t, user.id).await? {
                Some(binding) => Some(binding),
                None => return Err(IdentityError::BadCredentials),
            },
            None => None,
        };
        let now = store::clock(&mut tx).await.map_err(db("read the clock"))?;
        let session = Uuid::now_v7();
        let refresh = new_refresh_token();
        let refresh_expires_at = now + self.settings.refresh_ttl;
        let ip = input.client_ip.map(|a| a.to_string());
        store::insert_session(
            &mut tx,
            &NewSession {
                id: session,
                user_id: user.id,
                tenant_id: tenant.map(|b| b.tenant),
                device: &input.device,
                client_ip: ip.as_deref(),
                expires_at: refresh_expires_at,
                refresh_hash: &sha256(&refresh),
            },
        )
        .await
        .map_err(db("create session"))?;
        let issued = self.issue(user.id, session, tenant, now, refresh, refresh_expires_at)?;
        tx.commit(
            actor,
            "session.login",
            &format!("user:{}", user.id),
            &json!({ "session_id": session, "tenant_id": tenant.map(|b| b.tenant), "client_ip": ip }),
        )
        .await
        .map_err(db("commit login"))?;
        Ok(issued)
    }

    /// Signs an access token issued at `now` (the database's clock, read
    /// under the binding's lock). It names the role only for an ACTIVE
    /// tenant; the principal answered names it either way.
    fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        tenant: Option<Binding>,
        now: DateTime<Utc>,
        refresh: String,
        refresh_expires_at: DateTime<Utc>,
    ) -> Result<Issued, IdentityError> {
        let (access_token, claims) = self
            .tokens
            .issue(
                user,
                session,
                tenant.map(|b| b.tenant),
                tenant.filter(|b| b.active).map(|b| b.role),
                now,
            )
            .map_err(internal("sign access token"))?;
        Ok(Issued {
            access_token,
            access_expires_at: claims.expires_at(),
            refresh_token: refresh,
            refresh_expires_at,
            principal: Principal {
                user_id: user,
                session_id: session,
                tenant_id: tenant.map(|b| b.tenant),
                role: tenant.map(|b| b.role),
                expires_at: claims.expires_at(),
            },
        })
    }

    /// Rotates a refresh token; the new access token names the role the
    /// user holds now. A token that was already rotated away was stolen or
    /// replayed: the whole session is revoked.
    pub async fn refresh(
        &self,
        token: &str,
        client_ip: Option<std::net::IpAddr>,
        actor: &str,
    ) -> Result<Issued, IdentityError> {
        let old = sha256(token);
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin refresh"))?;
        let Some((session, rotated)) = store::lock_refresh(&mut tx, &old)
            .await
            .map_err(db("look up refresh token"))?
        else {
            return Err(IdentityError::BadToken);
        };
        if rotated {
            let ended = store::revoke_sessions(
                &mut tx,
                Some(session.id),
                None,
                None,
                "refresh token reused",
            )
            .await
            .map_err(db("revoke session"))?;
            tx.commit(
                actor,
                "session.reuse_detected",
                &format!("user:{}", session.user_id),
                &json!({ "session_id": session.id }),
            )
            .await
            .map_err(db("commit revoke"))?;
            self.revocations.add(ended);
            tracing::warn!(session = %session.id, user = %session.user_id, "refresh token reused; session revoked");
            return Err(IdentityError::BadToken);
        }
        let user = store::get_user(&mut tx, session.user_id)
            .await
            .map_err(db("get user"))?;
        if session.revoked_at.is_some()
            || session.expires_at <= Utc::now()
            || user.as_ref().is_none_or(|u| u.status != UserStatus::Active)
        {
            return Err(IdentityError::BadToken);
        }
        let tenant = match session.tenant_id {
            Some(t) => match Self::binding(&mut tx, t, session.user_id).await? {
                Some(binding) => Some(binding),
                None => return Err(IdentityError::BadToken),
            },
            None => None,
        };
        let now = store::clock(&mut tx).await.map_err(db("read the clock"))?;
        let fresh = new_refresh_token();
        let ip = client_ip.map(|a| a.to_string());
        store::rotate_refresh(&mut tx, session.id, &old, &sha256(&fresh), ip.as_deref())
            .await
            .map_err(db("rotate refresh token"))?;
        let issued = self.issue(
            session.user_id,
            session.id,
            tenant,
            now,
            fresh,
            session.expires_at,
        )?;
        tx.commit(
            actor,
            "session.refresh",
            &format!("user:{}", session.user_id),
            &json!({
                "session_id": session.id,
                "tenant_id": session.tenant_id,
                "role": tenant.map(|b| b.role.as_str()),
                "client_ip": ip,
            }),
        )
        .await
        .map_err(db("commit refresh"))?;
        Ok(issued)
    }

    /// The principal of an access token: signature, expiry and the in-memory
    /// revocation set; no database.
    pub fn validate(&self, token: &str) -> Result<Principal, IdentityError> {
        let claims: Claims = self.tokens.verify(token).ok_or(IdentityError::BadToken)?;
        if self.revocations.is_revoked(&claims.sid) {
            return Err(IdentityError::BadToken);
        }
        let role = claims.tid.and_then(|tenant| {
            claims.role().filter(|_| {
                self.revocations
                    .role_is_current(tenant, claims.sub, claims.iat)
            })
        });
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
            tenant_id: claims.tid,
            role,
            expires_at: claims.expires_at(),
        })
    }

    /// Whether the token's user may do `permission` in `tenant`, and why.
    pub async fn check_permission(
        &self,
        token: &str,
        tenant: Uuid,
        permission: Permission,
    ) -> Result<(bool, String, Option<Role>), IdentityError> {
        let p = self.validate(token)?;
        Ok(match self.access(&p, tenant, permission).await? {
            Some(access) => match access.check(permission) {
                Ok(why) => (true, why, Some(access.role)),
                Err(why) => (false, why, Some(access.role)),
            },
            None => (
                false,
                "the user is not a member of this tenant".into(),
                None,
            ),
        })
    }

    pub async fn logout(&self, session: Uuid, actor: &str) -> Result<(), IdentityError> {
        self.revoke(Some(session), None, "logout", actor)
            .await
            .map(drop)
    }

    pub async fn revoke_all(
        &self,
        user: Uuid,
        reason: &str,
        actor: &str,
    ) -> Result<usize, IdentityError> {
        self.revoke(None, Some(user), reason, actor).await
    }

    async fn revoke(
        &self,
        session: Option<Uuid>,
        user: Option<Uuid>,
        reason: &str,
        actor: &str,
    ) -> Result<usize, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin revoke"))?;
        let ended = store::revoke_sessions(&mut tx, session, user, None, reason)
            .await
            .map_err(db("revoke sessions"))?;
        if !ended.is_empty() {
            let target = user
                .map(|u| format!("user:{u}"))
                .or(session.map(|s| format!("session:{s}")))
                .unwrap_or_default();
            tx.commit(
                actor,
                "session.revoke",
                &target,
                &json!({ "sessions": ended, "reason": reason }),
            )
            .await
            .map_err(db("commit revoke"))?;
        }
        let n = ended.len();
        self.revocations.add(ended);
        Ok(n)
    }

    pub async fn list_sessions(&self, user: Uuid) -> Result<Vec<Session>, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        store::list_sessions(&mut c, user)
            .await
            .map_err(db("list sessions"))
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
