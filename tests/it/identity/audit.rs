//! The audit chain: it verifies, an edited row is found, and every session
//! and membership change leaves exactly one event.

use std::collections::BTreeMap;

use tenantd::pb;
use tonic::Code;

use super::create_user;
use crate::common::TestServer;
use crate::common::identity::{add_member, log_in, login, tenant_owned_by};

#[tokio::test]
async fn the_audit_chain_verifies_and_an_edited_row_is_found() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let u = create_user(&mut c, "Audrey", "audrey@example.com").await;
    tenant_owned_by(&mut c, "audit", &u.id).await;
    log_in(&mut c, "audrey@example.com", "").await;
    let ok = c
        .users
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok);
    assert_eq!(ok.events_checked, 3);
    let mut db = server.db.connect().await;
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM tenantd.audit_log ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert!(actors.iter().all(|a| a == "service:admin"), "{actors:?}");

    sqlx::query("UPDATE tenantd.audit_log SET details = jsonb_set(details, '{name}', '\"Mallory\"') WHERE seq = 2")
        .execute(&mut db)
        .await
        .unwrap();
    let broken = c
        .users
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.ok);
    assert_eq!(broken.first_broken_seq, 2);
}

/// How many audit events of each action the log holds.
async fn audit_counts(db: &mut sqlx::PgConnection) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT action, count(*) FROM tenantd.audit_log GROUP BY action",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Checks that the audit events added since `before` are exactly one of each
/// `expected` action, then moves `before` on.
async fn audited(
    db: &mut sqlx::PgConnection,
    before: &mut BTreeMap<String, i64>,
    what: &str,
    expected: &[&str],
) {
    let after = audit_counts(db).await;
    let added: BTreeMap<String, i64> = after
        .iter()
        .map(|(a, n)| (a.clone(), n - before.get(a).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 0)
        .collect();
    let expected: BTreeMap<String, i64> = expected.iter().map(|a| (a.to_string(), 1)).collect();
    assert_eq!(added, expected, "audit events of {what}");
    *before = after;
}

#[tokio::test]
async fn every_session_change_leaves_exactly_one_audit_event() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let mut db = server.db.connect().await;
    let owner = create_user(&mut c, "Frances", "frances@example.com").await;
    let t = tenant_owned_by(&mut c, "audited", &owner.id).await;
    let staff = create_user(&mut c, "Mary", "mary@example.com").await;
    let role = |role: pb::MemberRole| pb::ChangeRoleRequest {
        tenant_id: t.id.clone(),
        user_id: staff.id.clone(),
        role: role as i32,
    };

    let mut before = audit_counts(&mut db).await;
    let unbound = log_in(&mut c, "frances@example.com", "").await;
    audited(&mut db, &mut before, "login", &["session.login"]).await;
    let bound = log_in(&mut c, "frances@example.com", &t.id).await;
    audited(
        &mut db,
        &mut before,
        "login to a tenant",
        &["session.login"],
    )
    .await;
    let _ = c
        .sessions
        .login(login(
            "frances@example.com",
            "wrong horse battery staple",
            "",
        ))
        .await
        .unwrap_err();
    audited(&mut db, &mut before, "a failed login", &[]).await;

    let refresh = |token: &str| pb::RefreshRequest {
        refresh_token: token.into(),
        client_ip: "192.0.2.11".into(),
    };
    let rotated = c
        .sessions
        .refresh(refresh(&bound.refresh_token))
        .await
        .unwrap()
        .into_inner();
    audited(&mut db, &mut before, "refresh", &["session.refresh"]).await;
    let again = c
        .sessions
        .refresh(refresh(&rotated.refresh_token))
        .await
        .unwrap()
        .into_inner();
    audited(&mut db, &mut before, "refresh again", &["session.refresh"]).await;
    let err = c
        .sessions
        .refresh(refresh("tdr_not-a-refresh-token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    audited(&mut db, &mut before, "an unknown refresh token", &[]).await;

    // The owner manages members with their token; a refused change leaves nothing.
    let mut as_owner = server.clients_as(&again.access_token).await;
    add_member(&mut as_owner, &t.id, &staff.id, pb::MemberRole::Employee).await;
    audited(&mut db, &mut before, "add member", &["member.add"]).await;
    as_owner
        .users
        .change_role(role(pb::MemberRole::Admin))
        .await
        .unwrap();
    audited(&mut db, &mut before, "change role", &["member.change_role"]).await;
    let staff_session = log_in(&mut c, "mary@example.com", &t.id).await;
    audited(
        &mut db,
        &mut before,
        "the admin logs in",
        &["session.login"],
    )
    .await;
    let mut as_staff = server.clients_as(&staff_session.access_token).await;
    let err = as_staff
        .users
        .change_role(role(pb::MemberRole::Owner))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "an ADMIN cannot make itself OWNER"
    );
    audited(&mut db, &mut before, "a refused promotion", &[]).await;

    // Logout of one session; logging out again changes nothing.
    let mut own = server.clients_as(&unbound.access_token).await;
    own.sessions
        .logout(pb::LogoutRequest {
            access_token: String::new(),
        })
        .await
        .unwrap();
    audited(&mut db, &mut before, "logout", &["session.revoke"]).await;
    c.sessions
        .logout(pb::LogoutRequest {
            access_token: unbound.access_token.clone(),
        })
        .await
        .ok();
    audited(&mut db, &mut before, "logout again", &[]).await;

    // A rotated-away refresh token comes back: one event, and the session ends.
    let err = c
        .sessions
        .refresh(refresh(&bound.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    audited(
        &mut db,
        &mut before,
        "refresh token reuse",
        &["session.reuse_detected"],
    )
    .await;
    let err = c
        .sessions
        .refresh(refresh(&again.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    audited(&mut db, &mut before, "refresh of an ended session", &[]).await;

    let revoke_all = |reason: &str| pb::RevokeAllSessionsRequest {
        user_id: staff.id.clone(),
        reason: reason.into(),
    };
    c.sessions
        .revoke_all_sessions(revoke_all("audit test"))
        .await
        .unwrap();
    audited(&mut db, &mut before, "revoke all", &["session.revoke"]).await;
    c.sessions
        .revoke_all_sessions(revoke_all("again"))
        .await
        .unwrap();
    audited(&mut db, &mut before, "revoke all, none left", &[]).await;
    c.users
        .remove_member(pb::RemoveMemberRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
        })
        .await
        .unwrap();
    audited(&mut db, &mut before, "remove member", &["member.remove"]).await;

    let verified = c
        .users
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.events_checked, before.values().sum::<i64>());
}
