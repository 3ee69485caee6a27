//! The tenant data plane end to end: Execute and Transaction through the
//! generated client, against tenant roles in a real PostgreSQL — and as a
//! hostile tenant's SQL attacks it.

mod access;
mod connections;
mod isolation;
mod limits;
mod memory;
mod pools;
mod screen;
mod sessions;
mod statements;
mod values;

use std::collections::HashMap;
use std::time::Duration;

use tenantd::pb::{self, value::Kind};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::common::data::read;
use crate::common::{Clients, TestServer, bad_fields, new_tenant};

fn v(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn text(s: &str) -> pb::Value {
    v(Kind::Text(s.into()))
}

fn int(i: i64) -> pb::Value {
    v(Kind::Int64(i))
}

/// The ErrorInfo metadata of a status.
fn metadata(status: &tonic::Status) -> HashMap<String, String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.metadata.clone())
        .unwrap_or_default()
}

/// The SQLSTATE of a SQL error's ErrorInfo.
fn sqlstate(status: &tonic::Status) -> Option<String> {
    metadata(status).remove("sqlstate")
}

/// The ErrorInfo reason of a status.
fn reason(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// Asserts that the statement screen refused a call, naming `field`.
#[track_caller]
fn assert_screened(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(err), vec![field.to_owned()], "{err:?}");
    assert!(err.message().contains("is not allowed"), "{err:?}");
}

/// Installs a plpgsql function `name()` in tenant `t`'s schema, as a tenant
/// migration could: SQL that the statement screen never sees, since a call
/// reaches it through an allowed `SELECT name()`. It runs as the tenant's
/// role, so only PostgreSQL's privileges and tenantd's session reset stand
/// between it and anything it tries.
async fn install_function(server: &TestServer, t: &pb::Tenant, name: &str, body: &str) {
    let mut db = server.db.connect().await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION {}.{name}() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN {body} END $f$",
        t.schema_name
    ))
    .execute(&mut db)
    .await
    .expect("install the function");
}

/// Creates `n` tenants, ten at a time; answers their ids.
async fn tenants(c: &Clients, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..(n - ids.len()).min(10) {
            let mut tenants = c.tenants.clone();
            let request = new_tenant(prefix);
            set.spawn(async move {
                tenants
                    .create_tenant(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .id
            });
        }
        while let Some(id) = set.join_next().await {
            ids.push(id.unwrap());
        }
    }
    ids
}

/// The single value a read-only call of `sql` answers.
async fn read_scalar(c: &mut Clients, tenant: &str, sql: &str) -> Kind {
    let r = c
        .data
        .execute(read(tenant, sql))
        .await
        .unwrap()
        .into_inner();
    scalar(&r)
}

/// The single value of a one-row, one-column result.
fn scalar(r: &pb::ExecuteResponse) -> Kind {
    assert_eq!(r.rows.len(), 1, "one row: {r:?}");
    assert_eq!(r.rows[0].values.len(), 1, "one column: {r:?}");
    r.rows[0].values[0].kind.clone().expect("a value")
}

/// Polls `count_sql` (a `SELECT count(*) …`) until it says 0, for up to 10 s.
async fn wait_for_none(db: &mut sqlx::PgConnection, count_sql: &str) {
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(count_sql)
            .fetch_one(&mut *db)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still not none after 10 s: {count_sql}");
}

/// Counts the backends logged in as `role`.
fn backends_sql(role: &str) -> String {
    format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'")
}

/// What SQL the screen never sees (a tenant's own function) got when it
/// used `privilege` (a function or view privilege as tenantd's start check
/// names it, or the start of one): PostgreSQL's 42501 where tenantd could
/// revoke it, which it does as a superuser; in the managed mode, where it
/// cannot, the privilege may be open, and then the start check must name it.
async fn refused_or_reported(
    server: &TestServer,
    result: Result<tonic::Response<pb::ExecuteResponse>, tonic::Status>,
    privilege: &str,
) {
    if let Err(err) = &result
        && sqlstate(err).as_deref() == Some("42501")
    {
        return;
    }
    assert!(
        crate::common::managed_mode(),
        "{privilege}: PostgreSQL should refuse it (42501): {result:?}"
    );
    let pool = sqlx::PgPool::connect_with(server.db.options())
        .await
        .expect("connect as tenantd");
    let open = tenantd::catalog::privileges::open_to_public(&pool)
        .await
        .expect("the start check");
    pool.close().await;
    assert!(
        open.iter().any(|o| o.starts_with(privilege)),
        "{privilege} was usable ({result:?}) but the start check does not name it: {open:?}"
    );
}
