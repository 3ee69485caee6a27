//! TenantService end to end: the real server on a fresh database per test,
//! spoken to through the generated client.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{TestServer, bad_fields, new_tenant};
use sqlx::PgConnection;
use tenantd::pb::{self, get_tenant_request::Selector};
use tonic::Code;

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn role_exists(conn: &mut PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn count_tenant_schemas(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")
        .fetch_one(conn)
        .await
        .unwrap()
}

fn lifecycle(id: &str) -> pb::TenantLifecycleRequest {
    pb::TenantLifecycleRequest {
        id: id.to_owned(),
        expected_version: None,
        reason: "test".into(),
    }
}

#[tokio::test]
async fn every_rpc_happy_path() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let req = new_tenant("acme");
    let created = client
        .create_tenant(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.slug, req.slug);
    assert_eq!(created.name, req.name);
    assert_eq!(created.country, "DE");
    assert_eq!(created.status, pb::TenantStatus::Active as i32);
    assert_eq!(created.schema_version, 1);
    assert_eq!(created.version, 1);
    let hex = created.id.replace('-', "");
    assert_eq!(created.schema_name, format!("tenant_{hex}"));

    // The schema holds the default tables and a ledger that agrees with the catalog.
    let mut db = server.db.connect().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&created.schema_name)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "customers",
            "financial_transactions",
            "inventory_items",
            "locations",
            "production_orders",
            "quality_records",
            "schema_migrations",
            "suppliers"
        ]
    );
    let ledger: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT version, name FROM \"{}\".schema_migrations ORDER BY version",
        created.schema_name
    ))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(ledger, [(1, "0001_default_tables".to_owned())]);

    let by_id = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Id(created.id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id, created);
    let by_slug = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Slug(created.slug.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_slug, created);

    let listed = client
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tenants, vec![created.clone()]);
    assert!(listed.next_page_token.is_empty());

    let updated = client
        .update_tenant(pb::UpdateTenantRequest {
            id: created.id.clone(),
            name: Some("Acme Renamed".into()),
            country: Some("in".into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Acme Renamed");
    assert_eq!(updated.country, "IN");
    assert_eq!(updated.industry, created.industry, "fields not named stay");
    assert_eq!(updated.version, 2);

    let suspended = client
        .suspend_tenant(lifecycle(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, pb::TenantStatus::Suspended as i32);
    // Asking again changes nothing.
    let again = client
        .suspend_tenant(lifecycle(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, suspended.version);
    let resumed = client
        .resume_tenant(lifecycle(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status, pb::TenantStatus::Active as i32);
    let archived = client
        .archive_tenant(lifecycle(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.status, pb::TenantStatus::Archived as i32);
    assert!(
        schema_exists(&mut db, &created.schema_name).await,
        "archive keeps the schema"
    );

    let purged = client
        .purge_tenant(pb::PurgeTenantRequest {
            id: created.id.clone(),
            confirm_slug: created.slug.clone(),
            expected_version: Some(archived.version),
            reason: "customer left".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.status, pb::TenantStatus::Purged as i32);

    // Every change left an audit event, and the chain verifies.
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM tenantd.audit_log ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.update",
            "tenant.suspend",
            "tenant.resume",
            "tenant.archive",
            "tenant.purge"
        ]
    );
    let verified = tenantd::catalog::audit::verify(&mut db).await.unwrap();
    assert_eq!(verified.checked, 6);
    assert_eq!(verified.first_broken, None);
}

#[tokio::test]
async fn purge_needs_archive_and_the_slug_and_leaves_no_schema_or_role() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let t = client
        .create_tenant(new_tenant("purge"))
        .await
        .unwrap()
        .into_inner();
    let purge = |slug: &str| pb::PurgeTenantRequest {
        id: t.id.clone(),
        confirm_slug: slug.to_owned(),
        expected_version: None,
        reason: String::new(),
    };

    let err = client.purge_tenant(purge(&t.slug)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "an active tenant cannot be purged"
    );
    client.archive_tenant(lifecycle(&t.id)).await.unwrap();
    let err = client
        .purge_tenant(purge("some-other-slug"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["confirm_slug"]);

    let mut db = server.db.connect().await;
    assert!(schema_exists(&mut db, &t.schema_name).await);
    assert!(role_exists(&mut db, &t.schema_name).await);
    client.purge_tenant(purge(&t.slug)).await.unwrap();
    assert!(!schema_exists(&mut db, &t.schema_name).await);
    assert!(!role_exists(&mut db, &t.schema_name).await);

    // The tombstone stays readable; the slug is free again.
    let tomb = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Id(t.id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tomb.status, pb::TenantStatus::Purged as i32);
    let mut again = new_tenant("x");
    again.slug = t.slug.clone();
    let reborn = client.create_tenant(again).await.unwrap().into_inner();
    assert_ne!(reborn.id, t.id);
    let err = client.purge_tenant(purge(&t.slug)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a purged tenant cannot be purged again"
    );
}

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
async fn a_stale_expected_version_is_aborted_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let t = client
        .create_tenant(new_tenant("stale"))
        .await
        .unwrap()
        .into_inner();
    client
        .update_tenant(pb::UpdateTenantRequest {
            id: t.id.clone(),
            name: Some("First writer".into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client
        .update_tenant(pb::UpdateTenantRequest {
            id: t.id.clone(),
            name: Some("Second writer".into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = client
        .suspend_tenant(pb::TenantLifecycleRequest {
            id: t.id.clone(),
            expected_version: Some(1),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let now = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Id(t.id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.name, "First writer");
    assert_eq!(now.version, 2);
    assert_eq!(now.status, pb::TenantStatus::Active as i32);
}

#[tokio::test]
async fn unknown_tenants_are_not_found_and_bad_transitions_fail_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let err = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Id(missing.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Slug("no-such-tenant".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        client
            .suspend_tenant(lifecycle(&missing))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let t = client
        .create_tenant(new_tenant("trans"))
        .await
        .unwrap()
        .into_inner();
    client.archive_tenant(lifecycle(&t.id)).await.unwrap();
    let err = client.resume_tenant(lifecycle(&t.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("archived"), "{}", err.message());
}

#[tokio::test]
async fn invalid_input_names_the_field_and_creates_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let base = new_tenant("valid");
    let cases: Vec<(&str, pb::CreateTenantRequest)> = vec![
        (
            "slug",
            pb::CreateTenantRequest {
                slug: String::new(),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "ab".into(),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "a".repeat(64),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "Upper-Case".into(),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "-leading".into(),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "trailing-".into(),
                ..base.clone()
            },
        ),
        (
            "slug",
            pb::CreateTenantRequest {
                slug: "x'; DROP TABLE tenantd.tenants; --".into(),
                ..base.clone()
            },
        ),
        (
            "name",
            pb::CreateTenantRequest {
                name: String::new(),
                ..base.clone()
            },
        ),
        (
            "name",
            pb::CreateTenantRequest {
                name: "n".repeat(201),
                ..base.clone()
            },
        ),
        (
            "country",
            pb::CreateTenantRequest {
                country: "XX".into(),
                ..base.clone()
            },
        ),
        (
            "country",
            pb::CreateTenantRequest {
                country: "DEU".into(),
                ..base.clone()
            },
        ),
        (
            "owner_user_id",
            pb::CreateTenantRequest {
                owner_user_id: "not-a-uuid".into(),
                ..base.clone()
            },
        ),
        (
            "idempotency_key",
            pb::CreateTenantRequest {
                idempotency_key: "k".repeat(201),
                ..base.clone()
            },
        ),
        (
            "description",
            pb::CreateTenantRequest {
                description: "d".repeat(2001),
                ..base.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let err = client.create_tenant(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {request:?}");
        assert_eq!(bad_fields(&err), [field], "{request:?}");
        assert!(
            !err.message().to_lowercase().contains("sql"),
            "{}",
            err.message()
        );
    }
    // Several bad fields are named at once.
    let err = client
        .create_tenant(pb::CreateTenantRequest {
            name: String::new(),
            slug: "A".into(),
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["name", "slug"]);

    // An owner that does not exist names the field too.
    let err = client
        .create_tenant(pb::CreateTenantRequest {
            owner_user_id: uuid::Uuid::now_v7().to_string(),
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["owner_user_id"]);

    let bad_requests: Vec<(&str, tonic::Status)> = vec![
        (
            "id",
            client
                .get_tenant(pb::GetTenantRequest {
                    selector: Some(Selector::Id("42".into())),
                })
                .await
                .unwrap_err(),
        ),
        (
            "selector",
            client
                .get_tenant(pb::GetTenantRequest { selector: None })
                .await
                .unwrap_err(),
        ),
        (
            "page_size",
            client
                .list_tenants(pb::ListTenantsRequest {
                    page_size: -1,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "page_size",
            client
                .list_tenants(pb::ListTenantsRequest {
                    page_size: 1001,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "page_token",
            client
                .list_tenants(pb::ListTenantsRequest {
                    page_token: "garbage".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "status",
            client
                .list_tenants(pb::ListTenantsRequest {
                    status: 99,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "id",
            client
                .update_tenant(pb::UpdateTenantRequest::default())
                .await
                .unwrap_err(),
        ),
        (
            "expected_version",
            client
                .suspend_tenant(pb::TenantLifecycleRequest {
                    id: base_id(),
                    expected_version: Some(0),
                    reason: String::new(),
                })
                .await
                .unwrap_err(),
        ),
        (
            "confirm_slug",
            client
                .purge_tenant(pb::PurgeTenantRequest {
                    id: base_id(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (field, err) in bad_requests {
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(bad_fields(&err), [field], "{err:?}");
    }

    let mut db = server.db.connect().await;
    assert_eq!(
        count_tenant_schemas(&mut db).await,
        0,
        "nothing was created"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.tenants")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

fn base_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test]
async fn list_pages_by_keyset_without_repeats_or_gaps_under_concurrent_inserts() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut before = Vec::new();
    for i in 0..7 {
        before.push(
            client
                .create_tenant(new_tenant(&format!("page{i}")))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
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

#[tokio::test]
async fn every_response_carries_the_request_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = tonic::Request::new(pb::ListTenantsRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "onboarding-7f3a".parse().unwrap());
    let response = client.list_tenants(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "onboarding-7f3a"
    );

    // None given (or an unusable one): the server makes one up and says which.
    let response = client
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap();
    let made = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    // Errors carry it too.
    let mut request = tonic::Request::new(pb::GetTenantRequest { selector: None });
    request
        .metadata_mut()
        .insert("x-request-id", "bad-call-1".parse().unwrap());
    let status = client.get_tenant(request).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "bad-call-1");
}
