//! Sessions: login, refresh-token rotation, access tokens, logout and
//! revocation, and the per-account and per-address login limits.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::memberships::Binding;
use super::service::{Identity, IdentityError, Principal, db, internal, new_refresh_token, sha256};
use super::tokens::Claims;
use crate::catalog::audit::Audited;
use crate::catalog::identity::{self as store, NewSession, SessionRow};
use crate::domain::identity::{Email, Permission, Phone, Role, UserStatus};

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

impl Identity {
    pub(super) fn rate_limit(
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
}
