//! What a hostile tenant found in the data plane of a release build, each
//! finding a test: settings changed through `pg_settings`, explicit locks
//! held over the tenant or the catalog, a seed and other members' SQL left
//! on pooled connections, a statement cache bounded by count only, and
//! timestamps a protobuf Timestamp cannot hold.

mod common;

use std::time::Duration;

use common::binary::Tenantd;
use common::{Clients, TestServer, bad_fields, database_url, new_tenant};
use tenantd::pb::{self, value::Kind};
use tonic::Code;
use tonic_types::StatusExt as _;

fn exec(tenant: &str, sql: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
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

/// A function of the tenant's schema: SQL the screen never sees.
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

/// Each case: SQL a call sends, refused by the screen in every spelling,
/// and the same done from a function of the schema, refused by
/// PostgreSQL's privileges.
struct Finding {
    what: &'static str,
    through_the_api: &'static [&'static str],
    from_a_function: &'static str,
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
    },
    Finding {
        what: "a seed for the next calls",
        through_the_api: &[
            "SELECT setseed(0.42)",
            "select pg_catalog.setseed(0.5), random()",
            "SELECT * FROM customers WHERE setseed(0.1) IS NULL",
        ],
        from_a_function: "PERFORM setseed(0.42);",
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
    },
];

#[tokio::test]
async fn what_a_hostile_tenant_found_is_refused_both_ways() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "findings").await;
    for (i, finding) in FINDINGS.iter().enumerate() {
        for sql in finding.through_the_api {
            for read_only in [true, false] {
                let err = c
                    .data
                    .execute(pb::ExecuteRequest {
                        read_only,
                        ..exec(&t.id, sql)
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
        let err = c
            .data
            .execute(exec(&t.id, &format!("SELECT {name}()")))
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("42501"),
            "{}: {err:?}",
            finding.what
        );
    }
}

#[tokio::test]
async fn one_members_sql_stays_unseen_by_the_next_call() {
    // One connection, so the second call lands on the session the first
    // prepared its statement on.
    let server = TestServer::start_with(|c| c.tenant_pools.pool_size = 1).await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "unseen").await;
    c.data
        .execute(exec(
            &t.id,
            "UPDATE customers SET name = name WHERE code = 'pw:SECRET-4711'",
        ))
        .await
        .unwrap();
    // Every way of listing the session's prepared statements is refused
    // (above); what remains visible holds nothing of the first call.
    let r = c
        .data
        .execute(pb::ExecuteRequest {
            read_only: true,
            ..exec(
                &t.id,
                "SELECT coalesce(string_agg(statement, ';'), '') FROM pg_cursors",
            )
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Kind::Text(seen)) = &r.rows[0].values[0].kind else {
        panic!("{r:?}")
    };
    assert!(!seen.contains("SECRET"), "{seen}");
}

#[tokio::test]
async fn timestamps_past_what_protobuf_holds_come_back_as_text() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = tenant(&mut c, "infinity").await;
    let r = c
        .data
        .execute(exec(
            &t.id,
            "SELECT 'infinity'::timestamptz, '-infinity'::timestamptz, \
             '294276-12-31 23:59:59.999999+00'::timestamptz, '10000-01-01 00:00:00+00'::timestamptz, \
             '9999-12-31 23:59:59.999999+00'::timestamptz, '0001-01-01 00:00:00+00'::timestamptz, \
             ARRAY['infinity', '2026-01-01']::timestamptz[]",
        ))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<Kind> = r.rows[0]
        .values
        .iter()
        .map(|v| v.kind.clone().unwrap())
        .collect();
    assert_eq!(kinds[0], Kind::Text("infinity".into()));
    assert_eq!(kinds[1], Kind::Text("-infinity".into()));
    assert_eq!(kinds[2], Kind::Text("294276-12-31T23:59:59.999999Z".into()));
    assert_eq!(kinds[3], Kind::Text("10000-01-01T00:00:00.000000Z".into()));
    for k in &kinds[4..6] {
        let Kind::Timestamptz(ts) = k else {
            panic!("{k:?}")
        };
        // Inside google.protobuf.Timestamp's range.
        assert!(
            (-62_135_596_800..=253_402_300_799).contains(&ts.seconds),
            "{ts:?}"
        );
    }
    let Kind::Array(a) = &kinds[6] else {
        panic!("{:?}", kinds[6])
    };
    assert_eq!(a.values[0].kind, Some(Kind::Text("infinity".into())));
    assert!(matches!(a.values[1].kind, Some(Kind::Timestamptz(_))));
}

#[tokio::test]
async fn many_long_distinct_statements_do_not_grow_memory() {
    let db = common::TestDb::create().await;
    let server = Tenantd::start(&database_url(&db), &[]);
    let mut c = common::clients_at(&server.endpoint()).await;
    let t = tenant(&mut c, "cache").await;
    for _ in 0..20 {
        c.data.execute(exec(&t.id, "SELECT 1")).await.unwrap();
    }
    let (_, before) = server.memory_kib();
    // 8 clients, 40 distinct statements of 200 kB each, then 400 of 4 kB:
    // 8 MB and 1.6 MB of SQL text that a count-bounded cache would keep.
    let mut clients = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut data = c.data.clone();
        let id = t.id.clone();
        clients.spawn(async move {
            for (n, size) in [(5, 200_000usize), (50, 4_000)] {
                for i in 0..n {
                    let padding = format!("/* {} */", "x".repeat(size));
                    let sql = format!("SELECT {worker}, {i}, {size} {padding}");
                    data.execute(exec(&id, &sql)).await.unwrap();
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (now, peak) = server.memory_kib();
    let grew = now.saturating_sub(before);
    eprintln!(
        "tenantd RSS {before} KiB before, {now} KiB after 440 distinct long statements from 8 clients (peak {peak} KiB)"
    );
    assert!(grew < 48 * 1024, "RSS grew by {grew} KiB");
}
