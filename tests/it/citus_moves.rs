//! Placement on Citus through ClusterService: the nodes, a move under a
//! steady write load through Execute that loses no acknowledged write, a
//! drain and a rebalance, a cancelled move that leaves the tenant serving
//! where it was, and kill -9 of tenantd mid-move. Each test asserts that no
//! replication slot, publication or subscription of its database is left on
//! any node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tenantd::pb;
use tonic::Code;

use crate::citus::{CitusDb, PORTS, skip};
use crate::common::binary::Tenantd;
use crate::common::data::exec;
use crate::common::{Clients, TestServer, bad_fields, clients_at, config_for, managed_mode};

const JOB_WAIT: Duration = Duration::from_secs(180);

fn node_name(node: usize) -> String {
    format!("127.0.0.1:{}", PORTS[node])
}

async fn node_of(c: &mut Clients, tenant: &pb::Tenant) -> String {
    c.tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(tenant.id.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .node
}

/// The worker the tenant is not on.
fn other_worker(here: &str) -> String {
    if here == node_name(1) {
        node_name(2)
    } else {
        node_name(1)
    }
}

/// Polls the job until it ends.
async fn wait_job(c: &mut Clients, id: &str) -> pb::ClusterJob {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let job = c
            .clusters
            .get_cluster_job(pb::ClusterJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if matches!(
            pb::ClusterJobStatus::try_from(job.status),
            Ok(pb::ClusterJobStatus::Succeeded
                | pb::ClusterJobStatus::Failed
                | pb::ClusterJobStatus::Cancelled)
        ) {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the job until its first move runs (its backend is moving).
async fn wait_running(c: &mut Clients, id: &str) {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let job = c
            .clusters
            .get_cluster_job(pb::ClusterJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if job
            .moves
            .first()
            .is_some_and(|m| m.status == pb::MoveStatus::Running as i32)
        {
            return;
        }
        assert!(
            job.status != pb::ClusterJobStatus::Succeeded as i32,
            "the move ended before the test could catch it running: make the tenant bigger"
        );
        assert!(Instant::now() < deadline, "the move did not start: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rows` customers written straight into the tenant's schema, so that a
/// move has a copy phase long enough to act in.
async fn fill(db: &CitusDb, tenant: &pb::Tenant, rows: i64) {
    sqlx::raw_sql(&format!(
        "INSERT INTO {}.customers (code, name) \
         SELECT 'bulk-' || g, md5(g::text) FROM generate_series(1, {rows}) g",
        tenant.schema_name
    ))
    .execute(&mut db.on(0).await)
    .await
    .unwrap();
}

/// A Citus database of the test's own and tenantd on its coordinator, with
/// its endpoint and clients.
async fn on_citus() -> (CitusDb, tenantd::app::Running, String, Clients) {
    let db = CitusDb::create().await;
    let running = TestServer::run(config_for(db.tenantd_options()))
        .await
        .expect("tenantd on Citus");
    let endpoint = format!("http://{}", running.local_addr());
    let c = clients_at(&endpoint).await;
    (db, running, endpoint, c)
}

/// Every acknowledged write is in the tenant's table; returns their codes.
async fn assert_all_acknowledged(
    db: &CitusDb,
    tenant: &pb::Tenant,
    acked: &[(String, Instant)],
) -> Vec<String> {
    let codes: Vec<String> = acked.iter().map(|(c, _)| c.clone()).collect();
    let found: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.customers WHERE code = ANY($1)",
        tenant.schema_name
    ))
    .bind(&codes)
    .fetch_one(&mut db.on(0).await)
    .await
    .unwrap();
    assert_eq!(found, codes.len() as i64, "an acknowledged write was lost");
    codes
}

/// One customer written and read back through the data plane.
async fn write_one(c: &mut Clients, tenant: &pb::Tenant, code: &str) {
    c.data
        .execute(exec(
            &tenant.id,
            &format!("INSERT INTO customers (code, name) VALUES ('{code}', 'one')"),
            vec![],
        ))
        .await
        .expect("a write through the tenant's role");
    let rows = c
        .data
        .execute(crate::common::data::read(
            &tenant.id,
            &format!("SELECT name FROM customers WHERE code = '{code}'"),
        ))
        .await
        .expect("a read through the tenant's role")
        .into_inner()
        .rows;
    assert_eq!(rows.len(), 1);
}

async fn customers(db: &CitusDb, tenant: &pb::Tenant) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.customers",
        tenant.schema_name
    ))
    .fetch_one(&mut db.on(0).await)
    .await
    .unwrap()
}

/// No replication slot, publication or subscription of the test's
/// database on any node, and nothing left for Citus to clean up: what a
/// move made is gone once it ended, however it ended. Citus drops some of
/// it in the background, so this waits for it (up to a minute).
async fn assert_no_replication_leftovers(db: &CitusDb) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = Vec::new();
        for node in 0..3 {
            let mut conn = db.on(node).await;
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots \
                  WHERE database = current_database() \
                 UNION ALL SELECT 'publication ' || pubname FROM pg_publication \
                 UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
                  WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            left.extend(found.into_iter().map(|f| format!("node {node}: {f}")));
        }
        let cleanup: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_dist_cleanup")
            .fetch_one(&mut db.on(0).await)
            .await
            .unwrap();
        if cleanup > 0 {
            left.push(format!("{cleanup} rows in pg_dist_cleanup"));
        }
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("a move left replication objects behind: {left:?}");
        }
        if cleanup > 0 {
            // What the maintenance daemon would do in its own time.
            let _ = sqlx::raw_sql("CALL citus_cleanup_orphaned_resources()")
                .execute(&mut db.on(0).await)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a writer ends with: each acknowledged code and when it was
/// acknowledged, and each failed call.
type Written = (Vec<(String, Instant)>, Vec<String>);

/// Eight writers inserting one customer per Execute until told to stop;
/// every acknowledged code is kept, every failed call too.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

impl Writers {
    async fn start(endpoint: &str, tenant: &pb::Tenant) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let mut c = clients_at(endpoint).await;
            let stop = stop.clone();
            let tenant = tenant.id.clone();
            tasks.push(tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let code = format!("w{w}-{n}");
                    let sql =
                        format!("INSERT INTO customers (code, name) VALUES ('{code}', 'load')");
                    // A client that waits out a move's write pause: the
                    // pause is measured by the benchmark, not failed here.
                    let mut request = exec(&tenant, &sql, vec![]);
                    request.timeout_ms = 30_000;
                    match c.data.execute(request).await {
                        Ok(_) => acked.push((code, Instant::now())),
                        Err(e) => failed.push(format!("{code}: {:?} {}", e.code(), e.message())),
                    }
                }
                (acked, failed)
            }));
        }
        Writers { stop, tasks }
    }

    /// Stops them; every acknowledged write and when it was acknowledged,
    /// and the failures.
    async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        for t in self.tasks {
            let (a, f) = t.await.unwrap();
            acked.extend(a);
            failed.extend(f);
        }
        (acked, failed)
    }
}

#[tokio::test]
async fn a_move_under_write_load_keeps_every_acknowledged_write() {
    if skip() {
        return;
    }
    let (db, running, endpoint, mut c) = on_citus().await;
    let a = c.tenant("move-a").await;
    let b = c.tenant("move-b").await;
    fill(&db, &a, 200_000).await;

    let nodes = c
        .clusters
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, [node_name(0), node_name(1), node_name(2)]);
    assert!(nodes[0].coordinator && !nodes[1].coordinator);
    assert_eq!(nodes.iter().map(|n| n.tenants).sum::<i64>(), 2);

    let source = node_of(&mut c, &a).await;
    let target = other_worker(&source);
    let b_node = node_of(&mut c, &b).await;
    let writers = Writers::start(&endpoint, &a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = c
        .clusters
        .move_tenant(pb::MoveTenantRequest {
            tenant_id: a.id.clone(),
            node: target.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.kind, pb::ClusterJobKind::Move as i32);
    assert_eq!(job.moves.len(), 1);
    assert_eq!(
        (job.moves[0].source.as_str(), job.moves[0].target.as_str()),
        (source.as_str(), target.as_str())
    );

    // Watched live, it ends SUCCEEDED.
    let mut watch = c
        .clusters
        .watch_cluster_job(pb::ClusterJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(j) = tokio::time::timeout(JOB_WAIT, watch.message())
        .await
        .expect("the watch went quiet")
        .unwrap()
    {
        seen.push(j.status);
    }
    let ended = wait_job(&mut c, &job.id).await;
    assert_eq!(
        seen.last(),
        Some(&(pb::ClusterJobStatus::Succeeded as i32)),
        "{seen:?} {ended:?}"
    );
    let moved_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, failed) = writers.stop().await;

    assert!(failed.is_empty(), "no call fails during a move: {failed:?}");
    let mut times: Vec<Instant> = acked.iter().map(|(_, at)| *at).collect();
    times.sort();
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!("longest gap between acknowledged writes: {pause:?}");
    assert!(acked.len() > 50, "the writers wrote: {}", acked.len());
    assert!(
        acked.iter().any(|(_, at)| *at > moved_at),
        "writes went on after the move"
    );
    // Every acknowledged write is there, on the target.
    let codes = assert_all_acknowledged(&db, &a, &acked).await;
    assert_eq!(customers(&db, &a).await, 200_000 + codes.len() as i64);
    assert_eq!(node_of(&mut c, &a).await, target);
    // The other tenant was not part of the job.
    assert_eq!(node_of(&mut c, &b).await, b_node);

    // The audit log has the job and the move.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM tenantd.audit_log WHERE action LIKE 'cluster_job.%' \
            OR action = 'tenant.moved' ORDER BY seq",
    )
    .fetch_all(&mut db.on(0).await)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "cluster_job.created",
            "tenant.moved",
            "cluster_job.finished"
        ]
    );

    // Moving it where it is is refused; a tenant role still reads it.
    let err = c
        .clusters
        .move_tenant(pb::MoveTenantRequest {
            tenant_id: a.id.clone(),
            node: target.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.data
        .execute(crate::common::data::read(
            &a.id,
            "SELECT count(*) FROM customers",
        ))
        .await
        .expect("the moved tenant serves");
    assert_no_replication_leftovers(&db).await;
    running.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test]
async fn drain_and_rebalance_move_whole_tenants() {
    if skip() {
        return;
    }
    let (db, running, endpoint, mut c) = on_citus().await;
    let mut tenants = Vec::new();
    for i in 0..4 {
        let t = c.tenant(&format!("drain-{i}")).await;
        c.write_and_read_back(&t, "before").await;
        tenants.push(t);
    }

    // The drain runs under load: eight writers on a tenant it moves.
    let mut loaded = None;
    for t in &tenants {
        if node_of(&mut c, t).await == node_name(1) {
            loaded = Some(t.clone());
        }
    }
    let loaded = match loaded {
        Some(t) => t,
        None => {
            // Citus put all four on worker 2: make one live on worker 1.
            let job = c
                .clusters
                .move_tenant(pb::MoveTenantRequest {
                    tenant_id: tenants[0].id.clone(),
                    node: node_name(1),
                })
                .await
                .unwrap()
                .into_inner();
            wait_job(&mut c, &job.id).await;
            tenants[0].clone()
        }
    };
    let writers = Writers::start(&endpoint, &loaded).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drain = c
        .clusters
        .drain_node(pb::DrainNodeRequest { node: node_name(1) })
        .await
        .unwrap()
        .into_inner();
    let ended = wait_job(&mut c, &drain.id).await;
    assert_eq!(
        ended.status,
        pb::ClusterJobStatus::Succeeded as i32,
        "{ended:?}"
    );
    let (acked, failed) = writers.stop().await;
    assert!(
        failed.is_empty(),
        "no call fails during a drain: {failed:?}"
    );
    assert_all_acknowledged(&db, &loaded, &acked).await;
    for t in &tenants {
        assert_eq!(node_of(&mut c, t).await, node_name(2), "{} drained", t.slug);
    }
    let nodes = c
        .clusters
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes[1].tenants, 0);
    assert_eq!(nodes[2].tenants, 4);

    if managed_mode() {
        // Only a superuser changes Citus nodes: the drain moved the tenants
        // all the same, and says what it could not do.
        assert!(nodes[1].should_have_shards);
        let err = c
            .clusters
            .set_node_should_have_shards(pb::SetNodeShouldHaveShardsRequest {
                node: node_name(1),
                should_have_shards: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("superuser"), "{}", err.message());
    } else {
        // New tenants stay off the drained node until it is opened again.
        assert!(!nodes[1].should_have_shards);
        let fresh = c.tenant("drain-new").await;
        c.write_and_read_back(&fresh, "new").await;
        assert_eq!(node_of(&mut c, &fresh).await, node_name(2));
        tenants.push(fresh);
        let opened = c
            .clusters
            .set_node_should_have_shards(pb::SetNodeShouldHaveShardsRequest {
                node: node_name(1),
                should_have_shards: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(opened.should_have_shards);
    }

    let rebalance = c
        .clusters
        .rebalance_tenants(pb::RebalanceTenantsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !rebalance.moves.is_empty(),
        "Citus plans moves onto the empty node"
    );
    let ended = wait_job(&mut c, &rebalance.id).await;
    assert_eq!(
        ended.status,
        pb::ClusterJobStatus::Succeeded as i32,
        "{ended:?}"
    );
    let mut on = [0, 0];
    for t in &tenants {
        let node = node_of(&mut c, t).await;
        on[usize::from(node == node_name(2))] += 1;
        // Whole: its rows came along.
        let rows = c
            .data
            .execute(crate::common::data::read(
                &t.id,
                "SELECT name FROM customers WHERE code = 'a1'",
            ))
            .await
            .unwrap()
            .into_inner()
            .rows;
        assert_eq!(rows.len(), 1, "{}", t.slug);
    }
    assert!(
        on[0] > 0 && on[1] > 0,
        "rebalanced across both workers: {on:?}"
    );

    let jobs = c
        .clusters
        .list_cluster_jobs(pb::ListClusterJobsRequest { page_size: 10 })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let kinds: Vec<i32> = jobs.iter().map(|j| j.kind).collect();
    assert_eq!(
        kinds,
        [
            pb::ClusterJobKind::Rebalance as i32,
            pb::ClusterJobKind::Drain as i32
        ],
        "newest first"
    );
    assert_no_replication_leftovers(&db).await;
    running.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test]
async fn a_cancelled_move_leaves_the_tenant_serving_where_it_was() {
    if skip() {
        return;
    }
    let (db, running, endpoint, mut c) = on_citus().await;
    let a = c.tenant("cancel-a").await;
    fill(&db, &a, 600_000).await;
    let source = node_of(&mut c, &a).await;

    // The tenant's own OWNER is a user, not an operator: every
    // ClusterService call is refused, reads included.
    let (owner, email) = crate::common::identity::new_user(&mut c, "owner").await;
    let mine = crate::common::identity::tenant_owned_by(&mut c, "owned", &owner).await;
    let token = crate::common::identity::log_in(&mut c, &email, &mine.id)
        .await
        .access_token;
    let mut hostile = crate::common::clients_with(&endpoint, &token).await;
    let refused = [
        hostile
            .clusters
            .move_tenant(pb::MoveTenantRequest {
                tenant_id: mine.id.clone(),
                node: node_name(1),
            })
            .await
            .map(drop),
        hostile
            .clusters
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map(drop),
        hostile
            .clusters
            .drain_node(pb::DrainNodeRequest { node: node_name(1) })
            .await
            .map(drop),
        hostile
            .clusters
            .rebalance_tenants(pb::RebalanceTenantsRequest {})
            .await
            .map(drop),
    ];
    for r in refused {
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    }

    // Bad requests name their field and change nothing.
    for (tenant_id, node, field) in [
        ("x", node_name(1), "tenant_id"),
        (a.id.as_str(), "nowhere".to_owned(), "node"),
        (a.id.as_str(), "127.0.0.1:0".to_owned(), "node"),
        (
            a.id.as_str(),
            "h'; DROP TABLE x; --:5432".to_owned(),
            "node",
        ),
    ] {
        let err = c
            .clusters
            .move_tenant(pb::MoveTenantRequest {
                tenant_id: tenant_id.into(),
                node,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), [field]);
    }
    let err = c
        .clusters
        .move_tenant(pb::MoveTenantRequest {
            tenant_id: a.id.clone(),
            node: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "an unknown node: {err:?}");

    let job = c
        .clusters
        .move_tenant(pb::MoveTenantRequest {
            tenant_id: a.id.clone(),
            node: other_worker(&source),
        })
        .await
        .unwrap()
        .into_inner();
    wait_running(&mut c, &job.id).await;
    // While it copies, the job shows Citus's progress.
    let deadline = Instant::now() + Duration::from_secs(3);
    let progress = loop {
        let now = c
            .clusters
            .get_cluster_job(pb::ClusterJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        let m = &now.moves[0];
        if !m.phase.is_empty() || Instant::now() > deadline {
            break m.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !progress.phase.is_empty() && progress.source_bytes > 10_000_000,
        "a running move reports its progress: {progress:?}"
    );
    let cancelled = c
        .clusters
        .cancel_cluster_job(pb::ClusterJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancel_requested);
    let ended = wait_job(&mut c, &job.id).await;
    assert_eq!(
        ended.status,
        pb::ClusterJobStatus::Cancelled as i32,
        "{ended:?}"
    );
    assert_eq!(ended.moves[0].status, pb::MoveStatus::Cancelled as i32);
    assert_eq!(node_of(&mut c, &a).await, source, "the tenant stayed");
    write_one(&mut c, &a, "after-cancel").await;
    assert_eq!(customers(&db, &a).await, 600_001);
    // A job that ended cannot be cancelled again.
    let err = c
        .clusters
        .cancel_cluster_job(pb::ClusterJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_no_replication_leftovers(&db).await;
    running.stop().await.unwrap();
    db.drop_all().await;
}

/// `--database-url` of the coordinator's test database for the binary.
fn database_url(db: &CitusDb) -> String {
    match &db.app_role {
        Some(role) => format!(
            "postgres://{role}:{role}@127.0.0.1:{}/{}?sslmode=disable",
            PORTS[0], db.name
        ),
        None => format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            PORTS[0], db.name
        ),
    }
}

#[tokio::test]
async fn a_move_survives_kill_9_of_tenantd() {
    if skip() {
        return;
    }
    let db = CitusDb::create().await;
    let url = database_url(&db);
    let flags = ["--upgrade-lease", "2s"];
    let mut first = Tenantd::start(&url, &flags);
    let mut c = clients_at(&first.endpoint()).await;
    let a = c.tenant("kill-a").await;
    fill(&db, &a, 600_000).await;
    let source = node_of(&mut c, &a).await;
    let target = other_worker(&source);
    let job = c
        .clusters
        .move_tenant(pb::MoveTenantRequest {
            tenant_id: a.id.clone(),
            node: target.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_running(&mut c, &job.id).await;
    first.kill();

    // Another life takes the job over: it waits for the dead process's
    // backend to end, asks Citus where the tenant is, and moves it.
    let second = Tenantd::start(&url, &flags);
    let mut c = clients_at(&second.endpoint()).await;
    let ended = wait_job(&mut c, &job.id).await;
    assert_eq!(
        ended.status,
        pb::ClusterJobStatus::Succeeded as i32,
        "{ended:?}"
    );
    assert_eq!(ended.moves[0].status, pb::MoveStatus::Done as i32);
    assert_eq!(node_of(&mut c, &a).await, target);
    assert_eq!(customers(&db, &a).await, 600_000);
    write_one(&mut c, &a, "after-kill").await;
    let backends: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'tenantd move %'",
    )
    .fetch_one(&mut db.on(0).await)
    .await
    .unwrap();
    assert_eq!(backends, 0, "no move backend is left");
    assert_no_replication_leftovers(&db).await;
    drop(second);
    db.drop_all().await;
}
