//! PostgreSQL 16's CREATEROLE rules: a role made by a non-superuser is
//! granted to its creator WITH ADMIN OPTION, and altering, granting or
//! dropping a role needs that option. A tenant's whole life with tenantd's
//! role a CREATEROLE non-superuser that owns its database, on PostgreSQL
//! 16.2.
//!
//! Debian bookworm packages only PostgreSQL 15, so the test takes 16's
//! server binaries from PyPI: the `pgserver` wheel bundles them. pip fetches
//! it once (into the system's temporary directory, where the server's own
//! account can reach it); the cluster lives under the target directory.
//! TENANTD_SKIP_PG16=1 skips the test, with a note.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sqlx::Connection as _;
use tenantd::local_pg::LocalCluster;

use crate::common::data::read;
use crate::common::{TestServer, clients_at, config_for, lifecycle};

/// The wheel that carries PostgreSQL 16.2's binaries.
const WHEEL: &str = "pgserver==0.1.4";

fn run(command: &mut std::process::Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}\n(set TENANTD_SKIP_PG16=1 to skip this test)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL 16's bin directory, fetched and unpacked on first use. The
/// wheel's layout is kept: its binaries find their libraries by a path
/// relative to themselves.
fn pg16_binaries() -> PathBuf {
    let dir = std::env::temp_dir().join("tenantd-pg16-pgserver-0.1.4");
    let bin = dir.join("unpacked/pgserver/pginstall/bin");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    if bin.join("postgres").exists() {
        return bin;
    }
    let wheels = dir.join("wheel");
    run(std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        // The server binaries in it do not depend on the interpreter.
        .args([
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.11",
        ])
        .args(["--implementation", "cp", "--abi", "cp311", WHEEL, "-d"])
        .arg(&wheels));
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("pip downloaded the wheel");
    let unpacked = dir.join("unpacked");
    run(std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked));
    // Zip entries lose their modes; the server's account reads and runs them.
    run(std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir));
    run(std::process::Command::new("chmod")
        .args(["a+x"])
        .args(std::fs::read_dir(&bin).unwrap().map(|e| e.unwrap().path())));
    bin
}

/// PostgreSQL 16, started once per test process (kept between runs under
/// the target directory, as the shared test cluster is).
fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let bin = pg16_binaries();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tenantd-test-pg16");
        std::fs::create_dir_all(&dir).unwrap();
        let lock = std::fs::File::create(dir.join("lock")).unwrap();
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let cluster = LocalCluster::new(&dir).unwrap().with_binaries(bin);
        cluster.ensure_running().expect("start PostgreSQL 16");
        cluster
    })
}

#[tokio::test]
async fn a_tenants_whole_life_under_postgresql_16s_createrole_rules() {
    if std::env::var("TENANTD_SKIP_PG16").as_deref() == Ok("1") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "note: the PostgreSQL 16 test was SKIPPED (TENANTD_SKIP_PG16=1)"
        );
        return;
    }
    let cluster = cluster();
    let id = uuid::Uuid::new_v4().simple();
    let (name, role) = (format!("tenantd_pg16_{id}"), format!("tenantd_app_{id}"));
    let mut admin = sqlx::PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .unwrap();
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!((160_000..170_000).contains(&version), "{version}");
    // One statement each: CREATE DATABASE runs outside any transaction.
    for sql in [
        format!("CREATE ROLE {role} LOGIN CREATEROLE NOSUPERUSER NOCREATEDB PASSWORD '{role}'"),
        format!("CREATE DATABASE {name} OWNER {role}"),
    ] {
        sqlx::raw_sql(&sql).execute(&mut admin).await.unwrap();
    }
    let options = cluster
        .connect_options(&name)
        .username(&role)
        .password(&role);
    let running = TestServer::run(config_for(options.clone()))
        .await
        .expect("tenantd on PostgreSQL 16 as a CREATEROLE non-superuser");
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let a = c.tenant("pg16-a").await;
    let b = c.tenant("pg16-b").await;

    // 16's rule in force: tenantd holds ADMIN OPTION on the roles it made.
    let admin_option: bool = sqlx::query_scalar(
        "SELECT bool_and(m.admin_option) FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles g ON g.oid = m.member \
         WHERE r.rolname = ANY($1) AND g.rolname = $2",
    )
    .bind(vec![a.schema_name.clone(), b.schema_name.clone()])
    .bind(&role)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(admin_option);

    c.write_and_read_back(&a, "on 16").await;
    let other = c
        .data
        .execute(read(
            &a.id,
            &format!("SELECT * FROM \"{}\".customers", b.schema_name),
        ))
        .await
        .unwrap_err();
    assert!(other.message().contains("42501"), "{other:?}");

    let can_login = async |admin: &mut sqlx::PgConnection, r: &str| -> Option<bool> {
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(r)
            .fetch_optional(admin)
            .await
            .unwrap()
    };
    c.tenants.suspend_tenant(lifecycle(&a.id)).await.unwrap();
    assert_eq!(can_login(&mut admin, &a.schema_name).await, Some(false));
    c.tenants.resume_tenant(lifecycle(&a.id)).await.unwrap();
    assert_eq!(can_login(&mut admin, &a.schema_name).await, Some(true));
    c.archive_and_purge(&a)
        .await
        .expect("purge under 16's rules");
    assert_eq!(can_login(&mut admin, &a.schema_name).await, None);

    running.stop().await.unwrap();
    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS \"{}\"", b.schema_name),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::raw_sql(&sql).execute(&mut admin).await.unwrap();
    }
}
