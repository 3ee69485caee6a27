//! A tenant reaches neither another tenant nor the catalog: not through the
//! API, and not from SQL the statement screen never sees.

use std::time::Duration;

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::{
    assert_screened, install_function, metadata, read_scalar, refused_or_reported, scalar,
    sqlstate, text,
};
use crate::common::data::{exec, read, stmt};
use crate::common::{TestServer, bad_fields};

#[tokio::test]
async fn a_tenant_reaches_neither_another_tenant_nor_the_catalog() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let a = c.tenant("alpha").await;
    let b = c.tenant("beta").await;
    c.data
        .execute(exec(
            &b.id,
            "INSERT INTO locations (name) VALUES ($1)",
            vec![text("B's secret warehouse")],
        ))
        .await
        .unwrap();

    let denied = [
        format!("SELECT * FROM {}.locations", b.schema_name),
        format!(
            "INSERT INTO {}.locations (name) VALUES ('x')",
            b.schema_name
        ),
        "SELECT * FROM tenantd.users".to_owned(),
        "SELECT * FROM tenantd.tenants".to_owned(),
    ];
    for sql in &denied {
        let err = c.data.execute(exec(&a.id, sql, vec![])).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{sql}: {err:?}");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}");
    }
    // Changing who the session is, or taking advisory lock keys (shared by
    // the whole database: tenantd's own, other tenants' upgrade locks), is
    // refused before it reaches PostgreSQL.
    let screened = [
        format!("SET ROLE {}", b.schema_name),
        "SET ROLE postgres".to_owned(),
        "SET SESSION AUTHORIZATION postgres".to_owned(),
        format!("SELECT set_config('role', '{}', false)", b.schema_name),
        "SELECT pg_advisory_lock(1)".to_owned(),
        "SELECT pg_try_advisory_xact_lock(1)".to_owned(),
    ];
    for sql in &screened {
        let err = c.data.execute(exec(&a.id, sql, vec![])).await.unwrap_err();
        assert_screened(&err, "sql");
    }
    // And where SQL the screen never sees tries the same, PostgreSQL's
    // privileges hold: set_config('role') to another tenant's role, or an
    // advisory lock.
    install_function(
        &server,
        &a,
        "become_b",
        &format!("PERFORM set_config('role', '{}', false);", b.schema_name),
    )
    .await;
    let err = c
        .data
        .execute(exec(&a.id, "SELECT become_b()", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "become_b: {err:?}");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "become_b");
    install_function(&server, &a, "take_lock", "PERFORM pg_advisory_lock(1);").await;
    let took = c
        .data
        .execute(exec(&a.id, "SELECT take_lock()", vec![]))
        .await;
    refused_or_reported(&server, took, "pg_advisory_lock(").await;

    // Changing the session does not escape either: RESET ROLE lands on the
    // tenant's own role, and another schema on the search_path is still
    // someone else's.
    let transaction = |statements: Vec<pb::Statement>| {
        let mut data = c.data.clone();
        let request = pb::TransactionRequest {
            tenant_id: a.id.clone(),
            statements,
            ..Default::default()
        };
        async move { data.transaction(request).await.unwrap_err() }
    };
    // Denied outright.
    let err = transaction(vec![
        stmt("SELECT 1"),
        stmt(&format!("SELECT * FROM {}.locations", b.schema_name)),
    ])
    .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    assert_eq!(
        metadata(&err).get("statement_index").map(String::as_str),
        Some("1")
    );
    // Moving the search_path is refused by the screen.
    let moves = [
        vec![
            stmt(&format!("SET search_path = {}", b.schema_name)),
            stmt("SELECT * FROM locations"),
        ],
        vec![
            stmt(&format!(
                "SELECT set_config('search_path', '{}', false)",
                b.schema_name
            )),
            stmt("SELECT * FROM locations"),
        ],
        vec![
            stmt("SET LOCAL search_path = tenantd, public"),
            stmt("SELECT * FROM users"),
        ],
    ];
    for statements in moves {
        assert_screened(&transaction(statements).await, "statements[0].sql");
    }
    // Moved by SQL the screen never sees, the search_path finds nothing of
    // B's: without USAGE on B's schema its tables are not found.
    install_function(
        &server,
        &a,
        "look_at_b",
        &format!(
            "PERFORM set_config('search_path', '{}', true); PERFORM count(*) FROM locations;",
            b.schema_name
        ),
    )
    .await;
    let err = c
        .data
        .execute(read(&a.id, "SELECT look_at_b()"))
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("42501" | "42P01")),
        "{err:?}"
    );

    // A session setting made by one call does not reach the next: every
    // call starts as the tenant's role on its own schema.
    install_function(
        &server,
        &a,
        "move_path",
        &format!(
            "PERFORM set_config('search_path', '{}', false);",
            b.schema_name
        ),
    )
    .await;
    c.data
        .execute(exec(&a.id, "SELECT move_path()", vec![]))
        .await
        .unwrap();
    for _ in 0..8 {
        let r = c
            .data
            .execute(read(
                &a.id,
                "SELECT current_user || ' ' || current_setting('search_path') || ' ' || count(*) FROM locations",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            scalar(&r),
            Kind::Text(format!("{} {} 0", a.schema_name, a.schema_name))
        );
    }
    // B's row is still only B's.
    assert_eq!(
        read_scalar(&mut c, &b.id, "SELECT name FROM locations").await,
        Kind::Text("B's secret warehouse".into())
    );
}

#[tokio::test]
async fn nothing_reaches_past_the_schema_even_from_sql_the_screen_cannot_see() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("side").await;
    // Through the API: refused by the screen.
    for sql in [
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT lo_creat(-1)",
        "SELECT pg_terminate_backend(1)",
        "SELECT pg_cancel_backend(1)",
        "SELECT pg_notify('c', 'x')",
        "CREATE TEMP TABLE scratch (a int)",
    ] {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sql}: {err:?}");
        assert_eq!(bad_fields(&err), vec!["sql".to_owned()], "{sql}");
    }
    // From a function of the schema: PostgreSQL's privileges refuse (or,
    // on managed PostgreSQL, tenantd's start check names what stays open).
    for (name, body, privilege) in [
        (
            "store_object",
            "PERFORM lo_from_bytea(0, 'x');",
            "lo_from_bytea(",
        ),
        ("make_object", "PERFORM lo_creat(-1);", "lo_creat("),
        ("write_object", "PERFORM lo_put(1, 0, 'x');", "lo_put("),
        (
            "signal",
            "PERFORM pg_cancel_backend(pg_backend_pid());",
            "pg_cancel_backend(",
        ),
        ("notify", "PERFORM pg_notify('c', 'x');", "pg_notify("),
        // The database's owner revokes TEMPORARY, so this holds in both modes.
        (
            "temp_table",
            "CREATE TEMP TABLE scratch (a int);",
            "TEMPORARY",
        ),
    ] {
        install_function(&server, &t, name, body).await;
        let ran = c
            .data
            .execute(exec(&t.id, &format!("SELECT {name}()"), vec![]))
            .await;
        refused_or_reported(&server, ran, privilege).await;
    }
    let mut db = server.db.connect().await;
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
        .fetch_one(&mut db)
        .await
        .unwrap();
    if !crate::common::managed_mode() {
        assert_eq!(objects, 0, "no large object was made");
    }

    // One call of a tenant cannot end another call of the same tenant.
    install_function(
        &server,
        &t,
        "kill_the_others",
        "PERFORM pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = current_user AND pid <> pg_backend_pid();",
    )
    .await;
    let mut long = c.data.clone();
    let id = t.id.clone();
    let sleeper = tokio::spawn(async move {
        long.execute(exec(&id, "SELECT pg_sleep(1.5)", vec![]))
            .await
            .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = c
        .data
        .execute(exec(&t.id, "SELECT kill_the_others()", vec![]))
        .await;
    let refused = matches!(&killed, Err(e) if sqlstate(e).as_deref() == Some("42501"));
    refused_or_reported(&server, killed, "pg_terminate_backend(").await;
    let other = sleeper.await.unwrap();
    if refused {
        other.expect("the other call ran to its end");
    }
}
