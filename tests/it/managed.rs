//! tenantd as managed PostgreSQL runs it: its role is no superuser, has
//! CREATEROLE and owns its database (RDS, Cloud SQL, Azure, …). A tenant's
//! whole life works so, isolation included.

use sqlx::Connection;
use tonic::Code;

use crate::common::data::read;
use crate::common::{TestDb, TestServer, lifecycle};

async fn role_exists(db: &mut sqlx::PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenants_whole_life_as_a_createrole_non_superuser() {
    let db = TestDb::create_managed().await;
    let app = db.options();
    let server = TestServer::start_in(db, |_| {}).await;

    // tenantd really runs without superuser rights.
    let mut as_app = sqlx::PgConnection::connect_with(&app).await.unwrap();
    let (superuser, createrole): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut as_app)
            .await
            .unwrap();
    assert!(!superuser && createrole);

    let mut c = server.clients().await;
    let a = c.tenant("managed-a").await;
    let b = c.tenant("managed-b").await;
    c.write_and_read_back(&a, "only in a").await;

    // Isolation is PostgreSQL's here too.
    let err = c
        .data
        .execute(read(
            &b.id,
            &format!("SELECT * FROM \"{}\".customers", a.schema_name),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Suspend takes the role's LOGIN away; resume gives it back.
    c.tenants.suspend_tenant(lifecycle(&a.id)).await.unwrap();
    let err = c.data.execute(read(&a.id, "SELECT 1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let can_login: bool = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(&a.schema_name)
        .fetch_one(&mut as_app)
        .await
        .unwrap();
    assert!(!can_login);
    c.tenants.resume_tenant(lifecycle(&a.id)).await.unwrap();
    c.data
        .execute(read(&a.id, "SELECT 1"))
        .await
        .expect("served again after resume");

    // Purge (DROP OWNED BY needs the role's privileges) leaves nothing.
    c.archive_and_purge(&a)
        .await
        .expect("purge as a non-superuser");
    assert!(!role_exists(&mut as_app, &a.schema_name).await);
    let schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(&a.schema_name)
            .fetch_one(&mut as_app)
            .await
            .unwrap();
    assert!(!schema);
    let _ = as_app.close().await;
}
