//! Connections that go away: every tenant backend terminated, tenantd
//! exiting with calls running, and a connection lost mid-call.

use std::time::{Duration, Instant};

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::reason;
use crate::common::binary::Tenantd;
use crate::common::data::{exec, read, stmt};
use crate::common::proxy::PgProxy;
use crate::common::{TestDb, TestServer, clients_at, database_url};

#[tokio::test]
async fn calls_recover_after_every_tenant_backend_is_terminated() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let a = c.tenant("kill-a").await;
    let b = c.tenant("kill-b").await;
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
async fn nothing_keeps_running_on_postgresql_after_tenantd_exits() {
    let db = TestDb::create().await;
    let mut server = Tenantd::start(&database_url(&db), &["--shutdown-timeout", "1s"]);
    let mut c = clients_at(&server.endpoint()).await;
    let t = c.tenant("exit").await;
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

/// A transaction cut off mid-call, and what its caller must be told.
struct LostConnection {
    statements: Vec<&'static str>,
    code: Code,
    /// The ErrorInfo reason: whether the write may have committed.
    why: &'static str,
}

#[tokio::test]
async fn a_lost_connection_says_whether_a_write_may_have_committed() {
    let db = TestDb::create().await;
    let proxy = PgProxy::start(&db.options()).await;
    let through = proxy.options(&db.options());
    let server = TestServer::start_in(db, |c| c.database = through).await;
    let mut c = server.clients().await;
    let t = c.tenant("lost").await;
    let s = &t.schema_name;
    let mut db = server.db.connect().await;
    // A table whose inserts take 2 s to commit: a deferred constraint
    // trigger sleeps in COMMIT.
    sqlx::raw_sql(&format!(
        "CREATE TABLE {s}.slow (id int); GRANT SELECT, INSERT ON {s}.slow TO {s}; \
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

    let cases = vec![
        // The COMMIT was sent and its answer never came.
        LostConnection {
            statements: vec!["INSERT INTO slow VALUES (1)"],
            code: Code::Unknown,
            why: "OUTCOME_UNKNOWN",
        },
        // Lost while a statement ran, before COMMIT was sent.
        LostConnection {
            statements: vec![
                "INSERT INTO locations (name) VALUES ('lost')",
                "SELECT pg_sleep(2)",
            ],
            code: Code::Unavailable,
            why: "NOT_EXECUTED",
        },
    ];
    let count = async |db: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(sleeping)
            .bind(s)
            .fetch_one(db)
            .await
            .unwrap()
    };
    for LostConnection {
        statements,
        code,
        why,
    } in cases
    {
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
