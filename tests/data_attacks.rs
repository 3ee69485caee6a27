//! The data plane as a hostile tenant's SQL attacks it: statements in every
//! disguise PostgreSQL accepts, side channels out of the schema, deadlines
//! lifted from inside, values built to exhaust memory, malformed values,
//! and calls still running when tenantd shuts down.

mod common;

use std::time::{Duration, Instant};

use common::binary::Tenantd;
use common::proxy::PgProxy;
use common::{Clients, TestServer, bad_fields, database_url, new_tenant};
use proptest::prelude::*;
use tenantd::pb::{self, value::Kind};
use tonic::Code;
use tonic_types::StatusExt as _;

fn v(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn exec(tenant: &str, sql: &str, params: Vec<pb::Value>) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
        sql: sql.into(),
        params,
        ..Default::default()
    }
}

fn stmt(sql: &str) -> pb::Statement {
    pb::Statement {
        sql: sql.into(),
        ..Default::default()
    }
}

fn sqlstate(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("sqlstate").cloned())
}

async fn tenant(c: &mut Clients, prefix: &str) -> pb::Tenant {
    c.tenants
        .create_tenant(new_tenant(prefix))
        .await
        .unwrap()
        .into_inner()
}

/// Installs a plpgsql function `name()` in tenant `t`'s schema, as a tenant
/// migration could: SQL the statement screen never sees.
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

/// Statements a data call must never run, each a different kind.
const FORBIDDEN: &[&str] = &[
    "COMMIT",
    "END",
    "COMMIT AND CHAIN",
    "ROLLBACK",
    "ABORT",
    "BEGIN",
    "START TRANSACTION READ WRITE",
    "SAVEPOINT s",
    "RELEASE SAVEPOINT s",
    "PREPARE TRANSACTION 'x'",
    "COPY locations TO STDOUT",
    "COPY (SELECT 1) TO STDOUT",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "LISTEN channel",
    "NOTIFY channel, 'x'",
    "UNLISTEN *",
    "LOAD 'auto_explain'",
    "DO $$ BEGIN COMMIT; END $$",
    "DO $body$ BEGIN PERFORM 1; END $body$",
    "SET statement_timeout = 0",
    "SET SESSION statement_timeout TO DEFAULT",
    "SET LOCAL statement_timeout = 0",
    "RESET statement_timeout",
    "RESET ALL",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET transaction_read_only = off",
    "SET default_transaction_read_only = off",
    "SET ROLE postgres",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION postgres",
    "SET search_path = tenantd",
    "ALTER ROLE CURRENT_USER SET statement_timeout = 0",
    "ALTER ROLE CURRENT_USER PASSWORD 'x'",
    "CREATE TABLE t (a int)",
    "CREATE TEMP TABLE t (a int)",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP TABLE locations",
    "ALTER TABLE locations ADD COLUMN b int",
    "TRUNCATE locations",
    "GRANT SELECT ON locations TO PUBLIC",
    "SELECT 1 INTO t",
    "CREATE TABLE t AS SELECT 1",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "VACUUM locations",
    "SELECT lo_from_bytea(0, '\\x00')",
    "SELECT pg_catalog.lo_put(1, 0, 'x')",
    "SELECT \"lo_creat\"(-1)",
    "SELECT * FROM (SELECT lo_import('/etc/passwd')) s",
    "WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT count(*) FROM locations WHERE pg_cancel_backend(1)",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT query_to_xml('COMMIT', true, true, '')",
    "SELECT pg_notify('channel', 'x')",
    "INSERT INTO locations (name) SELECT lo_get(1)::text",
    "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)",
    "SELECT 1; COMMIT",
    "SELECT 1 -- hidden\r; COMMIT",
    "SELECT $$;$$; COMMIT",
    "SELECT 'a'; SELECT 'b'",
];

/// What may stand before a statement: nothing, empty statements, comments
/// (a `--` comment ends at `\r` as at `\n`), nested block comments and
/// every whitespace character PostgreSQL skips.
const PREFIXES: &[&str] = &[
    "",
    ";",
    ";;  ;",
    "-- comment\n",
    "-- comment\r",
    "--\r\n",
    "/* block */",
    "/* outer /* nested */ still comment */",
    "/*/**/*/",
    " \t\n\r\x0c",
    "-- a\r/* b */;",
];

const SUFFIXES: &[&str] = &[
    "",
    ";",
    " ;  ",
    "-- trailing",
    "/* trailing */",
    ";\n-- x\r",
];

/// What may stand between two tokens instead of a space.
const GAPS: &[&str] = &[
    " ",
    "\t",
    "\n",
    "\r",
    "\x0c",
    "  ",
    "/**/",
    "/* x /* y */ z */",
    "--c\n",
    "--c\r",
];

/// A forbidden statement in disguise: prefix, suffix, other gaps between
/// its tokens, and letters in mixed case (outside quotes and dollar
/// quotes, whose content the case would change).
fn disguise(core: &str, prefix: &str, suffix: &str, gap: &str, case: u64) -> String {
    let mut out = String::from(prefix);
    let mut quoted: Option<char> = None;
    let mut dollar = false;
    for (i, c) in core.chars().enumerate() {
        match (quoted, c) {
            (None, '\'' | '"') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '$') => dollar = !dollar,
            _ => {}
        }
        if quoted.is_some() || dollar {
            out.push(c);
        } else if c == ' ' {
            out.push_str(gap);
        } else if case >> (i % 64) & 1 == 1 {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c.to_ascii_uppercase());
        }
    }
    out.push_str(suffix);
    out
}

fn forbidden_variant() -> impl Strategy<Value = String> {
    (
        0..FORBIDDEN.len(),
        0..PREFIXES.len(),
        0..SUFFIXES.len(),
        0..GAPS.len(),
        any::<u64>(),
    )
        .prop_map(|(f, p, s, g, case)| {
            disguise(FORBIDDEN[f], PREFIXES[p], SUFFIXES[s], GAPS[g], case)
        })
}

#[test]
fn forbidden_statements_in_any_disguise_are_refused_and_commit_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, mut c, t) = rt.block_on(async {
        let server = TestServer::start().await;
        let mut c = server.clients().await;
        let t = tenant(&mut c, "disguise").await;
        (server, c, t)
    });
    let cases = std::sync::atomic::AtomicU32::new(0);
    proptest!(ProptestConfig::with_cases(400), |(sql in forbidden_variant())| {
        let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("marker-{case}");
        let mut data = c.data.clone();
        let (alone, first) = rt.block_on(async {
            let alone = data.execute(exec(&t.id, &sql, vec![])).await;
            let first = data
                .transaction(pb::TransactionRequest {
                    tenant_id: t.id.clone(),
                    statements: vec![
                        stmt(&sql),
                        stmt(&format!("INSERT INTO locations (name) VALUES ('{marker}')")),
                    ],
                    read_only: true,
                    ..Default::default()
                })
                .await;
            (alone.map(drop), first.map(drop))
        });
        for (err, field) in [(alone, "sql"), (first, "statements[0].sql")] {
            let err = err.expect_err("refused");
            // Refused by the screen, or (text PostgreSQL's parser cannot
            // read) answered as PostgreSQL would: never run.
            prop_assert_eq!(err.code(), Code::InvalidArgument, "{:?}: {:?}", sql, err);
            let screened = bad_fields(&err) == vec![field.to_owned()];
            let syntax = sqlstate(&err).as_deref() == Some("42601");
            prop_assert!(screened || syntax, "{:?}: {:?}", sql, err);
        }
    });
    rt.block_on(async {
        let mut db = server.db.connect().await;
        let written: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.locations WHERE name LIKE 'marker-%'",
            t.schema_name
        ))
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(written, 0, "a marker row was written");
        // The same statements, undisguised, are what PostgreSQL would take
        // for what the screen says: allowed statements still run.
        for sql in [
            "-- comment\rSELECT 1",
            "/* /* nested */ */ select count(*) from locations",
            "SET LOCAL TimeZone = 'UTC'",
            "with x as (select 1) select * from x",
        ] {
            c.data.execute(exec(&t.id, sql, vec![])).await.unwrap();
        }
    });
}

#[tokio::test]
async fn nothing_reaches_past_the_schema_even_from_sql_the_screen_cannot_see() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "side").await;
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
    // From a function of the schema: PostgreSQL's privileges refuse.
    for (name, body) in [
        ("store_object", "PERFORM lo_from_bytea(0, 'x');"),
        ("make_object", "PERFORM lo_creat(-1);"),
        ("write_object", "PERFORM lo_put(1, 0, 'x');"),
        ("signal", "PERFORM pg_cancel_backend(pg_backend_pid());"),
        ("notify", "PERFORM pg_notify('c', 'x');"),
        ("temp_table", "CREATE TEMP TABLE scratch (a int);"),
    ] {
        install_function(&server, &t, name, body).await;
        let err = c
            .data
            .execute(exec(&t.id, &format!("SELECT {name}()"), vec![]))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{name}: {err:?}");
    }
    let mut db = server.db.connect().await;
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(objects, 0, "no large object was made");

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
    let err = c
        .data
        .execute(exec(&t.id, "SELECT kill_the_others()", vec![]))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    sleeper
        .await
        .unwrap()
        .expect("the other call ran to its end");
}

#[tokio::test]
async fn a_call_ends_by_its_deadline_whatever_its_sql_does() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "deadline").await;
    // Functions of the schema may lift the statement timeout, and may
    // even catch the cancel; the call ends at its deadline all the same.
    install_function(
        &server,
        &t,
        "lift_timeout",
        "PERFORM set_config('statement_timeout', '0', false);",
    )
    .await;
    install_function(
        &server,
        &t,
        "stubborn",
        "PERFORM set_config('statement_timeout', '0', true); \
         LOOP BEGIN PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP;",
    )
    .await;
    let shapes: Vec<Vec<&str>> = vec![
        vec!["SELECT pg_sleep(30)"],
        vec!["SELECT stubborn()"],
        vec!["SELECT lift_timeout()", "SELECT pg_sleep(30)"],
        vec![
            "SELECT pg_sleep(0.2)",
            "SELECT pg_sleep(0.2)",
            "SELECT pg_sleep(0.2)",
            "SELECT pg_sleep(0.2)",
            "SELECT pg_sleep(0.2)",
            "SELECT pg_sleep(0.2)",
        ],
        vec!["SELECT lift_timeout()", "SELECT stubborn()"],
        vec!["SELECT count(*) FROM generate_series(1, 1e12::bigint)"],
    ];
    let mut db = server.db.connect().await;
    for statements in &shapes {
        for read_only in [true, false] {
            for timeout_ms in [300u32, 700] {
                let started = Instant::now();
                let err = if let [only] = statements.as_slice() {
                    c.data
                        .execute(pb::ExecuteRequest {
                            read_only,
                            timeout_ms,
                            ..exec(&t.id, only, vec![])
                        })
                        .await
                } else {
                    c.data
                        .transaction(pb::TransactionRequest {
                            tenant_id: t.id.clone(),
                            statements: statements.iter().map(|s| stmt(s)).collect(),
                            read_only,
                            timeout_ms,
                        })
                        .await
                        .map(|_| unreachable!("a call past its deadline answered"))
                }
                .unwrap_err();
                let took = started.elapsed();
                assert_eq!(
                    err.code(),
                    Code::DeadlineExceeded,
                    "{statements:?}: {err:?}"
                );
                let bound = Duration::from_millis(u64::from(timeout_ms) + 250);
                assert!(
                    took < bound,
                    "{statements:?} took {took:?}, asked {timeout_ms} ms"
                );
            }
        }
    }
    // Nothing of those calls keeps running on PostgreSQL.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active'",
        )
        .bind(&t.schema_name)
        .fetch_one(&mut db)
        .await
        .unwrap();
        if running == 0 {
            break;
        }
        if Instant::now() > deadline {
            let busy: Vec<(String, String)> = sqlx::query_as(
                "SELECT query, coalesce(wait_event, '') FROM pg_stat_activity \
                 WHERE usename = $1 AND state = 'active'",
            )
            .bind(&t.schema_name)
            .fetch_all(&mut db)
            .await
            .unwrap();
            panic!("backends still busy: {busy:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c
        .data
        .execute(exec(&t.id, "SELECT 7", vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rows[0].values[0].kind, Some(Kind::Int64(7)));
}

/// A nested array parameter `depth` levels deep.
fn nested(depth: usize) -> pb::Value {
    let mut value = v(Kind::Int64(1));
    for _ in 0..depth {
        value = v(Kind::Array(pb::Array {
            values: vec![value],
        }));
    }
    value
}

#[tokio::test]
async fn malformed_values_are_invalid_arguments_never_internal() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "values").await;
    let timestamp =
        |seconds, nanos| v(Kind::Timestamptz(prost_types::Timestamp { seconds, nanos }));
    // (SQL, the bad value as parameter 1, whether tenantd names the field
    // itself; otherwise PostgreSQL refuses it with its SQLSTATE.)
    let cases: Vec<(&str, pb::Value, bool)> = vec![
        ("SELECT $1::int[]", nested(7), true),
        ("SELECT $1::int[]", nested(30), true),
        ("SELECT $1::int[]", nested(48), true),
        ("SELECT $1::int", v(Kind::Numeric("1x".into())), true),
        ("SELECT $1::uuid", v(Kind::Uuid("not-a-uuid".into())), true),
        ("SELECT $1::date", v(Kind::Date("2026-02-30".into())), true),
        ("SELECT $1::jsonb", v(Kind::Json("{".into())), true),
        ("SELECT $1::timestamptz", timestamp(0, -1), true),
        ("SELECT $1::timestamptz", timestamp(i64::MAX, 0), true),
        ("SELECT $1::int", v(Kind::Int64(i64::MAX)), true),
        ("SELECT $1::smallint", v(Kind::Int64(40_000)), true),
        ("SELECT $1::int", v(Kind::Bytea(vec![1, 2])), true),
        ("SELECT $1::int", nested(1), true),
        ("SELECT $1::int", v(Kind::Text("twelve".into())), false),
        ("SELECT $1::int", v(Kind::Float64(f64::NAN)), false),
        ("SELECT $1::text", v(Kind::Text("nul\0byte".into())), false),
        (
            "SELECT $1::numeric",
            v(Kind::Numeric("1e999999999".into())),
            false,
        ),
        (
            "SELECT $1::int[]",
            v(Kind::Array(pb::Array {
                values: vec![nested(1), v(Kind::Int64(1))],
            })),
            false,
        ),
        (
            "SELECT $1::int[]",
            v(Kind::Array(pb::Array {
                values: vec![v(Kind::Text("x".into()))],
            })),
            false,
        ),
    ];
    for (sql, value, named) in cases {
        let err = c
            .data
            .execute(exec(&t.id, sql, vec![value.clone()]))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{sql} {value:?}: {err:?}"
        );
        if named {
            let fields = bad_fields(&err);
            assert!(
                fields.len() == 1 && fields[0].starts_with("params[0]"),
                "{sql}: {err:?}"
            );
        } else {
            assert!(sqlstate(&err).is_some(), "{sql}: {err:?}");
        }
    }
    // Deeper than the message decoder goes: refused as a bad request.
    for depth in [60, 200] {
        let err = c
            .data
            .execute(exec(&t.id, "SELECT $1::int[]", vec![nested(depth)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{depth}: {err:?}");
        assert_eq!(
            bad_fields(&err),
            vec!["params".to_owned()],
            "{depth}: {err:?}"
        );
    }
    // The tenant still answers.
    c.data
        .execute(exec(&t.id, "SELECT $1::int[]", vec![nested(6)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_stays_bounded_when_tenants_ask_for_huge_values() {
    let db = common::TestDb::create().await;
    let server = Tenantd::start(&database_url(&db), &[]);
    let mut c = common::clients_at(&server.endpoint()).await;
    let t = tenant(&mut c, "memory").await;
    // Warm up: pools, prepared statements, allocator arenas.
    for _ in 0..20 {
        c.data
            .execute(exec(&t.id, "SELECT 1", vec![]))
            .await
            .unwrap();
    }
    let (_, before) = server.memory_kib();
    let huge = [
        // ~40 MB on the wire of 10 million NULLs.
        "SELECT array_fill(NULL::int, ARRAY[10000000])",
        // A 3,000 × 3,000 array of ints.
        "SELECT array_fill(7, ARRAY[3000, 3000])",
        // 40 MB of text in one value, and in many rows.
        "SELECT repeat('x', 40000000)",
        "SELECT repeat('x', 1000000) FROM generate_series(1, 40)",
        // An error message quoting 40 MB.
        "SELECT repeat('x', 40000000)::int",
        // A wide row of many mid-sized values.
        "SELECT array_agg(repeat('y', 100)) FROM generate_series(1, 400000)",
    ];
    let mut clients = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let mut data = c.data.clone();
        let id = t.id.clone();
        clients.spawn(async move {
            let mut codes = Vec::new();
            for round in 0..3 {
                let sql = huge[(worker + round) % huge.len()];
                let result = data
                    .execute(pb::ExecuteRequest {
                        read_only: true,
                        timeout_ms: 30_000,
                        ..exec(&id, sql, vec![])
                    })
                    .await;
                codes.push((sql, result.map(|r| r.into_inner().truncated)));
            }
            codes
        });
    }
    while let Some(results) = clients.join_next().await {
        for (sql, result) in results.unwrap() {
            match result {
                Ok(truncated) => assert!(truncated, "{sql}: answered whole"),
                Err(e) => assert!(
                    matches!(e.code(), Code::ResourceExhausted | Code::InvalidArgument),
                    "{sql}: {e:?}"
                ),
            }
        }
    }
    let (_, peak) = server.memory_kib();
    let grew = peak.saturating_sub(before);
    eprintln!(
        "tenantd peak RSS: {before} KiB before, {peak} KiB after 24 huge calls from 8 clients (+{grew} KiB)"
    );
    assert!(
        grew < 64 * 1024,
        "peak RSS grew by {grew} KiB under 8 clients of huge values"
    );
    // And the tenant still answers.
    c.data
        .execute(exec(&t.id, "SELECT 1", vec![]))
        .await
        .unwrap();
}

#[tokio::test]
async fn nothing_keeps_running_on_postgresql_after_tenantd_exits() {
    let db = common::TestDb::create().await;
    let mut server = Tenantd::start(&database_url(&db), &["--shutdown-timeout", "1s"]);
    let mut c = common::clients_at(&server.endpoint()).await;
    let t = tenant(&mut c, "exit").await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut data = c.data.clone();
        let id = t.id.clone();
        calls.push(tokio::spawn(async move {
            let _ = data
                .execute(pb::ExecuteRequest {
                    timeout_ms: 60_000,
                    ..exec(&id, "SELECT pg_sleep(20)", vec![])
                })
                .await;
        }));
    }
    let mut admin = db.connect().await;
    let sleeping = "SELECT count(*) FROM pg_stat_activity \
                    WHERE query = 'SELECT pg_sleep(20)' AND state = 'active'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(sleeping)
        .fetch_one(&mut admin)
        .await
        .unwrap()
        < 4
    {
        assert!(Instant::now() < deadline, "the calls did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = server.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    let exited = Instant::now();
    // Every statement was cancelled before tenantd exited: none is left
    // for PostgreSQL to run for the 20 s it was asked.
    let left: i64 = sqlx::query_scalar(sleeping)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        left,
        0,
        "statements still running {:?} after exit",
        exited.elapsed()
    );
    for call in calls {
        let _ = call.await;
    }
}

/// The ErrorInfo reason of a status.
fn reason(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

#[tokio::test]
async fn a_lost_connection_says_whether_a_write_may_have_committed() {
    let db = common::TestDb::create().await;
    let proxy = PgProxy::start(&db.options()).await;
    let through = proxy.options(&db.options());
    let server = TestServer::start_in(db, |c| c.database = through).await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "lost").await;
    let s = &t.schema_name;
    let mut db = server.db.connect().await;
    // A table whose inserts take 2 s to commit: a deferred constraint
    // trigger sleeps in COMMIT.
    sqlx::raw_sql(&format!(
        "CREATE TABLE {s}.slow (id int); \
         CREATE FUNCTION {s}.slow_commit() RETURNS trigger LANGUAGE plpgsql \
           AS $f$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $f$; \
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON {s}.slow \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_commit();"
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let sleeping = "SELECT count(*) FROM pg_stat_activity \
                    WHERE usename = $1 AND state = 'active' AND wait_event = 'PgSleep'";

    // (statements, what the caller must be told, whether the insert exists)
    let cases: Vec<(Vec<&str>, Code, &str)> = vec![
        // The COMMIT was sent and its answer never came.
        (
            vec!["INSERT INTO slow VALUES (1)"],
            Code::Unknown,
            "OUTCOME_UNKNOWN",
        ),
        // Lost while a statement ran, before COMMIT was sent.
        (
            vec![
                "INSERT INTO locations (name) VALUES ('lost')",
                "SELECT pg_sleep(2)",
            ],
            Code::Unavailable,
            "NOT_EXECUTED",
        ),
    ];
    let count = async |db: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(sleeping)
            .bind(s)
            .fetch_one(db)
            .await
            .unwrap()
    };
    for (statements, code, why) in cases {
        // The backend of the case before (cut off mid-sleep) is gone first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&mut db).await > 0 {
            assert!(Instant::now() < deadline, "a cut-off backend kept sleeping");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut data = c.data.clone();
        let id = t.id.clone();
        let sent: Vec<pb::Statement> = statements.iter().map(|s| stmt(s)).collect();
        let call = tokio::spawn(async move {
            data.transaction(pb::TransactionRequest {
                tenant_id: id,
                statements: sent,
                read_only: false,
                timeout_ms: 20_000,
            })
            .await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&mut db).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the call never reached its sleep"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.cut_tenant_connections();
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), code, "{statements:?}: {err:?}");
        assert_eq!(
            reason(&err).as_deref(),
            Some(why),
            "{statements:?}: {err:?}"
        );
    }
    let written: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {s}.locations WHERE name = 'lost'"
    ))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(written, 0, "NOT_EXECUTED wrote nothing");
    // Calls work again, on fresh connections.
    let r = c
        .data
        .execute(exec(&t.id, "SELECT 5", vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rows[0].values[0].kind, Some(Kind::Int64(5)));
}
