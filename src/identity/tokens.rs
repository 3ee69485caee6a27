//! Access tokens: short-lived JWTs signed with HS256 under a key kept in the
//! catalog (shared by every replica). Verifying one needs no database: the
//! revocation cache covers sessions ended before their tokens expire.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::identity::Role;

const ISSUER: &str = "tenantd";

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The session.
    pub sid: Uuid,
    /// The tenant the session is bound to, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tid: Option<Uuid>,
    /// The user's role in that tenant when the token was issued, if the
    /// tenant was ACTIVE then. It holds only while neither the membership
    /// nor the tenant's status changed (see `revocations`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
    /// When it was issued, by the database's clock, in whole seconds.
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

impl Claims {
    pub fn role(&self) -> Option<Role> {
        self.role.as_deref().and_then(|r| r.parse().ok())
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0).single().unwrap_or_default()
    }
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl: Duration,
}

impl Tokens {
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    /// A token for `user`'s `session`, bound to `tenant` with `role` there
    /// (if any), issued at `now`.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        tenant: Option<Uuid>,
        role: Option<Role>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(String, Claims)> {
        let now = now.timestamp();
        let claims = Claims {
            sub: user,
            sid: session,
            tid: tenant,
            role: tenant.and(role).map(|r| r.as_str().to_owned()),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            iss: ISSUER.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The claims of a valid, unexpired token signed by us.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_reject() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let (user, session, tenant) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (token, claims) = tokens
            .issue(user, session, Some(tenant), Some(Role::Manager), Utc::now())
            .unwrap();
        let back = tokens.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.role(), Some(Role::Manager));
        let other = Tokens::new(
            b"another key another key another k",
            Duration::from_secs(60),
        );
        assert!(other.verify(&token).is_none(), "signed by another key");
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 2, 'x');
        assert!(tokens.verify(&tampered).is_none());
        let expired = Tokens::new(b"0123456789abcdef0123456789abcdef", Duration::ZERO);
        let (old, _) = expired
            .issue(user, session, None, None, Utc::now())
            .unwrap();
        let mut strict = tokens.clone();
        strict.validation.leeway = 0;
        std::thread::sleep(Duration::from_millis(1100));
        assert!(strict.verify(&old).is_none(), "expired");
    }
}
