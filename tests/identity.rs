//! Users, memberships, sessions and caller authentication end to end.

mod common;

use std::time::Duration;

use common::{Clients, TestServer, bad_fields, new_tenant};
use tenantd::pb::{self, login_request::Identifier};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";

fn user(first: &str, email: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        first_name: first.into(),
        last_name: "Tester".into(),
        email: email.into(),
        phone: String::new(),
        password: PASSWORD.into(),
    }
}

fn login(email: &str, password: &str, tenant: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        identifier: Some(Identifier::Email(email.into())),
        password: password.into(),
        tenant_id: tenant.into(),
        device: "test".into(),
        client_ip: "192.0.2.10".into(),
    }
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

#[tokio::test]
async fn users_are_created_validated_and_unique_by_email_in_any_case() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let ada = c
        .users
        .create_user(user("Ada", "Ada.Lovelace@Example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ada.email, "Ada.Lovelace@Example.com");
    assert_eq!(ada.status, pb::UserStatus::Active as i32);
    let got = c
        .users
        .get_user(pb::GetUserRequest { id: ada.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, ada);

    let err = c
        .users
        .create_user(user("Other", "ada.lovelace@example.COM"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let updated = c
        .users
        .update_user(pb::UpdateUserRequest {
            id: ada.id.clone(),
            last_name: Some("King".into()),
            phone: Some("+44 20 7946 0000".into()),
            expected_version: Some(ada.version),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.last_name, "King");
    assert_eq!(updated.phone, "+442079460000");
    let stale = c
        .users
        .update_user(pb::UpdateUserRequest {
            id: ada.id.clone(),
            first_name: Some("Augusta".into()),
            expected_version: Some(ada.version),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let cases: Vec<(&str, pb::CreateUserRequest)> = vec![
        (
            "first_name",
            pb::CreateUserRequest {
                first_name: String::new(),
                ..user("x", "x1@example.com")
            },
        ),
        (
            "email",
            pb::CreateUserRequest {
                email: "not-an-email".into(),
                ..user("x", "")
            },
        ),
        (
            "email",
            pb::CreateUserRequest {
                email: String::new(),
                phone: String::new(),
                ..user("x", "")
            },
        ),
        (
            "phone",
            pb::CreateUserRequest {
                phone: "12".into(),
                ..user("x", "x2@example.com")
            },
        ),
        (
            "password",
            pb::CreateUserRequest {
                password: "short".into(),
                ..user("x", "x3@example.com")
            },
        ),
        (
            "password",
            pb::CreateUserRequest {
                password: "password password".into(),
                ..user("x", "x4@example.com")
            },
        ),
    ];
    for (field, request) in cases {
        let err = c.users.create_user(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), [field]);
    }
    // Passwords are stored as argon2id hashes only.
    let mut db = server.db.connect().await;
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM tenantd.users WHERE id = $1::uuid")
            .bind(&ada.id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(PASSWORD));
}

#[tokio::test]
async fn login_failures_look_the_same_and_are_rate_limited() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    c.users
        .create_user(user("Grace", "grace@example.com"))
        .await
        .unwrap();
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

    let ok = c
        .sessions
        .login(login("GRACE@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let principal = validate(&mut c, &ok.access_token).await.unwrap();
    assert_eq!(principal.session_id, ok.session_id);

    // Ten attempts a minute per account: the rest are refused, even with the right password.
    let mut limited = false;
    for _ in 0..12 {
        let r = c
            .sessions
            .login(login("grace@example.com", "wrong horse battery staple", ""))
            .await;
        if let Err(s) = r {
            if s.code() == Code::ResourceExhausted {
                limited = true;
                break;
            }
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
    c.users
        .create_user(user("Linus", "linus@example.com"))
        .await
        .unwrap();
    let first = c
        .sessions
        .login(login("linus@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .sessions
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
            client_ip: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    validate(&mut c, &second.access_token).await.unwrap();

    // The rotated-away token comes back: stolen. The whole session ends.
    let err = c
        .sessions
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
            client_ip: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .sessions
        .refresh(pb::RefreshRequest {
            refresh_token: second.refresh_token.clone(),
            client_ip: String::new(),
        })
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
    let u = c
        .users
        .create_user(user("Barbara", "barbara@example.com"))
        .await
        .unwrap()
        .into_inner();
    let a = c
        .sessions
        .login(login("barbara@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .sessions
        .login(login("barbara@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
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

    let again = c
        .sessions
        .login(login("barbara@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
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
async fn memberships_roles_and_the_last_owner() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let owner = c
        .users
        .create_user(user("Olive", "olive@example.com"))
        .await
        .unwrap()
        .into_inner();
    let staff = c
        .users
        .create_user(user("Sam", "sam@example.com"))
        .await
        .unwrap()
        .into_inner();
    let mut request = new_tenant("members");
    request.owner_user_id = owner.id.clone();
    let t = c.tenants.create_tenant(request).await.unwrap().into_inner();

    let members = c
        .users
        .list_members(pb::ListMembersRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 1);
    assert_eq!(
        members.members[0].role,
        pb::MemberRole::Owner as i32,
        "CreateTenant made the owner"
    );

    c.users
        .add_member(pb::AddMemberRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
            role: pb::MemberRole::Employee as i32,
        })
        .await
        .unwrap();
    let err = c
        .users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: t.id.clone(),
            user_id: owner.id.clone(),
            role: pb::MemberRole::Admin as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "the last owner cannot be demoted"
    );
    let err = c
        .users
        .remove_member(pb::RemoveMemberRequest {
            tenant_id: t.id.clone(),
            user_id: owner.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "nor removed");

    // An employee's token reads the tenant but may not change it or its members.
    let emp = c
        .sessions
        .login(login("sam@example.com", PASSWORD, &t.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        emp.principal.as_ref().unwrap().role,
        pb::MemberRole::Employee as i32
    );
    let mut as_emp = server.clients_as(&emp.access_token).await;
    as_emp
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(t.id.clone())),
        })
        .await
        .unwrap();
    let err = as_emp
        .tenants
        .update_tenant(pb::UpdateTenantRequest {
            id: t.id.clone(),
            name: Some("Mine".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let check = c
        .sessions
        .check_permission(pb::CheckPermissionRequest {
            access_token: emp.access_token.clone(),
            tenant_id: t.id.clone(),
            permission: "data:write".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert!(check.reason.contains("EMPLOYEE"), "{}", check.reason);

    // The owner promotes them; a fresh token carries the new role.
    let own = c
        .sessions
        .login(login("olive@example.com", PASSWORD, &t.id))
        .await
        .unwrap()
        .into_inner();
    let mut as_owner = server.clients_as(&own.access_token).await;
    as_owner
        .users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
            role: pb::MemberRole::Owner as i32,
        })
        .await
        .unwrap();
    c.users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: t.id.clone(),
            user_id: owner.id.clone(),
            role: pb::MemberRole::Admin as i32,
        })
        .await
        .expect("with two owners one may step down");
    let tenants = c
        .users
        .list_user_tenants(pb::ListUserTenantsRequest {
            user_id: staff.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenants.memberships[0].role, pb::MemberRole::Owner as i32);
    // Users outside the tenant see nothing of it.
    let outsider = c
        .users
        .create_user(user("Otto", "otto@example.com"))
        .await
        .unwrap()
        .into_inner();
    let out = c
        .sessions
        .login(login("otto@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let mut as_out = server.clients_as(&out.access_token).await;
    let err = as_out
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(t.id.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nor whether a tenant exists at all.
    let err = as_out
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Slug(
                "no-such-tenant".into(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let _ = outsider;
}

#[tokio::test]
async fn every_rpc_refuses_a_missing_credential_and_a_wrong_scope() {
    let server = TestServer::start().await;
    // A key that may only read tenants, made the way an operator would.
    let mut db = server.db.connect().await;
    let (reader, _) = tenantd::identity::keys::create(
        &mut db,
        "reader",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let mut anonymous = {
        let channel = server.channel().await;
        (
            pb::tenant_service_client::TenantServiceClient::new(channel.clone()),
            pb::migration_service_client::MigrationServiceClient::new(channel.clone()),
            pb::user_service_client::UserServiceClient::new(channel.clone()),
            pb::session_service_client::SessionServiceClient::new(channel.clone()),
            pb::tenant_data_service_client::TenantDataServiceClient::new(channel),
        )
    };
    let mut narrow = server.clients_as(&reader).await;
    // Keys are cached; wait for the new one to load (refreshed every 5 s).
    for _ in 0..70 {
        if narrow
            .tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    narrow
        .tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("the reader key reads tenants");

    macro_rules! check {
        ($name:literal, $anon:expr, $narrow:expr, $narrow_code:expr) => {{
            let anon: Result<_, tonic::Status> = $anon.await;
            assert_eq!(
                anon.map(drop).unwrap_err().code(),
                Code::Unauthenticated,
                "{} without credentials",
                $name
            );
            if let Some(code) = $narrow_code {
                let narrow: Result<_, tonic::Status> = $narrow.await;
                assert_eq!(
                    narrow.map(drop).unwrap_err().code(),
                    code,
                    "{} with a tenants:read key",
                    $name
                );
            }
        }};
    }
    let denied = Some(Code::PermissionDenied);
    let id = || uuid::Uuid::now_v7().to_string();
    check!(
        "CreateTenant",
        anonymous.0.create_tenant(new_tenant("x")),
        narrow.tenants.create_tenant(new_tenant("x")),
        denied
    );
    check!(
        "GetTenant",
        anonymous.0.get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(id()))
        }),
        narrow
            .tenants
            .list_tenants(pb::ListTenantsRequest::default()),
        None::<Code>
    );
    check!(
        "ListTenants",
        anonymous.0.list_tenants(pb::ListTenantsRequest::default()),
        narrow
            .tenants
            .list_tenants(pb::ListTenantsRequest::default()),
        None::<Code>
    );
    check!(
        "UpdateTenant",
        anonymous.0.update_tenant(pb::UpdateTenantRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.tenants.update_tenant(pb::UpdateTenantRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "SuspendTenant",
        anonymous.0.suspend_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.tenants.suspend_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "ResumeTenant",
        anonymous.0.resume_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.tenants.resume_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "ArchiveTenant",
        anonymous.0.archive_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.tenants.archive_tenant(pb::TenantLifecycleRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "PurgeTenant",
        anonymous.0.purge_tenant(pb::PurgeTenantRequest {
            id: id(),
            confirm_slug: "x-y".into(),
            ..Default::default()
        }),
        narrow.tenants.purge_tenant(pb::PurgeTenantRequest {
            id: id(),
            confirm_slug: "x-y".into(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "PlanUpgrade",
        anonymous.1.plan_upgrade(pb::PlanUpgradeRequest::default()),
        narrow
            .migrations
            .plan_upgrade(pb::PlanUpgradeRequest::default()),
        denied
    );
    check!(
        "StartUpgrade",
        anonymous
            .1
            .start_upgrade(pb::StartUpgradeRequest::default()),
        narrow
            .migrations
            .start_upgrade(pb::StartUpgradeRequest::default()),
        denied
    );
    check!(
        "WatchUpgrade",
        anonymous.1.watch_upgrade(pb::WatchUpgradeRequest {
            run_id: id(),
            ..Default::default()
        }),
        narrow.migrations.watch_upgrade(pb::WatchUpgradeRequest {
            run_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "GetUpgrade",
        anonymous
            .1
            .get_upgrade(pb::GetUpgradeRequest { run_id: id() }),
        narrow
            .migrations
            .get_upgrade(pb::GetUpgradeRequest { run_id: id() }),
        denied
    );
    check!(
        "ListUpgrades",
        anonymous
            .1
            .list_upgrades(pb::ListUpgradesRequest::default()),
        narrow
            .migrations
            .list_upgrades(pb::ListUpgradesRequest::default()),
        denied
    );
    check!(
        "PauseUpgrade",
        anonymous.1.pause_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        narrow.migrations.pause_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "ResumeUpgrade",
        anonymous.1.resume_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        narrow.migrations.resume_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "CancelUpgrade",
        anonymous.1.cancel_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        narrow.migrations.cancel_upgrade(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "RetryFailed",
        anonymous.1.retry_failed(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        narrow.migrations.retry_failed(pb::UpgradeRunRequest {
            run_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "CreateUser",
        anonymous.2.create_user(user("A", "a@example.com")),
        narrow.users.create_user(user("A", "a@example.com")),
        denied
    );
    check!(
        "GetUser",
        anonymous.2.get_user(pb::GetUserRequest { id: id() }),
        narrow.users.get_user(pb::GetUserRequest { id: id() }),
        denied
    );
    check!(
        "UpdateUser",
        anonymous.2.update_user(pb::UpdateUserRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.users.update_user(pb::UpdateUserRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "DeactivateUser",
        anonymous.2.deactivate_user(pb::DeactivateUserRequest {
            id: id(),
            ..Default::default()
        }),
        narrow.users.deactivate_user(pb::DeactivateUserRequest {
            id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "ChangePassword",
        anonymous.2.change_password(pb::ChangePasswordRequest {
            user_id: id(),
            current_password: String::new(),
            new_password: PASSWORD.into()
        }),
        narrow.users.change_password(pb::ChangePasswordRequest {
            user_id: id(),
            current_password: String::new(),
            new_password: PASSWORD.into()
        }),
        denied
    );
    check!(
        "AddMember",
        anonymous.2.add_member(pb::AddMemberRequest {
            tenant_id: id(),
            user_id: id(),
            role: 4
        }),
        narrow.users.add_member(pb::AddMemberRequest {
            tenant_id: id(),
            user_id: id(),
            role: 4
        }),
        denied
    );
    check!(
        "ChangeRole",
        anonymous.2.change_role(pb::ChangeRoleRequest {
            tenant_id: id(),
            user_id: id(),
            role: 4
        }),
        narrow.users.change_role(pb::ChangeRoleRequest {
            tenant_id: id(),
            user_id: id(),
            role: 4
        }),
        denied
    );
    check!(
        "RemoveMember",
        anonymous.2.remove_member(pb::RemoveMemberRequest {
            tenant_id: id(),
            user_id: id()
        }),
        narrow.users.remove_member(pb::RemoveMemberRequest {
            tenant_id: id(),
            user_id: id()
        }),
        denied
    );
    check!(
        "ListMembers",
        anonymous.2.list_members(pb::ListMembersRequest {
            tenant_id: id(),
            ..Default::default()
        }),
        narrow.users.list_members(pb::ListMembersRequest {
            tenant_id: id(),
            ..Default::default()
        }),
        denied
    );
    check!(
        "ListUserTenants",
        anonymous
            .2
            .list_user_tenants(pb::ListUserTenantsRequest { user_id: id() }),
        narrow
            .users
            .list_user_tenants(pb::ListUserTenantsRequest { user_id: id() }),
        denied
    );
    check!(
        "VerifyAudit",
        anonymous.2.verify_audit(pb::VerifyAuditRequest {}),
        narrow.users.verify_audit(pb::VerifyAuditRequest {}),
        denied
    );
    check!(
        "Login",
        anonymous.3.login(login("a@example.com", PASSWORD, "")),
        narrow.sessions.login(login("a@example.com", PASSWORD, "")),
        denied
    );
    check!(
        "Refresh",
        anonymous.3.refresh(pb::RefreshRequest {
            refresh_token: "x".into(),
            client_ip: String::new()
        }),
        narrow.sessions.refresh(pb::RefreshRequest {
            refresh_token: "x".into(),
            client_ip: String::new()
        }),
        denied
    );
    check!(
        "Logout",
        anonymous.3.logout(pb::LogoutRequest {
            access_token: String::new()
        }),
        narrow.sessions.logout(pb::LogoutRequest {
            access_token: String::new()
        }),
        Some(Code::InvalidArgument)
    );
    check!(
        "RevokeAllSessions",
        anonymous
            .3
            .revoke_all_sessions(pb::RevokeAllSessionsRequest {
                user_id: id(),
                ..Default::default()
            }),
        narrow
            .sessions
            .revoke_all_sessions(pb::RevokeAllSessionsRequest {
                user_id: id(),
                ..Default::default()
            }),
        denied
    );
    check!(
        "ListSessions",
        anonymous
            .3
            .list_sessions(pb::ListSessionsRequest { user_id: id() }),
        narrow
            .sessions
            .list_sessions(pb::ListSessionsRequest { user_id: id() }),
        denied
    );
    check!(
        "ValidateToken",
        anonymous.3.validate_token(pb::ValidateTokenRequest {
            access_token: "x".into()
        }),
        narrow.sessions.validate_token(pb::ValidateTokenRequest {
            access_token: "x".into()
        }),
        denied
    );
    check!(
        "CheckPermission",
        anonymous.3.check_permission(pb::CheckPermissionRequest {
            access_token: "x".into(),
            tenant_id: id(),
            permission: "data:read".into()
        }),
        narrow
            .sessions
            .check_permission(pb::CheckPermissionRequest {
                access_token: "x".into(),
                tenant_id: id(),
                permission: "data:read".into()
            }),
        denied
    );

    // The data plane: a valid tenant id, so only the credential decides.
    let tenant = server
        .client()
        .await
        .create_tenant(new_tenant("walk"))
        .await
        .unwrap()
        .into_inner()
        .id;
    let execute = || pb::ExecuteRequest {
        tenant_id: tenant.clone(),
        sql: "SELECT 1".into(),
        read_only: true,
        ..Default::default()
    };
    let transaction = || pb::TransactionRequest {
        tenant_id: tenant.clone(),
        statements: vec![pb::Statement {
            sql: "SELECT 1".into(),
            ..Default::default()
        }],
        read_only: true,
        ..Default::default()
    };
    check!(
        "Execute",
        anonymous.4.execute(execute()),
        narrow.data.execute(execute()),
        denied
    );
    check!(
        "Transaction",
        anonymous.4.transaction(transaction()),
        narrow.data.transaction(transaction()),
        denied
    );

    // A made-up key and a garbage token are refused too.
    let mut forged = server.clients_as("tdk_0123456789ab_forged").await;
    assert_eq!(
        forged
            .tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut garbage = server.clients_as("eyJhbGciOiJIUzI1NiJ9.e30.bad").await;
    assert_eq!(
        garbage
            .tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn the_audit_chain_verifies_and_an_edited_row_is_found() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let u = c
        .users
        .create_user(user("Audrey", "audrey@example.com"))
        .await
        .unwrap()
        .into_inner();
    let mut request = new_tenant("audit");
    request.owner_user_id = u.id.clone();
    c.tenants.create_tenant(request).await.unwrap();
    c.sessions
        .login(login("audrey@example.com", PASSWORD, ""))
        .await
        .unwrap();
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

#[tokio::test]
async fn a_user_changes_their_password_and_other_sessions_end() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let u = c
        .users
        .create_user(user("Hedy", "hedy@example.com"))
        .await
        .unwrap()
        .into_inner();
    let here = c
        .sessions
        .login(login("hedy@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let elsewhere = c
        .sessions
        .login(login("hedy@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let mut own = server.clients_as(&here.access_token).await;
    let new_password = "frequency hopping spread spectrum";

    let err = own
        .users
        .change_password(pb::ChangePasswordRequest {
            user_id: u.id.clone(),
            current_password: "not my password at all".into(),
            new_password: new_password.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["current_password"]);
    let err = own
        .users
        .change_password(pb::ChangePasswordRequest {
            user_id: u.id.clone(),
            current_password: PASSWORD.into(),
            new_password: "weak".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["new_password"]);

    let changed = own
        .users
        .change_password(pb::ChangePasswordRequest {
            user_id: u.id.clone(),
            current_password: PASSWORD.into(),
            new_password: new_password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        changed.sessions_revoked, 1,
        "the other session ends, this one stays"
    );
    eventually_invalid(&mut c, &elsewhere.access_token).await;
    validate(&mut c, &here.access_token).await.unwrap();
    assert_eq!(
        c.sessions
            .login(login("hedy@example.com", PASSWORD, ""))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    c.sessions
        .login(login("hedy@example.com", new_password, ""))
        .await
        .unwrap();

    // Users may not act on someone else.
    let other = c
        .users
        .create_user(user("Ida", "ida@example.com"))
        .await
        .unwrap()
        .into_inner();
    let err = own
        .users
        .get_user(pb::GetUserRequest {
            id: other.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    own.users
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .unwrap();
}

#[tokio::test]
async fn members_can_be_removed_and_members_pages_are_keyed() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c
        .tenants
        .create_tenant(new_tenant("paging"))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = c
            .users
            .create_user(user(&format!("M{i}"), &format!("m{i}@example.com")))
            .await
            .unwrap()
            .into_inner();
        c.users
            .add_member(pb::AddMemberRequest {
                tenant_id: t.id.clone(),
                user_id: u.id.clone(),
                role: pb::MemberRole::Manager as i32,
            })
            .await
            .unwrap();
        ids.push(u.id);
    }
    let err = c
        .users
        .add_member(pb::AddMemberRequest {
            tenant_id: t.id.clone(),
            user_id: ids[0].clone(),
            role: pb::MemberRole::Admin as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .users
            .list_members(pb::ListMembersRequest {
                tenant_id: t.id.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.members.into_iter().map(|m| m.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    c.users
        .remove_member(pb::RemoveMemberRequest {
            tenant_id: t.id.clone(),
            user_id: ids[2].clone(),
        })
        .await
        .unwrap();
    let left = c
        .users
        .list_user_tenants(pb::ListUserTenantsRequest {
            user_id: ids[2].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.memberships.is_empty());
}

#[tokio::test]
async fn an_expired_access_token_stops_validating_and_permissions_are_explained() {
    let server = TestServer::start_with(|c| c.identity.access_ttl = Duration::from_secs(1)).await;
    let mut c = server.clients().await;
    let u = c
        .users
        .create_user(user("Katherine", "katherine@example.com"))
        .await
        .unwrap()
        .into_inner();
    let mut request = new_tenant("expiry");
    request.owner_user_id = u.id.clone();
    let t = c.tenants.create_tenant(request).await.unwrap().into_inner();
    let s = c
        .sessions
        .login(login("katherine@example.com", PASSWORD, &t.id))
        .await
        .unwrap()
        .into_inner();
    let p = validate(&mut c, &s.access_token).await.unwrap();
    assert_eq!(p.tenant_id, t.id);
    assert_eq!(p.role, pb::MemberRole::Owner as i32);
    let allowed = c
        .sessions
        .check_permission(pb::CheckPermissionRequest {
            access_token: s.access_token.clone(),
            tenant_id: t.id.clone(),
            permission: "members:manage".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(allowed.allowed);
    assert!(allowed.reason.contains("OWNER"), "{}", allowed.reason);
    let err = c
        .sessions
        .check_permission(pb::CheckPermissionRequest {
            access_token: s.access_token.clone(),
            tenant_id: t.id.clone(),
            permission: "data:delete".into(),
        })
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
        .refresh(pb::RefreshRequest {
            refresh_token: s.refresh_token.clone(),
            client_ip: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    validate(&mut c, &fresh.access_token).await.unwrap();
}

/// How many audit events of each action the log holds.
async fn audit_counts(db: &mut sqlx::PgConnection) -> std::collections::BTreeMap<String, i64> {
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
    before: &mut std::collections::BTreeMap<String, i64>,
    what: &str,
    expected: &[&str],
) {
    let after = audit_counts(db).await;
    let added: std::collections::BTreeMap<String, i64> = after
        .iter()
        .map(|(a, n)| (a.clone(), n - before.get(a).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 0)
        .collect();
    let expected: std::collections::BTreeMap<String, i64> =
        expected.iter().map(|a| (a.to_string(), 1)).collect();
    assert_eq!(added, expected, "audit events of {what}");
    *before = after;
}

/// One way a user may try to change its own login identifiers.
struct LoginChange {
    what: &'static str,
    email: Option<&'static str>,
    phone: Option<&'static str>,
}

#[tokio::test]
async fn a_stolen_token_alone_cannot_change_how_the_user_logs_in() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let mut db = server.db.connect().await;
    let u = c
        .users
        .create_user(user("Grace", "grace@example.com"))
        .await
        .unwrap()
        .into_inner();
    let issued = c
        .sessions
        .login(login("grace@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    let mut own = server.clients_as(&issued.access_token).await;
    let changes = [
        LoginChange {
            what: "e-mail",
            email: Some("attacker@example.com"),
            phone: None,
        },
        LoginChange {
            what: "e-mail in another case",
            email: Some("GRACE@example.org"),
            phone: None,
        },
        LoginChange {
            what: "phone",
            email: None,
            phone: Some("+1 202 555 0100"),
        },
        LoginChange {
            what: "both",
            email: Some("a2@example.com"),
            phone: Some("+1 202 555 0101"),
        },
        LoginChange {
            what: "cleared phone",
            email: None,
            phone: Some(""),
        },
    ];
    for change in &changes {
        for (given, why) in [
            ("", "no current password"),
            ("wrong password guess", "a wrong one"),
        ] {
            let err = own
                .users
                .update_user(pb::UpdateUserRequest {
                    id: u.id.clone(),
                    email: change.email.map(Into::into),
                    phone: change.phone.map(Into::into),
                    current_password: given.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                bad_fields(&err),
                ["current_password"],
                "{} with {why}: {err:?}",
                change.what
            );
        }
    }
    let unchanged = c
        .users
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (unchanged.email.as_str(), unchanged.version),
        ("grace@example.com", u.version)
    );

    // Names need no password; the login identifiers do, and take it.
    own.users
        .update_user(pb::UpdateUserRequest {
            id: u.id.clone(),
            first_name: Some("Grace B.".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let moved = own
        .users
        .update_user(pb::UpdateUserRequest {
            id: u.id.clone(),
            email: Some("grace.hopper@example.com".into()),
            current_password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.email, "grace.hopper@example.com");
    // A service key is not a user and is trusted to change it.
    c.users
        .update_user(pb::UpdateUserRequest {
            id: u.id.clone(),
            phone: Some("+1 202 555 0199".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // The audit log names the fields each change touched, not their values.
    let fields: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT details->'fields' FROM tenantd.audit_log \
          WHERE action = 'user.update' AND target = $1 ORDER BY seq",
    )
    .bind(format!("user:{}", u.id))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        fields,
        [
            serde_json::json!(["first_name"]),
            serde_json::json!(["email"]),
            serde_json::json!(["phone"]),
        ]
    );

    // Guessing the current password through a stolen token is rate limited
    // like a login.
    let mut limited = false;
    for i in 0..40 {
        let err = own
            .users
            .update_user(pb::UpdateUserRequest {
                id: u.id.clone(),
                email: Some("attacker@example.com".into()),
                current_password: format!("guess number {i}"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        if err.code() == Code::ResourceExhausted {
            limited = true;
            break;
        }
        assert_eq!(bad_fields(&err), ["current_password"]);
    }
    assert!(limited, "40 guesses were all checked");
}

#[tokio::test]
async fn every_session_change_leaves_exactly_one_audit_event() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let mut db = server.db.connect().await;
    let owner = c
        .users
        .create_user(user("Frances", "frances@example.com"))
        .await
        .unwrap()
        .into_inner();
    let mut request = new_tenant("audited");
    request.owner_user_id = owner.id.clone();
    let t = c.tenants.create_tenant(request).await.unwrap().into_inner();
    let staff = c
        .users
        .create_user(user("Mary", "mary@example.com"))
        .await
        .unwrap()
        .into_inner();

    let mut before = audit_counts(&mut db).await;
    let unbound = c
        .sessions
        .login(login("frances@example.com", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    audited(&mut db, &mut before, "login", &["session.login"]).await;
    let bound = c
        .sessions
        .login(login("frances@example.com", PASSWORD, &t.id))
        .await
        .unwrap()
        .into_inner();
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
    as_owner
        .users
        .add_member(pb::AddMemberRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
            role: pb::MemberRole::Employee as i32,
        })
        .await
        .unwrap();
    audited(&mut db, &mut before, "add member", &["member.add"]).await;
    as_owner
        .users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
            role: pb::MemberRole::Admin as i32,
        })
        .await
        .unwrap();
    audited(&mut db, &mut before, "change role", &["member.change_role"]).await;
    let staff_session = c
        .sessions
        .login(login("mary@example.com", PASSWORD, &t.id))
        .await
        .unwrap()
        .into_inner();
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
        .change_role(pb::ChangeRoleRequest {
            tenant_id: t.id.clone(),
            user_id: staff.id.clone(),
            role: pb::MemberRole::Owner as i32,
        })
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

    c.sessions
        .revoke_all_sessions(pb::RevokeAllSessionsRequest {
            user_id: staff.id.clone(),
            reason: "audit test".into(),
        })
        .await
        .unwrap();
    audited(&mut db, &mut before, "revoke all", &["session.revoke"]).await;
    c.sessions
        .revoke_all_sessions(pb::RevokeAllSessionsRequest {
            user_id: staff.id.clone(),
            reason: "again".into(),
        })
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
