//! TenantService end to end: the real server on a fresh database per test,
//! spoken to through the generated client.

mod concurrency;
mod lifecycle;
mod requests;

use sqlx::PgConnection;
use tenantd::pb::{self, get_tenant_request::Selector};

use crate::common::lifecycle;

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

fn by_id(id: &str) -> pb::GetTenantRequest {
    pb::GetTenantRequest {
        selector: Some(Selector::Id(id.to_owned())),
    }
}
