//! What a black-box attack on the cluster features found, each kept from
//! coming back: a password tenantd was not given is never sent; a cluster
//! a move runs from or to cannot be removed; a tenant being moved cannot be
//! purged; a tenant suspended during its move cannot log in where it lands;
//! two clusters on one server cannot move tenants between them; a cancel
//! that comes before the switch is honoured, however stale the move's own
//! view of it.

use std::time::Duration;

use tenantd::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use super::{Fleet, create_on, tenant_of, wait_move};
use crate::common::binary::Tenantd;
use crate::common::fleet::eventually;
use crate::common::{Clients, clients_at, database_url, lifecycle, managed_mode};

fn move_to(tenant: &str, cluster: &str) -> pb::MoveTenantToClusterRequest {
    pb::MoveTenantToClusterRequest {
        tenant_id: tenant.to_owned(),
        cluster: cluster.to_owned(),
    }
}

async fn move_of(c: &mut Clients, id: &str) -> pb::TenantClusterMove {
    c.tenants
        .get_move(pb::TenantMoveRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
}

/// A server that asks for a cleartext password and reports what it got.
async fn password_catcher() -> (u16, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                loop {
                    // A startup message (or an SSLRequest, answered "no").
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut body = vec![0; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if body.starts_with(&80_877_103u32.to_be_bytes()) {
                        let _ = s.write_all(b"N").await;
                        continue;
                    }
                    break;
                }
                // AuthenticationCleartextPassword, then the 'p' message.
                let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                let mut kind = [0u8; 1];
                if s.read_exact(&mut kind).await.is_err() || s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut password = vec![0; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if s.read_exact(&mut password).await.is_ok() {
                    let _ = tx.send(password).await;
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_cluster_without_a_password_gets_none_of_tenantds_own() {
    let fleet = Fleet::create().await;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".pgpass"), "*:*:*:*:pgpass-secret\n").unwrap();
    std::fs::set_permissions(
        home.path().join(".pgpass"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let secrets = fleet.secrets.path().to_str().unwrap().to_owned();
    let home_dir = home.path().to_str().unwrap().to_owned();
    let server = Tenantd::start_with_env(
        &database_url(&fleet.catalog),
        &["--cluster-secrets-dir", &secrets],
        &[("PGPASSWORD", "env-secret"), ("HOME", &home_dir)],
    );
    let mut c = clients_at(&server.endpoint()).await;
    let (port, mut got) = password_catcher().await;
    for url in [
        format!("postgres://someone@127.0.0.1:{port}/db"),
        format!("postgres://someone@127.0.0.1:{port}/db?sslmode=disable"),
    ] {
        let refused = c
            .clusters
            .add_cluster(pb::AddClusterRequest {
                name: "catcher".into(),
                url: url.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_ne!(refused.code(), Code::Ok, "{url}");
        let sent = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("the server was asked")
            .unwrap();
        let sent = String::from_utf8_lossy(&sent).into_owned();
        assert!(
            !sent.contains("secret"),
            "{url}: sent {sent:?}, which tenantd was not given for it"
        );
    }
}

#[tokio::test]
async fn a_move_holds_its_clusters_and_its_tenant() {
    if managed_mode() {
        return; // moves are refused in this mode
    }
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let t = create_on(&mut c, "east").await;
    let archived = create_on(&mut c, "east").await;

    // A second database of east's server, registered as a cluster of its
    // own: tenants may be placed there, but not moved between the two (the
    // server's roles are shared by its databases).
    let east = &fleet.remotes[0];
    let other_db = format!("{}_b", east.db);
    let mut admin = east.connect().await;
    sqlx::raw_sql(&format!(
        "CREATE DATABASE \"{other_db}\" OWNER \"{}\"",
        east.role
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut beside = east.add_request();
    beside.name = "east-b".into();
    beside.url = beside.url.replace(&east.db, &other_db);
    beside.password_file = "east.password".into();
    c.clusters.add_cluster(beside).await.unwrap();
    let refused = c
        .tenants
        .move_tenant(move_to(&t.id, "east-b"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("one PostgreSQL server"),
        "{refused:?}"
    );
    c.clusters
        .remove_cluster(pb::RemoveClusterRequest {
            name: "east-b".into(),
        })
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE \"{other_db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(east.holds(&t.schema_name).await, (true, true));
    c.tenants
        .archive_tenant(lifecycle(&archived.id))
        .await
        .unwrap();

    // While a move from east to west runs, neither cluster may go, and the
    // archived tenant being moved may not be purged.
    let queued = c
        .tenants
        .move_tenant(move_to(&archived.id, "west"))
        .await
        .unwrap()
        .into_inner();
    for cluster in ["west", "east"] {
        let refused = c
            .clusters
            .remove_cluster(pb::RemoveClusterRequest {
                name: cluster.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let refused = c
        .tenants
        .purge_tenant(pb::PurgeTenantRequest {
            id: archived.id.clone(),
            confirm_slug: archived.slug.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("being moved"), "{refused:?}");
    let done = wait_move(&mut c, &queued.id).await;
    assert_eq!(done.status, pb::MoveJobStatus::Succeeded as i32, "{done:?}");
    assert_eq!(tenant_of(&mut c, &archived.id).await.cluster, "west");
    // The move over, the purge goes through.
    c.tenants
        .purge_tenant(pb::PurgeTenantRequest {
            id: archived.id.clone(),
            confirm_slug: archived.slug.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        fleet.remotes[1].holds(&archived.schema_name).await,
        (false, false)
    );

    // Suspended while its move runs: the role may not log in where it lands.
    let queued = c
        .tenants
        .move_tenant(move_to(&t.id, "west"))
        .await
        .unwrap()
        .into_inner();
    c.tenants.suspend_tenant(lifecycle(&t.id)).await.unwrap();
    let done = wait_move(&mut c, &queued.id).await;
    assert_eq!(done.status, pb::MoveJobStatus::Succeeded as i32, "{done:?}");
    assert_eq!(tenant_of(&mut c, &t.id).await.cluster, "west");
    assert!(!fleet.remotes[1].can_login(&t.schema_name).await);
    c.tenants.resume_tenant(lifecycle(&t.id)).await.unwrap();
    assert!(fleet.remotes[1].can_login(&t.schema_name).await);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_before_the_switch_is_honoured_by_the_switch() {
    if managed_mode() {
        return; // moves are refused in this mode
    }
    let fleet = Fleet::create().await;
    // A long lease: the move's heartbeat (which also reads the cancel)
    // comes only every 15 s, so the switch itself must see the cancel.
    let mut config = fleet.config();
    config.moves.lease = Duration::from_secs(60);
    let running = crate::common::TestServer::run(config).await.unwrap();
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    for r in &fleet.remotes {
        c.clusters.add_cluster(r.add_request()).await.unwrap();
    }
    let t = create_on(&mut c, "east").await;
    // Enough rows that the verification's checksums take a moment.
    let mut seed = crate::common::data::exec(
        &t.id,
        "INSERT INTO locations (name) SELECT 'seed ' || g FROM generate_series(1, 200000) g",
        vec![],
    );
    seed.timeout_ms = 60_000;
    c.data.execute(seed).await.unwrap();
    let queued = c
        .tenants
        .move_tenant(move_to(&t.id, "west"))
        .await
        .unwrap()
        .into_inner();
    // Any phase before the switch will do: the move's own view of the
    // cancel (its heartbeat) is 15 s away, only the switch can see it.
    let seen = eventually("the move runs", Duration::from_secs(120), || {
        let (mut c, id) = (c.clone(), queued.id.clone());
        async move {
            let m = move_of(&mut c, &id).await;
            (m.status != pb::MoveJobStatus::Pending as i32 && m.phase != "queued").then_some(m)
        }
    })
    .await;
    assert!(
        [
            "preparing",
            "copying",
            "indexing",
            "catching_up",
            "verifying"
        ]
        .contains(&seen.phase.as_str()),
        "caught before the switch: {seen:?}"
    );
    c.tenants
        .cancel_move(pb::TenantMoveRequest {
            id: queued.id.clone(),
        })
        .await
        .unwrap();
    let done = wait_move(&mut c, &queued.id).await;
    assert_eq!(done.status, pb::MoveJobStatus::Cancelled as i32, "{done:?}");
    assert!(done.switched_at.is_none(), "{done:?}");
    assert_eq!(tenant_of(&mut c, &t.id).await.cluster, "east");
    assert_eq!(fleet.remotes[1].holds(&t.schema_name).await, (false, false));
    running.stop().await.unwrap();
}
