//! Users: create, read, update, deactivate, and their passwords.

use serde_json::json;
use uuid::Uuid;

use super::service::{Identity, IdentityError, db, internal};
use crate::catalog::identity::{self as store, NewUser, UserRow};
use crate::catalog::{DbErrorKind, audit::Audited, classify};
use crate::domain::ValidationError;
use crate::domain::identity::{Email, Phone, UserStatus};

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

impl Identity {
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
        if let Some(expected) = patch.expected_version
            && expected != current.version
        {
            return Err(IdentityError::VersionConflict {
                expected,
                actual: current.version,
            });
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
    /// own account. Guesses are limited per account as logins are (the same
    /// limiter and rate, keyed `user:<id>` where logins are keyed by e-mail
    /// or phone), so a stolen token cannot be used to try passwords at speed.
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
}
