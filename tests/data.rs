//! The tenant data plane end to end: Execute and Transaction through the
//! generated client, against tenant roles in a real PostgreSQL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Clients, TestServer, bad_fields, new_tenant};
use tenantd::pb::{self, value::Kind};
use tonic::Code;
use tonic_types::StatusExt as _;

fn v(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn text(s: &str) -> pb::Value {
    v(Kind::Text(s.into()))
}

fn int(i: i64) -> pb::Value {
    v(Kind::Int64(i))
}

fn exec(tenant: &str, sql: &str, params: Vec<pb::Value>) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
        sql: sql.into(),
        params,
        ..Default::default()
    }
}

fn read(tenant: &str, sql: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        read_only: true,
        ..exec(tenant, sql, vec![])
    }
}

fn stmt(sql: &str, params: Vec<pb::Value>) -> pb::Statement {
    pb::Statement {
        sql: sql.into(),
        params,
        max_rows: 0,
    }
}

/// The SQLSTATE of a SQL error's ErrorInfo.
fn sqlstate(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("sqlstate").cloned())
}

fn metadata(status: &tonic::Status) -> HashMap<String, String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.metadata.clone())
        .unwrap_or_default()
}

/// Asserts that the statement screen refused a call, naming `field`.
#[track_caller]
fn assert_screened(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(err), vec![field.to_owned()], "{err:?}");
    assert!(err.message().contains("is not allowed"), "{err:?}");
}

/// Installs a plpgsql function `name()` in tenant `t`'s schema, as a tenant
/// migration could: SQL that the statement screen never sees, since a call
/// reaches it through an allowed `SELECT name()`. It runs as the tenant's
/// role, so only PostgreSQL's privileges and tenantd's session reset stand
/// between it and anything it tries.
async fn install_function(server: &TestServer, t: &pb::Tenant, name: &str, body: &str) {
    let mut db = server.db.connect().await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION {}.{name}() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN {body} END $f$",
        t.schema_name
    ))
    .execute(&mut db)
    .await
    .expect("install the function");
}

async fn tenant(c: &mut Clients, prefix: &str) -> pb::Tenant {
    c.tenants
        .create_tenant(new_tenant(prefix))
        .await
        .expect("create tenant")
        .into_inner()
}

/// The single value a read-only call of `sql` answers.
async fn read_scalar(c: &mut Clients, tenant: &str, sql: &str) -> Kind {
    let r = c
        .data
        .execute(read(tenant, sql))
        .await
        .unwrap()
        .into_inner();
    scalar(&r)
}

/// The single value of a one-row, one-column result.
fn scalar(r: &pb::ExecuteResponse) -> Kind {
    assert_eq!(r.rows.len(), 1, "one row: {r:?}");
    assert_eq!(r.rows[0].values.len(), 1, "one column: {r:?}");
    r.rows[0].values[0].kind.clone().expect("a value")
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "types").await;
    let uuid = "0b5e2d0c-7c37-4a67-9a0e-2f1f3c1e9d11";
    let at = prost_types::Timestamp {
        seconds: 1_795_000_000,
        nanos: 123_456_000,
    };
    let cases: Vec<(&str, pb::Value, &str)> = vec![
        ("bool", v(Kind::Bool(true)), "bool"),
        ("int8", int(-9_007_199_254_740_993), "int8"),
        ("int4", int(2_147_483_647), "int4"),
        ("int2", int(-32_768), "int2"),
        ("float8", v(Kind::Float64(-1.5e300)), "float8"),
        ("float4", v(Kind::Float64(0.25)), "float4"),
        (
            "numeric",
            v(Kind::Numeric(
                "-123456789012345678901234567890.000012".into(),
            )),
            "numeric",
        ),
        ("text", text("héllo, \"world\" \\ ☃"), "text"),
        ("varchar", text("short"), "varchar"),
        ("bytea", v(Kind::Bytea(vec![0, 1, 2, 255, 0])), "bytea"),
        ("uuid", v(Kind::Uuid(uuid.into())), "uuid"),
        ("date", v(Kind::Date("2026-11-23".into())), "date"),
        ("date", v(Kind::Date("infinity".into())), "date"),
        ("timestamptz", v(Kind::Timestamptz(at)), "timestamptz"),
        // PostgreSQL's -infinity, i64::MIN microseconds.
        (
            "timestamptz",
            v(Kind::Timestamptz(prost_types::Timestamp {
                seconds: i64::MIN.div_euclid(1_000_000),
                nanos: (i64::MIN.rem_euclid(1_000_000) * 1000) as i32,
            })),
            "timestamptz",
        ),
        ("date", v(Kind::Date("0044-03-15 BC".into())), "date"),
        ("json", v(Kind::Json(r#"{"a": [1, 2]}"#.into())), "json"),
        ("jsonb", v(Kind::Json(r#"{"a": [1, 2]}"#.into())), "jsonb"),
        (
            "int8[]",
            v(Kind::Array(pb::Array {
                values: vec![int(1), v(Kind::Null(0)), int(3)],
            })),
            "_int8",
        ),
        (
            "text[]",
            v(Kind::Array(pb::Array {
                values: vec![text("a,b"), text("\"q\""), text("NULL")],
            })),
            "_text",
        ),
        (
            "numeric[]",
            v(Kind::Array(pb::Array {
                values: vec![v(Kind::Numeric("1.50".into()))],
            })),
            "_numeric",
        ),
        (
            "uuid[]",
            v(Kind::Array(pb::Array {
                values: vec![v(Kind::Uuid(uuid.into()))],
            })),
            "_uuid",
        ),
        (
            "int4[][]",
            v(Kind::Array(pb::Array {
                values: vec![
                    v(Kind::Array(pb::Array {
                        values: vec![int(1), int(2)],
                    })),
                    v(Kind::Array(pb::Array {
                        values: vec![int(3), int(4)],
                    })),
                ],
            })),
            "_int4",
        ),
        ("text", v(Kind::Null(0)), "text"),
    ];
    for (ty, value, type_name) in cases {
        let r = c
            .data
            .execute(pb::ExecuteRequest {
                read_only: true,
                ..exec(&t.id, &format!("SELECT $1::{ty} AS v"), vec![value.clone()])
            })
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e:?}"))
            .into_inner();
        assert_eq!(r.columns[0].name, "v");
        assert_eq!(r.columns[0].r#type, type_name, "{ty}");
        let got = scalar(&r);
        let want = value.kind.clone().unwrap();
        match (ty, &got, &want) {
            // jsonb normalizes its text.
            ("jsonb", Kind::Json(g), Kind::Json(w)) => {
                let g: serde_json::Value = serde_json::from_str(g).unwrap();
                let w: serde_json::Value = serde_json::from_str(w).unwrap();
                assert_eq!(g, w);
            }
            ("float4", Kind::Float64(g), Kind::Float64(w)) => assert_eq!(*g as f32, *w as f32),
            // -infinity goes in as PostgreSQL's own microseconds and comes
            // back as text: a protobuf Timestamp cannot hold it.
            ("timestamptz", Kind::Text(g), Kind::Timestamptz(w)) if w.seconds < -62_135_596_800 => {
                assert_eq!(g, "-infinity")
            }
            _ => assert_eq!(got, want, "{ty} round trip"),
        }
    }

    // Text is parsed by PostgreSQL for types the API has no kind of, and a
    // column of such a type is refused with a hint to cast it.
    let r = c
        .data
        .execute(exec(
            &t.id,
            "SELECT ($1::interval * 2)::text",
            vec![text("1 day 2 hours")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scalar(&r), Kind::Text("2 days 04:00:00".into()));
    let err = c
        .data
        .execute(read(&t.id, "SELECT interval '1 day' AS span"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("span") && err.message().contains("::text"),
        "{err:?}"
    );

    // Literals of each type decode too (not only what was sent).
    let r = c
        .data
        .execute(read(
            &t.id,
            "SELECT 12.50::numeric(10,2), 0.001::numeric, 'NaN'::numeric, 1e20::numeric, \
             '-infinity'::timestamptz, '1999-12-31'::date, '0044-03-15 BC'::date, \
             'x'::char(3), 'y'::name, true, 3::oid",
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<Kind> = r.rows[0]
        .values
        .iter()
        .map(|v| v.kind.clone().unwrap())
        .collect();
    assert_eq!(got[0], Kind::Numeric("12.50".into()));
    assert_eq!(got[1], Kind::Numeric("0.001".into()));
    assert_eq!(got[2], Kind::Numeric("NaN".into()));
    assert_eq!(got[3], Kind::Numeric("100000000000000000000".into()));
    assert_eq!(got[4], Kind::Text("-infinity".into()));
    assert_eq!(got[5], Kind::Date("1999-12-31".into()));
    assert_eq!(got[6], Kind::Date("0044-03-15 BC".into()));
    assert_eq!(got[7], Kind::Text("x  ".into()));
    assert_eq!(got[8], Kind::Text("y".into()));
    assert_eq!(got[9], Kind::Bool(true));
    assert_eq!(got[10], Kind::Int64(3));
}

#[tokio::test]
async fn a_tenant_reaches_neither_another_tenant_nor_the_catalog() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let a = tenant(&mut c, "alpha").await;
    let b = tenant(&mut c, "beta").await;
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
    for (name, body) in [
        (
            "become_b",
            format!("PERFORM set_config('role', '{}', false);", b.schema_name),
        ),
        ("take_lock", "PERFORM pg_advisory_lock(1);".to_owned()),
    ] {
        install_function(&server, &a, name, &body).await;
        let err = c
            .data
            .execute(exec(&a.id, &format!("SELECT {name}()"), vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{name}");
    }

    // Changing the session does not escape either: RESET ROLE lands on the
    // tenant's own role, and another schema on the search_path is still
    // someone else's.
    let escapes = [
        vec![
            stmt("SELECT 1", vec![]),
            stmt(
                &format!("SELECT * FROM {}.locations", b.schema_name),
                vec![],
            ),
        ],
        vec![
            stmt(&format!("SET search_path = {}", b.schema_name), vec![]),
            stmt("SELECT * FROM locations", vec![]),
        ],
        vec![
            stmt(
                &format!(
                    "SELECT set_config('search_path', '{}', false)",
                    b.schema_name
                ),
                vec![],
            ),
            stmt("SELECT * FROM locations", vec![]),
        ],
        vec![
            stmt("SET LOCAL search_path = tenantd, public", vec![]),
            stmt("SELECT * FROM users", vec![]),
        ],
    ];
    for (i, statements) in escapes.into_iter().enumerate() {
        let err = c
            .data
            .transaction(pb::TransactionRequest {
                tenant_id: a.id.clone(),
                statements: statements.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        if i == 0 {
            // Denied outright.
            assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
            assert_eq!(
                metadata(&err).get("statement_index").map(String::as_str),
                Some("1")
            );
        } else {
            // Moving the search_path is refused by the screen.
            assert_screened(&err, "statements[0].sql");
        }
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
async fn writes_commit_atomically_and_read_only_calls_cannot_write() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "writes").await;
    let r = c
        .data
        .execute(exec(
            &t.id,
            "INSERT INTO customers (code, name, credit_limit) VALUES ($1, $2, $3), ($4, $5, $6) RETURNING code, credit_limit",
            vec![
                text("C1"),
                text("First"),
                v(Kind::Numeric("100.5".into())),
                text("C2"),
                text("Second"),
                int(7),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rows_affected, 2);
    assert_eq!(r.rows.len(), 2);
    assert_eq!(
        r.rows[0].values[1].kind,
        Some(Kind::Numeric("100.50".into()))
    );

    // A duplicate code is ALREADY_EXISTS with its SQLSTATE and detail.
    let err = c
        .data
        .execute(exec(
            &t.id,
            "INSERT INTO customers (code, name) VALUES ('C1', 'Again')",
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"));
    assert!(metadata(&err).contains_key("detail"));

    // One failing statement rolls the whole transaction back.
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![
                stmt(
                    "INSERT INTO customers (code, name) VALUES ('C3', 'Third')",
                    vec![],
                ),
                stmt(
                    "UPDATE customers SET credit_limit = -1 WHERE code = 'C2'",
                    vec![],
                ),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(sqlstate(&err).as_deref(), Some("23514"));
    assert!(
        err.message().starts_with("statement 1:"),
        "{}",
        err.message()
    );
    assert_eq!(
        read_scalar(&mut c, &t.id, "SELECT count(*) FROM customers").await,
        Kind::Int64(2),
        "C3 was rolled back"
    );

    // A successful transaction reports each statement.
    let r = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![
                stmt(
                    "UPDATE customers SET is_active = false WHERE code = $1",
                    vec![text("C1")],
                ),
                stmt(
                    "SELECT code FROM customers WHERE is_active ORDER BY code",
                    vec![],
                ),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].rows_affected, 1);
    assert_eq!(r.results[1].rows.len(), 1);
    assert_eq!(
        r.results[1].rows[0].values[0].kind,
        Some(Kind::Text("C2".into()))
    );

    // read_only is enforced by PostgreSQL; a statement that tries to switch
    // the transaction to read-write is refused before it runs, and SQL the
    // screen never sees cannot switch it either.
    let err = c
        .data
        .execute(pb::ExecuteRequest {
            read_only: true,
            ..exec(&t.id, "DELETE FROM customers", vec![])
        })
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err:?}");
    for switch in [
        "SET transaction_read_only = off",
        "SET TRANSACTION READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ] {
        let err = c
            .data
            .transaction(pb::TransactionRequest {
                tenant_id: t.id.clone(),
                statements: vec![stmt(switch, vec![]), stmt("DELETE FROM customers", vec![])],
                read_only: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_screened(&err, "statements[0].sql");
    }
    install_function(
        &server,
        &t,
        "go_read_write",
        "PERFORM set_config('transaction_read_only', 'off', true); DELETE FROM customers;",
    )
    .await;
    let err = c
        .data
        .execute(pb::ExecuteRequest {
            read_only: true,
            ..exec(&t.id, "SELECT go_read_write()", vec![])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("25006" | "25001")),
        "{err:?}"
    );
    assert_eq!(
        read_scalar(&mut c, &t.id, "SELECT count(*) FROM customers").await,
        Kind::Int64(2),
        "nothing was deleted"
    );
}

#[tokio::test]
async fn bad_requests_name_the_field_and_sql_errors_keep_their_sqlstate() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "badreq").await;
    let cases: Vec<(pb::ExecuteRequest, &str)> = vec![
        (exec("nope", "SELECT 1", vec![]), "tenant_id"),
        (exec(&t.id, "  ", vec![]), "sql"),
        (exec(&t.id, "COMMIT", vec![]), "sql"),
        (exec(&t.id, " ;COMMIT", vec![]), "sql"),
        (exec(&t.id, "; /* x */ DEALLOCATE ALL", vec![]), "sql"),
        (
            exec(&t.id, "ALTER ROLE current_user PASSWORD 'mine'", vec![]),
            "sql",
        ),
        (exec(&t.id, "/* sneaky */ begin", vec![]), "sql"),
        (exec(&t.id, "COPY locations TO STDOUT", vec![]), "sql"),
        (
            exec(&t.id, "SELECT $1::uuid", vec![v(Kind::Uuid("x".into()))]),
            "params[0]",
        ),
        (
            exec(&t.id, "SELECT $1::int8, $2::int8", vec![int(1)]),
            "params",
        ),
        (
            exec(&t.id, "SELECT $1::int4", vec![int(1 << 40)]),
            "params[0]",
        ),
        (
            exec(&t.id, "SELECT $1::int4", vec![v(Kind::Bytea(vec![1]))]),
            "params[0]",
        ),
        (
            exec(&t.id, "SELECT $1::jsonb", vec![v(Kind::Json("{".into()))]),
            "params[0]",
        ),
        (
            exec(
                &t.id,
                "SELECT $1::date",
                vec![v(Kind::Date("23.11.2026".into()))],
            ),
            "params[0]",
        ),
        (
            exec(
                &t.id,
                "SELECT $1::numeric",
                vec![v(Kind::Numeric("12,5".into()))],
            ),
            "params[0]",
        ),
    ];
    for (request, field) in cases {
        let sql = request.sql.clone();
        let err = c.data.execute(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sql}: {err:?}");
        assert_eq!(bad_fields(&err), vec![field.to_owned()], "{sql}");
    }
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![stmt("SELECT 1", vec![]), stmt("ROLLBACK", vec![])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["statements[1].sql".to_owned()]);
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["statements".to_owned()]);

    // SQL errors: never INTERNAL, always with the SQLSTATE.
    let cases = [
        ("SELEKT 1", Code::InvalidArgument, "42601"),
        (
            "SELECT * FROM no_such_table",
            Code::InvalidArgument,
            "42P01",
        ),
        ("SELECT 1/0", Code::InvalidArgument, "22012"),
        ("SELECT 'abc'::int", Code::InvalidArgument, "22P02"),
        (
            "INSERT INTO inventory_items (location_id, sku, name) VALUES (gen_random_uuid(), 'x', 'y')",
            Code::FailedPrecondition,
            "23503",
        ),
        ("SELECT raise_custom()", Code::FailedPrecondition, "P0001"),
    ];
    install_function(
        &server,
        &t,
        "raise_custom",
        "RAISE EXCEPTION 'custom failure';",
    )
    .await;
    for (sql, code, state) in cases {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_eq!(err.code(), code, "{sql}: {err:?}");
        assert_eq!(sqlstate(&err).as_deref(), Some(state), "{sql}");
        assert!(err.message().contains(state), "{sql}: {}", err.message());
    }
    let err = c
        .data
        .execute(exec(&uuid::Uuid::new_v4().to_string(), "SELECT 1", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // What the screen refuses never reaches PostgreSQL; what it would let
    // through the tenant's role may not do anyway.
    for sql in [
        "SELECT 1; SELECT 2",
        "CREATE TABLE mine (id int)",
        "DROP TABLE locations",
    ] {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_screened(&err, "sql");
    }
    install_function(&server, &t, "make_table", "CREATE TABLE mine (id int);").await;
    let err = c
        .data
        .execute(exec(&t.id, "SELECT make_table()", vec![]))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    // After all of that, the tenant's connections still work.
    assert_eq!(
        read_scalar(&mut c, &t.id, "SELECT 41 + 1").await,
        Kind::Int64(42)
    );
}

#[tokio::test]
async fn rows_past_max_rows_are_cut_and_timeouts_always_hold() {
    let server = TestServer::start_with(|c| {
        c.data_calls.default_max_rows = 50;
        c.data_calls.max_rows = 100;
    })
    .await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "limits").await;
    let all = |max_rows| pb::ExecuteRequest {
        max_rows,
        ..read(&t.id, "SELECT g FROM generate_series(1, 1000) g")
    };
    for (asked, got) in [(10, 10), (0, 50), (5000, 100)] {
        let r = c.data.execute(all(asked)).await.unwrap().into_inner();
        assert_eq!(r.rows.len(), got, "max_rows {asked}");
        assert!(r.truncated);
        assert_eq!(r.rows_affected, 1000);
        assert_eq!(
            r.rows.last().unwrap().values[0].kind,
            Some(Kind::Int64(got as i64))
        );
    }
    let r = c
        .data
        .execute(read(&t.id, "SELECT g FROM generate_series(1, 3) g"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.truncated);
    // Big rows are cut by the response size limit, not buffered.
    let r = c
        .data
        .execute(pb::ExecuteRequest {
            max_rows: 100,
            ..read(
                &t.id,
                "SELECT repeat('x', 1000000) FROM generate_series(1, 20)",
            )
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.truncated);
    assert!(r.rows.len() < 4, "{} rows of 1 MB", r.rows.len());

    // statement_timeout is always set…
    let started = std::time::Instant::now();
    let err = c
        .data
        .execute(pb::ExecuteRequest {
            timeout_ms: 200,
            ..read(&t.id, "SELECT pg_sleep(5)")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(3));
    // …and a statement that lifts it still cannot run past the call's
    // deadline: the query is cancelled and the connection closed.
    install_function(
        &server,
        &t,
        "lift_timeout",
        "PERFORM set_config('statement_timeout', '0', true);",
    )
    .await;
    let started = std::time::Instant::now();
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![
                stmt("SELECT lift_timeout()", vec![]),
                stmt("SELECT pg_sleep(30)", vec![]),
            ],
            read_only: true,
            timeout_ms: 200,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    cancelled_and_still_answering(&server, &mut c, &t.id, "SELECT pg_sleep(30)").await;
}

/// Polls `count_sql` (a `SELECT count(*) …`) until it says 0, for up to 10 s.
async fn wait_for_none(db: &mut sqlx::PgConnection, count_sql: &str) {
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(count_sql)
            .fetch_one(&mut *db)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still not none after 10 s: {count_sql}");
}

/// Waits until no backend runs `query` any more, then checks that the
/// tenant's calls still work.
async fn cancelled_and_still_answering(
    server: &TestServer,
    c: &mut Clients,
    tenant: &str,
    query: &str,
) {
    let mut db = server.db.connect().await;
    wait_for_none(
        &mut db,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query = '{query}' AND state = 'active'"
        ),
    )
    .await;
    assert_eq!(read_scalar(c, tenant, "SELECT 3").await, Kind::Int64(3));
}

async fn can_login(db: &mut sqlx::PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(db)
        .await
        .unwrap()
}

fn backends_sql(role: &str) -> String {
    format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'")
}

async fn backends_of(db: &mut sqlx::PgConnection, role: &str) -> i64 {
    sqlx::query_scalar(&backends_sql(role))
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_and_its_pool_closed_at_once() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "suspend").await;
    c.data.execute(read(&t.id, "SELECT 1")).await.unwrap();
    let mut db = server.db.connect().await;
    assert!(backends_of(&mut db, &t.schema_name).await >= 1);

    c.tenants
        .suspend_tenant(pb::TenantLifecycleRequest {
            id: t.id.clone(),
            reason: "unpaid".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = c.data.execute(read(&t.id, "SELECT 1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("suspended"), "{}", err.message());
    // The pool is gone: its connections close right after the suspension.
    wait_for_none(&mut db, &backends_sql(&t.schema_name)).await;
    // And PostgreSQL refuses the role's logins until the tenant is resumed.
    assert!(!can_login(&mut db, &t.schema_name).await);

    c.tenants
        .resume_tenant(pb::TenantLifecycleRequest {
            id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(can_login(&mut db, &t.schema_name).await);
    assert_eq!(read_scalar(&mut c, &t.id, "SELECT 7").await, Kind::Int64(7));
}

#[tokio::test]
async fn a_suspension_through_another_replica_closes_the_pool_here_too() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "replica").await;
    let other = TestServer::run(common::test_config(&server.db))
        .await
        .unwrap();
    let mut other_c = tenantd::pb::tenant_service_client::TenantServiceClient::new(
        common::authed_channel(
            &format!("http://{}", other.local_addr()),
            common::admin_key(),
        )
        .await,
    );
    c.data.execute(read(&t.id, "SELECT 1")).await.unwrap();
    other_c
        .suspend_tenant(pb::TenantLifecycleRequest {
            id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut db = server.db.connect().await;
    wait_for_none(&mut db, &backends_sql(&t.schema_name)).await;
    let err = c.data.execute(read(&t.id, "SELECT 1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    other.stop().await.unwrap();
}

#[tokio::test]
async fn five_hundred_tenants_share_a_budget_of_twenty_connections() {
    const TENANTS: usize = 500;
    const BUDGET: usize = 20;
    let server = TestServer::start_with(|c| {
        c.tenant_pools.budget = BUDGET;
        c.tenant_pools.pool_size = 2;
        c.tenant_pools.wait = Duration::from_secs(20);
    })
    .await;
    let c = server.clients().await;
    // Tenants are made a few at a time.
    let mut ids = Vec::with_capacity(TENANTS);
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(10) {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            let mut tenants = c.tenants.clone();
            set.spawn(async move {
                tenants
                    .create_tenant(new_tenant("budget"))
                    .await
                    .unwrap()
                    .into_inner()
                    .id
            });
        }
        while let Some(id) = set.join_next().await {
            ids.push(id.unwrap());
        }
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let monitor = {
        let stop = stop.clone();
        let mut db = server.db.connect().await;
        tokio::spawn(async move {
            let mut most = 0i64;
            while !stop.is_cancelled() {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'tenant\\_%' AND datname = current_database()",
                )
                .fetch_one(&mut db)
                .await
                .unwrap();
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    // 32 callers, each touching every tenant once in its own order.
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..32usize {
        let mut data = c.data.clone();
        let ids = ids.clone();
        set.spawn(async move {
            let mut done = 0;
            for i in 0..ids.len() / 8 {
                let id = &ids[(worker * 37 + i * 13) % ids.len()];
                let r = data
                    .execute(pb::ExecuteRequest {
                        tenant_id: id.clone(),
                        sql: "SELECT count(*) FROM locations".into(),
                        read_only: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("call for {id}: {e:?}"))
                    .into_inner();
                assert_eq!(r.rows.len(), 1);
                done += 1;
            }
            done
        });
    }
    let mut calls = 0;
    while let Some(done) = set.join_next().await {
        calls += done.unwrap();
    }
    stop.cancel();
    let most = monitor.await.unwrap();
    assert_eq!(calls, 32 * (TENANTS / 8));
    assert!(most <= BUDGET as i64, "{most} tenant backends at once");
    assert!(most >= 2, "the monitor saw the load ({most})");
}

#[tokio::test]
async fn calls_recover_after_every_tenant_backend_is_terminated() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let a = tenant(&mut c, "kill-a").await;
    let b = tenant(&mut c, "kill-b").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut data = c.data.clone();
        let id = if worker % 2 == 0 {
            a.id.clone()
        } else {
            b.id.clone()
        };
        let stop = stop.clone();
        set.spawn(async move {
            let mut log = Vec::new();
            while !stop.is_cancelled() {
                let write = worker % 4 < 2;
                let request = if write {
                    exec(
                        &id,
                        "INSERT INTO locations (name) VALUES (gen_random_uuid()::text)",
                        vec![],
                    )
                } else {
                    read(&id, "SELECT count(*) FROM locations")
                };
                let result = data
                    .execute(request)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code());
                log.push((std::time::Instant::now(), result));
            }
            log
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut db = server.db.connect().await;
    let killed_at = std::time::Instant::now();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE 'tenant\\_%' AND datname = current_database()",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "tenant backends were running");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let mut after = 0;
    while let Some(log) = set.join_next().await {
        for (at, result) in log.unwrap() {
            match result {
                Ok(()) => {
                    if at > killed_at {
                        after += 1;
                    }
                }
                // Only a call caught on a dying connection may fail: with
                // UNAVAILABLE when nothing was written, UNKNOWN when a write
                // may have committed.
                Err(code) => {
                    assert!(
                        matches!(code, Code::Unavailable | Code::Unknown),
                        "{code:?}"
                    );
                    assert!(at < killed_at + Duration::from_millis(500));
                }
            }
        }
    }
    assert!(after > 20, "only {after} calls succeeded after the kill");
}

#[tokio::test]
async fn a_call_abandoned_by_its_caller_leaves_no_query_running() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "abandon").await;
    let mut data = c.data.clone();
    let request = pb::ExecuteRequest {
        timeout_ms: 30_000,
        ..exec(&t.id, "SELECT pg_sleep(20)", vec![])
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), data.execute(request)).await;
    cancelled_and_still_answering(&server, &mut c, &t.id, "SELECT pg_sleep(20)").await;
}

#[tokio::test]
async fn users_read_and_write_by_their_role_and_keys_by_the_data_scope() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "roles").await;
    let mut user_ids = Vec::new();
    for (name, role) in [
        ("emma", pb::MemberRole::Employee),
        ("max", pb::MemberRole::Manager),
        ("nina", pb::MemberRole::Unspecified),
    ] {
        let u = c
            .users
            .create_user(pb::CreateUserRequest {
                first_name: name.into(),
                last_name: "Tester".into(),
                email: format!("{name}@example.com"),
                phone: String::new(),
                password: "correct horse battery staple".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if role != pb::MemberRole::Unspecified {
            c.users
                .add_member(pb::AddMemberRequest {
                    tenant_id: t.id.clone(),
                    user_id: u.id.clone(),
                    role: role as i32,
                })
                .await
                .unwrap();
        }
        user_ids.push(u.id);
    }
    let token = |name: &str| {
        let mut sessions = c.sessions.clone();
        let name = name.to_owned();
        async move {
            sessions
                .login(pb::LoginRequest {
                    identifier: Some(pb::login_request::Identifier::Email(format!(
                        "{name}@example.com"
                    ))),
                    password: "correct horse battery staple".into(),
                    tenant_id: String::new(),
                    device: "test".into(),
                    client_ip: "192.0.2.1".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        }
    };
    let write = exec(
        &t.id,
        "INSERT INTO locations (name) VALUES (gen_random_uuid()::text)",
        vec![],
    );
    let count = read(&t.id, "SELECT count(*) FROM locations");

    let mut emma = server.clients_as(&token("emma").await).await;
    emma.data.execute(count.clone()).await.unwrap();
    let err = emma.data.execute(write.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("data:write"), "{}", err.message());

    let mut max = server.clients_as(&token("max").await).await;
    max.data.execute(write.clone()).await.unwrap();

    let mut nina = server.clients_as(&token("nina").await).await;
    let err = nina.data.execute(count.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut db = server.db.connect().await;
    let (narrow, _) = tenantd::identity::keys::create(
        &mut db,
        "reader",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let (data_key, _) =
        tenantd::identity::keys::create(&mut db, "data", &[tenantd::domain::identity::Scope::Data])
            .await
            .unwrap();
    let mut narrow = server.clients_as(&narrow).await;
    let mut data_key = server.clients_as(&data_key).await;
    // Keys are cached; the new ones load within 5 s.
    let mut loaded = false;
    for _ in 0..70 {
        if data_key.data.execute(count.clone()).await.is_ok() {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the data key never worked");
    data_key.data.execute(write.clone()).await.unwrap();
    let err = narrow.data.execute(count.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let r = c.data.execute(count).await.unwrap().into_inner();
    assert_eq!(scalar(&r), Kind::Int64(2));
}

#[tokio::test]
async fn nothing_a_call_leaves_in_the_session_reaches_the_next_call() {
    // One connection per tenant, so every call lands on the same session.
    let server = TestServer::start_with(|c| c.tenant_pools.pool_size = 1).await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "session").await;
    let role = &t.schema_name;
    let mut db = server.db.connect().await;
    // Privileges tenantd takes from every role are given back to this one,
    // so that what is tested here is the session reset itself.
    sqlx::raw_sql(&format!(
        "GRANT TEMPORARY ON DATABASE \"{}\" TO {role}; \
         GRANT EXECUTE ON FUNCTION pg_advisory_lock(bigint) TO {role}; \
         CREATE SEQUENCE {role}.counter",
        server.db.name
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let check = "SELECT pg_backend_pid()::text || ' ' \
        || current_setting('TimeZone') || ' ' || current_setting('work_mem') || ' ' \
        || current_setting('search_path') || ' ' || current_setting('extra_float_digits') || ' ' \
        || (SELECT count(*) FROM customers) || ' ' \
        || (SELECT count(*) FROM pg_cursors) || ' ' \
        || (SELECT count(*) FROM pg_listening_channels()) || ' ' \
                || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) || ' ' \
        || (SELECT count(*) FROM pg_class WHERE relpersistence = 't')";
    let Kind::Text(clean) = read_scalar(&mut c, &t.id, check).await else {
        panic!("not text")
    };
    let pid = clean.split(' ').next().unwrap().to_owned();

    // What a call may leave through the API: session settings it may SET,
    // sequence state, a cursor.
    for sql in [
        "SET TimeZone = 'Asia/Tokyo'",
        "SET extra_float_digits = 1",
        "SELECT nextval('counter')",
        "DECLARE open_one CURSOR FOR SELECT 1",
    ] {
        c.data.execute(exec(&t.id, sql, vec![])).await.unwrap();
    }
    // Everything else that makes state is refused before it runs…
    for sql in [
        "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN somewhere",
        "PREPARE mine AS SELECT 1",
        "CREATE TEMP TABLE customers (code text)",
        "SET work_mem = '1GB'",
        "SELECT set_config('work_mem', '1GB', false)",
        "ALTER ROLE CURRENT_USER SET work_mem = '2GB'",
        "DO $$ BEGIN PERFORM 1; END $$",
    ] {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_screened(&err, "sql");
    }
    // …and made by SQL the screen never sees, it is reset all the same.
    install_function(
        &server,
        &t,
        "leave_everything",
        &format!(
            "PERFORM set_config('work_mem', '1GB', false); \
             PERFORM set_config('search_path', 'public', false); \
             PERFORM set_config('TimeZone', 'Asia/Tokyo', false); \
             EXECUTE 'LISTEN somewhere'; \
             EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT 1'; \
             CREATE TEMP TABLE customers (code text); \
             INSERT INTO customers VALUES ('temp'); \
             PERFORM pg_advisory_lock(42); \
             PERFORM nextval('{role}.counter');"
        ),
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT leave_everything()", vec![]))
        .await
        .unwrap();
    assert_eq!(
        read_scalar(&mut c, &t.id, check).await,
        Kind::Text(clean.clone()),
        "the same session ({pid}) as before, as clean as before"
    );
    // Role settings are the values a session starts from, which RESET ALL
    // returns to: a new session starts from a role reset to what tenantd
    // gave it.
    install_function(
        &server,
        &t,
        "leave_role_settings",
        "EXECUTE format('ALTER ROLE %I SET work_mem = %L', current_user, '2GB'); \
         EXECUTE format('ALTER ROLE %I IN DATABASE %I SET TimeZone = %L', \
                        current_user, current_database(), 'Asia/Tokyo');",
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT leave_role_settings()", vec![]))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(&mut db)
        .await
        .unwrap();
    wait_for_none(&mut db, &backends_sql(role)).await;
    let mut after = None;
    for _ in 0..3 {
        match c.data.execute(read(&t.id, check)).await {
            Ok(r) => {
                after = Some(scalar(&r.into_inner()));
                break;
            }
            // The call that meets the terminated connection may fail.
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    let Some(Kind::Text(after)) = after else {
        panic!("no answer")
    };
    let (new_pid, rest) = after.split_once(' ').unwrap();
    assert_ne!(new_pid, pid, "a new session");
    assert_eq!(
        rest,
        clean.split_once(' ').unwrap().1,
        "as clean as the first"
    );
    let settings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c \
         WHERE s.setrole = $1::regrole AND c <> 'search_path=' || $1",
    )
    .bind(role)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(settings, 0, "the role's own settings were reset");
    let err = c
        .data
        .execute(read(&t.id, "SELECT lastval()"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");

    // A read-only Transaction cannot commit early and write after it.
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![
                stmt(";COMMIT", vec![]),
                stmt(
                    "INSERT INTO customers (code, name) VALUES ('x', 'x')",
                    vec![],
                ),
            ],
            read_only: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["statements[0].sql".to_owned()]);

    // Statements deallocated behind tenantd's back are prepared again.
    c.data.execute(read(&t.id, "SELECT 1")).await.unwrap();
    install_function(&server, &t, "drop_prepared", "EXECUTE 'DEALLOCATE ALL';").await;
    c.data
        .execute(exec(&t.id, "SELECT drop_prepared()", vec![]))
        .await
        .unwrap();
    assert_eq!(read_scalar(&mut c, &t.id, "SELECT 1").await, Kind::Int64(1));

    // A role password changed from inside is set again at the next login.
    install_function(
        &server,
        &t,
        "change_password",
        "EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'mine');",
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT change_password()", vec![]))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&t.schema_name)
        .execute(&mut db)
        .await
        .unwrap();
    wait_for_none(&mut db, &backends_sql(&t.schema_name)).await;
    let mut answered = None;
    for _ in 0..3 {
        match c.data.execute(read(&t.id, "SELECT 2")).await {
            Ok(r) => {
                answered = Some(r.into_inner());
                break;
            }
            // The call that meets the terminated connection may fail.
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    assert_eq!(scalar(&answered.expect("calls work again")), Kind::Int64(2));
}
