//! The statement screen as a hostile tenant's SQL attacks it: statements in
//! every disguise PostgreSQL accepts, and what a hostile tenant found in a
//! release build, each refused through the API and from SQL the screen never
//! sees.

use proptest::prelude::*;
use tenantd::pb;
use tonic::Code;

use super::{install_function, refused_or_reported, sqlstate};
use crate::common::data::{exec, stmt};
use crate::common::{TestServer, bad_fields};

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
    "SELECT txid_current()",
    "SELECT pg_catalog.pg_current_xact_id()::text",
    "SELECT name FROM locations WHERE \"txid_current\"() > 0",
    "INSERT INTO locations (name) SELECT lo_get(1)::text",
    "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)",
    "SELECT citus_rebalance_start()",
    "SELECT * FROM run_command_on_workers('SELECT 1')",
    "SELECT pg_catalog.citus_schema_move('tenant_x', '127.0.0.1', 5432)",
    "SELECT * FROM pg_catalog.citus_stat_activity",
    "SELECT nodename FROM pg_dist_node",
    "SELECT \"master_move_shard_placement\"(1, 'a', 1, 'b', 2)",
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
        let t = c.tenant("disguise").await;
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

/// Each case: SQL a call sends, refused by the screen in every spelling,
/// and the same done from a function of the schema, refused by
/// PostgreSQL's privileges.
struct Finding {
    what: &'static str,
    through_the_api: &'static [&'static str],
    from_a_function: &'static str,
    /// The privilege the function needs, as tenantd's start check names it
    /// when it stays open (managed PostgreSQL).
    privilege: &'static str,
}

const FINDINGS: &[Finding] = &[
    Finding {
        what: "settings changed through pg_settings",
        through_the_api: &[
            "UPDATE pg_settings SET setting = '3GB' WHERE name = 'work_mem'",
            "update PG_CATALOG.\"pg_settings\" set setting = '0' where name = 'statement_timeout'",
            "WITH x AS (UPDATE pg_settings SET setting = 'off' \
             WHERE name = 'standard_conforming_strings' RETURNING 1) SELECT * FROM x",
            "/* */ UPDATE\tpg_settings SET setting = '0' WHERE name = 'client_connection_check_interval'",
        ],
        from_a_function: "UPDATE pg_settings SET setting = '3GB' WHERE name = 'work_mem';",
        privilege: "UPDATE ON pg_catalog.pg_settings",
    },
    Finding {
        what: "explicit locks",
        through_the_api: &[
            "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE",
            "lock customers, suppliers",
            "LOCK TABLE pg_catalog.pg_settings IN ACCESS EXCLUSIVE MODE",
            "LOCK schema_migrations IN ACCESS SHARE MODE",
        ],
        from_a_function: "LOCK TABLE pg_catalog.pg_settings IN ACCESS EXCLUSIVE MODE;",
        privilege: "UPDATE ON pg_catalog.pg_settings",
    },
    Finding {
        what: "a seed for the next calls",
        through_the_api: &[
            "SELECT setseed(0.42)",
            "select pg_catalog.setseed(0.5), random()",
            "SELECT * FROM customers WHERE setseed(0.1) IS NULL",
        ],
        from_a_function: "PERFORM setseed(0.42);",
        privilege: "setseed(",
    },
    Finding {
        what: "other members' SQL",
        through_the_api: &[
            "SELECT statement FROM pg_prepared_statements",
            "select * from PG_CATALOG.pg_prepared_statements",
            "SELECT query FROM pg_stat_activity",
            "SELECT count(*) FROM customers WHERE EXISTS (SELECT FROM pg_stat_activity)",
            "SELECT * FROM pg_prepared_statement()",
            "SELECT pg_stat_get_activity(NULL)",
        ],
        from_a_function: "PERFORM count(*) FROM pg_prepared_statements;",
        privilege: "SELECT ON pg_catalog.pg_prepared_statements",
    },
    Finding {
        what: "other members' running SQL, backend by backend",
        through_the_api: &[
            "select pg_stat_get_backend_pid(s), pg_stat_get_backend_userid(s)::regrole::text, \
             pg_stat_get_backend_activity(s) from pg_stat_get_backend_idset() s",
            "SELECT pg_catalog.PG_STAT_GET_BACKEND_ACTIVITY(1)",
            "select \"pg_stat_get_backend_wait_event\"(1), pg_stat_get_backend_activity_start(1)",
            "SELECT * FROM customers ORDER BY pg_stat_get_backend_activity(1) IS NULL",
            "select count(*) from pg_stat_get_backend_idset()",
        ],
        from_a_function: "PERFORM pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s;",
        privilege: "pg_stat_get_backend_",
    },
    Finding {
        what: "messages of any size written to the write-ahead log, read-only or not",
        through_the_api: &[
            "select pg_logical_emit_message(false, 'x', repeat('y', 100))::text",
            "SELECT PG_CATALOG.pg_logical_emit_message(true, 'p', 'x'::bytea)",
            "select \"pg_logical_emit_message\"(false, 'x', 'y')",
            "SELECT * FROM customers WHERE pg_logical_emit_message(false, 'x', code) IS NOT NULL",
            "with m as (select pg_logical_emit_message(false, 'x', 'y') as lsn) select lsn::text from m",
        ],
        from_a_function: "PERFORM pg_logical_emit_message(false, 'x', 'y');",
        privilege: "pg_logical_emit_message(",
    },
];

#[tokio::test]
async fn what_a_hostile_tenant_found_is_refused_both_ways() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("findings").await;
    for (i, finding) in FINDINGS.iter().enumerate() {
        for sql in finding.through_the_api {
            for read_only in [true, false] {
                let err = c
                    .data
                    .execute(pb::ExecuteRequest {
                        read_only,
                        ..exec(&t.id, sql, vec![])
                    })
                    .await
                    .unwrap_err();
                assert_eq!(
                    err.code(),
                    Code::InvalidArgument,
                    "{}: {sql}: {err:?}",
                    finding.what
                );
                assert_eq!(bad_fields(&err), vec!["sql".to_owned()], "{sql}");
            }
        }
        let name = format!("finding_{i}");
        install_function(&server, &t, &name, finding.from_a_function).await;
        let ran = c
            .data
            .execute(exec(&t.id, &format!("SELECT {name}()"), vec![]))
            .await;
        refused_or_reported(&server, ran, finding.privilege).await;
    }
}
