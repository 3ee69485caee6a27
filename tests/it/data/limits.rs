//! Limits every call keeps: rows past max_rows are cut, and a call ends by
//! its deadline whatever its SQL does, also when its caller goes away.

use std::time::{Duration, Instant};

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::{install_function, read_scalar, sqlstate, wait_for_none};
use crate::common::data::{exec, read, stmt};
use crate::common::{Clients, TestServer};

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

#[tokio::test]
async fn rows_past_max_rows_are_cut_and_timeouts_always_hold() {
    let server = TestServer::start_with(|c| {
        c.data_calls.default_max_rows = 50;
        c.data_calls.max_rows = 100;
    })
    .await;
    let mut c = server.clients().await;
    let t = c.tenant("limits").await;
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

    // statement_timeout is always set, just under the call's deadline…
    let r = c
        .data
        .execute(pb::ExecuteRequest {
            timeout_ms: 2000,
            ..read(&t.id, "SELECT current_setting('statement_timeout')")
        })
        .await
        .unwrap()
        .into_inner();
    let setting = match r.rows[0].values[0].kind.as_ref() {
        Some(pb::value::Kind::Text(s)) => s.clone(),
        other => panic!("{other:?}"),
    };
    // PostgreSQL shows it in its largest exact unit.
    let ms: u64 = match setting.strip_suffix("ms") {
        Some(n) => n.parse().ok(),
        None => setting
            .strip_suffix('s')
            .and_then(|n| n.parse::<u64>().ok())
            .map(|s| s * 1000),
    }
    .unwrap_or_else(|| panic!("statement_timeout {setting:?}"));
    assert!((1000..2000).contains(&ms), "statement_timeout {setting:?}");
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
    // PostgreSQL's timeout (57014) fires 25 ms before the deadline; on a
    // loaded machine tenantd's cancel at the deadline may come first.
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("57014") | None),
        "{err:?}"
    );
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
            statements: vec![stmt("SELECT lift_timeout()"), stmt("SELECT pg_sleep(30)")],
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

#[tokio::test]
async fn a_call_abandoned_by_its_caller_leaves_no_query_running() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("abandon").await;
    let mut data = c.data.clone();
    let request = pb::ExecuteRequest {
        timeout_ms: 30_000,
        ..exec(&t.id, "SELECT pg_sleep(20)", vec![])
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), data.execute(request)).await;
    cancelled_and_still_answering(&server, &mut c, &t.id, "SELECT pg_sleep(20)").await;
}

#[tokio::test]
async fn a_call_ends_by_its_deadline_whatever_its_sql_does() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("deadline").await;
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
