//! The Prometheus endpoint, scraped over real HTTP from a real server: gRPC
//! calls by method and status (unary and streaming), tenant creations,
//! catalog pool and upgrade-state gauges, a scrape against a locked catalog,
//! and the `--metrics-addr` flag.

use std::time::{Duration, Instant};

use clap::Parser;
use tenantd::pb::{self, tenant_service_client::TenantServiceClient};

use crate::common::cli::Serve;
use crate::common::data::read;
use crate::common::metrics::{Scrape, http};
use crate::common::{TestServer, create_tenant, fleet, new_tenant};

fn calls(method: &str, code: &str) -> String {
    format!("tenantd_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}}")
}

fn state(metric: &str, state: &str) -> String {
    format!("{metric}{{state=\"{state}\"}}")
}

const CREATE: &str = "/tenantd.v1.TenantService/CreateTenant";
const WATCH: &str = "/tenantd.v1.MigrationService/WatchUpgrade";

#[tokio::test]
async fn calls_by_method_and_code_and_tenant_creations() {
    let mut server = TestServer::start().await;
    let addr = server
        .metrics_addr()
        .expect("the test server serves metrics");
    let mut clients = server.clients().await;

    let mut first = new_tenant("metrics");
    first.idempotency_key = "metrics-once".into();
    clients.tenants.create_tenant(first.clone()).await.unwrap();
    // The same request again is an idempotent replay: OK, nothing created.
    clients.tenants.create_tenant(first.clone()).await.unwrap();
    let invalid = clients
        .tenants
        .create_tenant(pb::CreateTenantRequest::default())
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let mut taken = first.clone();
    taken.idempotency_key.clear();
    let taken = clients.tenants.create_tenant(taken).await.unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    let anonymous = TenantServiceClient::new(server.channel().await)
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // A path outside the API, with a UUID in it, must not become a label.
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    raw.ready().await.unwrap();
    let path = format!("/tenantd.v1.{}/Get", uuid::Uuid::new_v4());
    let unknown = raw
        .unary::<(), (), _>(
            tonic::Request::new(()),
            path.parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    let scrape = Scrape::of(addr).await;
    scrape.assert(&calls(CREATE, "OK"), 2.0);
    scrape.assert(&calls(CREATE, "INVALID_ARGUMENT"), 1.0);
    scrape.assert(&calls(CREATE, "ALREADY_EXISTS"), 1.0);
    scrape.assert(
        &calls("/tenantd.v1.TenantService/ListTenants", "UNAUTHENTICATED"),
        1.0,
    );
    scrape.assert(&calls("/grpc.health.v1.Health/Check", "OK"), 1.0);
    scrape.assert(&calls("unknown", "UNIMPLEMENTED"), 1.0);
    scrape.assert(
        &format!("tenantd_grpc_request_duration_seconds_count{{method=\"{CREATE}\"}}"),
        4.0,
    );
    scrape.assert(
        &format!("tenantd_grpc_request_duration_seconds_bucket{{le=\"+Inf\",method=\"{CREATE}\"}}"),
        4.0,
    );
    scrape.assert("tenantd_tenants_created_total", 1.0);
    scrape.assert("tenantd_tenant_create_replays_total", 1.0);
    scrape.assert(
        "tenantd_tenant_create_failures_total{reason=\"invalid\"}",
        1.0,
    );
    scrape.assert(
        "tenantd_tenant_create_failures_total{reason=\"slug_taken\"}",
        1.0,
    );
    scrape.assert("tenantd_catalog_pool_max_connections", 20.0);
    let open = scrape.value(&state("tenantd_catalog_pool_connections", "idle"))
        + scrape.value(&state("tenantd_catalog_pool_connections", "in_use"));
    assert!((1.0..=20.0).contains(&open), "{open} catalog connections");
    scrape.assert("tenantd_metrics_collect_errors_total", 0.0);
    // The tenant pool cache's series exist from the start.
    scrape.assert("tenantd_tenant_pool_cache_hits_total", 0.0);
    scrape.assert(
        "tenantd_tenant_pool_evictions_total{reason=\"capacity\"}",
        0.0,
    );

    assert_eq!(http(addr, "GET", "/").await.status, 404);
    assert_eq!(http(addr, "GET", "/metrics/extra").await.status, 404);
    let post = http(addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert_eq!(
        post.headers.get("allow").map(String::as_str),
        Some("GET, HEAD")
    );

    drop((clients, health, raw));
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the metrics listener closes with the server"
    );
}

#[tokio::test]
async fn upgrade_runs_and_items_by_state_and_streams_by_outcome() {
    let v1 = fleet::migrations(&[]);
    let p1 = fleet::path(&v1);
    let mut server = TestServer::start_with(|c| c.tenant_migrations = Some(p1)).await;
    fleet::create_tenants(&server.endpoint(), "metrics", 3, 1).await;
    let v2 = fleet::migrations(&[("add_timezone", fleet::ADD_TIMEZONE)]);
    let p2 = fleet::path(&v2);
    // No workers: the run stays where it is while the test looks.
    server
        .restart_with(|c| {
            c.tenant_migrations = Some(p2.clone());
            c.runner.workers = 0;
        })
        .await;
    let addr = server.metrics_addr().unwrap();
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(2, 0)).await;
    let scrape = Scrape::of(addr).await;
    scrape.assert(&state("tenantd_upgrade_runs", "running"), 1.0);
    scrape.assert(&state("tenantd_upgrade_runs", "succeeded"), 0.0);
    scrape.assert(&state("tenantd_upgrade_items", "pending"), 3.0);
    scrape.assert(&state("tenantd_upgrade_items", "done"), 0.0);

    // A watcher that goes away mid-stream: its call is CANCELLED.
    let mut stream = client
        .watch_upgrade(pb::WatchUpgradeRequest {
            run_id: run.id.clone(),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            from_start: true,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first event");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::of(addr).await;
        if scrape.samples.get(&calls(WATCH, "CANCELLED")) == Some(&1.0) {
            assert!(!scrape.samples.contains_key(&calls(WATCH, "OK")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CANCELLED watch in\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client
        .cancel_upgrade(pb::UpgradeRunRequest {
            run_id: run.id.clone(),
            reason: "metrics test".into(),
        })
        .await
        .unwrap();
    let scrape = Scrape::of(addr).await;
    scrape.assert(&state("tenantd_upgrade_runs", "running"), 0.0);
    scrape.assert(&state("tenantd_upgrade_runs", "cancelled"), 1.0);
    // Items of finished runs are not counted.
    scrape.assert(&state("tenantd_upgrade_items", "pending"), 0.0);
    scrape.assert(&state("tenantd_upgrade_items", "skipped"), 0.0);

    // With workers, a run to its end; its watcher sees the stream end OK.
    server
        .restart_with(|c| c.tenant_migrations = Some(p2))
        .await;
    let addr = server.metrics_addr().unwrap();
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(2, 0)).await;
    let done = fleet::wait_for_end(&mut client, &run.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, pb::UpgradeStatus::Succeeded as i32);
    let watched = fleet::watch(&mut client, &run.id, true, Duration::from_secs(30)).await;
    assert!(watched.ended);
    let scrape = Scrape::of(addr).await;
    scrape.assert(&calls(WATCH, "OK"), 1.0);
    scrape.assert(
        &format!("tenantd_grpc_request_duration_seconds_count{{method=\"{WATCH}\"}}"),
        1.0,
    );
    scrape.assert(&state("tenantd_upgrade_runs", "succeeded"), 1.0);
    scrape.assert(&state("tenantd_upgrade_runs", "cancelled"), 1.0);
    scrape.assert(&state("tenantd_upgrade_runs", "running"), 0.0);
    scrape.assert(&state("tenantd_upgrade_items", "done"), 0.0);
}

#[tokio::test]
async fn a_locked_catalog_leaves_the_last_values_and_counts_an_error() {
    let server = TestServer::start().await;
    let addr = server.metrics_addr().unwrap();
    let before = Scrape::of(addr).await;
    before.assert("tenantd_metrics_collect_errors_total", 0.0);
    before.assert(&state("tenantd_upgrade_runs", "running"), 0.0);

    // Whoever holds this lock makes the scrape's catalog query wait.
    let mut db = server.db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE tenantd.upgrade_runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut db)
        .await
        .unwrap();
    let started = Instant::now();
    let during = Scrape::of(addr).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the scrape took {took:?}");
    during.assert("tenantd_metrics_collect_errors_total", 1.0);
    during.assert(&state("tenantd_upgrade_runs", "running"), 0.0);
    during.assert(&state("tenantd_upgrade_items", "pending"), 0.0);
    sqlx::raw_sql("ROLLBACK").execute(&mut db).await.unwrap();

    let after = Scrape::of(addr).await;
    after.assert("tenantd_metrics_collect_errors_total", 1.0);
    after.assert(&state("tenantd_upgrade_runs", "running"), 0.0);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let mut server = TestServer::start_with(|c| c.metrics_addr = None).await;
    assert_eq!(server.metrics_addr(), None);
    server.stop().await.unwrap();
}

#[test]
fn the_metrics_flag_defaults_to_9464_on_loopback_and_takes_off() {
    let parse = |extra: &[&str]| {
        Serve::try_parse_from(std::iter::once("tenantd").chain(extra.iter().copied()))
            .map(|s| s.args.metrics_addr)
    };
    if std::env::var_os("TENANTD_METRICS_ADDR").is_none() {
        assert_eq!(parse(&[]).unwrap(), Some("127.0.0.1:9464".parse().unwrap()));
    }
    assert_eq!(parse(&["--metrics-addr", "off"]).unwrap(), None);
    assert_eq!(
        parse(&["--metrics-addr", "0.0.0.0:9100"]).unwrap(),
        Some("0.0.0.0:9100".parse().unwrap())
    );
    assert!(parse(&["--metrics-addr", "localhost"]).is_err());
}

#[tokio::test]
async fn tenant_pools_and_the_connection_budget_are_counted() {
    let server = TestServer::start_with(|c| {
        c.tenant_pools.budget = 4;
        c.tenant_pools.pool_size = 2;
    })
    .await;
    let addr = server.metrics_addr().expect("metrics");
    let mut clients = server.clients().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = create_tenant(&mut clients.tenants, "pools").await;
        ids.push(t.id);
    }
    let select = |id: &str| read(id, "SELECT 1");
    for id in &ids {
        for _ in 0..3 {
            clients.data.execute(select(id)).await.unwrap();
        }
    }
    clients
        .tenants
        .suspend_tenant(pb::TenantLifecycleRequest {
            id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Sixteen concurrent first calls for a new tenant build one pool.
    let fresh = create_tenant(&mut clients.tenants, "pools").await;
    let first_calls: Vec<_> = (0..16)
        .map(|_| {
            let mut data = clients.data.clone();
            let request = select(&fresh.id);
            tokio::spawn(async move { data.execute(request).await })
        })
        .collect();
    for call in first_calls {
        call.await.unwrap().unwrap();
    }

    let scrape = Scrape::of(addr).await;
    scrape.assert("tenantd_tenant_pool_cache_misses_total", 4.0);
    scrape.assert("tenantd_tenant_pool_cache_hits_total", 6.0 + 15.0);
    scrape.assert("tenantd_tenant_pools_open", 3.0);
    scrape.assert("tenantd_tenant_connection_budget", 4.0);
    scrape.assert(
        "tenantd_tenant_pool_evictions_total{reason=\"tenant_state\"}",
        1.0,
    );
    scrape.assert("tenantd_tenant_connections_in_use", 0.0);
    let open = scrape.value("tenantd_tenant_connections_open");
    assert!((1.0..=4.0).contains(&open), "{open} connections open");
    scrape.assert("tenantd_tenant_connection_checkout_seconds_count", 25.0);
    scrape.assert(&calls("/tenantd.v1.TenantDataService/Execute", "OK"), 25.0);
}
