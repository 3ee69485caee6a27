//! Sessions: logins and their failures, refresh-token rotation and reuse,
//! logout, revocation and deactivation, and access tokens that expire.

use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{create_user, eventually_invalid, validate};
use crate::common::identity::{PASSWORD, log_in, login, refresh, tenant_owned_by};
use crate::common::{TestServer, bad_fields};

#[tokio::test]
async fn login_failures_look_the_same_and_are_rate_limited() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    create_user(&mut c, "Grace", "grace@example.com").await;
    let unknown = c
        .sessions
        .login(login("nobody@example.com", PASSWORD, ""))
        .await
        .unwrap_err();
    let wrong = c
        .sessions
        .login(login("grace@example.com", "wrong horse battery staple", ""))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.code(), unknown.code());
    assert_eq!(wrong.message(), unknown.message());

    let ok = log_in(&mut c, "GRACE@example.com", "").await;
    let principal = validate(&mut c, &ok.access_token).await.unwrap();
    assert_eq!(principal.session_id, ok.session_id);

    // Ten attempts a minute per account: the rest are refused, even with the right password.
    let mut limited = false;
    for _ in 0..12 {
        let r = c
            .sessions
            .login(login("grace@example.com", "wrong horse battery staple", ""))
            .await;
        if let Err(s) = r
            && s.code() == Code::ResourceExhausted
        {
            limited = true;
            break;
        }
    }
    assert!(limited, "repeated failures are rate-limited");
    let err = c
        .sessions
        .login(login("grace@example.com", PASSWORD, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_session() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    create_user(&mut c, "Linus", "linus@example.com").await;
    let first = log_in(&mut c, "linus@example.com", "").await;
    let second = c
        .sessions
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    validate(&mut c, &second.access_token).await.unwrap();

    // The rotated-away token comes back: stolen. The whole session ends.
    let err = c
        .sessions
        .refresh(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .sessions
        .refresh(refresh(&second.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the newest refresh token dies with the session"
    );
    eventually_invalid(&mut c, &second.access_token).await;
    eventually_invalid(&mut c, &first.access_token).await;
}

#[tokio::test]
async fn logout_revocation_and_deactivation_stop_tokens() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let u = create_user(&mut c, "Barbara", "barbara@example.com").await;
    let a = log_in(&mut c, "barbara@example.com", "").await;
    let b = log_in(&mut c, "barbara@example.com", "").await;
    let listed = c
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            user_id: u.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 2);

    // The user logs out of one session with its own token.
    let mut own = server.clients_as(&a.access_token).await;
    own.sessions
        .logout(pb::LogoutRequest {
            access_token: String::new(),
        })
        .await
        .unwrap();
    eventually_invalid(&mut c, &a.access_token).await;
    validate(&mut c, &b.access_token).await.unwrap();

    let revoked = c
        .sessions
        .revoke_all_sessions(pb::RevokeAllSessionsRequest {
            user_id: u.id.clone(),
            reason: "lost laptop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.sessions_revoked, 1);
    eventually_invalid(&mut c, &b.access_token).await;

    let again = log_in(&mut c, "barbara@example.com", "").await;
    c.users
        .deactivate_user(pb::DeactivateUserRequest {
            id: u.id.clone(),
            reason: "left".into(),
        })
        .await
        .unwrap();
    eventually_invalid(&mut c, &again.access_token).await;
    let err = c
        .sessions
        .login(login("barbara@example.com", PASSWORD, ""))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a deactivated user cannot log in"
    );
}

#[tokio::test]
async fn an_expired_access_token_stops_validating_and_permissions_are_explained() {
    let server = TestServer::start_with(|c| c.identity.access_ttl = Duration::from_secs(1)).await;
    let mut c = server.clients().await;
    let u = create_user(&mut c, "Katherine", "katherine@example.com").await;
    let t = tenant_owned_by(&mut c, "expiry", &u.id).await;
    let s = log_in(&mut c, "katherine@example.com", &t.id).await;
    let p = validate(&mut c, &s.access_token).await.unwrap();
    assert_eq!(p.tenant_id, t.id);
    assert_eq!(p.role, pb::MemberRole::Owner as i32);
    let check = |permission: &str| pb::CheckPermissionRequest {
        access_token: s.access_token.clone(),
        tenant_id: t.id.clone(),
        permission: permission.into(),
    };
    let allowed = c
        .sessions
        .check_permission(check("members:manage"))
        .await
        .unwrap()
        .into_inner();
    assert!(allowed.allowed);
    assert!(allowed.reason.contains("OWNER"), "{}", allowed.reason);
    let err = c
        .sessions
        .check_permission(check("data:delete"))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["permission"]);

    // One second of life plus the 5 s clock-skew leeway, at whole-second
    // resolution: at most 7 s after issue.
    tokio::time::sleep(Duration::from_millis(8000)).await;
    let err = validate(&mut c, &s.access_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "expired");
    // The refresh token still works and gives a fresh access token.
    let fresh = c
        .sessions
        .refresh(refresh(&s.refresh_token))
        .await
        .unwrap()
        .into_inner();
    validate(&mut c, &fresh.access_token).await.unwrap();
}
