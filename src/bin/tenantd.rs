//! The tenantd server binary: parse the configuration, start telemetry,
//! bring up the database (a private cluster when no URL is given), serve
//! until SIGINT or SIGTERM, then shut down in order.
//!
//! With a private cluster the process owns its data directory for its whole
//! life (`<data-dir>/tenantd.lock`): a second `tenantd serve` on it is
//! refused, and a restart waits for the previous one to have stopped it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tenantd::app::{self, AppConfig};
use tenantd::catalog::PoolSettings;
use tenantd::config::{ServeArgs, database_options};
use tenantd::local_pg::{DataDirOwner, LocalCluster};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// gRPC control plane for schema-per-tenant PostgreSQL.
#[derive(Parser)]
#[command(name = "tenantd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
}

/// The database of the private cluster that holds the catalog.
const LOCAL_DATABASE: &str = "tenantd";
/// How long the private cluster may take to stop, beyond the shutdown
/// timeouts, when a start waits for the previous owner of the data directory.
const CLUSTER_STOP_WAIT: Duration = Duration::from_secs(30);

fn main() -> std::process::ExitCode {
    let Cli {
        command: Command::Serve(args),
    } = Cli::parse();
    tenantd::telemetry::init(args.log_format, &args.log_filter);
    pin_trust_store(&args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "tenantd stopped with an error");
            eprintln!("tenantd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// With `sslrootcert` a file, the catalog's driver (sqlx) would trust the
/// machine's roots as well as that file (it starts from the native store
/// and adds the file); libpq trusts the file alone. The native store is read
/// from SSL_CERT_FILE when that is set, so it is pointed at the same file
/// (and SSL_CERT_DIR dropped): then every connection, catalog and tenant
/// pools alike, trusts exactly the URL's CA. `sslrootcert=system` keeps the
/// machine's roots.
fn pin_trust_store(args: &ServeArgs) {
    use tenantd::pgtls::{DbTlsSettings, RootCert};
    let Some(url) = &args.database_url else {
        return;
    };
    let Ok(settings) = DbTlsSettings::from_url(url.expose()) else {
        // Reported, with its reason, when serve validates the arguments.
        return;
    };
    if let Some(RootCert::File(path)) = settings.root_cert {
        // SAFETY: called from main before the runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe {
            std::env::set_var("SSL_CERT_FILE", path);
            std::env::remove_var("SSL_CERT_DIR");
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    // Listening from the start: a signal during start-up (the cluster
    // starting, say) must not kill the process before it stops the cluster;
    // the server then shuts down as soon as it is up.
    let stop = CancellationToken::new();
    let signal = shutdown_signal()?;
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signal.await;
            stop.cancel();
        }
    });
    let database_password = match &args.database_url {
        Some(url) => {
            tenantd::config::database_password(url, args.database_password_file.as_deref())?
        }
        None => None,
    };
    let (database, cluster, owner) = match &args.database_url {
        Some(url) => (
            database_options(url, args.database_password_file.as_deref())?,
            None,
            None,
        ),
        None => {
            // Taken before anything touches the directory, held until the
            // cluster is stopped and the process exits. A previous owner
            // that is stopping (a restart right after Ctrl-C) is waited for
            // as long as stopping may take: requests, then tenant changes,
            // each up to the shutdown timeout, then the cluster.
            let takeover = args.shutdown_timeout * 2 + CLUSTER_STOP_WAIT;
            let owner = tokio::select! {
                owner = DataDirOwner::acquire(&args.data_dir, takeover) => Arc::new(owner?),
                () = stop.cancelled() => anyhow::bail!("stopped while waiting for the data directory"),
            };
            // A restart may be waiting for the directory: say when this
            // process is on its way out.
            tokio::spawn({
                let (owner, stop) = (owner.clone(), stop.clone());
                async move {
                    stop.cancelled().await;
                    owner.stopping();
                }
            });
            let cluster = LocalCluster::new(&args.data_dir)?;
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.ensure_running()).await??;
            tracing::info!(
                data_dir = %cluster.data_dir().display(),
                url = %cluster.url(LOCAL_DATABASE),
                "private PostgreSQL cluster running"
            );
            create_database_if_missing(&cluster, LOCAL_DATABASE).await?;
            (
                // A Unix socket: no TLS.
                (
                    cluster.connect_options(LOCAL_DATABASE),
                    tenantd::pgtls::DbTlsSettings::disabled(),
                ),
                Some(cluster),
                Some(owner),
            )
        }
    };
    let admin_key_file = args
        .admin_key_file
        .clone()
        .or_else(|| cluster.as_ref().map(|_| args.data_dir.join("admin.key")));
    let admin_key = match &admin_key_file {
        Some(path) => {
            let (key, created) = tenantd::config::load_or_create_admin_key(path)?;
            if created {
                tracing::info!(file = %path.display(), "wrote a new admin service key; tenantctl reads it from there (or pass --key)");
            }
            Some(key)
        }
        None => None,
    };
    let result = run(&args, database, database_password, admin_key, stop).await;
    if let Some(owner) = &owner {
        owner.stopping();
    }
    if let Some(cluster) = cluster {
        tracing::info!("stopping the private PostgreSQL cluster");
        let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
        if let Err(e) = stopped {
            tracing::error!(
                error = format!("{e:#}"),
                "could not stop the private cluster"
            );
            return result.and(Err(e));
        }
    }
    result
}

async fn run(
    args: &ServeArgs,
    (database, database_tls): (
        sqlx::postgres::PgConnectOptions,
        tenantd::pgtls::DbTlsSettings,
    ),
    database_password: Option<tenantd::config::Secret>,
    admin_key: Option<tenantd::config::Secret>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("listen on {}", args.listen_addr))?;
    let mut connections = tenantd::listener::ConnectionLimits {
        max: args.max_connections as usize,
        per_address: args.max_connections_per_address as usize,
        handshake_timeout: args.handshake_timeout,
    };
    let http_connections = tenantd::listener::ConnectionLimits::http();
    tenantd::listener::fit_open_files(
        &mut connections,
        tenantd::listener::OpenFiles {
            // An upgrade worker holds a catalog and a tenant connection.
            database: args.catalog_pool_size as usize
                + args.tenant_connection_budget
                + 2 * args.upgrade_workers,
            http: 2 * http_connections.max,
        },
    );
    let config = AppConfig {
        database,
        database_tls,
        catalog_pool: PoolSettings {
            max_connections: args.catalog_pool_size,
            acquire_timeout: args.catalog_acquire_timeout,
        },
        tenant_migrations: args.tenant_migrations.clone(),
        shutdown_timeout: args.shutdown_timeout,
        runner: tenantd::fleet::RunnerSettings {
            workers: args.upgrade_workers,
            lease: args.upgrade_lease,
            ..Default::default()
        },
        identity: tenantd::identity::IdentitySettings {
            access_ttl: args.access_token_ttl,
            refresh_ttl: args.refresh_token_ttl,
            hash_concurrency: args.password_hash_concurrency,
            logins_per_minute_account: args.logins_per_minute_per_account,
            logins_per_minute_address: args.logins_per_minute_per_address,
            signing_key: args
                .token_signing_key_file
                .as_deref()
                .map(tenantd::config::token_signing_key)
                .transpose()?
                .map(tenantd::identity::SigningKey),
        },
        admin_key,
        metrics_addr: args.metrics_addr,
        tenant_pools: args.tenant_pools(),
        data_calls: args.data_calls(),
        tls: args.tls(),
        cluster_secrets_dir: args.cluster_secrets_dir.clone(),
        database_password,
        moves: tenantd::clusters::MoveSettings {
            lease: args.upgrade_lease,
            cutover_timeout: args.move_cutover_timeout,
            source_grace: args.move_source_grace,
            ..Default::default()
        },
        events: tenantd::events::EventSettings {
            poll_interval: args.events_poll_interval,
            buffer: args.events_buffer as usize,
            max_watchers: args.events_max_watchers as usize,
            max_watchers_per_caller: args.events_max_watchers_per_caller as usize,
        },
        usage: tenantd::usage::UsageSettings {
            sample_interval: args.usage_sample_interval,
            ..Default::default()
        },
        console_addr: args.console_addr()?,
        connections,
        http_connections,
        max_streams_per_connection: args.max_streams_per_connection,
        calls: tenantd::grpc::admission::CallLimits {
            max: args.max_calls as usize,
            per_address: args.max_calls_per_address as usize,
        },
    };
    let running = app::start(config, listener).await?;
    tracing::info!(addr = %running.local_addr(), "tenantd listening");
    let token = running.shutdown_token();
    tokio::spawn(async move {
        stop.cancelled().await;
        token.cancel();
    });
    running.wait().await
}

/// Handles SIGINT and SIGTERM from now on (instead of dying of them); the
/// future ends at the first one.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

async fn create_database_if_missing(cluster: &LocalCluster, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = connect_with_retry(cluster).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // The name is a constant of this binary, not user input.
        let created = sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await;
        if let Err(e) = created {
            // Another process may have won the race.
            if tenantd::catalog::classify(&e) != tenantd::catalog::DbErrorKind::UniqueViolation {
                return Err(e).context("create the catalog database");
            }
        }
    }
    conn.close().await?;
    Ok(())
}

async fn connect_with_retry(cluster: &LocalCluster) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let options = cluster.connect_options("postgres");
    let mut attempt = 0;
    loop {
        match sqlx::PgConnection::connect_with(&options).await {
            Ok(conn) => return Ok(conn),
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(error = %e, "private cluster not accepting connections yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("connect to the private cluster"),
        }
    }
}
