//! Users, memberships, sessions and caller authentication end to end.

mod audit;
mod memberships;
mod permissions;
mod sessions;
mod users;

use std::time::Duration;

use tenantd::pb;

use crate::common::Clients;
use crate::common::identity::user;

/// Creates the user `first` Tester with `email`.
async fn create_user(c: &mut Clients, first: &str, email: &str) -> pb::User {
    c.users
        .create_user(user(first, email))
        .await
        .unwrap_or_else(|e| panic!("create the user {email}: {e:?}"))
        .into_inner()
}

async fn validate(c: &mut Clients, token: &str) -> Result<pb::Principal, tonic::Status> {
    c.sessions
        .validate_token(pb::ValidateTokenRequest {
            access_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Validation is answered from a cache reloaded every 5 s: wait for a
/// revocation to arrive (it is immediate on the replica that revoked).
async fn eventually_invalid(c: &mut Clients, token: &str) {
    for _ in 0..70 {
        if validate(c, token).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("token still valid after 7 s");
}
