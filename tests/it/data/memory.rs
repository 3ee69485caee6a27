//! tenantd's memory stays bounded when tenants ask for huge values or send
//! many long distinct statements (the real binary, its RSS measured).

use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use crate::common::binary::Tenantd;
use crate::common::data::exec;
use crate::common::{Clients, TestDb, clients_at, database_url};

/// The real binary over a database of its own, and a tenant of it. Bind
/// `_db` first, so that it is dropped after the process is killed.
struct Warm {
    _db: TestDb,
    server: Tenantd,
    c: Clients,
    t: pb::Tenant,
}

/// Starts the binary, makes a tenant and warms up its pools, prepared
/// statements and allocator arenas.
async fn warm(prefix: &str) -> Warm {
    let db = TestDb::create().await;
    let server = Tenantd::start(&database_url(&db), &[]);
    let mut c = clients_at(&server.endpoint()).await;
    let t = c.tenant(prefix).await;
    for _ in 0..20 {
        c.data
            .execute(exec(&t.id, "SELECT 1", vec![]))
            .await
            .unwrap();
    }
    Warm {
        _db: db,
        server,
        c,
        t,
    }
}

#[tokio::test]
async fn memory_stays_bounded_when_tenants_ask_for_huge_values() {
    // Bound in this order, dropped in the reverse: the process goes first.
    let Warm {
        _db,
        server,
        mut c,
        t,
    } = warm("memory").await;
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
async fn many_long_distinct_statements_do_not_grow_memory() {
    let Warm { _db, server, c, t } = warm("cache").await;
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
                    data.execute(exec(&id, &sql, vec![])).await.unwrap();
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
