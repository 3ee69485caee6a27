//! Wiring and lifecycle: migrate the catalog, check the tenant migrations,
//! build the services, serve gRPC on a listener the caller bound (and
//! metrics on an address of the config), and shut down in order when asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tower::layer::util as layer;

use crate::catalog::metrics::CatalogCollector;
use crate::catalog::{self, PoolSettings};
use crate::clusters::Clusters;
use crate::config::Secret;
use crate::data::{CallSettings, PoolSettings as TenantPoolSettings, TenantData, TenantPools};
use crate::domain::identity::Scope;
use crate::fleet::{self, RunnerSettings, Upgrades};
use crate::grpc::admission::{AdmissionLayer, CallLimits};
use crate::grpc::arrival::ArrivalLayer;
use crate::grpc::auth::Authenticator;
use crate::grpc::metrics::GrpcMetricsLayer;
use crate::grpc::request_id;
use crate::grpc::tls::ServerTls;
use crate::grpc::{
    ClusterApi, DataApi, EventApi, MigrationApi, SessionApi, TenantApi, UsageApi, UserApi, pb,
};
use crate::identity::{Identity, IdentitySettings, keys};
use crate::metrics::Metrics;
use crate::pgtls::DbTlsSettings;
use crate::placement::{self, Placement};
use crate::tenant::{TenantMigrations, Tenants};

/// What the app needs, already validated.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The catalog database (also holds the tenant schemas), its TLS
    /// already applied.
    pub database: PgConnectOptions,
    /// TLS to the database, for the tenant connections tenantd opens itself
    /// (the same settings as `database`'s: see [`crate::pgtls`]).
    pub database_tls: DbTlsSettings,
    pub catalog_pool: PoolSettings,
    /// Replaces the embedded tenant migrations when set.
    pub tenant_migrations: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    /// This process's fleet-upgrade workers.
    pub runner: RunnerSettings,
    pub identity: IdentitySettings,
    /// A service key with every scope that must exist (stored from this
    /// plain key if missing): the bootstrap credential of a deployment.
    pub admin_key: Option<Secret>,
    /// Where to serve Prometheus metrics (port 0 picks one); `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The per-tenant pools of the data plane and their connection budget.
    pub tenant_pools: TenantPoolSettings,
    /// Row and time limits of data-plane calls.
    pub data_calls: CallSettings,
    /// TLS (and, with a client CA, mutual TLS) for the gRPC listener;
    /// `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// Where registered clusters' password files may be.
    pub cluster_secrets_dir: Option<PathBuf>,
    /// The password in (or beside) `database`, for a move's subscription
    /// that connects to `default`.
    pub database_password: Option<crate::config::Secret>,
    /// Moves of tenants between clusters.
    pub moves: crate::clusters::MoveSettings,
    /// How events reach watchers.
    pub events: crate::events::EventSettings,
    /// How tenant usage is sampled and kept.
    pub usage: crate::usage::UsageSettings,
    /// The operator console's HTTP listener; `None`: no console.
    pub console_addr: Option<SocketAddr>,
    /// How the gRPC listener guards its connections.
    pub connections: crate::listener::ConnectionLimits,
    /// How the console's and the metrics' listeners guard theirs (each
    /// listener counts its own).
    pub http_connections: crate::listener::ConnectionLimits,
    /// HTTP/2 streams (calls) in flight at once on one gRPC connection.
    pub max_streams_per_connection: u32,
    /// gRPC calls in flight at once, in all and from one address.
    pub calls: CallLimits,
}

/// How often pools of tenants that left ACTIVE through another replica are
/// looked for and closed.
const POOL_WATCH_PERIOD: Duration = Duration::from_secs(1);

/// The services health reports on ("" is the server as a whole).
const SERVICES: [&str; 9] = [
    "",
    pb::event_service_server::SERVICE_NAME,
    pb::usage_service_server::SERVICE_NAME,
    pb::cluster_service_server::SERVICE_NAME,
    pb::tenant_service_server::SERVICE_NAME,
    pb::migration_service_server::SERVICE_NAME,
    pb::user_service_server::SERVICE_NAME,
    pb::session_service_server::SERVICE_NAME,
    pb::tenant_data_service_server::SERVICE_NAME,
];

/// A started server.
pub struct Running {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    console_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the metrics listener is bound, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the operator console listens, when it is on.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// Cancelling it starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after a shutdown or an error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await.context("server task failed")?
    }

    /// Shuts down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Prepares the database and starts serving on `listener`: the steps below,
/// in order.
pub async fn start(config: AppConfig, listener: TcpListener) -> anyhow::Result<Running> {
    let local_addr = listener
        .local_addr()
        .context("read the listener's address")?;
    // Bound first: a taken port fails the start before any database work.
    let metrics_listener = bind_metrics(config.metrics_addr).await?;
    let metrics_addr = metrics_listener.as_ref().map(|&(_, addr)| addr);
    let console_listener = match config.console_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for the console on {addr}"))?,
        ),
        None => None,
    };
    let console_addr = match &console_listener {
        Some(l) => Some(l.local_addr().context("read the console's address")?),
        None => None,
    };
    let metrics = Metrics::new();
    // Settings that name files are checked before any database work, so a
    // wrong path or file is reported as such, naming its setting.
    let grpc_tls = match &config.tls {
        Some(tls) => Some((
            tls.load()
                .context("gRPC TLS (--tls-cert, --tls-key, --tls-client-ca)")?,
            tls.client_ca.is_some(),
        )),
        None => None,
    };
    let db_tls = config
        .database_tls
        .connector()
        .context("TLS to PostgreSQL (the database URL's sslmode, sslrootcert, sslcert, sslkey)")?;
    let catalog = prepare_catalog(&config).await?;
    let background = Background::default();
    let services = build_services(&config, db_tls, &catalog, &metrics, &background).await?;
    let pools = services.pools.clone();
    if let Some(listener) = console_listener {
        let console = crate::console::Console::new(crate::console::ConsoleParts {
            identity: services.identity.clone(),
            upgrades: services.upgrades.clone(),
            events: services.events.clone(),
            usage: services.usage.clone(),
            catalog: catalog.pool.clone(),
            shutdown: background.shutdown.child_token(),
            loopback_only: console_addr.is_some_and(|a| a.ip().is_loopback()),
        });
        tracing::info!(addr = ?console_addr, "serving the operator console");
        background
            .tasks
            .spawn(console.serve(listener, config.http_connections.clone()));
    }
    let (health, router) = router(services, grpc_tls, &config, &metrics, &background).await?;
    // Metrics stay up while requests drain, and stop before the pool closes.
    let metrics_stop = CancellationToken::new();
    let metrics_server = metrics_listener.map(|(listener, addr)| {
        tracing::info!(%addr, "serving metrics at /metrics");
        let collector = CatalogCollector::new(metrics, catalog.pool.clone());
        tokio::spawn(crate::metrics::http::serve(
            listener,
            config.http_connections.clone(),
            collector,
            metrics_stop.clone(),
        ))
    });
    let shutdown = background.shutdown.clone();
    let handle = tokio::spawn(serve(
        router,
        (listener, config.connections.clone()),
        Stopping {
            background,
            health,
            timeout: config.shutdown_timeout,
            pools,
            metrics_stop,
            metrics_server,
            catalog: catalog.pool,
        },
    ));
    Ok(Running {
        local_addr,
        metrics_addr,
        console_addr,
        shutdown,
        handle,
    })
}

/// Binds the metrics listener, if one is configured.
async fn bind_metrics(
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for metrics on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("read the metrics listener's address")?;
    Ok(Some((listener, bound)))
}

/// The catalog, migrated and checked, and what it keeps for the services.
struct Catalog {
    pool: PgPool,
    migrations: Arc<TenantMigrations>,
    role_secret: Vec<u8>,
    signing_key: Vec<u8>,
}

/// Migrates the catalog, checks this build's tenant migrations against the
/// ones registered (registering new ones, one replica at a time), and reads
/// the secrets the catalog keeps.
async fn prepare_catalog(config: &AppConfig) -> anyhow::Result<Catalog> {
    catalog::migrate(&config.database).await?;
    let migrations = match &config.tenant_migrations {
        Some(dir) => TenantMigrations::from_dir(dir)?,
        None => TenantMigrations::embedded()?,
    };
    let pool = catalog::connect(
        config.database.clone(),
        &config.catalog_pool,
        "connect to the catalog database",
    )
    .await?;
    let mut tx = pool.begin().await.context("begin tenant migration check")?;
    catalog::tenant_migrations::lock_registration(&mut tx)
        .await
        .context("take the tenant migration registration lock")?;
    migrations.register(&mut tx).await?;
    tx.commit()
        .await
        .context("commit tenant migration registration")?;
    let role_secret = catalog::settings::role_secret(&pool).await?;
    let signing_key = match &config.identity.signing_key {
        Some(key) => {
            tracing::info!("tokens are signed with the key of --token-signing-key-file");
            key.0.clone()
        }
        None => catalog::settings::token_signing_key(&pool).await?,
    };
    tracing::info!(tenant_migrations = migrations.latest(), "catalog ready");
    report_open_privileges(&pool).await;
    Ok(Catalog {
        pool,
        migrations: Arc::new(migrations),
        role_secret,
        signing_key,
    })
}

/// Says at start what of PostgreSQL still reaches past a tenant's schema
/// from SQL the statement screen never sees (managed PostgreSQL, where
/// tenantd cannot revoke it), and how to close it.
async fn report_open_privileges(pool: &PgPool) {
    match catalog::privileges::open_to_public(pool).await {
        Ok(open) if open.is_empty() => {}
        Ok(open) => tracing::warn!(
            open = open.join(", "),
            count = open.len(),
            "functions and views that reach past a tenant's schema are open to every role \
             (tenantd is not a superuser, so it could not revoke them): the statement screen \
             refuses them in data calls, but a tenant's own functions can use them; a \
             superuser closes them with the SQL in docs/security.md"
        ),
        Err(e) => tracing::warn!(error = %e, "could not check the privileges of PUBLIC"),
    }
}

/// The background tasks of a server and the token that stops them.
#[derive(Default)]
struct Background {
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The services behind the API, with their background loops started.
struct Services {
    identity: Identity,
    pools: TenantPools,
    data: TenantData,
    tenants: Tenants,
    upgrades: Upgrades,
    placement: Placement,
    clusters: Clusters,
    events: crate::events::Events,
    usage: crate::usage::Usage,
}

async fn build_services(
    config: &AppConfig,
    db_tls: Option<Arc<crate::pgtls::DbTls>>,
    catalog: &Catalog,
    metrics: &Metrics,
    background: &Background,
) -> anyhow::Result<Services> {
    let Background { tasks, shutdown } = background;
    let pool = &catalog.pool;
    let identity = Identity::new(pool.clone(), &catalog.signing_key, config.identity.clone());
    if let Some(admin) = &config.admin_key {
        let mut conn = pool
            .acquire()
            .await
            .context("acquire a catalog connection")?;
        keys::ensure(&mut conn, admin.expose(), "admin", &Scope::ALL)
            .await
            .context("store the bootstrap admin key")?
            .context("the bootstrap admin key is not a tdk_… service key")?;
    }
    identity
        .refresh_caches()
        .await
        .context("load service keys and revoked sessions")?;
    tasks.spawn(identity.clone().refresh_loop(shutdown.child_token()));

    let engine = catalog::Engine::detect(pool)
        .await
        .context("look for the Citus extension")?;
    let clusters = Clusters::new(
        pool.clone(),
        config.database.clone(),
        db_tls,
        engine,
        config.catalog_pool.clone(),
        config.cluster_secrets_dir.clone(),
        config
            .database_password
            .as_ref()
            .map(|p| p.expose().to_owned()),
    );
    clusters.reread_limits().await;
    // Creates on other clusters that died with an earlier process.
    tasks.spawn({
        let clusters = clusters.clone();
        async move {
            match crate::clusters::sweep_intents(clusters, Duration::ZERO).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(tenants = n, "removed what failed creates left on clusters")
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot sweep half-made tenants")
                }
            }
        }
    });
    tasks.spawn(clusters.clone().maintain(shutdown.child_token()));
    let pools = TenantPools::new(
        clusters.clone(),
        catalog.role_secret.clone(),
        config.tenant_pools.clone(),
        metrics.clone(),
    );
    tasks.spawn(
        pools
            .clone()
            .watch_statuses(POOL_WATCH_PERIOD, shutdown.child_token()),
    );
    let data = TenantData::new(pools.clone(), config.data_calls.clone());
    if engine == catalog::Engine::Citus {
        tracing::info!("Citus coordinator: each new tenant schema is a distributed schema");
        let (functions, relations) = catalog::citus_objects(pool)
            .await
            .context("list the Citus extension's functions and relations")?;
        tracing::info!(
            functions = functions.len(),
            relations = relations.len(),
            "the data plane refuses the Citus extension's functions and relations"
        );
        crate::data::screen::refuse_extension_objects(functions, relations);
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(pool)
                .await
                .context("check whether tenantd's role is a superuser")?;
        if superuser {
            let failed = catalog::privileges::revoke_on_citus_nodes(pool)
                .await
                .context("revoke what tenant roles must not call on the Citus nodes")?;
            for why in failed {
                tracing::warn!(%why, "could not revoke on a Citus worker; docs/citus.md lists the statements");
            }
        } else {
            tracing::warn!(
                "tenantd is not a superuser: large-object, backend-signal, pg_notify and \
                 run_command_on_* functions stay open to tenant roles on the Citus workers \
                 (the screen refuses them; docs/citus.md lists the grants to do by hand)"
            );
        }
    }
    let tenants = Tenants::new(
        clusters.clone(),
        catalog.migrations.clone(),
        catalog.role_secret.clone(),
    );

    let wake = Arc::new(tokio::sync::Notify::new());
    let upgrades = Upgrades::new(clusters.clone(), catalog.migrations.clone(), wake.clone());
    let owner = fleet::runner::spawn(
        clusters.clone(),
        config.database.clone(),
        catalog.migrations.clone(),
        fleet::RunnerSettings {
            engine,
            ..config.runner.clone()
        },
        wake,
        shutdown.child_token(),
        tasks,
    );
    tracing::info!(workers = config.runner.workers, %owner, "fleet upgrade workers started");
    crate::clusters::Mover::new(
        clusters.clone(),
        catalog.migrations.clone(),
        catalog.role_secret.clone(),
        config.moves.clone(),
        owner.clone(),
    )
    .spawn(shutdown.child_token(), tasks);
    let placement_wake = Arc::new(tokio::sync::Notify::new());
    let placement = Placement::new(pool.clone(), engine, placement_wake.clone());
    if engine == catalog::Engine::Citus {
        placement::runner::spawn(
            pool.clone(),
            config.database.clone(),
            owner,
            config.runner.lease,
            config.runner.poll_interval,
            placement_wake,
            shutdown.child_token(),
            tasks,
        );
    }
    let events = crate::events::Events::new(pool.clone(), config.events.clone(), metrics.clone());
    events.spawn(shutdown.child_token(), tasks);
    let usage = crate::usage::Usage::new(clusters.clone(), config.usage.clone(), metrics.clone());
    tasks.spawn(usage.clone().sample_loop(shutdown.child_token()));
    Ok(Services {
        identity,
        pools,
        data,
        tenants,
        upgrades,
        placement,
        clusters,
        events,
        usage,
    })
}

/// The gRPC router: every API service behind the authenticator; health and
/// reflection open for probes and tooling; metrics, request ids and one
/// tracing span per call around them all.
async fn router(
    services: Services,
    // The listener's TLS, loaded, and whether it is mutual.
    tls: Option<(ServerTlsConfig, bool)>,
    config: &AppConfig,
    metrics: &Metrics,
    background: &Background,
) -> anyhow::Result<(HealthReporter, Router<Stack>)> {
    let Services {
        identity,
        pools,
        data,
        tenants,
        upgrades,
        placement,
        clusters,
        events,
        usage,
    } = services;
    let auth = Authenticator::new(identity.clone());
    let data_api = pb::tenant_data_service_server::TenantDataServiceServer::with_interceptor(
        DataApi::new(data, identity.clone(), usage.clone()),
        auth.clone(),
    );
    let event_api = pb::event_service_server::EventServiceServer::with_interceptor(
        EventApi::new(events, identity.clone(), background.shutdown.clone()),
        auth.clone(),
    );
    let usage_api = pb::usage_service_server::UsageServiceServer::with_interceptor(
        UsageApi::new(usage, identity.clone()),
        auth.clone(),
    );
    let tenant_api = pb::tenant_service_server::TenantServiceServer::with_interceptor(
        TenantApi::new(
            tenants,
            identity.clone(),
            background.tasks.clone(),
            metrics.clone(),
            pools,
            clusters.clone(),
            background.shutdown.clone(),
        ),
        auth.clone(),
    );
    let migration_api = pb::migration_service_server::MigrationServiceServer::with_interceptor(
        MigrationApi::new(upgrades, background.shutdown.clone()),
        auth.clone(),
    );
    let cluster_api = pb::cluster_service_server::ClusterServiceServer::with_interceptor(
        ClusterApi::new(placement, clusters, background.shutdown.clone()),
        auth.clone(),
    );
    let user_api = pb::user_service_server::UserServiceServer::with_interceptor(
        UserApi::new(identity.clone()),
        auth.clone(),
    );
    let session_api = pb::session_service_server::SessionServiceServer::with_interceptor(
        SessionApi::new(identity),
        auth,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICES {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build the reflection service")?;

    // Streams in flight per connection are bounded, and so is how long a
    // request may take to arrive (ArrivalLayer): held-open streams cannot
    // pile up. Pings find peers that went away without a FIN.
    let mut server = Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some((tls, mutual)) = tls {
        server = server
            .tls_config(tls)
            .context("configure TLS for the gRPC listener")?;
        tracing::info!(
            mutual,
            "gRPC over TLS{}",
            if mutual {
                "; clients must present a certificate"
            } else {
                ""
            }
        );
    }
    let router = server
        .layer(stack(
            metrics,
            config.calls,
            config.connections.handshake_timeout,
        ))
        // One span per call: method and request id, and the caller and
        // tenant once the handler knows them.
        .trace_fn(|req| {
            let span = tracing::info_span!(
                "grpc",
                method = %req.uri().path(),
                request_id = tracing::field::Empty,
                caller = tracing::field::Empty,
                tenant_id = tracing::field::Empty,
            );
            // A made-up id is recorded by the request-id layer instead.
            if let Some(id) = request_id::given(req.headers().get(request_id::HEADER)) {
                span.record("request_id", id);
            }
            span
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(tenant_api)
        .add_service(migration_api)
        .add_service(cluster_api)
        .add_service(user_api)
        .add_service(session_api)
        .add_service(data_api)
        .add_service(event_api)
        .add_service(usage_api);
    Ok((health, router))
}

/// How often an idle gRPC connection is pinged, and how long the answer
/// may take before the connection is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The layers around every call: metrics outermost, then request ids, the
/// calls-in-flight admission, and the request's arrival deadline.
type Layers = layer::Stack<
    ArrivalLayer,
    layer::Stack<
        AdmissionLayer,
        layer::Stack<request_id::RequestIdLayer, layer::Stack<GrpcMetricsLayer, layer::Identity>>,
    >,
>;
/// [`Layers`] as the server builder holds them.
type Stack = layer::Stack<Layers, layer::Identity>;

fn stack(metrics: &Metrics, calls: CallLimits, arrival: Duration) -> Layers {
    tower::ServiceBuilder::new()
        .layer(GrpcMetricsLayer::new(metrics.clone()))
        .layer(request_id::RequestIdLayer)
        .layer(AdmissionLayer::new(calls))
        .layer(ArrivalLayer { within: arrival })
        .into_inner()
}

/// What a stopping server winds down, in order.
struct Stopping {
    background: Background,
    health: HealthReporter,
    timeout: Duration,
    pools: TenantPools,
    metrics_stop: CancellationToken,
    metrics_server: Option<JoinHandle<()>>,
    catalog: PgPool,
}

/// Serves until the shutdown token is cancelled, then stops in order:
/// health says NOT_SERVING, calls in flight finish (or are cancelled, on
/// PostgreSQL too, at the deadline), background tasks end, the metrics
/// listener closes, then the tenant pools and the catalog pool.
async fn serve(
    router: Router<Stack>,
    (listener, connections): (TcpListener, crate::listener::ConnectionLimits),
    stopping: Stopping,
) -> anyhow::Result<()> {
    let Stopping {
        background,
        health,
        timeout,
        pools,
        metrics_stop,
        metrics_server,
        catalog,
    } = stopping;
    let stop = background.shutdown.clone();
    let signal = async move {
        stop.cancelled().await;
        tracing::info!("shutting down: no new requests, finishing the ones in flight");
        for name in SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    // Small request/response frames must not wait for Nagle's algorithm.
    let incoming = crate::listener::incoming(listener, connections, crate::listener::Served::Grpc);
    let serve = router.serve_with_incoming_shutdown(incoming, signal);
    // A client that keeps a connection or a stream open must not hold
    // shutdown up for ever: past the deadline the connections are dropped.
    let deadline = async {
        background.shutdown.cancelled().await;
        tokio::time::sleep(timeout).await;
    };
    let served = tokio::select! {
        served = serve => served.context("serve gRPC"),
        () = deadline => {
            tracing::warn!(shutdown_timeout = ?timeout, "connections still open at the shutdown deadline; closing them");
            // Calls still running are cancelled now, on PostgreSQL too, not
            // left to run on after tenantd is gone.
            pools.cancel_running().await;
            Ok(())
        }
    };
    background.tasks.close();
    if tokio::time::timeout(timeout, background.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            shutdown_timeout = ?timeout,
            "tenant changes still running at the shutdown deadline"
        );
    }
    metrics_stop.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    pools.close().await;
    catalog.close().await;
    tracing::info!("stopped");
    served
}
