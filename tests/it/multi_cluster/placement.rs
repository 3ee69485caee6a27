//! The cluster registry and where new tenants land: by name, by policy
//! (fewest tenants per unit of weight), never on a closed or draining
//! cluster or past a cap; and what AddCluster refuses.

use std::collections::HashMap;

use tenantd::pb;
use tonic::Code;

use super::{Fleet, tenant_of, try_create_on};
use crate::common::{Clients, clients_at};

async fn set(c: &mut Clients, request: pb::UpdateClusterRequest) -> pb::Cluster {
    c.clusters
        .update_cluster(request)
        .await
        .expect("UpdateCluster")
        .into_inner()
}

fn state(name: &str, state: pb::ClusterState) -> pb::UpdateClusterRequest {
    pb::UpdateClusterRequest {
        name: name.to_owned(),
        state: state.into(),
        ..Default::default()
    }
}

async fn counts(c: &mut Clients) -> HashMap<String, i64> {
    c.clusters
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters
        .into_iter()
        .map(|c| (c.name, c.tenants))
        .collect()
}

#[tokio::test]
async fn tenants_land_where_named_or_where_the_policy_says() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;

    let listed = c
        .clusters
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters;
    let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["default", "east", "west"]);
    assert!(listed[0].url.is_empty());
    assert!(
        listed.iter().all(|c| !c.url.contains("pw-")),
        "no password is shown"
    );

    // By name: the role and schema are there, and nowhere else.
    let on_east = try_create_on(&mut c, "east").await.unwrap();
    assert_eq!(on_east.cluster, "east");
    assert_eq!(
        fleet.remotes[0].holds(&on_east.schema_name).await,
        (true, true)
    );
    assert_eq!(
        fleet.remotes[1].holds(&on_east.schema_name).await,
        (false, false)
    );
    let mut catalog = fleet.catalog.connect().await;
    let in_catalog_db: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(&on_east.schema_name)
            .fetch_one(&mut catalog)
            .await
            .unwrap();
    assert!(
        !in_catalog_db,
        "the schema is not in the catalog's database"
    );
    let got = tenant_of(&mut c, &on_east.id).await;
    assert_eq!(got.cluster, "east");

    // By policy: the fewest tenants per unit of weight, so the three even out.
    for _ in 0..8 {
        try_create_on(&mut c, "").await.unwrap();
    }
    let n = counts(&mut c).await;
    assert_eq!(n.values().sum::<i64>(), 9, "{n:?}");
    assert!(n.values().all(|&k| k == 3), "evened out: {n:?}");

    // Weight: west takes twice the share from here.
    set(
        &mut c,
        pb::UpdateClusterRequest {
            name: "west".into(),
            weight: Some(200),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..12 {
        try_create_on(&mut c, "").await.unwrap();
    }
    // One at a time, so the order is fixed (ties go by name): west takes
    // 7 of the 12 where an even share would give it 4.
    let n = counts(&mut c).await;
    assert_eq!((n["default"], n["east"], n["west"]), (6, 5, 10), "{n:?}");

    // Closed and draining clusters take no new tenant, named or not.
    set(&mut c, state("default", pb::ClusterState::Closed)).await;
    set(&mut c, state("east", pb::ClusterState::Draining)).await;
    for _ in 0..3 {
        assert_eq!(try_create_on(&mut c, "").await.unwrap().cluster, "west");
    }
    for (name, word) in [("default", "closed"), ("east", "draining")] {
        let refused = try_create_on(&mut c, name).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(word), "{refused:?}");
    }

    // A cap: west is full at what it holds now.
    let west = set(
        &mut c,
        pb::UpdateClusterRequest {
            name: "west".into(),
            max_tenants: Some(13),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((west.tenants, west.max_tenants), (13, 13));
    let full = try_create_on(&mut c, "west").await.unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(full.message().contains("max_tenants"), "{full:?}");
    let nowhere = try_create_on(&mut c, "").await.unwrap_err();
    assert_eq!(nowhere.code(), Code::FailedPrecondition);
    assert!(nowhere.message().contains("no open cluster"), "{nowhere:?}");
    // Lifting the cap (0) opens it again.
    set(
        &mut c,
        pb::UpdateClusterRequest {
            name: "west".into(),
            max_tenants: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(try_create_on(&mut c, "").await.unwrap().cluster, "west");

    // Names that are no cluster.
    for (name, code) in [
        ("north", Code::InvalidArgument),
        ("North", Code::InvalidArgument),
        ("../east", Code::InvalidArgument),
        ("east ", Code::InvalidArgument),
    ] {
        let refused = try_create_on(&mut c, name).await.unwrap_err();
        assert_eq!(refused.code(), code, "{name:?}: {refused:?}");
        assert!(refused.message().contains("cluster"), "{refused:?}");
    }
    running.stop().await.unwrap();
}

/// Concurrent creates on a capped cluster never pass the cap.
#[tokio::test]
async fn a_cap_holds_under_concurrent_creates() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let endpoint = format!("http://{}", running.local_addr());
    let mut c = clients_at(&endpoint).await;
    set(&mut c, state("default", pb::ClusterState::Closed)).await;
    set(&mut c, state("west", pb::ClusterState::Closed)).await;
    set(
        &mut c,
        pb::UpdateClusterRequest {
            name: "east".into(),
            max_tenants: Some(5),
            ..Default::default()
        },
    )
    .await;
    let attempts = (0..12).map(|_| {
        let endpoint = endpoint.clone();
        async move {
            let mut c = clients_at(&endpoint).await;
            try_create_on(&mut c, "").await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 5, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::FailedPrecondition, "{r:?}");
    }
    assert_eq!(counts(&mut c).await["east"], 5);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_relation_cap_keeps_new_tenants_off_a_full_database() {
    let fleet = Fleet::create().await;
    let running = fleet.serve().await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    try_create_on(&mut c, "east").await.unwrap();
    // Any database holds hundreds of catalog relations: 10 is long past.
    set(
        &mut c,
        pb::UpdateClusterRequest {
            name: "east".into(),
            max_relations: Some(10),
            ..Default::default()
        },
    )
    .await;
    let refused = try_create_on(&mut c, "east").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("max_relations"), "{refused:?}");
    // Unnamed creates go elsewhere.
    for _ in 0..4 {
        assert_ne!(try_create_on(&mut c, "").await.unwrap().cluster, "east");
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn add_cluster_checks_what_it_is_given_and_finds() {
    let fleet = Fleet::create().await;
    let running = tenantd_over(&fleet).await;
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let good = fleet.remotes[0].add_request();

    let for_refusals = c.clone();
    let refused = |request: pb::AddClusterRequest| {
        let mut c = for_refusals.clone();
        async move { c.clusters.add_cluster(request).await.unwrap_err() }
    };
    // Bad fields, each named.
    for (request, field) in [
        (
            pb::AddClusterRequest {
                name: "default".into(),
                ..good.clone()
            },
            "name",
        ),
        (
            pb::AddClusterRequest {
                name: "East".into(),
                ..good.clone()
            },
            "name",
        ),
        (
            pb::AddClusterRequest {
                url: good.url.replace("@", ":secret@"),
                ..good.clone()
            },
            "url",
        ),
        (
            pb::AddClusterRequest {
                url: "mysql://x@127.0.0.1/db".into(),
                ..good.clone()
            },
            "url",
        ),
        (
            pb::AddClusterRequest {
                weight: -1,
                ..good.clone()
            },
            "weight",
        ),
        (
            pb::AddClusterRequest {
                max_tenants: -5,
                ..good.clone()
            },
            "max_tenants",
        ),
        (
            pb::AddClusterRequest {
                password_env: "TENANTD_CLUSTER_X".into(),
                ..good.clone()
            },
            "password_env",
        ),
    ] {
        let e = refused(request).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    // No password in the query either, in any spelling; no Unix socket
    // (where trust or peer let anyone in); no template database.
    let bare = good.url.split('?').next().unwrap().to_owned();
    let socket_dir = fleet.secrets.path().display().to_string();
    for url in [
        format!("{bare}?password=pw"),
        format!("{bare}?sslmode=disable&password=pw"),
        format!("{bare}?pass%77ord=pw"),
        format!("{bare}?PassWord=pw"),
        format!("{bare}?host={socket_dir}"),
        format!("{bare}?host=%2Ftmp"),
        "postgres://u@%2Ftmp/db".to_owned(),
        "postgres://u@%2ftmp:5432/db".to_owned(),
        good.url.replace(&fleet.remotes[0].db, "template1"),
        good.url.replace(&fleet.remotes[0].db, "template0"),
        format!("{bare}?dbname=template1"),
    ] {
        let e = refused(pb::AddClusterRequest {
            url: url.clone(),
            ..good.clone()
        })
        .await;
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().contains("url"), "{url}: {e:?}");
        assert!(
            !e.message().contains("pw"),
            "{url}: the password is not echoed: {e:?}"
        );
    }
    // A symbolic link in the secrets directory is followed only to a file
    // inside it.
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "outside-secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), fleet.secrets.path().join("link-out")).unwrap();
    let e = refused(pb::AddClusterRequest {
        password_file: "link-out".into(),
        ..good.clone()
    })
    .await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("password_file"), "{e:?}");
    assert!(!e.message().contains("outside-secret"), "{e:?}");
    // A caller may not make tenantd read (and send to a server of the
    // caller's choosing) any file or variable but the cluster secrets.
    for file in [
        "../east.password",
        "/etc/passwd",
        "sub/east.password",
        "..",
        "east.password\0",
    ] {
        let e = refused(pb::AddClusterRequest {
            password_file: file.into(),
            ..good.clone()
        })
        .await;
        assert_eq!(e.code(), Code::InvalidArgument, "{file:?}: {e:?}");
        assert!(e.message().contains("password_file"), "{e:?}");
    }
    for var in [
        "TENANTD_DATABASE_URL",
        "PATH",
        "TENANTD_CLUSTER_",
        "tenantd_cluster_x",
        "TENANTD_CLUSTER_X;Y",
    ] {
        let e = refused(pb::AddClusterRequest {
            password_file: String::new(),
            password_env: var.into(),
            ..good.clone()
        })
        .await;
        assert_eq!(e.code(), Code::InvalidArgument, "{var:?}: {e:?}");
        assert!(e.message().contains("password_env"), "{e:?}");
    }
    // A wrong password: tenantd cannot log in, and says so.
    std::fs::write(fleet.secrets.path().join("wrong.password"), "nope").unwrap();
    let e = refused(pb::AddClusterRequest {
        password_file: "wrong.password".into(),
        ..good.clone()
    })
    .await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("cannot connect"), "{e:?}");
    // A role that may not create roles or schemas.
    let mut remote = fleet.remotes[0].connect().await;
    let weak = format!("{}_weak", fleet.remotes[0].role);
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{weak}\" LOGIN NOSUPERUSER NOCREATEROLE PASSWORD 'weak-pw'"
    ))
    .execute(&mut remote)
    .await
    .unwrap();
    std::fs::write(fleet.secrets.path().join("weak.password"), "weak-pw").unwrap();
    let e = refused(pb::AddClusterRequest {
        url: good.url.replace(&fleet.remotes[0].role, &weak),
        password_file: "weak.password".into(),
        ..good.clone()
    })
    .await;
    sqlx::raw_sql(&format!("DROP ROLE \"{weak}\""))
        .execute(&mut remote)
        .await
        .unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("CREATEROLE"), "{e:?}");
    assert!(e.message().contains("CREATE ON DATABASE"), "{e:?}");

    // The real thing: registered, with what tenantd found.
    let added = c
        .clusters
        .add_cluster(good.clone())
        .await
        .unwrap()
        .into_inner();
    let cluster = added.cluster.clone().unwrap();
    assert_eq!(
        (cluster.name.as_str(), cluster.state, cluster.weight),
        ("east", pb::ClusterState::Open as i32, 100)
    );
    assert_eq!(added.wal_level, "logical");
    assert_eq!(added.superuser, !crate::common::managed_mode());
    assert!(added.server_version.starts_with("15"), "{added:?}");
    // Twice: refused; and the same database under another name (another
    // URL for it, a password file that is a link to its file) too.
    let e = refused(good.clone()).await;
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    std::os::unix::fs::symlink(
        fleet.secrets.path().join("east.password"),
        fleet.secrets.path().join("east-link.password"),
    )
    .unwrap();
    for (name, url, file) in [
        ("east-again", good.url.clone(), "east.password"),
        (
            "east-other-url",
            format!("{}&application_name=x", good.url),
            "east-link.password",
        ),
    ] {
        let e = refused(pb::AddClusterRequest {
            name: name.into(),
            url,
            password_file: file.into(),
            ..good.clone()
        })
        .await;
        assert_eq!(e.code(), Code::AlreadyExists, "{name}: {e:?}");
        assert!(e.message().contains("same database"), "{name}: {e:?}");
    }

    // Removing: not `default`, not one that holds a tenant.
    let e = c
        .clusters
        .remove_cluster(pb::RemoveClusterRequest {
            name: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let tenant = try_create_on(&mut c, "east").await.unwrap();
    let e = c
        .clusters
        .remove_cluster(pb::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("1 tenant"), "{e:?}");
    // Archived and purged, the tenant no longer holds it.
    c.tenants
        .archive_tenant(crate::common::lifecycle(&tenant.id))
        .await
        .unwrap();
    c.tenants
        .purge_tenant(pb::PurgeTenantRequest {
            id: tenant.id.clone(),
            confirm_slug: tenant.slug.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.clusters
        .remove_cluster(pb::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let e = c
        .clusters
        .get_cluster(pb::GetClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    running.stop().await.unwrap();
}

/// A tenantd over the fleet's catalog with no cluster registered yet.
async fn tenantd_over(fleet: &Fleet) -> tenantd::app::Running {
    crate::common::TestServer::run(fleet.config())
        .await
        .expect("start tenantd")
}
