//! Bad requests name the field and create nothing; every response carries
//! the request id.

use tenantd::pb::{self, get_tenant_request::Selector};
use tonic::Code;

use super::count_tenant_schemas;
use crate::common::{TestServer, bad_fields, new_tenant};

/// A CreateTenant refused, naming `field`.
struct Invalid {
    field: &'static str,
    request: pb::CreateTenantRequest,
}

/// How a call with a bad `field` was answered.
struct Refused {
    field: &'static str,
    status: tonic::Status,
}

#[tokio::test]
async fn invalid_input_names_the_field_and_creates_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let base = new_tenant("valid");
    // Each case changes one field of a valid request.
    let invalid = |field, change: fn(&mut pb::CreateTenantRequest)| {
        let mut request = base.clone();
        change(&mut request);
        Invalid { field, request }
    };
    let cases = [
        invalid("slug", |r| r.slug = String::new()),
        invalid("slug", |r| r.slug = "ab".into()),
        invalid("slug", |r| r.slug = "a".repeat(64)),
        invalid("slug", |r| r.slug = "Upper-Case".into()),
        invalid("slug", |r| r.slug = "-leading".into()),
        invalid("slug", |r| r.slug = "trailing-".into()),
        invalid("slug", |r| {
            r.slug = "x'; DROP TABLE tenantd.tenants; --".into()
        }),
        invalid("name", |r| r.name = String::new()),
        invalid("name", |r| r.name = "n".repeat(201)),
        invalid("country", |r| r.country = "XX".into()),
        invalid("country", |r| r.country = "DEU".into()),
        invalid("owner_user_id", |r| r.owner_user_id = "not-a-uuid".into()),
        invalid("idempotency_key", |r| r.idempotency_key = "k".repeat(201)),
        invalid("description", |r| r.description = "d".repeat(2001)),
    ];
    for Invalid { field, request } in cases {
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

    // Other calls with a bad field.
    let get = |selector| {
        let mut client = client.clone();
        async move {
            client
                .get_tenant(pb::GetTenantRequest { selector })
                .await
                .unwrap_err()
        }
    };
    let list = |request| {
        let mut client = client.clone();
        async move { client.list_tenants(request).await.unwrap_err() }
    };
    let refused = [
        Refused {
            field: "id",
            status: get(Some(Selector::Id("42".into()))).await,
        },
        Refused {
            field: "selector",
            status: get(None).await,
        },
        Refused {
            field: "page_size",
            status: list(pb::ListTenantsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        },
        Refused {
            field: "page_size",
            status: list(pb::ListTenantsRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
        },
        Refused {
            field: "page_token",
            status: list(pb::ListTenantsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        },
        Refused {
            field: "status",
            status: list(pb::ListTenantsRequest {
                status: 99,
                ..Default::default()
            })
            .await,
        },
        Refused {
            field: "id",
            status: client
                .update_tenant(pb::UpdateTenantRequest::default())
                .await
                .unwrap_err(),
        },
        Refused {
            field: "expected_version",
            status: client
                .suspend_tenant(pb::TenantLifecycleRequest {
                    id: base_id(),
                    expected_version: Some(0),
                    reason: String::new(),
                })
                .await
                .unwrap_err(),
        },
        Refused {
            field: "confirm_slug",
            status: client
                .purge_tenant(pb::PurgeTenantRequest {
                    id: base_id(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        },
    ];
    for Refused { field, status: err } in refused {
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
