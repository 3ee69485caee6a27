//! Users, memberships and sessions through the CLI: passwords and tokens on
//! stdin or in files, a token as tenantctl's own key, revocation seen by
//! `sessions validate`.

use serde_json::Value;

use super::{Ctl, id_of};
use crate::common::TestServer;
use crate::common::identity::PASSWORD;

#[tokio::test]
async fn users_members_and_sessions_through_the_cli() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());

    // A user, with the password piped in.
    let created = ctl
        .with_stdin(&format!("{PASSWORD}\n"))
        .json(&[
            "users",
            "create",
            "--first-name",
            "Ada",
            "--last-name",
            "Lovelace",
            "--email",
            "ada@example.com",
            "--password-stdin",
        ])
        .await;
    assert_eq!(created["first_name"], "Ada");
    assert_eq!(created["last_name"], "Lovelace");
    assert_eq!(created["email"], "ada@example.com");
    assert_eq!(created["phone"], "");
    assert_eq!(created["status"], "active");
    assert_eq!(created["version"], 1);
    let user = id_of(&created, "id");
    uuid::Uuid::parse_str(&user).expect("the user id is a UUID");
    assert_eq!(ctl.json(&["users", "get", &user]).await, created);
    let table = ctl.ok(&["users", "get", &user]).await;
    assert!(table.contains(&user), "{table}");
    assert!(table.contains("ada@example.com"), "{table}");
    assert!(table.contains("active"), "{table}");

    let updated = ctl
        .json(&[
            "users",
            "update",
            &user,
            "--first-name",
            "Augusta Ada",
            "--expected-version",
            "1",
        ])
        .await;
    assert_eq!(updated["first_name"], "Augusta Ada");
    assert_eq!(updated["email"], "ada@example.com");
    assert_eq!(updated["version"], 2);

    // Membership in a tenant named by slug, then by id.
    let tenant = ctl
        .json(&[
            "tenants", "create", "--name", "Engines", "--slug", "engines",
        ])
        .await;
    let tenant_id = id_of(&tenant, "id");
    let added = ctl
        .json(&["members", "add", "engines", &user, "--role", "employee"])
        .await;
    assert_eq!(added["tenant_id"], tenant_id.as_str());
    assert_eq!(added["user_id"], user.as_str());
    assert_eq!(added["role"], "employee");
    let changed = ctl
        .json(&[
            "members", "set-role", &tenant_id, &user, "--role", "manager",
        ])
        .await;
    assert_eq!(changed["role"], "manager");
    let members = ctl.json(&["members", "list", "engines"]).await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(members["members"][0]["user_id"], user.as_str());
    assert_eq!(members["members"][0]["role"], "manager");
    assert_eq!(members["next_page_token"], "");
    let table = ctl.ok(&["members", "list", "engines"]).await;
    assert!(
        table.contains(&user) && table.contains("manager"),
        "{table}"
    );
    let memberships = ctl.json(&["users", "tenants", &user]).await;
    assert_eq!(
        memberships["memberships"][0]["tenant_id"],
        tenant_id.as_str()
    );
    assert_eq!(memberships["memberships"][0]["role"], "manager");

    // Log in with the password on stdin, into the tenant by its slug.
    let login_args = [
        "sessions",
        "login",
        "--email",
        "ada@example.com",
        "--password-stdin",
    ];
    let login = ctl
        .with_stdin(PASSWORD)
        .json(&[&login_args[..], &["--tenant", "engines"]].concat())
        .await;
    let access = id_of(&login, "access_token");
    assert_eq!(access.matches('.').count(), 2, "a JWT: {access}");
    assert!(!id_of(&login, "refresh_token").is_empty());
    let session_id = id_of(&login, "session_id");
    assert_eq!(login["principal"]["user_id"], user.as_str());
    assert_eq!(login["principal"]["session_id"], session_id.as_str());
    assert_eq!(login["principal"]["tenant_id"], tenant_id.as_str());
    assert_eq!(login["principal"]["role"], "manager");

    // --token-only prints the token alone, fit to become tenantctl's key.
    let token = ctl
        .with_stdin(PASSWORD)
        .ok(&[&login_args[..], &["--token-only"]].concat())
        .await;
    assert_eq!(token.lines().count(), 1, "{token}");
    let token = token.trim_end();
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let me = ctl.with_key(token).json(&["users", "get", &user]).await;
    assert_eq!(me["first_name"], "Augusta Ada");
    let as_manager = ctl
        .with_key(token)
        .json(&["members", "list", "engines"])
        .await;
    assert_eq!(as_manager["members"][0]["user_id"], user.as_str());

    let principal = ctl
        .with_stdin(&format!("{access}\n"))
        .json(&["sessions", "validate", "--token-stdin"])
        .await;
    assert_eq!(principal["user_id"], user.as_str());
    assert_eq!(principal["session_id"], session_id.as_str());
    assert_eq!(principal["tenant_id"], tenant_id.as_str());
    assert_eq!(principal["role"], "manager");
    let table = ctl
        .with_stdin(&access)
        .ok(&["sessions", "validate", "--token-stdin"])
        .await;
    assert!(
        table.contains(&session_id) && table.contains("manager"),
        "{table}"
    );

    // A MANAGER may write data but not change the tenant; a denial exits 1.
    let check = |permission: &'static str| {
        [
            "sessions",
            "check",
            "--token-stdin",
            "--tenant",
            "engines",
            "--permission",
            permission,
        ]
    };
    let allowed = ctl.with_stdin(&access).json(&check("data:write")).await;
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed["role"], "manager");
    let (code, stderr) = ctl.with_stdin(&access).fails(&check("tenant:update")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("tenant:update is not granted"), "{stderr}");

    let sessions = ctl.json(&["sessions", "list", &user]).await;
    let sessions = sessions["sessions"].as_array().expect("sessions").clone();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|s| s["revoked"] == false && s["device"] == "tenantctl")
    );
    let bound = sessions
        .iter()
        .find(|s| s["id"] == session_id.as_str())
        .expect("the tenant login's session is listed");
    assert_eq!(bound["tenant_id"], tenant_id.as_str());

    // Revoking ends both sessions; the token stops validating at once.
    let revoked = ctl
        .json(&["sessions", "revoke", &user, "--reason", "laptop stolen"])
        .await;
    assert_eq!(revoked["sessions_revoked"], 2);
    let (code, stderr) = ctl
        .with_stdin(&access)
        .fails(&["sessions", "validate", "--token-stdin"])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("tenantctl: UNAUTHENTICATED: invalid or expired token"),
        "{stderr}"
    );
    assert!(stderr.contains("session ended"), "{stderr}");
    assert!(!stderr.contains("--key"), "not the key's fault: {stderr}");
    let sessions = ctl.json(&["sessions", "list", &user]).await;
    let all_revoked = sessions["sessions"]
        .as_array()
        .is_some_and(|s| s.iter().all(|s| s["revoked"] == true));
    assert!(all_revoked, "{sessions}");
    let table = ctl.ok(&["sessions", "list", &user]).await;
    assert!(
        table.contains(&session_id) && table.contains("revoked"),
        "{table}"
    );

    // A new password from a file: the old one stops working.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let new_password = dir.path().join("new-password");
    std::fs::write(&new_password, "a much longer passphrase now\n").expect("write the password");
    let new_password = new_password.to_str().expect("a UTF-8 path");
    let login_with_file = [
        "sessions",
        "login",
        "--email",
        "ada@example.com",
        "--password-file",
        new_password,
    ];
    let set = ctl
        .json(&[
            "users",
            "set-password",
            &user,
            "--password-file",
            new_password,
        ])
        .await;
    assert_eq!(set["user_id"], user.as_str());
    let (code, stderr) = ctl.with_stdin(PASSWORD).fails(&login_args).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("UNAUTHENTICATED: invalid credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong password"), "{stderr}");
    let login = ctl.json(&login_with_file).await;
    assert_eq!(login["principal"]["tenant_id"], "");
    // The refresh token, from a file, buys a new access token.
    let refresh_token = dir.path().join("refresh-token");
    std::fs::write(&refresh_token, id_of(&login, "refresh_token")).expect("write the token");
    let access = ctl
        .ok(&[
            "sessions",
            "refresh",
            "--token-file",
            refresh_token.to_str().expect("a UTF-8 path"),
            "--token-only",
        ])
        .await;
    let access = access.trim_end().to_owned();
    let principal = ctl
        .with_stdin(&access)
        .json(&["sessions", "validate", "--token-stdin"])
        .await;
    assert_eq!(principal["session_id"], login["session_id"]);
    let ended = ctl
        .with_stdin(&access)
        .json(&["sessions", "logout", "--token-stdin"])
        .await;
    assert_eq!(ended["ended"], true);
    let (code, _) = ctl
        .with_stdin(&access)
        .fails(&["sessions", "validate", "--token-stdin"])
        .await;
    assert_eq!(code, 1);

    // Out of the tenant, then deactivated: no more logins.
    let removed = ctl.json(&["members", "remove", "engines", &user]).await;
    assert_eq!(removed["removed"], true);
    let members = ctl.json(&["members", "list", &tenant_id]).await;
    assert_eq!(members["members"], Value::Array(Vec::new()));
    assert_eq!(
        ctl.ok(&["members", "list", "engines"]).await.trim(),
        "no members"
    );
    let deactivated = ctl
        .json(&["users", "disable", &user, "--reason", "left the company"])
        .await;
    assert_eq!(deactivated["status"], "deactivated");
    let (code, stderr) = ctl.fails(&login_with_file).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid credentials"), "{stderr}");
}

#[tokio::test]
async fn identity_mistakes_name_the_field_or_the_input() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());
    let create = |email: &'static str| {
        [
            "users",
            "create",
            "--first-name",
            "Grace",
            "--last-name",
            "Hopper",
            "--email",
            email,
            "--password-stdin",
        ]
    };

    // The server's verdicts: exit 1, the field named.
    let (code, stderr) = ctl
        .with_stdin(PASSWORD)
        .fails(&create("grace-at-example.com"))
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("tenantctl: INVALID_ARGUMENT"),
        "{stderr}"
    );
    assert!(
        stderr.contains("field email: must be an e-mail address"),
        "{stderr}"
    );
    let (code, stderr) = ctl
        .with_stdin("short")
        .fails(&create("grace@example.com"))
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("field password: must be at least 12 characters"),
        "{stderr}"
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let (code, stderr) = ctl.fails(&["users", "get", &unknown]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("NOT_FOUND: user not found"), "{stderr}");
    ctl.json(&["tenants", "create", "--name", "Navy", "--slug", "navy"])
        .await;
    let (code, stderr) = ctl
        .fails(&["members", "add", "navy", &unknown, "--role", "admin"])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("NOT_FOUND: user not found"), "{stderr}");
    let (code, stderr) = ctl.fails(&["members", "list", "no-such-tenant"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no tenant has the slug \"no-such-tenant\""),
        "{stderr}"
    );
    let (code, stderr) = ctl
        .with_stdin("not.a.token")
        .fails(&["sessions", "validate", "--token-stdin"])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("access token is not valid"), "{stderr}");

    // Refused before any call: exit 2, naming what is wrong.
    let (code, stderr) = ctl.fails(&["users", "get", "grace"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("USER_ID") && stderr.contains("is not an id"),
        "{stderr}"
    );
    let (code, stderr) = ctl.with_stdin("").fails(&create("grace@example.com")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no password in standard input"), "{stderr}");
    let (code, stderr) = ctl
        .fails(&[
            "sessions",
            "login",
            "--email",
            "grace@example.com",
            "--password-file",
            "/nonexistent/pw",
        ])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/pw"), "{stderr}");
    for args in [
        &["users", "create", "--first-name", "G", "--last-name", "H"][..],
        &[
            "users",
            "set-password",
            &unknown,
            "--password",
            "in plain sight",
        ],
        &["members", "add", "navy", &unknown],
        &["members", "set-role", "navy", &unknown, "--role", "boss"],
        &["sessions", "login", "--password-stdin"],
    ] {
        let (code, stderr) = ctl.fails(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}
