//! Tenants made and listed at once: concurrent creates of one slug,
//! idempotency keys, and keyset pages under concurrent inserts.

use std::collections::HashSet;
use std::sync::Arc;

use tenantd::pb;
use tonic::Code;

use super::{count_tenant_schemas, lifecycle};
use crate::common::{TestServer, create_tenant, new_tenant};

#[tokio::test]
async fn sixteen_concurrent_creates_of_one_slug_make_one_tenant() {
    let server = TestServer::start().await;
    let request = new_tenant("race");
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = server.client().await;
        let request = request.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.create_tenant(request).await
        }));
    }
    let mut ok = Vec::new();
    let mut exists = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(t) => ok.push(t.into_inner()),
            Err(s) if s.code() == Code::AlreadyExists => exists += 1,
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one create wins");
    assert_eq!(exists, 15);
    let mut db = server.db.connect().await;
    assert_eq!(count_tenant_schemas(&mut db).await, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.tenants")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_result() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = new_tenant("idem");
    request.idempotency_key = "onboarding-run-42".into();
    let first = client
        .create_tenant(request.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .create_tenant(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, first);

    // Concurrent replays all get the one tenant.
    let mut tasks = Vec::new();
    let mut concurrent = new_tenant("idem-race");
    concurrent.idempotency_key = "onboarding-run-43".into();
    for _ in 0..8 {
        let mut client = server.client().await;
        let r = concurrent.clone();
        tasks.push(tokio::spawn(async move {
            client.create_tenant(r).await.map(|t| t.into_inner().id)
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("every replay succeeds"));
    }
    assert_eq!(ids.len(), 1);

    // The same key for a different tenant is refused, naming the key.
    let mut other = new_tenant("idem-other");
    other.idempotency_key = request.idempotency_key.clone();
    let err = client.create_tenant(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("idempotency key"),
        "{}",
        err.message()
    );

    // Without a key, the same slug again is ALREADY_EXISTS.
    let mut no_key = request.clone();
    no_key.idempotency_key.clear();
    assert_eq!(
        client.create_tenant(no_key).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let mut db = server.db.connect().await;
    assert_eq!(count_tenant_schemas(&mut db).await, 2);
}

#[tokio::test]
async fn list_pages_by_keyset_without_repeats_or_gaps_under_concurrent_inserts() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut before = Vec::new();
    for i in 0..7 {
        before.push(create_tenant(&mut client, &format!("page{i}")).await.id);
    }
    // Suspend one so the status filter has something to find.
    client.suspend_tenant(lifecycle(&before[3])).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_tenants(pb::ListTenantsRequest {
                page_size: 3,
                page_token: token.clone(),
                status: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.tenants.iter().map(|t| t.id.clone()));
        // Someone creates tenants between our pages.
        client.create_tenant(new_tenant("during")).await.unwrap();
        if page.next_page_token.is_empty() || pages > 20 {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no tenant is listed twice");
    assert_eq!(
        &seen[..7],
        &before[..],
        "every earlier tenant, in creation order"
    );

    let suspended = client
        .list_tenants(pb::ListTenantsRequest {
            status: pb::TenantStatus::Suspended as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.tenants.len(), 1);
    assert_eq!(suspended.tenants[0].id, before[3]);
}
