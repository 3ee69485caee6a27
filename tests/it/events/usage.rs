//! UsageService and `tenants usage`: sizes sampled from PostgreSQL's
//! catalog, data calls counted per tenant on the replica, who may read
//! which, and metrics without tenant labels.

use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use crate::common::data::{exec, read};
use crate::common::fleet::eventually;
use crate::common::identity::{add_member, log_in, new_user, tenant_owned_by};
use crate::common::metrics::Scrape;
use crate::common::{TestServer, bad_fields};

fn quick_sampling() -> impl FnOnce(&mut tenantd::app::AppConfig) {
    |c| c.usage.sample_interval = Duration::from_millis(300)
}

#[tokio::test]
async fn sizes_are_sampled_and_calls_counted_per_tenant() {
    let server = TestServer::start_with(quick_sampling()).await;
    let mut c = server.clients().await;
    let big = c.tenant("big").await;
    let small = c.tenant("small").await;
    c.data
        .execute(exec(
            &big.id,
            "INSERT INTO customers (code, name) \
             SELECT 'c' || g, repeat('x', 200) FROM generate_series(1, 20000) g",
            vec![],
        ))
        .await
        .unwrap();
    // Sizes are PostgreSQL's estimates: kept by ANALYZE and VACUUM.
    let mut db = server.db.connect().await;
    sqlx::query(&format!("ANALYZE {}.customers", big.schema_name))
        .execute(&mut db)
        .await
        .unwrap();
    for _ in 0..5 {
        c.data.execute(read(&small.id, "SELECT 1")).await.unwrap();
    }
    let err = c
        .data
        .execute(read(&small.id, "SELECT 1/0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let u = eventually("the big tenant sampled", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = big.id.clone();
        async move {
            let u = c
                .usage
                .get_tenant_usage(pb::GetTenantUsageRequest { tenant_id: id })
                .await
                .unwrap()
                .into_inner();
            (u.row_estimate >= 20_000).then_some(u)
        }
    })
    .await;
    assert!(
        u.schema_bytes > 4_000_000,
        "20,000 rows of 200 bytes: {u:?}"
    );
    assert!(u.relations >= 2, "{u:?}");
    assert_eq!(
        (u.slug.as_str(), u.cluster.as_str()),
        (big.slug.as_str(), "default")
    );
    assert_eq!((u.calls, u.errors), (1, 0), "{u:?}");
    assert!(u.sampled_at.is_some() && u.since.is_some());

    let s = c
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: small.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.calls, s.errors), (6, 1), "{s:?}");
    assert!(
        s.latency_p50_ms > 0.0 && s.latency_p99_ms >= s.latency_p50_ms,
        "{s:?}"
    );
    assert!(s.schema_bytes < u.schema_bytes);

    let by_size = c
        .usage
        .list_tenant_usage(pb::ListTenantUsageRequest {
            order_by: pb::UsageOrder::Size as i32,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_size.tenants.len(), 1);
    assert_eq!(by_size.tenants[0].tenant_id, big.id);
    assert_eq!(by_size.sampled_tenants, 2);
    let by_calls = c
        .usage
        .list_tenant_usage(pb::ListTenantUsageRequest {
            order_by: pb::UsageOrder::Calls as i32,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let order: Vec<&str> = by_calls
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!(order, vec![small.id.as_str(), big.id.as_str()]);
    let by_errors = c
        .usage
        .list_tenant_usage(pb::ListTenantUsageRequest {
            order_by: pb::UsageOrder::Errors as i32,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let order: Vec<&str> = by_errors
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!(order, vec![small.id.as_str()]);

    // Prometheus keeps its labels fixed: no tenant ids (Scrape checks);
    // the sampler reports itself there.
    let scrape = Scrape::of(server.metrics_addr().unwrap()).await;
    scrape.assert("tenantd_usage_sampled_tenants", 2.0);
    scrape.assert("tenantd_event_watchers", 0.0);
}

#[tokio::test]
async fn members_read_their_own_tenant_only_and_refused_calls_count_nowhere() {
    let server = TestServer::start_with(quick_sampling()).await;
    let mut c = server.clients().await;
    let (owner, _) = new_user(&mut c, "uo").await;
    let mine = tenant_owned_by(&mut c, "umine", &owner).await;
    let other = c.tenant("uother").await;
    let (emp, emp_email) = new_user(&mut c, "ue").await;
    add_member(&mut c, &mine.id, &emp, pb::MemberRole::Employee).await;
    let token = log_in(&mut c, &emp_email, &mine.id).await.access_token;
    let mut e = server.clients_as(&token).await;

    let own = e
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: mine.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tenant_id, mine.id);
    let err = e
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: other.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = e
        .usage
        .list_tenant_usage(pb::ListTenantUsageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Calls refused before they run do not count for the tenant named.
    for _ in 0..5 {
        let err = e
            .data
            .execute(read(&other.id, "SELECT 1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let o = c
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: other.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((o.calls, o.errors), (0, 0), "{o:?}");

    // A tenant made since the last sampling (every 60 s by default) has its
    // slug and cluster; one that does not exist is not found.
    let fresh = c.tenant("ufresh").await;
    let u = c
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: fresh.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u.slug.as_str(), u.cluster.as_str()),
        (fresh.slug.as_str(), "default")
    );
    let err = c
        .usage
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    for (tenant_id, field) in [("nope", "tenant_id"), ("", "tenant_id")] {
        let err = c
            .usage
            .get_tenant_usage(pb::GetTenantUsageRequest {
                tenant_id: tenant_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), vec![field]);
    }
    for (order_by, limit, field) in [(9, 10, "order_by"), (1, -1, "limit"), (1, 1001, "limit")] {
        let err = c
            .usage
            .list_tenant_usage(pb::ListTenantUsageRequest { order_by, limit })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), vec![field]);
    }
}
