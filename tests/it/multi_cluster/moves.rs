//! Moving a tenant between clusters while it serves: under a steady write
//! load through Execute every acknowledged write is on the target and no
//! call fails; a crash before or after the switch is finished by the next
//! tenantd; a cancel leaves the tenant where it was; nothing of the
//! replication is left behind. In the managed mode (no superuser) a move
//! is refused up front, naming the privilege it needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{Fleet, Remote, create_on, tenant_of, wait_move};
use crate::common::binary::Tenantd;
use crate::common::data::{exec, read};
use crate::common::fleet::eventually;
use crate::common::{Clients, TestServer, clients_at, database_url, managed_mode};

fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Text(s.to_owned())),
    }
}

async fn seed(c: &mut Clients, tenant: &str, rows: usize) {
    c.data
        .execute(exec(
            tenant,
            "INSERT INTO locations (name) SELECT 'seed ' || g FROM generate_series(1, $1::int) g",
            vec![pb::Value {
                kind: Some(pb::value::Kind::Int64(rows as i64)),
            }],
        ))
        .await
        .unwrap();
}

async fn names_on(remote: &Remote, schema: &str) -> Vec<String> {
    let mut c = remote.connect().await;
    sqlx::query_scalar(&format!(
        "SELECT name FROM \"{schema}\".locations ORDER BY name"
    ))
    .fetch_all(&mut c)
    .await
    .unwrap()
}

/// The indexes and constraints of the tenant's tables there, as text.
async fn indexes_and_constraints(remote: &Remote, schema: &str) -> Vec<String> {
    let mut c = remote.connect().await;
    sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 \
         UNION ALL \
         SELECT k.conrelid::regclass::text || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid) \
                || CASE WHEN k.convalidated THEN '' ELSE ' (not validated)' END \
           FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1 \
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut c)
    .await
    .unwrap()
}

/// No publication, slot, subscription or marker of any move left.
async fn nothing_left(fleet: &Fleet) {
    for r in &fleet.remotes {
        let mut c = r.connect().await;
        let (publications, slots, subscriptions, markers): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'tenantd\\_move\\_%'), \
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantd\\_move\\_%'), \
                    (SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
                      WHERE d.datname = current_database()), \
                    (SELECT count(*) FROM pg_tables WHERE schemaname = 'tenantd_move')",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(
            (publications, subscriptions, markers),
            (0, 0, 0),
            "{}: replication objects left",
            r.cluster
        );
        // Slots are per server; another test's move may hold one, never
        // this database's.
        let ours: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(ours, 0, "{}: {slots} slots on the server", r.cluster);
    }
}

#[tokio::test]
async fn a_tenant_moves_under_write_load_and_loses_no_acknowledged_write() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let endpoint = format!("http://{}", running.local_addr());
    let mut c = clients_at(&endpoint).await;
    let t = create_on(&mut c, "east").await;
    seed(&mut c, &t.id, 5000).await;

    if managed_mode() {
        // tenantd's role on west may not create a subscription.
        let refused = c
            .tenants
            .move_tenant(pb::MoveTenantToClusterRequest {
                tenant_id: t.id.clone(),
                cluster: "west".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("may not"), "{refused:?}");
        running.stop().await.unwrap();
        return;
    }

    // Eight writers, each a stream of single-row INSERTs through Execute.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (endpoint, id, stop) = (endpoint.clone(), t.id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = clients_at(&endpoint).await;
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{n:06}");
                    n += 1;
                    let mut request = exec(
                        &id,
                        "INSERT INTO locations (name) VALUES ($1)",
                        vec![text(&name)],
                    );
                    request.timeout_ms = 30_000;
                    match c.data.execute(request).await {
                        Ok(_) => acked.push(name),
                        Err(e) => failed.push(format!("{name}: {e:?}")),
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shape = indexes_and_constraints(&fleet.remotes[0], &t.schema_name).await;
    assert!(
        shape.iter().any(|d| d.contains("UNIQUE"))
            && shape.iter().any(|d| d.contains("FOREIGN KEY")),
        "the tenant has unique and foreign keys to move: {shape:?}"
    );

    let queued = c
        .tenants
        .move_tenant(pb::MoveTenantToClusterRequest {
            tenant_id: t.id.clone(),
            cluster: "west".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // One move per tenant at a time.
    let again = c
        .tenants
        .move_tenant(pb::MoveTenantToClusterRequest {
            tenant_id: t.id.clone(),
            cluster: "west".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let done = wait_move(&mut c, &queued.id).await;
    assert_eq!(done.status, pb::MoveJobStatus::Succeeded as i32, "{done:?}");
    assert!(done.pause_ms > 0, "{done:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let (a, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "no call fails: {failed:?}");
        acked.extend(a);
    }
    assert!(acked.len() > 100, "the writers wrote: {}", acked.len());
    eprintln!(
        "moved under load: {} writes acknowledged, writes held {} ms, {} attempt(s)",
        acked.len(),
        done.pause_ms,
        done.attempts
    );

    let got = tenant_of(&mut c, &t.id).await;
    assert_eq!(got.cluster, "west");
    // Put off during the copy, every index and constraint is there again.
    assert_eq!(
        indexes_and_constraints(&fleet.remotes[1], &t.schema_name).await,
        shape
    );
    let on_west = names_on(&fleet.remotes[1], &t.schema_name).await;
    assert_eq!(on_west.len(), 5000 + acked.len(), "every row, once");
    let on_west: std::collections::HashSet<String> = on_west.into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !on_west.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes missing on the target: {lost:?}"
    );
    // The source gave everything up (grace 0 in the tests).
    assert_eq!(fleet.remotes[0].holds(&t.schema_name).await, (false, false));
    nothing_left(&fleet).await;
    // The sequences went on where they were: a new row gets an id.
    c.data
        .execute(exec(
            &t.id,
            "INSERT INTO locations (name) VALUES ('after the move')",
            vec![],
        ))
        .await
        .unwrap();
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.audit_log WHERE action = 'tenant.moved' AND target = $1",
    )
    .bind(format!("tenant:{}", t.id))
    .fetch_one(&mut fleet.catalog.connect().await)
    .await
    .unwrap();
    assert_eq!(audit, 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_move_that_cannot_be_made_is_refused_up_front() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let on_default = create_on(&mut c, "default").await;
    let on_east = create_on(&mut c, "east").await;
    let for_refusals = c.clone();
    let refuse = |tenant: &str, cluster: &str| {
        let mut c = for_refusals.clone();
        let request = pb::MoveTenantToClusterRequest {
            tenant_id: tenant.to_owned(),
            cluster: cluster.to_owned(),
        };
        async move { c.tenants.move_tenant(request).await.unwrap_err() }
    };
    let e = refuse(&on_east.id, "east").await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already"), "{e:?}");
    let e = refuse(&on_east.id, "north").await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = refuse(&on_east.id, "North").await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = refuse(&uuid::Uuid::now_v7().to_string(), "west").await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // The shared test cluster (`default`) runs with wal_level = replica.
    let e = refuse(&on_default.id, "west").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // A closed target takes no tenant.
    c.clusters
        .update_cluster(pb::UpdateClusterRequest {
            name: "west".into(),
            state: pb::ClusterState::Closed.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = refuse(&on_east.id, "west").await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("closed"), "{e:?}");
    running.stop().await.unwrap();
}

/// The binary dies at each phase of a move — after the subscription,
/// while copying, with the indexes made again, caught up, verified,
/// holding the writes, after the switch: the
/// next tenantd undoes and starts again, or (after the switch) only
/// cleans up.
#[tokio::test]
async fn a_move_killed_before_or_after_the_switch_is_finished_by_the_next_tenantd() {
    if managed_mode() {
        return; // moves are refused in this mode (see above)
    }
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let t = create_on(&mut c, "east").await;
    seed(&mut c, &t.id, 1000).await;
    running.stop().await.unwrap();
    let secrets = fleet.secrets.path().to_str().unwrap().to_owned();
    for (point, to) in [
        ("move.after_subscribe", "west"),
        ("move.copying", "east"),
        ("move.indexed", "west"),
        ("move.caught_up", "east"),
        ("move.verified", "west"),
        ("move.holding_writes", "east"),
        ("move.after_switch", "west"),
    ] {
        let mut dying = Tenantd::start_with_env(
            &database_url(&fleet.catalog),
            &[
                "--cluster-secrets-dir",
                &secrets,
                "--upgrade-lease",
                "2s",
                "--move-source-grace",
                "0s",
            ],
            &[("TENANTD_CRASH_AT", point)],
        );
        let mut d = clients_at(&dying.endpoint()).await;
        let queued = d
            .tenants
            .move_tenant(pb::MoveTenantToClusterRequest {
                tenant_id: t.id.clone(),
                cluster: to.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let status = dying.exited(Duration::from_secs(60)).await;
        assert!(!status.success(), "{point}: aborted, {status:?}");
        let next = TestServer::run(fleet.config()).await.unwrap();
        let mut n = clients_at(&format!("http://{}", next.local_addr())).await;
        let done = wait_move(&mut n, &queued.id).await;
        assert_eq!(
            done.status,
            pb::MoveJobStatus::Succeeded as i32,
            "{point}: {done:?}"
        );
        assert!(done.attempts >= 2, "{point}: taken over: {done:?}");
        let got = tenant_of(&mut n, &t.id).await;
        assert_eq!(got.cluster, to, "{point}");
        let r = n
            .data
            .execute(read(&t.id, "SELECT count(*) FROM locations"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(r.rows[0].values[0].kind, Some(pb::value::Kind::Int64(1000))),
            "{point}: {r:?}"
        );
        let from = if to == "west" { 0 } else { 1 };
        eventually(
            &format!("{point}: the source dropped"),
            Duration::from_secs(30),
            || {
                let remote = &fleet.remotes[from];
                let schema = t.schema_name.clone();
                async move { (remote.holds(&schema).await == (false, false)).then_some(()) }
            },
        )
        .await;
        nothing_left(&fleet).await;
        next.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_cancelled_move_leaves_the_tenant_where_it_was() {
    if managed_mode() {
        return; // moves are refused in this mode (see above)
    }
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let t = create_on(&mut c, "east").await;
    seed(&mut c, &t.id, 1000).await;
    let queued = c
        .tenants
        .move_tenant(pb::MoveTenantToClusterRequest {
            tenant_id: t.id.clone(),
            cluster: "west".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Cancelled once it runs (or while still pending).
    eventually("the move starts", Duration::from_secs(30), || {
        let mut c = c.clone();
        let id = queued.id.clone();
        async move {
            let m = c
                .tenants
                .get_move(pb::TenantMoveRequest { id })
                .await
                .unwrap()
                .into_inner();
            (m.phase != "queued" || m.status != pb::MoveJobStatus::Pending as i32).then_some(())
        }
    })
    .await;
    c.tenants
        .cancel_move(pb::TenantMoveRequest {
            id: queued.id.clone(),
        })
        .await
        .unwrap();
    let done = wait_move(&mut c, &queued.id).await;
    if done.status == pb::MoveJobStatus::Succeeded as i32 {
        // It switched before the cancel came: it finishes, as documented.
        assert!(done.switched_at.is_some());
    } else {
        assert_eq!(done.status, pb::MoveJobStatus::Cancelled as i32, "{done:?}");
        assert_eq!(fleet.remotes[1].holds(&t.schema_name).await, (false, false));
        assert_eq!(fleet.remotes[0].holds(&t.schema_name).await, (true, true));
        c.data
            .execute(read(&t.id, "SELECT count(*) FROM locations"))
            .await
            .expect("still served where it was");
    }
    nothing_left(&fleet).await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn draining_a_cluster_moves_every_tenant_off_it() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let mut on_east = Vec::new();
    for _ in 0..4 {
        let t = create_on(&mut c, "east").await;
        seed(&mut c, &t.id, 100).await;
        on_east.push(t);
    }
    create_on(&mut c, "west").await;
    let drain = pb::DrainClusterRequest {
        name: "east".into(),
    };
    if managed_mode() {
        let refused = c.clusters.drain_cluster(drain).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("no open cluster"), "{refused:?}");
        let east = c
            .clusters
            .get_cluster(pb::GetClusterRequest {
                name: "east".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(east.state, pb::ClusterState::Open as i32, "nothing changed");
        running.stop().await.unwrap();
        return;
    }
    let drained = c.clusters.drain_cluster(drain).await.unwrap().into_inner();
    assert_eq!(
        drained.cluster.unwrap().state,
        pb::ClusterState::Draining as i32
    );
    assert_eq!(drained.moves.len(), 4);
    let mut landed = std::collections::HashMap::new();
    for m in &drained.moves {
        let done = wait_move(&mut c, &m.id).await;
        assert_eq!(done.status, pb::MoveJobStatus::Succeeded as i32, "{done:?}");
        *landed.entry(done.target).or_insert(0) += 1;
    }
    // As placement places: default (none yet) twice as often as west (one).
    assert_eq!(landed.get("default"), Some(&3), "{landed:?}");
    assert_eq!(landed.get("west"), Some(&1), "{landed:?}");
    for t in &on_east {
        let r = c
            .data
            .execute(read(&t.id, "SELECT count(*) FROM locations"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(r.rows[0].values[0].kind, Some(pb::value::Kind::Int64(100))),
            "{}: {r:?}",
            t.slug
        );
    }
    c.clusters
        .remove_cluster(pb::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .expect("nothing left on east");
    nothing_left(&fleet).await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_copy_that_differs_from_the_source_is_not_switched_to() {
    if managed_mode() {
        return; // moves are refused in this mode (see above)
    }
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let t = create_on(&mut c, "east").await;
    seed(&mut c, &t.id, 300).await;
    // On west, every table the move makes there changes each row the
    // replication applies: the rows arrive, counted alike, but not equal.
    let mut west = fleet.remotes[1].connect().await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.tamper() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF TG_TABLE_NAME = 'locations' THEN NEW.name := NEW.name || ' (changed)'; END IF; \
               RETURN NEW; END $$; \
         CREATE FUNCTION public.arm_tamper() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
         DECLARE r record; \
         BEGIN FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() \
                  WHERE command_tag = 'CREATE TABLE' AND schema_name LIKE 'tenant\\_%' LOOP \
                 EXECUTE format('CREATE TRIGGER tamper BEFORE INSERT OR UPDATE ON %s \
                                 FOR EACH ROW EXECUTE FUNCTION public.tamper()', r.object_identity); \
                 EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER tamper', r.object_identity); \
               END LOOP; END $$; \
         CREATE EVENT TRIGGER arm_tamper ON ddl_command_end EXECUTE FUNCTION public.arm_tamper();",
    )
    .execute(&mut west)
    .await
    .unwrap();
    let queued = c
        .tenants
        .move_tenant(pb::MoveTenantToClusterRequest {
            tenant_id: t.id.clone(),
            cluster: "west".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_move(&mut c, &queued.id).await;
    sqlx::raw_sql("DROP EVENT TRIGGER arm_tamper")
        .execute(&mut west)
        .await
        .unwrap();
    assert_eq!(done.status, pb::MoveJobStatus::Failed as i32, "{done:?}");
    assert!(done.error.contains("differ"), "{done:?}");
    assert!(done.switched_at.is_none(), "{done:?}");
    // Still on east, whole and served; nothing of the move left on west.
    assert_eq!(tenant_of(&mut c, &t.id).await.cluster, "east");
    assert_eq!(fleet.remotes[0].holds(&t.schema_name).await, (true, true));
    assert_eq!(fleet.remotes[1].holds(&t.schema_name).await, (false, false));
    let names = names_on(&fleet.remotes[0], &t.schema_name).await;
    assert_eq!(names.len(), 300);
    assert!(names.iter().all(|n| !n.contains("changed")));
    c.data
        .execute(exec(
            &t.id,
            "INSERT INTO locations (name) VALUES ('after the failed move')",
            vec![],
        ))
        .await
        .expect("still served where it was");
    nothing_left(&fleet).await;
    running.stop().await.unwrap();
}
