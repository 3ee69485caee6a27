//! Tenants through the CLI: the whole lifecycle in JSON and table output,
//! paging with `--all`, server errors with their field violations, usage
//! errors, the report for a server that is not there, audit and health.

use serde_json::Value;

use super::Ctl;
use crate::common::{TestServer, create_tenant};

fn unique_slug(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test]
async fn tenant_lifecycle_through_the_cli() {
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut slugs = Vec::new();
    for _ in 0..3 {
        let t = create_tenant(&mut client, "page").await;
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
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
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
    let server = TestServer::start().await;
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
