//! Users: creation and validation, password changes, and the login
//! identifiers a stolen token alone cannot change.

use tenantd::pb;
use tonic::Code;

use super::{create_user, eventually_invalid, validate};
use crate::common::identity::{PASSWORD, log_in, login, user};
use crate::common::{TestServer, bad_fields};

/// A CreateUser that is refused, naming `field`.
struct Invalid {
    field: &'static str,
    request: pb::CreateUserRequest,
}

#[tokio::test]
async fn users_are_created_validated_and_unique_by_email_in_any_case() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let ada = create_user(&mut c, "Ada", "Ada.Lovelace@Example.com").await;
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

    let cases = [
        Invalid {
            field: "first_name",
            request: pb::CreateUserRequest {
                first_name: String::new(),
                ..user("x", "x1@example.com")
            },
        },
        Invalid {
            field: "email",
            request: pb::CreateUserRequest {
                email: "not-an-email".into(),
                ..user("x", "")
            },
        },
        Invalid {
            field: "email",
            request: pb::CreateUserRequest {
                email: String::new(),
                phone: String::new(),
                ..user("x", "")
            },
        },
        Invalid {
            field: "phone",
            request: pb::CreateUserRequest {
                phone: "12".into(),
                ..user("x", "x2@example.com")
            },
        },
        Invalid {
            field: "password",
            request: pb::CreateUserRequest {
                password: "short".into(),
                ..user("x", "x3@example.com")
            },
        },
        Invalid {
            field: "password",
            request: pb::CreateUserRequest {
                password: "password password".into(),
                ..user("x", "x4@example.com")
            },
        },
    ];
    for case in cases {
        let err = c.users.create_user(case.request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), [case.field]);
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
async fn a_user_changes_their_password_and_other_sessions_end() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let u = create_user(&mut c, "Hedy", "hedy@example.com").await;
    let here = log_in(&mut c, "hedy@example.com", "").await;
    let elsewhere = log_in(&mut c, "hedy@example.com", "").await;
    let mut own = server.clients_as(&here.access_token).await;
    let new_password = "frequency hopping spread spectrum";
    let change = |current: &str, new: &str| pb::ChangePasswordRequest {
        user_id: u.id.clone(),
        current_password: current.into(),
        new_password: new.into(),
    };

    let err = own
        .users
        .change_password(change("not my password at all", new_password))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["current_password"]);
    let err = own
        .users
        .change_password(change(PASSWORD, "weak"))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["new_password"]);

    let changed = own
        .users
        .change_password(change(PASSWORD, new_password))
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
    let other = create_user(&mut c, "Ida", "ida@example.com").await;
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

/// One way a user may try to change its own login identifiers.
struct LoginChange {
    what: &'static str,
    email: Option<&'static str>,
    phone: Option<&'static str>,
}

/// A current password a change of the login identifiers is sent with.
struct Given {
    password: &'static str,
    why: &'static str,
}

#[tokio::test]
async fn a_stolen_token_alone_cannot_change_how_the_user_logs_in() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let mut db = server.db.connect().await;
    let u = create_user(&mut c, "Grace", "grace@example.com").await;
    let issued = log_in(&mut c, "grace@example.com", "").await;
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
    let given = [
        Given {
            password: "",
            why: "no current password",
        },
        Given {
            password: "wrong password guess",
            why: "a wrong one",
        },
    ];
    for change in &changes {
        for Given { password, why } in &given {
            let err = own
                .users
                .update_user(pb::UpdateUserRequest {
                    id: u.id.clone(),
                    email: change.email.map(Into::into),
                    phone: change.phone.map(Into::into),
                    current_password: (*password).into(),
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
