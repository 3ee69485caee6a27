//! CreateTenant's all-or-nothing promise under failure and cancellation, and
//! the start-up checks: concurrent starts, tenant migration checksums.

use std::path::Path;
use std::time::Duration;

use sqlx::PgConnection;
use tonic::Code;

use crate::common::fleet::DEFAULT_TABLES;
use crate::common::{TestDb, TestServer, new_tenant, tenant_client, test_config};

fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    dir
}

/// Every catalog row has its schema (with a full ledger) and role, and every
/// tenant schema and role has its row. Returns the number of tenants.
async fn assert_whole_tenants_only(db: &mut PgConnection, tables_per_tenant: i64) -> i64 {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT schema_name, schema_version FROM tenantd.tenants WHERE status <> 'purged'",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut expected: Vec<String> = rows.iter().map(|(s, _)| s.clone()).collect();
    expected.sort();
    assert_eq!(
        schemas, expected,
        "schemas and catalog rows match one to one"
    );
    for (schema, version) in &rows {
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = $1")
                .bind(schema)
                .fetch_one(&mut *db)
                .await
                .unwrap();
        assert_eq!(tables, tables_per_tenant, "{schema} has every table");
        let ledger: i64 = sqlx::query_scalar(&format!(
            "SELECT max(version) FROM \"{schema}\".schema_migrations"
        ))
        .fetch_one(&mut *db)
        .await
        .unwrap();
        assert_eq!(ledger, *version, "{schema}: ledger and catalog agree");
        let role: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
                .bind(schema)
                .fetch_one(&mut *db)
                .await
                .unwrap();
        assert!(role, "{schema} has its role");
    }
    rows.len() as i64
}

async fn tenant_roles_of(db: &mut PgConnection, ids: &[uuid::Uuid]) -> i64 {
    let names: Vec<String> = ids
        .iter()
        .map(|id| format!("tenant_{}", id.simple()))
        .collect();
    sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)")
        .bind(&names)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_create_that_fails_half_way_leaves_no_schema_row_or_role() {
    let dir = migrations_dir(&[
        ("0001_default_tables.sql", DEFAULT_TABLES),
        (
            "0002_breaks.sql",
            // setval is not rolled back: it tells the test which role the
            // failed create would have made (schema and role share a name).
            "CREATE TABLE half_done (id int);\n\
             SELECT setval('public.failed_create', hashtext(current_schema())::bigint);\n\
             SELECT 1 / 0;\n",
        ),
    ]);
    let path = dir.path().to_path_buf();
    let server = TestServer::start_with(|c| c.tenant_migrations = Some(path)).await;
    let mut client = server.client().await;
    let mut db = server.db.connect().await;
    // pg_roles is cluster-wide and other tests create roles meanwhile, so the
    // test looks for the one role this create would have made.
    for sql in [
        "CREATE SEQUENCE public.failed_create MINVALUE -2147483648 START 0",
        "GRANT ALL ON SEQUENCE public.failed_create TO PUBLIC",
    ] {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }

    let err = client
        .create_tenant(new_tenant("broken"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        !err.message().contains("division"),
        "no SQL error text leaks: {}",
        err.message()
    );
    assert!(!err.message().contains("SELECT"), "{}", err.message());

    assert_eq!(assert_whole_tenants_only(&mut db, 9).await, 0);
    let (hash, called): (i64, bool) =
        sqlx::query_as("SELECT last_value, is_called FROM public.failed_create")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(called, "the failing migration ran inside the create");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles \
         WHERE rolname LIKE 'tenant\\_%' AND hashtext(rolname)::bigint = $1",
    )
    .bind(hash)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(
        left.is_empty(),
        "the role was rolled back with everything else: {left:?}"
    );
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.audit_log")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(audit, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.tenants")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn cancelled_creates_leave_a_whole_tenant_or_nothing() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    let mut cancelled = 0;
    let mut requests = Vec::new();
    for i in 0..24u64 {
        let request = new_tenant("cancel");
        requests.push(request.slug.clone());
        let mut c = client.clone();
        let wait = Duration::from_millis(1 + (i * 3) % 40);
        let outcome = if i % 2 == 0 {
            // The server cancels the handler when grpc-timeout expires.
            let mut r = tonic::Request::new(request);
            r.set_timeout(wait);
            c.create_tenant(r).await.map(drop)
        } else {
            // The client drops the call: the stream is reset under the handler.
            match tokio::time::timeout(wait, c.create_tenant(request)).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(tonic::Status::cancelled("dropped by the client")),
            }
        };
        match outcome {
            Ok(()) => {}
            Err(s) if matches!(s.code(), Code::Cancelled | Code::DeadlineExceeded) => {
                cancelled += 1
            }
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    assert!(
        cancelled > 0,
        "some calls were cancelled before they finished"
    );
    // A graceful stop waits for the provisioning still running.
    server.stop().await.unwrap();
    let mut db = server.db.connect().await;
    let whole = assert_whole_tenants_only(&mut db, 8).await;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenantd.tenants")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(tenant_roles_of(&mut db, &ids).await, whole);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenantd.audit_log WHERE action = 'tenant.create'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(audited, whole, "one audit event per tenant that exists");
    // Work that was cancelled on the wire still finished on the server.
    assert!(
        whole > 24 - cancelled,
        "{whole} tenants exist, {cancelled} of 24 calls were cancelled"
    );
}

#[tokio::test]
async fn two_processes_starting_at_once_against_one_database_both_come_up() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(
        TestServer::run(test_config(&db)),
        TestServer::run(test_config(&db))
    );
    let (a, b) = (
        a.expect("first server starts"),
        b.expect("second server starts"),
    );
    for running in [&a, &b] {
        let mut client = tenant_client(&format!("http://{}", running.local_addr())).await;
        client.create_tenant(new_tenant("twin")).await.unwrap();
    }
    let mut conn = db.connect().await;
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantd.tenant_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(registered, 1);
    assert_eq!(assert_whole_tenants_only(&mut conn, 8).await, 2);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

async fn start_error(db: &TestDb, dir: &Path) -> String {
    let mut config = test_config(db);
    config.tenant_migrations = Some(dir.to_path_buf());
    match TestServer::run(config).await {
        Ok(_) => panic!("start must be refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_changed_shipped_migration_or_a_gap_refuses_start() {
    let db = TestDb::create().await;
    let v1 = migrations_dir(&[("0001_default_tables.sql", DEFAULT_TABLES)]);
    let mut config = test_config(&db);
    config.tenant_migrations = Some(v1.path().to_path_buf());
    TestServer::run(config).await.unwrap().stop().await.unwrap();

    let edited = migrations_dir(&[(
        "0001_default_tables.sql",
        &format!("{DEFAULT_TABLES}\n-- edited\n"),
    )]);
    let msg = start_error(&db, edited.path()).await;
    assert!(
        msg.contains("tenant migration 1 (0001_default_tables)"),
        "{msg}"
    );
    assert!(msg.contains("must never change"), "{msg}");
    let registered: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM tenantd.tenant_migrations WHERE version = 1")
            .fetch_one(&mut db.connect().await)
            .await
            .unwrap();
    assert!(
        msg.contains(&hex::encode(&registered)),
        "names the catalog's checksum: {msg}"
    );

    let gap = migrations_dir(&[
        ("0001_default_tables.sql", DEFAULT_TABLES),
        ("0003_later.sql", "SELECT 1;"),
    ]);
    let msg = start_error(&db, gap.path()).await;
    assert!(msg.contains("without gaps"), "{msg}");

    // A newer set registers; an older binary is then refused.
    let v2 = migrations_dir(&[
        ("0001_default_tables.sql", DEFAULT_TABLES),
        ("0002_more.sql", "SELECT 1;"),
    ]);
    let mut config = test_config(&db);
    config.tenant_migrations = Some(v2.path().to_path_buf());
    TestServer::run(config).await.unwrap().stop().await.unwrap();
    let msg = start_error(&db, v1.path()).await;
    assert!(msg.contains("up to version 2"), "{msg}");
}
