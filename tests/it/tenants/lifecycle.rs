//! A tenant's life: every RPC's happy path, purge and what it leaves,
//! optimistic concurrency, unknown tenants and bad transitions.

use tenantd::pb::{self, get_tenant_request::Selector};
use tonic::Code;

use super::{by_id, lifecycle, role_exists, schema_exists};
use crate::common::{TestServer, bad_fields, create_tenant, new_tenant};

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

    let got_by_id = client
        .get_tenant(by_id(&created.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got_by_id, created);
    let got_by_slug = client
        .get_tenant(pb::GetTenantRequest {
            selector: Some(Selector::Slug(created.slug.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got_by_slug, created);

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
    let t = create_tenant(&mut client, "purge").await;
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
    let tomb = client.get_tenant(by_id(&t.id)).await.unwrap().into_inner();
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
async fn a_stale_expected_version_is_aborted_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let t = create_tenant(&mut client, "stale").await;
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
    let now = client.get_tenant(by_id(&t.id)).await.unwrap().into_inner();
    assert_eq!(now.name, "First writer");
    assert_eq!(now.version, 2);
    assert_eq!(now.status, pb::TenantStatus::Active as i32);
}

#[tokio::test]
async fn unknown_tenants_are_not_found_and_bad_transitions_fail_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let err = client.get_tenant(by_id(&missing)).await.unwrap_err();
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

    let t = create_tenant(&mut client, "trans").await;
    client.archive_tenant(lifecycle(&t.id)).await.unwrap();
    let err = client.resume_tenant(lifecycle(&t.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("archived"), "{}", err.message());
}
