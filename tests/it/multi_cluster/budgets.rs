//! The replica's tenant connections split per cluster: a cluster with a
//! connection budget never gets more of this replica's connections, its
//! tenants wait for one of its own (and are refused past the wait, naming
//! the cluster), and the tenants of other clusters are not held up by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{Fleet, Remote, create_on};
use crate::common::data::read;
use crate::common::{TestServer, clients_at};

/// Tenant sessions (the roles tenantd makes) on the test's database there.
async fn tenant_sessions(remote: &Remote) -> i64 {
    let mut c = remote.connect().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE datname = current_database() AND usename LIKE 'tenant\\_%'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
}

/// The most tenant sessions seen on `remote` until `stop`, sampled often.
fn sample_max(remote: &Remote, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let remote = Remote {
        cluster: remote.cluster,
        server: remote.server,
        db: remote.db.clone(),
        role: remote.role.clone(),
    };
    let most = Arc::new(AtomicI64::new(0));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            most.fetch_max(tenant_sessions(&remote).await, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most.load(Ordering::Relaxed)
    })
}

fn budget(cluster: &str, n: i32) -> pb::UpdateClusterRequest {
    pb::UpdateClusterRequest {
        name: cluster.to_owned(),
        connection_budget: Some(n),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_cluster_gets_no_more_connections_than_its_budget() {
    let fleet = Fleet::create().await;
    let mut config = fleet.config();
    config.tenant_pools.wait = Duration::from_millis(1500);
    let running = TestServer::run(config).await.unwrap();
    let endpoint = format!("http://{}", running.local_addr());
    let mut c = clients_at(&endpoint).await;
    for r in &fleet.remotes {
        c.clusters.add_cluster(r.add_request()).await.unwrap();
    }
    let east = &fleet.remotes[0];
    let on_east = [
        create_on(&mut c, "east").await,
        create_on(&mut c, "east").await,
    ];
    let on_default = create_on(&mut c, "default").await;

    // Bad budgets name the field and change nothing.
    for bad in [-1, i32::MIN] {
        let refused = c
            .clusters
            .update_cluster(budget("east", bad))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("connection_budget"),
            "{refused:?}"
        );
    }
    let set = c
        .clusters
        .update_cluster(budget("east", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.connection_budget, 1);

    // Three calls at once, two of them on east: east never sees two tenant
    // sessions; the second east call waits for the first one's connection
    // and then runs, and the call on default does not wait for east.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_max(east, stop.clone());
    let caller = c.clone();
    let call = |tenant: &pb::Tenant, sql: &str| {
        let (mut c, request) = (caller.clone(), read(&tenant.id, sql));
        tokio::spawn(async move { c.data.execute(request).await })
    };
    let first = call(&on_east[0], "SELECT pg_sleep(0.6)");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = call(&on_east[1], "SELECT pg_sleep(0.1)");
    let elsewhere = call(&on_default, "SELECT pg_sleep(0.1)");
    for (what, call) in [("first", first), ("second", second), ("default", elsewhere)] {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(sampler.await.unwrap(), 1, "east's tenant sessions at most");

    // A call that cannot get east's one connection within the wait is
    // refused, naming the cluster's budget; default's tenants go on.
    let long = call(&on_east[0], "SELECT pg_sleep(3)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = call(&on_east[1], "SELECT 1").await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("cluster east"),
        "names the cluster: {refused:?}"
    );
    call(&on_default, "SELECT 1").await.unwrap().unwrap();
    long.await.unwrap().unwrap();

    // The cap lifted: both of east's tenants hold a connection at once.
    let lifted = c
        .clusters
        .update_cluster(budget("east", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lifted.connection_budget, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_max(east, stop.clone());
    let both = [
        call(&on_east[0], "SELECT pg_sleep(0.5)"),
        call(&on_east[1], "SELECT pg_sleep(0.5)"),
    ];
    for call in both {
        call.await.unwrap().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        sampler.await.unwrap(),
        2,
        "east's tenant sessions, uncapped"
    );
    running.stop().await.unwrap();
}
