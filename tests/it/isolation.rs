//! DESIGN invariant 2: each tenant's role can use its own schema and nothing
//! else. Checked by PostgreSQL's own privilege system (SQLSTATE 42501).

use sqlx::PgConnection;

use crate::common::{TestServer, create_tenant};

async fn sqlstate(conn: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn a_tenant_role_reaches_its_own_schema_and_nothing_else() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let a = create_tenant(&mut client, "iso-a").await;
    let b = create_tenant(&mut client, "iso-b").await;

    let mut as_a = server.db.connect_as(&a.schema_name).await;
    // Its own tables: read and write, through search_path or qualified.
    assert_eq!(
        sqlstate(&mut as_a, "INSERT INTO locations (name) VALUES ('HQ')").await,
        None
    );
    assert_eq!(
        sqlstate(
            &mut as_a,
            &format!("SELECT * FROM \"{}\".locations", a.schema_name)
        )
        .await,
        None
    );
    // Its ledger: readable, not writable.
    assert_eq!(
        sqlstate(&mut as_a, "SELECT * FROM schema_migrations").await,
        None
    );
    assert_eq!(
        sqlstate(&mut as_a, "DELETE FROM schema_migrations")
            .await
            .as_deref(),
        Some("42501")
    );
    // No DDL in its own schema: changes come only through migrations.
    assert_eq!(
        sqlstate(&mut as_a, "CREATE TABLE sneaky (x int)")
            .await
            .as_deref(),
        Some("42501")
    );

    // Another tenant's tables: refused, whichever way it is named.
    for sql in [
        format!("SELECT * FROM \"{}\".locations", b.schema_name),
        format!(
            "INSERT INTO \"{}\".locations (name) VALUES ('x')",
            b.schema_name
        ),
    ] {
        assert_eq!(
            sqlstate(&mut as_a, &sql).await.as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
    // search_path is no way in: a schema without USAGE is skipped, so the
    // table is simply not there.
    let via_path = format!(
        "SET search_path TO \"{}\"; SELECT * FROM locations",
        b.schema_name
    );
    assert_eq!(
        sqlstate(&mut as_a, &via_path).await.as_deref(),
        Some("42P01")
    );
    // The global catalog: refused.
    for sql in [
        "SELECT * FROM tenantd.tenants",
        "SELECT * FROM tenantd.users",
        "SELECT * FROM tenantd.audit_log",
        "SELECT tenantd.append_audit('x', 'y', 'z', '{}')",
        "UPDATE tenantd.tenants SET status = 'active'",
    ] {
        assert_eq!(
            sqlstate(&mut as_a, sql).await.as_deref(),
            Some("42501"),
            "{sql}"
        );
    }
    // It cannot become anyone else.
    assert_eq!(
        sqlstate(&mut as_a, &format!("SET ROLE \"{}\"", b.schema_name))
            .await
            .as_deref(),
        Some("42501")
    );
    // It cannot make schemas or roles of its own.
    assert_eq!(
        sqlstate(&mut as_a, "CREATE SCHEMA evil").await.as_deref(),
        Some("42501")
    );
    assert_eq!(
        sqlstate(&mut as_a, "CREATE ROLE evil").await.as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn tenant_roles_log_in_with_their_own_schema_on_the_search_path() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let a = create_tenant(&mut client, "login").await;
    let mut db = server.db.connect().await;
    let (login, superuser, createrole): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1",
    )
    .bind(&a.schema_name)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(login && !superuser && !createrole);
    // The password is stored as a SCRAM verifier, never in plain text.
    let password: Option<String> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&a.schema_name)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(password.unwrap().starts_with("SCRAM-SHA-256$"));

    // It logs in with the password tenantd derives for it (SCRAM on the
    // test cluster), and no other.
    let secret: Vec<u8> =
        sqlx::query_scalar("SELECT value FROM tenantd.settings WHERE key = 'tenant_role_secret'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let id = tenantd::domain::TenantId::parse("id", &a.id).unwrap();
    let password = tenantd::tenant::role_password(&secret, id);
    let wrong = server
        .db
        .options()
        .username(&a.schema_name)
        .password("not-the-password");
    if std::env::var_os("TENANTD_TEST_DATABASE_URL").is_none() {
        assert!(
            <PgConnection as sqlx::Connection>::connect_with(&wrong)
                .await
                .is_err()
        );
    }
    let options = server
        .db
        .options()
        .username(&a.schema_name)
        .password(&password);
    let mut conn = <PgConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(path, a.schema_name);
}
