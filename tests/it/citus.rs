//! tenantd on a Citus coordinator: a coordinator and two workers, private
//! clusters of the test process (`shared_preload_libraries = 'citus'`,
//! Citus built by `../shared/citus/build.sh`, which `.ci/run` runs), one
//! database of the test's own on every node. The catalog stays a local
//! schema; every tenant schema is a distributed schema on a worker, its role
//! on every node; isolation holds on the worker itself, suspend reaches the
//! workers, and purge leaves nothing on any node.
//!
//! The workers trust 127.0.0.1: the coordinator opens their connections as
//! the tenant's role, and Citus has no tenant's password to send (a
//! deployment gives it `pg_dist_authinfo` or certificates; docs/citus.md).

use std::sync::OnceLock;

use sqlx::Connection as _;
use sqlx::postgres::PgConnectOptions;
use tenantd::local_pg::{LocalCluster, TcpExtras};
use tenantd::pb;

use crate::common::data::exec;
use crate::common::{TestServer, clients_at, config_for, lifecycle, managed_mode};

/// Ports of the coordinator and the two workers (also their socket names):
/// three in a row from a base that depends on the target directory, so
/// that two checkouts on one machine (a session's and CI's) do not meet.
pub(crate) static PORTS: std::sync::LazyLock<[u16; 3]> = std::sync::LazyLock::new(|| {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_TARGET_TMPDIR").hash(&mut hasher);
    let base = 41_000 + (hasher.finish() % 6_000) as u16 * 3;
    [base, base + 1, base + 2]
});

/// Whether Citus is installed in the PostgreSQL the tests use (Debian's
/// layout: the server's libraries beside its bin directory).
fn citus_installed() -> bool {
    tenantd::local_pg::find_binaries()
        .ok()
        .and_then(|bin| bin.join("postgres").canonicalize().ok())
        .and_then(|postgres| Some(postgres.parent()?.join("../lib/citus.so")))
        .is_some_and(|citus| citus.exists())
}

/// The three nodes, started once per test process (kept running across
/// runs under the target directory, as the shared test cluster is).
fn nodes() -> &'static [LocalCluster; 3] {
    static NODES: OnceLock<[LocalCluster; 3]> = OnceLock::new();
    NODES.get_or_init(|| {
        assert!(
            citus_installed(),
            "Citus is not installed in this PostgreSQL: run ../shared/citus/build.sh as root \
             (.ci/run does), or set TENANTD_SKIP_CITUS=1 to skip the Citus tests"
        );
        let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tenantd-test-citus");
        std::fs::create_dir_all(&base).unwrap();
        let lock = std::fs::File::create(base.join("lock")).unwrap();
        let guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let nodes = ["coordinator", "worker-1", "worker-2"]
            .into_iter()
            .zip(*PORTS)
            .map(|(name, port)| {
                let extras = TcpExtras {
                    // Every database with Citus has a maintenance daemon,
                    // a background worker of its own; each move needs a
                    // logical replication worker, a slot and a sender. The
                    // status interval bounds a move's write pause
                    // (docs/citus.md, "What a move costs").
                    conf: "shared_preload_libraries = 'citus'\nwal_level = logical\n\
                           max_prepared_transactions = 100\nmax_worker_processes = 64\n\
                           max_logical_replication_workers = 16\nmax_replication_slots = 32\n\
                           max_wal_senders = 32\nwal_receiver_status_interval = 1s\n"
                        .to_owned(),
                    hba: "host all all 127.0.0.1/32 trust\n".to_owned(),
                };
                // The port is written into the cluster when it is made.
                let node = LocalCluster::new(&base.join(format!("{name}-{port}")))
                    .unwrap()
                    .listening_on_tcp(port, extras);
                node.ensure_running().expect("start a Citus node");
                node
            })
            .collect::<Vec<_>>();
        drop(guard);
        nodes.try_into().unwrap_or_else(|_| unreachable!())
    })
}

pub(crate) fn skip() -> bool {
    if std::env::var("TENANTD_SKIP_CITUS").as_deref() == Ok("1") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "note: a Citus test was SKIPPED (TENANTD_SKIP_CITUS=1)"
        );
        return true;
    }
    false
}

/// A database of one test on every node, Citus in it and the workers
/// added; dropped (with the tenant roles left) by [`CitusDb::drop_all`].
pub(crate) struct CitusDb {
    pub(crate) name: String,
    /// In the managed mode, tenantd's role: no superuser, CREATEROLE,
    /// owner of the database on every node (its password is its name).
    pub(crate) app_role: Option<String>,
}

impl CitusDb {
    pub(crate) async fn create() -> CitusDb {
        sweep_leftovers().await;
        let id = uuid::Uuid::new_v4().simple();
        let name = format!("tenantd_citus_{id}");
        let app_role = managed_mode().then(|| format!("tenantd_app_{id}"));
        for node in nodes() {
            let mut admin = sqlx::PgConnection::connect_with(&node.connect_options("postgres"))
                .await
                .unwrap();
            let owner = match &app_role {
                Some(role) => {
                    sqlx::raw_sql(&format!(
                        "CREATE ROLE {role} LOGIN CREATEROLE NOSUPERUSER PASSWORD '{role}'"
                    ))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                    format!(" OWNER {role}")
                }
                None => String::new(),
            };
            sqlx::raw_sql(&format!("CREATE DATABASE {name}{owner}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let mut db = sqlx::PgConnection::connect_with(&node.connect_options(&name))
                .await
                .unwrap();
            sqlx::raw_sql("CREATE EXTENSION citus")
                .execute(&mut db)
                .await
                .unwrap();
        }
        // Adding a node propagates every role to it (pg_authid is
        // cluster-wide): two tests doing it at once fail with "tuple
        // concurrently updated" on the worker.
        static ADDING_NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _adding = ADDING_NODES.lock().await;
        let mut coordinator = Self::connect(0, &name).await;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(PORTS[0]))
            .execute(&mut coordinator)
            .await
            .unwrap();
        for port in &PORTS[1..] {
            sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                .bind(i32::from(*port))
                .execute(&mut coordinator)
                .await
                .unwrap();
        }
        // What the issue found: a database whose default makes every new
        // schema distributed. The catalog must stay local all the same.
        sqlx::raw_sql(&format!(
            "ALTER DATABASE {name} SET citus.enable_schema_based_sharding = on"
        ))
        .execute(&mut coordinator)
        .await
        .unwrap();
        CitusDb { name, app_role }
    }

    /// As the superuser.
    pub(crate) fn options(&self, node: usize) -> PgConnectOptions {
        nodes()[node].connect_options(&self.name)
    }

    /// What tenantd logs in as: the superuser, or the managed role.
    pub(crate) fn tenantd_options(&self) -> PgConnectOptions {
        match &self.app_role {
            Some(role) => self.options(0).username(role).password(role),
            None => self.options(0),
        }
    }

    async fn connect(node: usize, name: &str) -> sqlx::PgConnection {
        sqlx::PgConnection::connect_with(&nodes()[node].connect_options(name))
            .await
            .unwrap()
    }

    pub(crate) async fn on(&self, node: usize) -> sqlx::PgConnection {
        Self::connect(node, &self.name).await
    }

    /// Drops the database everywhere and every tenant role still there.
    pub(crate) async fn drop_all(self) {
        let mut coordinator = self.on(0).await;
        let roles: Vec<String> = sqlx::query_scalar(
            "SELECT 'tenant_' || replace(id::text, '-', '') FROM tenantd.tenants \
             WHERE status <> 'PURGED'",
        )
        .fetch_all(&mut coordinator)
        .await
        .unwrap_or_default();
        drop(coordinator);
        for node in nodes() {
            let mut admin = sqlx::PgConnection::connect_with(&node.connect_options("postgres"))
                .await
                .unwrap();
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await
            .unwrap();
            for role in roles.iter().chain(&self.app_role) {
                sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\""))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Once per test process: the databases and roles of earlier runs that
/// died before [`CitusDb::drop_all`]. Left, each database keeps a Citus
/// maintenance daemon in a background worker slot, and a move's logical
/// replication worker finds none free. One test process uses the nodes at
/// a time (cargo runs test binaries one after another).
async fn sweep_leftovers() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            for node in nodes() {
                let mut admin = sqlx::PgConnection::connect_with(&node.connect_options("postgres"))
                    .await
                    .unwrap();
                let old: Vec<String> = sqlx::query_scalar(
                    "SELECT datname::text FROM pg_database WHERE datname LIKE 'tenantd\\_citus\\_%'",
                )
                .fetch_all(&mut admin)
                .await
                .unwrap();
                for db in old {
                    // A move cut short can leave a subscription, which
                    // DROP DATABASE refuses: detach and drop it first.
                    let mut in_db = sqlx::PgConnection::connect_with(&node.connect_options(&db))
                        .await
                        .unwrap();
                    let subscriptions: Vec<String> = sqlx::query_scalar(
                        "SELECT subname::text FROM pg_subscription \
                         WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    )
                    .fetch_all(&mut in_db)
                    .await
                    .unwrap();
                    for sub in subscriptions {
                        sqlx::raw_sql(&format!(
                            "ALTER SUBSCRIPTION \"{sub}\" DISABLE; \
                             ALTER SUBSCRIPTION \"{sub}\" SET (slot_name = NONE); \
                             DROP SUBSCRIPTION \"{sub}\""
                        ))
                        .execute(&mut in_db)
                        .await
                        .unwrap();
                    }
                    in_db.close().await.unwrap();
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await
                        .unwrap();
                }
                let roles: Vec<String> = sqlx::query_scalar(
                    "SELECT rolname::text FROM pg_roles \
                     WHERE rolname LIKE 'tenant\\_%' OR rolname LIKE 'tenantd\\_app\\_%'",
                )
                .fetch_all(&mut admin)
                .await
                .unwrap();
                for role in roles {
                    // A role that still owns something elsewhere stays.
                    let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\""))
                        .execute(&mut admin)
                        .await;
                }
            }
        })
        .await;
}

/// Whether `role` exists on `node`, and may log in.
async fn role_on(db: &CitusDb, node: usize, role: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut db.on(node).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn tenants_are_distributed_schemas_isolated_on_the_workers() {
    if skip() {
        return;
    }
    let db = CitusDb::create().await;
    let running = TestServer::run(config_for(db.tenantd_options()))
        .await
        .expect("tenantd starts on a Citus coordinator");
    let mut c = clients_at(&format!("http://{}", running.local_addr())).await;
    let a = c.tenant("citus-a").await;
    let b = c.tenant("citus-b").await;

    // The catalog is a local schema; each tenant schema a distributed one.
    let mut coordinator = db.on(0).await;
    let distributed: Vec<String> =
        sqlx::query_scalar("SELECT schema_name::text FROM citus_schemas ORDER BY 1")
            .fetch_all(&mut coordinator)
            .await
            .unwrap();
    let mut want = vec![a.schema_name.clone(), b.schema_name.clone()];
    want.sort();
    assert_eq!(distributed, want, "the catalog must not be distributed");

    // The data plane through the coordinator, as the tenant's role.
    c.write_and_read_back(&a, "on a worker").await;

    // Citus's own functions and metadata are refused, whatever their name:
    // those that run SQL text on any node (which would outlive the call,
    // write in a read-only call and reach other tenants' settings), lock
    // tables, or show the cluster. Found by an attack on a release build.
    for sql in [
        "select create_intermediate_result('r', 'select 1')",
        "SELECT pg_catalog.\"create_intermediate_result\"('r', $q$select * from run_command_on_workers($$select 1$$)$q$)",
        "with x as (select broadcast_intermediate_result('r', 'select 1')) select * from x",
        "select * from read_intermediate_results(array['r'], 'binary') as r(a int)",
        "select lock_relation_if_exists('customers', 'ACCESS EXCLUSIVE')",
        "select * from get_all_active_transactions()",
        "select * from (select 1) s, lateral (select column_name_to_column('customers', 'id')) c",
        "select * from run_command_on_coordinator('select 1')",
        "select * from citus_tables",
        "TABLE pg_catalog.pg_dist_partition",
    ] {
        for read_only in [false, true] {
            let mut request = exec(&a.id, sql, vec![]);
            request.read_only = read_only;
            let err = c.data.execute(request).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{sql}: {err:?}");
            assert!(
                err.message().contains("is not allowed"),
                "{sql}: {}",
                err.message()
            );
        }
    }
    // The second line, privileges, holds on every node when tenantd may
    // set them: a tenant role cannot run SQL text on the nodes or reach
    // large objects there, whatever gets past the screen.
    if !managed_mode() {
        for node in 0..3 {
            let mut conn = db.on(node).await;
            for function in [
                "run_command_on_workers(text, boolean)",
                "lo_create(oid)",
                "pg_notify(text, text)",
                "pg_terminate_backend(integer, bigint)",
            ] {
                let may: bool = sqlx::query_scalar(
                    "SELECT has_function_privilege($1, to_regprocedure($2), 'EXECUTE')",
                )
                .bind(&a.schema_name)
                .bind(function)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("node {node}: {function}: {e}"));
                assert!(!may, "node {node}: a tenant role may call {function}");
            }
        }
    }

    // An aggregate of the extension a query may use still works.
    c.data
        .execute(crate::common::data::read(
            &a.id,
            "SELECT any_value(name) FROM customers",
        ))
        .await
        .expect("any_value is an aggregate, not administration");

    // On the worker that holds b's schema, a's role is refused by
    // PostgreSQL itself.
    let port: i32 = sqlx::query_scalar(
        "SELECT DISTINCT n.nodeport FROM citus_shards s JOIN pg_dist_node n \
         ON n.nodename = s.nodename AND n.nodeport = s.nodeport \
         WHERE s.table_name::text LIKE $1 || '.%'",
    )
    .bind(&b.schema_name)
    .fetch_one(&mut coordinator)
    .await
    .unwrap();
    let worker = PORTS.iter().position(|p| i32::from(*p) == port).unwrap();
    assert_ne!(worker, 0, "b's tables live on a worker");
    // GetTenant says where each tenant lives.
    let got = c
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(b.id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.node, format!("127.0.0.1:{port}"));
    // Over TCP, which the worker trusts (its socket asks for a password).
    let on_worker = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(PORTS[worker])
        .database(&db.name)
        .username(&a.schema_name)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let mut as_a = sqlx::PgConnection::connect_with(&on_worker)
        .await
        .expect("a's role exists on the worker");
    // Citus hides shards from pg_class unless told not to.
    let mut worker_admin = db.on(worker).await;
    sqlx::raw_sql("SET citus.override_table_visibility = off")
        .execute(&mut worker_admin)
        .await
        .unwrap();
    let shard: String = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname LIKE 'customers\\_%' AND c.relkind = 'r' LIMIT 1",
    )
    .bind(&b.schema_name)
    .fetch_one(&mut worker_admin)
    .await
    .expect("b's customers shard on its worker");
    // The shard itself: permission denied. The distributed table's name
    // has no relation on a worker: undefined, or denied at the schema.
    let shard_select = format!("SELECT * FROM \"{}\".\"{shard}\"", b.schema_name);
    let shard_insert = format!(
        "INSERT INTO \"{}\".\"{shard}\" (code, name) VALUES ('x', 'y')",
        b.schema_name
    );
    let by_name = format!("select * from \"{}\".customers", b.schema_name);
    for (sql, codes) in [
        (shard_select, &["42501"][..]),
        (shard_insert, &["42501"][..]),
        (by_name, &["42501", "42P01"][..]),
    ] {
        let err = sqlx::raw_sql(&sql).execute(&mut as_a).await.unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert!(
            code.as_deref().is_some_and(|c| codes.contains(&c)),
            "{sql}: {err}"
        );
    }
    drop(as_a);

    // Suspend reaches every node; purge leaves nothing anywhere.
    c.tenants.suspend_tenant(lifecycle(&a.id)).await.unwrap();
    for node in 0..3 {
        assert_eq!(
            role_on(&db, node, &a.schema_name).await,
            Some(false),
            "node {node}: a suspended tenant's role must not log in"
        );
    }
    c.archive_and_purge(&a).await.expect("purge on Citus");
    for node in 0..3 {
        assert_eq!(
            role_on(&db, node, &a.schema_name).await,
            None,
            "node {node}"
        );
        let schema: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
                .bind(&a.schema_name)
                .fetch_one(&mut db.on(node).await)
                .await
                .unwrap();
        assert!(!schema, "node {node}: the purged schema is gone");
    }
    running.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test]
async fn a_fleet_upgrade_runs_through_the_coordinator() {
    use crate::common::fleet::{
        WAIT, assert_status, migration_client, migrations, path, start, start_request, wait_for_end,
    };
    if skip() {
        return;
    }
    let db = CitusDb::create().await;
    let v1 = migrations(&[]);
    let mut config = config_for(db.tenantd_options());
    config.tenant_migrations = Some(path(&v1));
    let running = TestServer::run(config).await.expect("tenantd on Citus");
    let endpoint = format!("http://{}", running.local_addr());
    let mut c = clients_at(&endpoint).await;
    let mut tenants = Vec::new();
    for i in 0..3 {
        tenants.push(c.tenant(&format!("citus-up-{i}")).await);
    }
    running.stop().await.unwrap();

    // One more migration: DDL Citus propagates to the workers, and an
    // index, run through the coordinator in each tenant's schema.
    let v2 = migrations(&[(
        "notes",
        "ALTER TABLE customers ADD COLUMN note text;\n\
         CREATE INDEX customers_note ON customers (note);\n",
    )]);
    let mut config = config_for(db.tenantd_options());
    config.tenant_migrations = Some(path(&v2));
    let running = TestServer::run(config).await.expect("restart with v2");
    let endpoint = format!("http://{}", running.local_addr());
    let mut m = migration_client(endpoint.clone()).await;
    let run = start(&mut m, start_request(2, 0)).await;
    let done = wait_for_end(&mut m, &run.id, WAIT).await;
    assert_status(&done, pb::UpgradeStatus::Succeeded);

    // The new column works through the data plane, on every tenant.
    let mut c = clients_at(&endpoint).await;
    for t in &tenants {
        c.data
            .execute(exec(
                &t.id,
                "INSERT INTO customers (code, name, note) VALUES ('n', 'noted', 'v2')",
                vec![],
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", t.slug));
    }
    running.stop().await.unwrap();
    db.drop_all().await;
}
