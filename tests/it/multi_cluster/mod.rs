//! Tenants across several independent PostgreSQL clusters: the catalog's
//! own database (cluster `default`, on the shared test cluster) and two
//! private servers of the test process, `east` and `west` (plain
//! PostgreSQL, `wal_level = logical`, password authentication on
//! 127.0.0.1), with one database of the test's own on each.
//!
//! tenantd logs in to each server as a role made for the test — a
//! superuser, or in the managed mode a CREATEROLE role that owns its
//! database — whose password it reads from a file in its
//! `--cluster-secrets-dir`, as a deployment mounts a secret.

mod attacks;
mod budgets;
mod crash;
mod moves;
mod placement;
mod routing;

use std::path::PathBuf;
use std::sync::OnceLock;

use sqlx::Connection as _;
use tenantd::app::AppConfig;
use tenantd::local_pg::{LocalCluster, TcpExtras};
use tenantd::pb;

use crate::common::{TestDb, TestServer, managed_mode};

/// The ports of `east` and `west`: two in a row from a base that depends on
/// the target directory, so that two checkouts on one machine do not meet.
static PORTS: std::sync::LazyLock<[u16; 2]> = std::sync::LazyLock::new(|| {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_TARGET_TMPDIR").hash(&mut hasher);
    let base = 30_000 + (hasher.finish() % 4_000) as u16 * 2;
    [base, base + 1]
});

/// The names the tests register the two servers under.
pub(crate) const NAMES: [&str; 2] = ["east", "west"];

/// The two servers, started once per test process and kept running across
/// runs under the target directory, as the shared test cluster is.
fn servers() -> &'static [LocalCluster; 2] {
    static SERVERS: OnceLock<[LocalCluster; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tenantd-test-clusters");
        std::fs::create_dir_all(&base).unwrap();
        let lock = std::fs::File::create(base.join("lock")).unwrap();
        let guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let servers = NAMES
            .into_iter()
            .zip(*PORTS)
            .map(|(name, port)| {
                let extras = TcpExtras {
                    conf: "wal_level = logical\nmax_connections = 400\n\
                           max_replication_slots = 32\nmax_wal_senders = 32\n\
                           max_logical_replication_workers = 16\nmax_worker_processes = 32\n\
                           wal_receiver_status_interval = 1s\n"
                        .to_owned(),
                    hba: "host all all 127.0.0.1/32 scram-sha-256\n".to_owned(),
                };
                let server = LocalCluster::new(&base.join(format!("{name}-{port}")))
                    .unwrap()
                    .listening_on_tcp(port, extras);
                server.ensure_running().expect("start a test cluster");
                server
            })
            .collect::<Vec<_>>();
        drop(guard);
        servers.try_into().unwrap_or_else(|_| unreachable!())
    })
}

/// CreateTenant on `cluster` (empty: where placement puts it).
pub(crate) async fn try_create_on(
    c: &mut crate::common::Clients,
    cluster: &str,
) -> Result<pb::Tenant, tonic::Status> {
    let mut request = crate::common::new_tenant("placed");
    request.cluster = cluster.to_owned();
    c.tenants
        .create_tenant(request)
        .await
        .map(|r| r.into_inner())
}

/// [`try_create_on`], which must succeed.
pub(crate) async fn create_on(c: &mut crate::common::Clients, cluster: &str) -> pb::Tenant {
    try_create_on(c, cluster).await.expect("CreateTenant")
}

/// GetTenant by id.
pub(crate) async fn tenant_of(c: &mut crate::common::Clients, id: &str) -> pb::Tenant {
    c.tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(id.to_owned())),
        })
        .await
        .expect("GetTenant")
        .into_inner()
}

/// Follows a move until it ends.
pub(crate) async fn wait_move(c: &mut crate::common::Clients, id: &str) -> pb::TenantClusterMove {
    let mut stream = c
        .tenants
        .watch_move(pb::TenantMoveRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .unwrap()
    {
        last = Some(m);
    }
    last.expect("the watch sent the move")
}

/// One test's database on one of the servers, and tenantd's role there.
pub(crate) struct Remote {
    pub(crate) cluster: &'static str,
    server: usize,
    pub(crate) db: String,
    pub(crate) role: String,
}

impl Remote {
    /// As the server's superuser, over its socket.
    pub(crate) async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect_with(&servers()[self.server].connect_options(&self.db))
            .await
            .expect("connect to a test cluster")
    }

    /// What AddCluster takes for it: tenantd's role and the password file.
    pub(crate) fn add_request(&self) -> pb::AddClusterRequest {
        pb::AddClusterRequest {
            name: self.cluster.to_owned(),
            url: format!(
                "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
                self.role, PORTS[self.server], self.db
            ),
            password_file: format!("{}.password", self.cluster),
            ..Default::default()
        }
    }

    /// Whether `role` may log in on this server.
    pub(crate) async fn can_login(&self, role: &str) -> bool {
        let mut c = self.connect().await;
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut c)
            .await
            .unwrap()
    }

    /// Whether the tenant's schema and role exist on this server.
    pub(crate) async fn holds(&self, schema: &str) -> (bool, bool) {
        let mut c = self.connect().await;
        sqlx::query_as(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1), \
                    EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
        )
        .bind(schema)
        .fetch_one(&mut c)
        .await
        .unwrap()
    }
}

/// The catalog's database and a database on each of the two servers.
pub(crate) struct Fleet {
    pub(crate) remotes: Vec<Remote>,
    /// The replicas' --cluster-secrets-dir.
    pub(crate) secrets: tempfile::TempDir,
    // Declared last: dropped after the remotes are cleaned up.
    pub(crate) catalog: TestDb,
}

impl Fleet {
    pub(crate) async fn create() -> Fleet {
        let catalog = TestDb::create().await;
        let secrets = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut remotes = Vec::new();
        for (server, cluster) in NAMES.into_iter().enumerate() {
            let db = format!("tenantd_cluster_{id}");
            let role = format!("tenantd_remote_{id}");
            let mut admin =
                sqlx::PgConnection::connect_with(&servers()[server].connect_options("postgres"))
                    .await
                    .expect("connect to a test cluster");
            let attributes = if managed_mode() {
                "CREATEROLE NOSUPERUSER"
            } else {
                "SUPERUSER"
            };
            let password = format!("pw-{cluster}-{id}");
            for sql in [
                format!("CREATE ROLE \"{role}\" LOGIN {attributes} PASSWORD '{password}'"),
                format!("CREATE DATABASE \"{db}\" OWNER \"{role}\""),
            ] {
                sqlx::raw_sql(&sql).execute(&mut admin).await.unwrap();
            }
            std::fs::write(
                secrets.path().join(format!("{cluster}.password")),
                format!("{password}\n"),
            )
            .unwrap();
            remotes.push(Remote {
                cluster,
                server,
                db,
                role,
            });
        }
        Fleet {
            remotes,
            secrets,
            catalog,
        }
    }

    /// The test configuration, with the secrets directory.
    pub(crate) fn config(&self) -> AppConfig {
        let mut config = crate::common::test_config(&self.catalog);
        config.cluster_secrets_dir = Some(self.secrets.path().to_owned());
        config
    }

    /// A tenantd over the catalog, both servers registered.
    pub(crate) async fn serve(&self) -> tenantd::app::Running {
        let running = TestServer::run(self.config()).await.expect("start tenantd");
        let mut clients =
            crate::common::clients_at(&format!("http://{}", running.local_addr())).await;
        for r in &self.remotes {
            clients
                .clusters
                .add_cluster(r.add_request())
                .await
                .expect("register a cluster");
        }
        running
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let catalog = self.catalog.options();
        let remotes: Vec<(usize, String, String)> = self
            .remotes
            .iter()
            .map(|r| (r.server, r.db.clone(), r.role.clone()))
            .collect();
        // Drop runs inside the test's runtime; clean up on a thread of our own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // Every tenant role the test made there: its tenants, and
                // creates that died half-way.
                let roles: Vec<String> = match sqlx::PgConnection::connect_with(&catalog).await {
                    Ok(mut c) => sqlx::query_scalar(
                        "SELECT schema_name FROM tenantd.tenants \
                         UNION SELECT 'tenant_' || replace(tenant_id::text, '-', '') \
                           FROM tenantd.cluster_intents",
                    )
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                for (server, db, role) in remotes {
                    let Ok(mut admin) = sqlx::PgConnection::connect_with(
                        &servers()[server].connect_options("postgres"),
                    )
                    .await
                    else {
                        continue;
                    };
                    let _ =
                        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                    for r in roles.iter().chain(std::iter::once(&role)) {
                        let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{r}\""))
                            .execute(&mut admin)
                            .await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}
