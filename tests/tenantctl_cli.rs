//! The real `tenantctl` binary against a real tenantd: the whole tenant
//! lifecycle through the CLI in JSON and table output, paging with `--all`,
//! server errors with their field violations, usage errors, and the report
//! for a server that is not there; then users, memberships and sessions —
//! passwords and tokens on stdin or in files, a token as tenantctl's own
//! key, revocation seen by `sessions validate`.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs tenantctl against one endpoint, isolated from the caller's
/// environment: with the admin key unless told otherwise, and with `stdin`
/// piped in (an empty, closed stdin without it).
#[derive(Clone)]
struct Ctl {
    endpoint: String,
    key: String,
    stdin: Option<String>,
}

impl Ctl {
    fn new(endpoint: impl Into<String>) -> Ctl {
        Ctl {
            endpoint: endpoint.into(),
            key: common::admin_key().to_owned(),
            stdin: None,
        }
    }

    /// The same runner with `input` on stdin.
    fn with_stdin(&self, input: &str) -> Ctl {
        Ctl {
            stdin: Some(input.to_owned()),
            ..self.clone()
        }
    }

    /// The same runner with `key` (a service key or access token) as TENANTD_KEY.
    fn with_key(&self, key: &str) -> Ctl {
        Ctl {
            key: key.to_owned(),
            ..self.clone()
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantctl"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .env_remove("TENANTD_ENDPOINT")
            .env_remove("TENANTCTL_OUTPUT")
            .env("TENANTD_KEY", &self.key)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run tenantctl");
        if let (Some(input), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .expect("write tenantctl's stdin");
        }
        // The server runs on this test's runtime, so the child is awaited,
        // never waited for on a blocked thread.
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("tenantctl {args:?} did not finish"))
            .expect("run tenantctl")
    }

    /// Stdout of a run that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "tenantctl {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The JSON document of a run that must succeed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tenantctl {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Exit code and stderr of a run that must fail.
    async fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "tenantctl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
        (out.status.code().expect("an exit code"), stderr)
    }
}

fn unique_slug(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test]
async fn tenant_lifecycle_through_the_cli() {
    let server = common::TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());
    let slug = unique_slug("cli");

    let created = ctl
        .json(&[
            "tenants",
            "create",
            "--name",
            "Acme GmbH",
            "--slug",
            &slug,
            "--industry",
            "manufacturing",
            "--country",
            "DE",
        ])
        .await;
    assert_eq!(created["slug"], slug.as_str());
    assert_eq!(created["name"], "Acme GmbH");
    assert_eq!(created["country"], "DE");
    assert_eq!(created["status"], "active");
    assert_eq!(created["version"], 1);
    let id = created["id"].as_str().expect("id is a string").to_owned();
    assert_eq!(
        created["schema_name"],
        format!("tenant_{}", id.replace('-', ""))
    );
    let created_at = created["created_at"].as_str().expect("created_at");
    chrono::DateTime::parse_from_rfc3339(created_at).expect("created_at is RFC 3339");

    // By slug and by id, in both output formats.
    let by_slug = ctl.json(&["tenants", "get", &slug]).await;
    assert_eq!(by_slug, created);
    let by_id = ctl.json(&["tenants", "get", &id]).await;
    assert_eq!(by_id, created);
    let table = ctl.ok(&["tenants", "get", &slug]).await;
    assert!(table.contains(&id), "{table}");
    assert!(table.contains("active"), "{table}");

    let list = ctl.ok(&["tenants", "list"]).await;
    assert!(list.contains(&slug), "{list}");
    assert!(list.contains("SCHEMA VERSION"), "{list}");
    let list = ctl.json(&["tenants", "list", "--status", "active"]).await;
    assert_eq!(list["tenants"][0]["id"], id.as_str());
    assert_eq!(list["next_page_token"], "");

    let updated = ctl
        .json(&[
            "tenants",
            "update",
            &id,
            "--name",
            "Acme AG",
            "--expected-version",
            "1",
        ])
        .await;
    assert_eq!(updated["name"], "Acme AG");
    assert_eq!(updated["industry"], "manufacturing");
    assert_eq!(updated["version"], 2);

    // A stale version is the server's ABORTED, exit code 1.
    let (code, stderr) = ctl
        .fails(&[
            "tenants",
            "update",
            &id,
            "--name",
            "Lost",
            "--expected-version",
            "1",
        ])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("tenantctl: ABORTED"), "{stderr}");

    let suspended = ctl
        .json(&["tenants", "suspend", &id, "--reason", "unpaid invoice"])
        .await;
    assert_eq!(suspended["status"], "suspended");
    let resumed = ctl.json(&["tenants", "resume", &id]).await;
    assert_eq!(resumed["status"], "active");
    // Only an archived tenant can be purged.
    let (code, stderr) = ctl
        .fails(&["tenants", "purge", &id, "--confirm-slug", &slug])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("FAILED_PRECONDITION"), "{stderr}");
    let archived = ctl
        .json(&["tenants", "archive", &id, "--expected-version", "4"])
        .await;
    assert_eq!(archived["status"], "archived");

    let (code, stderr) = ctl
        .fails(&["tenants", "purge", &id, "--confirm-slug", "someone-else"])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(stderr.contains("confirm_slug"), "{stderr}");
    let still = ctl.json(&["tenants", "get", &id]).await;
    assert_eq!(still["status"], "archived");

    let purged = ctl
        .json(&["tenants", "purge", &id, "--confirm-slug", &slug])
        .await;
    assert_eq!(purged["status"], "purged");
    let list = ctl.json(&["tenants", "list"]).await;
    assert_eq!(list["tenants"], Value::Array(Vec::new()));
    let list = ctl.ok(&["tenants", "list", "--status", "purged"]).await;
    assert!(list.contains(&slug), "{list}");
}

#[tokio::test]
async fn list_pages_and_all_follows_every_page() {
    let server = common::TestServer::start().await;
    let mut client = server.client().await;
    let mut slugs = Vec::new();
    for _ in 0..3 {
        let t = client
            .create_tenant(common::new_tenant("page"))
            .await
            .expect("create a tenant")
            .into_inner();
        slugs.push(t.slug);
    }
    let ctl = Ctl::new(server.endpoint());

    let first = ctl.json(&["tenants", "list", "--page-size", "2"]).await;
    assert_eq!(first["tenants"].as_array().map(Vec::len), Some(2));
    let token = first["next_page_token"].as_str().expect("a token");
    assert!(!token.is_empty());
    let second = ctl
        .json(&["tenants", "list", "--page-size", "2", "--page-token", token])
        .await;
    assert_eq!(second["tenants"][0]["slug"], slugs[2].as_str());
    assert_eq!(second["next_page_token"], "");

    let table = ctl.ok(&["tenants", "list", "--page-size", "2"]).await;
    assert!(
        table.contains(&format!("next page token: {token}")),
        "{table}"
    );

    let all = ctl
        .json(&["tenants", "list", "--page-size", "1", "--all"])
        .await;
    let listed: Vec<&str> = all["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["slug"].as_str())
        .collect();
    assert_eq!(listed, slugs);
    assert_eq!(all["next_page_token"], "");
}

#[tokio::test]
async fn bad_input_names_the_field_and_usage_errors_exit_2() {
    let server = common::TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());

    let (code, stderr) = ctl
        .fails(&[
            "tenants",
            "create",
            "--name",
            "Bad",
            "--slug",
            "Not A Slug!",
        ])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("tenantctl: INVALID_ARGUMENT"),
        "{stderr}"
    );
    assert!(stderr.contains("field slug:"), "{stderr}");

    let (code, stderr) = ctl.fails(&["tenants", "get", "no-such-tenant"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");

    // Refused by the command line itself, before any call.
    for args in [
        &["tenants", "purge", "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a"][..],
        &["tenants", "update", "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a"],
        &["tenants", "list", "--page-size", "0"],
        &["tenants", "list", "--status", "deleted"],
        &["--timeout", "soon", "tenants", "list"],
    ] {
        let (code, stderr) = ctl.fails(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn unreachable_server_names_the_address_and_how_to_start_one() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        listener.local_addr().expect("local address").port()
    };
    let user = "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a";
    for (endpoint, args) in [
        (format!("http://127.0.0.1:{port}"), &["tenants", "list"][..]),
        (format!("127.0.0.1:{port}"), &["tenants", "list"]),
        (format!("127.0.0.1:{port}"), &["users", "get", user]),
        (format!("127.0.0.1:{port}"), &["sessions", "list", user]),
    ] {
        let ctl = Ctl::new(endpoint);
        let (code, stderr) = ctl.fails(args).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.starts_with("tenantctl: "), "{stderr}");
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
        assert!(stderr.contains("tenantd serve"), "{stderr}");
        assert!(stderr.contains("--endpoint"), "{stderr}");
    }
}

#[tokio::test]
async fn audit_verify_passes_then_names_an_edited_event() {
    let server = common::TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());
    ctl.json(&[
        "tenants", "create", "--name", "Audit Co", "--slug", "audit-co",
    ])
    .await;
    let ok = ctl.run(&["audit", "verify"]).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 events verified"));

    let mut db = server.db.connect().await;
    sqlx::query("UPDATE tenantd.audit_log SET actor = 'someone else' WHERE seq = 1")
        .execute(&mut db)
        .await
        .unwrap();
    let broken = ctl.run(&["audit", "verify"]).await;
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("event 1"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}

#[tokio::test]
async fn health_reports_every_service_serving() {
    let server = common::TestServer::start().await;
    let ctl = Ctl::new(server.endpoint());
    let out = ctl.ok(&["health"]).await;
    for service in [
        "(server)",
        "tenantd.v1.TenantService",
        "tenantd.v1.MigrationService",
        "tenantd.v1.UserService",
        "tenantd.v1.SessionService",
    ] {
        assert!(out.contains(service), "{out}");
    }
    assert_eq!(out.matches("SERVING").count(), 5, "{out}");
    let json = ctl.json(&["health"]).await;
    assert_eq!(json["services"]["tenantd.v1.TenantService"], "SERVING");
}

const PASSWORD: &str = "correct horse battery staple";

/// The `id` of a JSON document, as an owned string.
fn id_of(doc: &Value, key: &str) -> String {
    doc[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .to_owned()
}

#[tokio::test]
async fn users_members_and_sessions_through_the_cli() {
    let server = common::TestServer::start().await;
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
    let login = ctl
        .json(&[
            "sessions",
            "login",
            "--email",
            "ada@example.com",
            "--password-file",
            new_password,
        ])
        .await;
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
    let (code, stderr) = ctl
        .fails(&[
            "sessions",
            "login",
            "--email",
            "ada@example.com",
            "--password-file",
            new_password,
        ])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid credentials"), "{stderr}");
}

#[tokio::test]
async fn identity_mistakes_name_the_field_or_the_input() {
    let server = common::TestServer::start().await;
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
