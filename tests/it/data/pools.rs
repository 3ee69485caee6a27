//! Tenant pools: a suspended tenant's pool closes at once (also through
//! another replica), many tenants share a small connection budget, pools
//! evicted while in use never fail a call, and a tenant database out of
//! connection slots is RESOURCE_EXHAUSTED.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tenantd::pb::{self, value::Kind};
use tonic::Code;
use tonic_types::StatusExt as _;

use super::{backends_sql, read_scalar, tenants, wait_for_none};
use crate::common::data::{exec, read, stmt};
use crate::common::metrics::Scrape;
use crate::common::{TestServer, tenant_client, test_config};

async fn can_login(db: &mut sqlx::PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_one(db)
        .await
        .unwrap()
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
    let t = c.tenant("suspend").await;
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
    let t = c.tenant("replica").await;
    let other = TestServer::run(test_config(&server.db)).await.unwrap();
    let mut other_c = tenant_client(&format!("http://{}", other.local_addr())).await;
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
    let ids = tenants(&c, "budget", TENANTS).await;

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
                    .execute(read(id, "SELECT count(*) FROM locations"))
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

/// Every log line of this test process at WARN and above, as JSON objects
/// (the first call installs the subscriber). The subscriber is the whole
/// process's, so the lines of every test running beside this one are here
/// too: a test picks its own out by what only it has (its tenants' roles).
fn logs() -> Vec<serde_json::Value> {
    static LINES: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let lines: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        struct Sink(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(lines))
            .init();
        lines
    });
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect()
}

/// Closing idle connections of the least recently used pools sorts the pools
/// by their last use while other calls (on other threads) move it on. The
/// sort must read each pool's time once: a sort whose keys change under it
/// may panic, and the call that needed a connection would die with it.
///
/// Many tenants and a budget far below them keep the budget spent, so every
/// call of a cold tenant closes another pool's connection, sorting the 20-odd
/// pools that have one idle (Rust's sort checks the order from 21 elements
/// on); calls of hot tenants meanwhile move those pools' keys on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pools_evicted_while_in_use_never_fail_a_call() {
    const HOT: usize = 32;
    const COLD: usize = 88;
    const BUDGET: usize = 44;
    const RUN: Duration = Duration::from_secs(15);
    let server = TestServer::start_with(|c| {
        c.tenant_pools.budget = BUDGET;
        c.tenant_pools.pool_size = 1;
        c.tenant_pools.wait = Duration::from_secs(30);
    })
    .await;
    let c = server.clients().await;
    let ids = tenants(&c, "evict", HOT + COLD).await;
    let (hot, cold) = ids.split_at(HOT);

    let stop = tokio_util::sync::CancellationToken::new();
    let mut set = tokio::task::JoinSet::new();
    // Hot callers: each cycles over the hot tenants, whose pools keep their
    // connections and are touched every few milliseconds.
    // Cold callers: each sweeps the cold tenants, every call a new pool.
    for (worker, group) in (0..12usize).map(|w| (w, if w < 8 { hot } else { cold })) {
        // Each worker its own HTTP/2 connection, so one server-side failure
        // shows as that call's status rather than every caller's.
        let mut data = server.clients().await.data;
        let group = group.to_vec();
        let stop = stop.clone();
        set.spawn(async move {
            let mut calls = 0usize;
            let mut failures = Vec::new();
            let mut i = worker * 7;
            while !stop.is_cancelled() {
                let id = &group[i % group.len()];
                i += 1;
                calls += 1;
                if let Err(e) = data.execute(read(id, "SELECT 1")).await {
                    failures.push((e.code(), e.message().to_owned()));
                    // A failure is what this test looks for: stop early.
                    stop.cancel();
                }
            }
            (calls, failures)
        });
    }
    let started = Instant::now();
    tokio::select! {
        () = tokio::time::sleep(RUN) => stop.cancel(),
        () = stop.cancelled() => {}
    }
    let mut calls = 0;
    let mut failures = Vec::new();
    while let Some(done) = set.join_next().await {
        let (n, f) = done.unwrap();
        calls += n;
        failures.extend(f);
    }
    // Every call succeeds: none dies with the server's task (CANCELLED, or
    // a broken stream), none is INTERNAL.
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed within {:?}, e.g. {:?}",
        failures.len(),
        started.elapsed(),
        &failures[..failures.len().min(5)]
    );
    assert!(calls > 500, "only {calls} calls in {RUN:?}");
    let evicted = Scrape::of(server.metrics_addr().expect("a metrics listener"))
        .await
        .value("tenantd_tenant_pool_evictions_total{reason=\"budget\"}");
    assert!(
        evicted > 100.0,
        "idle connections closed for the budget: {evicted}"
    );
}

/// PostgreSQL refusing a tenant's login for want of connection slots (53300:
/// the role's CONNECTION LIMIT here; max_connections alike) is
/// RESOURCE_EXHAUSTED naming the SQLSTATE, for every kind of call, not
/// "cannot reach the database". The log says what PostgreSQL said, once for
/// the whole burst, then how many more there were.
#[tokio::test]
async fn a_tenant_database_out_of_connection_slots_is_resource_exhausted() {
    logs();
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let ids = tenants(&c, "slots", 3).await;
    let mut db = server.db.connect().await;
    let mut roles = Vec::new();
    for id in &ids {
        let t = c
            .tenants
            .get_tenant(pb::GetTenantRequest {
                selector: Some(pb::get_tenant_request::Selector::Id(id.clone())),
            })
            .await
            .unwrap()
            .into_inner();
        sqlx::raw_sql(&format!(
            "ALTER ROLE \"{}\" CONNECTION LIMIT 0",
            t.schema_name
        ))
        .execute(&mut db)
        .await
        .unwrap();
        roles.push(t.schema_name);
    }
    let mut calls = 0;
    for id in &ids {
        let statuses = [
            c.data.execute(read(id, "SELECT 1")).await.unwrap_err(),
            c.data
                .execute(exec(
                    id,
                    "INSERT INTO locations (name) VALUES ('x')",
                    vec![],
                ))
                .await
                .unwrap_err(),
            c.data
                .transaction(pb::TransactionRequest {
                    tenant_id: id.clone(),
                    statements: vec![stmt("SELECT count(*) FROM locations")],
                    read_only: true,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            c.data
                .transaction(pb::TransactionRequest {
                    tenant_id: id.clone(),
                    statements: vec![
                        stmt("INSERT INTO locations (name) VALUES ('y')"),
                        stmt("SELECT 1"),
                    ],
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ];
        for status in statuses {
            calls += 1;
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("too many connections")
                    && status.message().contains("53300"),
                "{status:?}"
            );
            let info = status.get_error_details().error_info().cloned();
            let sqlstate = info.and_then(|i| i.metadata.get("sqlstate").cloned());
            assert_eq!(sqlstate.as_deref(), Some("53300"), "{status:?}");
        }
    }

    // One line, with the SQLSTATE and PostgreSQL's own message (not just
    // tokio_postgres's "db error"), for the whole burst.
    let mine = |line: &serde_json::Value| {
        line["error"]
            .as_str()
            .is_some_and(|e| roles.iter().any(|r| e.contains(r.as_str())))
    };
    let full: Vec<_> = logs()
        .into_iter()
        .filter(|l| {
            mine(l)
                && l["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("no tenant connection")
        })
        .collect();
    assert_eq!(full.len(), 1, "{full:#?}");
    assert_eq!(full[0]["sqlstate"], "53300", "{:#?}", full[0]);
    let error = full[0]["error"].as_str().unwrap();
    assert!(error.contains("too many connections for role"), "{error}");
    // Within a few seconds of the window, a summary counts the rest.
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let found = logs().into_iter().find(|l| {
            mine(l)
                && l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("more tenant connection failures like this")
        });
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no summary of the burst logged");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(summary["more"], calls - 1, "{summary:#?}");

    // Slots again: the same pools serve.
    for role in &roles {
        sqlx::raw_sql(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT -1"))
            .execute(&mut db)
            .await
            .unwrap();
    }
    for id in &ids {
        c.data.execute(read(id, "SELECT 1")).await.unwrap();
    }
}
