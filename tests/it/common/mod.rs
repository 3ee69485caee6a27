//! Test harness: a real PostgreSQL (the private cluster mechanism of
//! `tenantd serve`, shared by every test process under one file lock, or the
//! server named by TENANTD_TEST_DATABASE_URL), one fresh database per test,
//! and the real server on port 0 spoken to through the generated client.
//! Dropping a [`TestDb`] drops its database and every tenant role it made,
//! so parallel tests never see each other and leave nothing behind.

pub mod binary;
pub mod cli;
pub mod data;
pub mod fleet;
pub mod identity;
pub mod metrics;
pub mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenantd::app::{self, AppConfig, Running};
use tenantd::catalog::PoolSettings;
use tenantd::local_pg::LocalCluster;
use tenantd::pb::tenant_service_client::TenantServiceClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Connection options for the server's maintenance database.
fn admin_options() -> PgConnectOptions {
    static ADMIN: OnceLock<PgConnectOptions> = OnceLock::new();
    ADMIN
        .get_or_init(|| match std::env::var("TENANTD_TEST_DATABASE_URL") {
            Ok(url) => PgConnectOptions::from_str(&url)
                .expect("TENANTD_TEST_DATABASE_URL is a PostgreSQL URL"),
            Err(_) => shared_cluster().connect_options("postgres"),
        })
        .clone()
}

/// The cluster every test process shares, started by whichever comes first.
pub fn shared_cluster() -> LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tenantd-test-pg");
            std::fs::create_dir_all(&dir).expect("create the test cluster directory");
            let lock =
                std::fs::File::create(dir.join("lock")).expect("create the test cluster lock");
            let guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("lock the test cluster");
            let cluster =
                LocalCluster::new(&dir).expect("PostgreSQL binaries for the test cluster");
            cluster.ensure_running().expect("start the test cluster");
            drop(guard);
            cluster
        })
        .clone()
}

/// Whether this run plays managed PostgreSQL: tenantd's role is no
/// superuser. The test target `it-managed` (the same tests, compiled again)
/// runs so; TENANTD_TEST_MANAGED=1 makes `it` run so too.
pub fn managed_mode() -> bool {
    env!("CARGO_CRATE_NAME") == "it_managed"
        || std::env::var("TENANTD_TEST_MANAGED").is_ok_and(|v| v == "1")
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    options: PgConnectOptions,
    /// The role tenantd logs in as when it is not the superuser: made for
    /// this database (LOGIN CREATEROLE, owner of the database), dropped
    /// with it. `None`: tenantd runs as the superuser.
    app_role: Option<String>,
}

impl TestDb {
    /// A database for one test; tenantd's role there is the superuser, or,
    /// in the managed mode (see [`managed_mode`]), a CREATEROLE role.
    pub async fn create() -> TestDb {
        Self::create_with(managed_mode()).await
    }

    /// A database whose tenantd role is what managed PostgreSQL gives: no
    /// superuser, CREATEROLE, owner of its database.
    pub async fn create_managed() -> TestDb {
        Self::create_with(true).await
    }

    async fn create_with(managed: bool) -> TestDb {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("tenantd_test_{id}");
        let mut admin = connect_admin().await;
        let app_role = managed.then(|| format!("tenantd_app_{id}"));
        let owner = match &app_role {
            Some(role) => {
                sqlx::raw_sql(&format!(
                    "CREATE ROLE \"{role}\" LOGIN CREATEROLE NOSUPERUSER NOCREATEDB \
                     PASSWORD '{role}'"
                ))
                .execute(&mut admin)
                .await
                .expect("create the non-superuser tenantd role");
                format!(" OWNER \"{role}\"")
            }
            None => String::new(),
        };
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\"{owner}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let options = admin_options().database(&name);
        TestDb {
            name,
            options,
            app_role,
        }
    }

    /// What tenantd connects with: the superuser, or the managed role.
    pub fn options(&self) -> PgConnectOptions {
        match &self.app_role {
            // The password is the role's name: the test cluster asks
            // non-superusers for one.
            Some(role) => self.options.clone().username(role).password(role),
            None => self.options.clone(),
        }
    }

    /// A superuser connection to this test's database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&self.options)
            .await
            .expect("connect to the test database")
    }

    /// A connection to this test's database logged in as `role` (trust auth
    /// on the test cluster; with a URL-given server, SET SESSION AUTHORIZATION
    /// gives the same privilege checks).
    pub async fn connect_as(&self, role: &str) -> PgConnection {
        let mut conn = self.connect().await;
        sqlx::raw_sql(&format!("SET SESSION AUTHORIZATION \"{role}\""))
            .execute(&mut conn)
            .await
            .expect("become the tenant role");
        conn
    }
}

async fn connect_admin() -> PgConnection {
    let mut tries = 0;
    loop {
        match PgConnection::connect_with(&admin_options()).await {
            Ok(c) => return c,
            Err(e) if tries < 40 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("connect to the test PostgreSQL: {e}"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let options = self.options.clone();
        let app_role = self.app_role.clone();
        // Drop runs inside the test's runtime; clean up on a thread of our own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let roles: Vec<String> = match PgConnection::connect_with(&options).await {
                    Ok(mut conn) => {
                        let roles = sqlx::query_scalar(
                            "SELECT rolname::text FROM pg_roles r \
                             WHERE rolname LIKE 'tenant\\_%' AND EXISTS ( \
                               SELECT FROM pg_namespace n WHERE n.nspname = r.rolname \
                               UNION ALL SELECT FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace \
                                 WHERE n.nspname = r.rolname)",
                        )
                        .fetch_all(&mut conn)
                        .await
                        .unwrap_or_default();
                        let listed: Vec<String> = sqlx::query_scalar("SELECT schema_name FROM tenantd.tenants")
                            .fetch_all(&mut conn)
                            .await
                            .unwrap_or_default();
                        let _ = conn.close().await;
                        let mut all = roles;
                        all.extend(listed);
                        all.sort();
                        all.dedup();
                        all
                    }
                    Err(_) => Vec::new(),
                };
                let mut admin = connect_admin().await;
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                for role in roles.into_iter().chain(app_role) {
                    let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\"")).execute(&mut admin).await;
                }
                let _ = admin.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The bootstrap admin key every test server is started with (each test has
/// its own database, so one key serves them all).
pub fn admin_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(tenantd::identity::keys::generate)
}

/// What every call of a client carries: `authorization: Bearer <key or
/// token>`, or (for the tests of anonymous callers) nothing at all.
#[derive(Clone)]
pub struct Credential(Option<tenantd::grpc::auth::Bearer>);

impl Interceptor for Credential {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(bearer) => bearer.call(request),
            None => Ok(request),
        }
    }
}

/// A channel whose calls carry a credential (or, anonymous, none).
pub type Authed = InterceptedService<Channel, Credential>;

/// Connects to `endpoint`; every call carries `credential`, or nothing.
async fn channel_with(endpoint: &str, credential: Option<&str>) -> Authed {
    channel_windowed(endpoint, credential, None).await
}

/// As [`channel_with`], the connection taking in at most `window` bytes of
/// a stream the client does not read (HTTP/2 flow control; the client's
/// default is 2 MiB a stream).
async fn channel_windowed(endpoint: &str, credential: Option<&str>, window: Option<u32>) -> Authed {
    let channel = Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .expect("connect to tenantd");
    let credential = credential.map(|c| tenantd::grpc::auth::Bearer::new(c).expect("credential"));
    InterceptedService::new(channel, Credential(credential))
}

/// Connects to `endpoint` with `credential` on every call.
pub async fn authed_channel(endpoint: &str, credential: &str) -> Authed {
    channel_with(endpoint, Some(credential)).await
}

/// A TenantService client with the admin key.
pub async fn tenant_client(endpoint: &str) -> TenantServiceClient<Authed> {
    TenantServiceClient::new(authed_channel(endpoint, admin_key()).await)
}

/// A client of each service, all on one channel with one credential.
#[derive(Clone)]
pub struct Clients {
    pub tenants: TenantServiceClient<Authed>,
    pub migrations: tenantd::pb::migration_service_client::MigrationServiceClient<Authed>,
    pub users: tenantd::pb::user_service_client::UserServiceClient<Authed>,
    pub sessions: tenantd::pb::session_service_client::SessionServiceClient<Authed>,
    pub data: tenantd::pb::tenant_data_service_client::TenantDataServiceClient<Authed>,
    pub clusters: tenantd::pb::cluster_service_client::ClusterServiceClient<Authed>,
    pub events: tenantd::pb::event_service_client::EventServiceClient<Authed>,
    pub usage: tenantd::pb::usage_service_client::UsageServiceClient<Authed>,
}

impl Clients {
    /// Clients of every service, all on `channel`.
    fn on(ch: Authed) -> Clients {
        Clients {
            tenants: TenantServiceClient::new(ch.clone()),
            migrations: tenantd::pb::migration_service_client::MigrationServiceClient::new(
                ch.clone(),
            ),
            users: tenantd::pb::user_service_client::UserServiceClient::new(ch.clone()),
            sessions: tenantd::pb::session_service_client::SessionServiceClient::new(ch.clone()),
            clusters: tenantd::pb::cluster_service_client::ClusterServiceClient::new(ch.clone()),
            events: tenantd::pb::event_service_client::EventServiceClient::new(ch.clone()),
            usage: tenantd::pb::usage_service_client::UsageServiceClient::new(ch.clone()),
            data: tenantd::pb::tenant_data_service_client::TenantDataServiceClient::new(ch),
        }
    }

    /// Creates a tenant with a unique slug starting with `prefix`.
    pub async fn tenant(&mut self, prefix: &str) -> tenantd::pb::Tenant {
        create_tenant(&mut self.tenants, prefix).await
    }

    /// Archives `tenant`, then purges it (naming its slug).
    pub async fn archive_and_purge(
        &mut self,
        tenant: &tenantd::pb::Tenant,
    ) -> Result<tenantd::pb::Tenant, tonic::Status> {
        self.tenants.archive_tenant(lifecycle(&tenant.id)).await?;
        self.tenants
            .purge_tenant(tenantd::pb::PurgeTenantRequest {
                id: tenant.id.clone(),
                confirm_slug: tenant.slug.clone(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Writes a customer named `name` into `tenant` through Execute and
    /// reads it back: the tenant's own role at work.
    pub async fn write_and_read_back(&mut self, tenant: &tenantd::pb::Tenant, name: &str) {
        self.data
            .execute(data::exec(
                &tenant.id,
                &format!("INSERT INTO customers (code, name) VALUES ('a1', '{name}')"),
                vec![],
            ))
            .await
            .expect("a write through the tenant's own role");
        let rows = self
            .data
            .execute(data::read(&tenant.id, "SELECT name FROM customers"))
            .await
            .expect("a read through the tenant's own role")
            .into_inner();
        assert_eq!(rows.rows.len(), 1);
    }
}

/// Clients of every service at `endpoint` with `credential`.
pub async fn clients_with(endpoint: &str, credential: &str) -> Clients {
    Clients::on(authed_channel(endpoint, credential).await)
}

/// Clients with the admin key whose connection takes in at most `window`
/// bytes of a stream they do not read: how a watcher that stops reading
/// looks to the server once its window is full.
pub async fn clients_with_window(endpoint: &str, window: u32) -> Clients {
    Clients::on(channel_windowed(endpoint, Some(admin_key()), Some(window)).await)
}

/// Clients of every service at `endpoint` with the admin key.
pub async fn clients_at(endpoint: &str) -> Clients {
    clients_with(endpoint, admin_key()).await
}

/// The real server on port 0 against a fresh database.
pub struct TestServer {
    pub addr: SocketAddr,
    running: Option<Running>,
    // Declared last: dropped after the server has been told to stop.
    pub db: TestDb,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with a configuration the test may adjust first.
    pub async fn start_with(adjust: impl FnOnce(&mut AppConfig)) -> TestServer {
        Self::start_in(TestDb::create().await, adjust).await
    }

    /// Starts over `db` with a configuration the test may adjust first.
    pub async fn start_in(db: TestDb, adjust: impl FnOnce(&mut AppConfig)) -> TestServer {
        let mut config = test_config(&db);
        adjust(&mut config);
        let running = Self::run(config).await.expect("start tenantd");
        TestServer {
            addr: running.local_addr(),
            running: Some(running),
            db,
        }
    }

    pub async fn run(config: AppConfig) -> anyhow::Result<Running> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        app::start(config, listener).await
    }

    /// Stops the server gracefully and starts a new one over the same
    /// database with an adjusted configuration (e.g. newer migrations).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut AppConfig)) {
        self.stop().await.expect("graceful stop");
        let mut config = test_config(&self.db);
        adjust(&mut config);
        let running = Self::run(config).await.expect("restart tenantd");
        self.addr = running.local_addr();
        self.running = Some(running);
    }

    /// Where this server serves /metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::metrics_addr)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where this server serves its console, when on.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::console_addr)
    }

    pub async fn client(&self) -> TenantServiceClient<Authed> {
        tenant_client(&self.endpoint()).await
    }

    /// Clients of every service with `credential` (a key or access token).
    pub async fn clients_as(&self, credential: &str) -> Clients {
        clients_with(&self.endpoint(), credential).await
    }

    /// Clients of every service with the admin key.
    pub async fn clients(&self) -> Clients {
        self.clients_as(admin_key()).await
    }

    /// Clients of every service whose calls carry no credential at all.
    pub async fn anonymous_clients(&self) -> Clients {
        Clients::on(channel_with(&self.endpoint(), None).await)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to tenantd")
    }

    /// Graceful shutdown, waiting for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(r) => r.stop().await,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown_token().cancel();
        }
    }
}

pub fn test_config(db: &TestDb) -> AppConfig {
    config_for(db.options())
}

/// The test configuration over a database of the test's choosing.
pub fn config_for(database: PgConnectOptions) -> AppConfig {
    AppConfig {
        database,
        database_tls: tenantd::pgtls::DbTlsSettings::disabled(),
        catalog_pool: PoolSettings {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(10),
        },
        tenant_migrations: None,
        shutdown_timeout: Duration::from_secs(10),
        identity: tenantd::identity::IdentitySettings::default(),
        admin_key: Some(tenantd::config::Secret::new(admin_key())),
        runner: tenantd::fleet::RunnerSettings {
            workers: 4,
            lease: Duration::from_secs(3),
            poll_interval: Duration::from_millis(100),
            ..Default::default()
        },
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tenant_pools: Default::default(),
        data_calls: Default::default(),
        tls: None,
        cluster_secrets_dir: None,
        database_password: None,
        moves: tenantd::clusters::MoveSettings {
            lease: Duration::from_secs(3),
            poll_interval: Duration::from_millis(100),
            source_grace: Duration::ZERO,
            ..Default::default()
        },
        events: Default::default(),
        usage: Default::default(),
        console_addr: None,
        connections: Default::default(),
        http_connections: tenantd::listener::ConnectionLimits::http(),
        max_streams_per_connection: 128,
        calls: Default::default(),
    }
}

/// A lifecycle request (suspend, resume, archive) for tenant `id`.
pub fn lifecycle(id: &str) -> tenantd::pb::TenantLifecycleRequest {
    tenantd::pb::TenantLifecycleRequest {
        id: id.to_owned(),
        expected_version: None,
        reason: "test".into(),
    }
}

/// A CreateTenant request with a unique slug.
pub fn new_tenant(prefix: &str) -> tenantd::pb::CreateTenantRequest {
    let slug = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    tenantd::pb::CreateTenantRequest {
        name: format!("Tenant {slug}"),
        slug,
        industry: "manufacturing".into(),
        description: "made by a test".into(),
        country: "DE".into(),
        ..Default::default()
    }
}

/// Creates a tenant with a unique slug starting with `prefix`.
pub async fn create_tenant(
    client: &mut TenantServiceClient<Authed>,
    prefix: &str,
) -> tenantd::pb::Tenant {
    client
        .create_tenant(new_tenant(prefix))
        .await
        .expect("create a tenant")
        .into_inner()
}

/// The field names of an INVALID_ARGUMENT's BadRequest details.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A URL of this test's database for a child process (`--database-url`):
/// TENANTD_TEST_DATABASE_URL with the database name replaced when it is set,
/// else a URL of the shared private test cluster's socket.
pub fn database_url(db: &TestDb) -> String {
    match std::env::var("TENANTD_TEST_DATABASE_URL") {
        Ok(url) => with_database(&url, &db.name),
        Err(_) => {
            // `LocalCluster::url` has an empty host (`postgresql://postgres@/db?host=…`),
            // which libpq takes but sqlx (and so `--database-url`) refuses.
            let o = shared_cluster().connect_options(&db.name);
            let socket = o
                .get_socket()
                .expect("the test cluster listens on a Unix socket");
            format!(
                "postgres://{}@localhost:{}/{}?host={}",
                o.get_username(),
                o.get_port(),
                db.name,
                socket.display()
            )
        }
    }
}

/// `url` with its path (the database name) replaced by `name`; the query
/// string is kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_at..].find('/') {
        Some(slash) => &base[..authority_at + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
