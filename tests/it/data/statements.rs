//! Statements and their errors: writes commit atomically, read-only calls
//! cannot write, bad requests name the field and SQL errors keep their
//! SQLSTATE.

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::{assert_screened, install_function, int, metadata, read_scalar, sqlstate, text, v};
use crate::common::data::{exec, stmt};
use crate::common::{TestServer, bad_fields};

/// A call refused before it runs, naming `field`.
struct BadRequest {
    request: pb::ExecuteRequest,
    field: &'static str,
}

/// SQL PostgreSQL refuses with `state`, answered with `code`.
struct SqlError {
    sql: &'static str,
    code: Code,
    state: &'static str,
}

#[tokio::test]
async fn writes_commit_atomically_and_read_only_calls_cannot_write() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("writes").await;
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
                stmt("INSERT INTO customers (code, name) VALUES ('C3', 'Third')"),
                stmt("UPDATE customers SET credit_limit = -1 WHERE code = 'C2'"),
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
                pb::Statement {
                    params: vec![text("C1")],
                    ..stmt("UPDATE customers SET is_active = false WHERE code = $1")
                },
                stmt("SELECT code FROM customers WHERE is_active ORDER BY code"),
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
                statements: vec![stmt(switch), stmt("DELETE FROM customers")],
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
    let t = c.tenant("badreq").await;
    let cases = vec![
        BadRequest {
            request: exec("nope", "SELECT 1", vec![]),
            field: "tenant_id",
        },
        BadRequest {
            request: exec(&t.id, "  ", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "COMMIT", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, " ;COMMIT", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "; /* x */ DEALLOCATE ALL", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "ALTER ROLE current_user PASSWORD 'mine'", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "/* sneaky */ begin", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "COPY locations TO STDOUT", vec![]),
            field: "sql",
        },
        BadRequest {
            request: exec(&t.id, "SELECT $1::uuid", vec![v(Kind::Uuid("x".into()))]),
            field: "params[0]",
        },
        BadRequest {
            request: exec(&t.id, "SELECT $1::int8, $2::int8", vec![int(1)]),
            field: "params",
        },
        BadRequest {
            request: exec(&t.id, "SELECT $1::int4", vec![int(1 << 40)]),
            field: "params[0]",
        },
        BadRequest {
            request: exec(&t.id, "SELECT $1::int4", vec![v(Kind::Bytea(vec![1]))]),
            field: "params[0]",
        },
        BadRequest {
            request: exec(&t.id, "SELECT $1::jsonb", vec![v(Kind::Json("{".into()))]),
            field: "params[0]",
        },
        BadRequest {
            request: exec(
                &t.id,
                "SELECT $1::date",
                vec![v(Kind::Date("23.11.2026".into()))],
            ),
            field: "params[0]",
        },
        BadRequest {
            request: exec(
                &t.id,
                "SELECT $1::numeric",
                vec![v(Kind::Numeric("12,5".into()))],
            ),
            field: "params[0]",
        },
    ];
    for BadRequest { request, field } in cases {
        let sql = request.sql.clone();
        let err = c.data.execute(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sql}: {err:?}");
        assert_eq!(bad_fields(&err), vec![field.to_owned()], "{sql}");
    }
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![stmt("SELECT 1"), stmt("ROLLBACK")],
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
        SqlError {
            sql: "SELEKT 1",
            code: Code::InvalidArgument,
            state: "42601",
        },
        SqlError {
            sql: "SELECT * FROM no_such_table",
            code: Code::InvalidArgument,
            state: "42P01",
        },
        SqlError {
            sql: "SELECT 1/0",
            code: Code::InvalidArgument,
            state: "22012",
        },
        SqlError {
            sql: "SELECT 'abc'::int",
            code: Code::InvalidArgument,
            state: "22P02",
        },
        SqlError {
            sql: "INSERT INTO inventory_items (location_id, sku, name) VALUES (gen_random_uuid(), 'x', 'y')",
            code: Code::FailedPrecondition,
            state: "23503",
        },
        SqlError {
            sql: "SELECT raise_custom()",
            code: Code::FailedPrecondition,
            state: "P0001",
        },
    ];
    install_function(
        &server,
        &t,
        "raise_custom",
        "RAISE EXCEPTION 'custom failure';",
    )
    .await;
    for SqlError { sql, code, state } in cases {
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
