//! The PostgreSQL side of a run ([`run_bench`]): the server ([`PgServer`],
//! from a URL or a private cluster that the run stops again if it started
//! it) and the run's own database ([`BenchDatabase`]), which is dropped
//! afterwards together with every tenant role the run created. Roles are
//! cluster-wide, so their names are read from the run's catalog before the
//! database goes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenantd::config::{Secret, parse_database_url};
use tenantd::local_pg::LocalCluster;
use tenantd::tenant::TenantMigrations;

use crate::Target;
use crate::server::tenantd_binary;

/// The PostgreSQL server a run uses: from --database-url, or a private
/// cluster that this run stops again if it started it.
pub struct PgServer {
    /// A database on the server for administrative statements (the one in
    /// the URL; `postgres` on the private cluster).
    admin: PgConnectOptions,
    /// The URL given, to derive the bench database's URL from.
    url: Option<Secret>,
    pub cluster: Option<LocalCluster>,
    /// Whether this run started the private cluster (and so stops it).
    started: bool,
    /// `SELECT version()`.
    pub version: String,
    /// fsync and synchronous_commit, which decide what a commit costs.
    pub durability: String,
}

impl PgServer {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        let (admin, cluster, started) = match &target.database_url {
            Some(url) => (parse_database_url(url)?, None, false),
            None => {
                let cluster = LocalCluster::new(&target.data_dir)?;
                let c = cluster.clone();
                let started = tokio::task::spawn_blocking(move || {
                    let was_running = c.is_running()?;
                    c.ensure_running()?;
                    anyhow::Ok(!was_running)
                })
                .await
                .context("start the private cluster")??;
                eprintln!(
                    "tenantd-bench: private cluster {} ({})",
                    cluster.url("postgres"),
                    if started {
                        "started"
                    } else {
                        "already running"
                    }
                );
                (cluster.connect_options("postgres"), Some(cluster), started)
            }
        };
        let mut server = Self {
            admin,
            url: target.database_url.clone(),
            cluster,
            started,
            version: String::new(),
            durability: String::new(),
        };
        match server.read_version().await {
            Ok((version, durability)) => {
                (server.version, server.durability) = (version, durability)
            }
            Err(e) => {
                if let Err(stop) = server.close().await {
                    eprintln!("tenantd-bench: {stop:#}");
                }
                return Err(e);
            }
        }
        Ok(server)
    }

    /// The server's version and its durability settings.
    async fn read_version(&self) -> anyhow::Result<(String, String)> {
        let mut conn = self.admin_connection().await?;
        let (version, durability) = sqlx::query_as(
            "SELECT version(), 'fsync=' || current_setting('fsync') \
                    || ', synchronous_commit=' || current_setting('synchronous_commit')",
        )
        .fetch_one(&mut conn)
        .await
        .context("read the PostgreSQL version")?;
        let _ = conn.close().await;
        Ok((version, durability))
    }

    /// A connection to the admin database; waits a little for a private
    /// cluster that has only just started.
    async fn admin_connection(&self) -> anyhow::Result<PgConnection> {
        let mut attempt = 0;
        loop {
            match PgConnection::connect_with(&self.admin).await {
                Ok(conn) => return Ok(conn),
                Err(_) if self.cluster.is_some() && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("connect to the PostgreSQL server"),
            }
        }
    }

    /// Connection options and URL of another database on the same server.
    fn database(&self, name: &str) -> anyhow::Result<(PgConnectOptions, Secret)> {
        match (&self.cluster, &self.url) {
            (Some(cluster), _) => Ok((
                cluster.connect_options(name),
                secret(&cluster_url(cluster, name)),
            )),
            (None, Some(url)) => Ok((
                self.admin.clone().database(name),
                secret(&with_database(url.expose(), name)?),
            )),
            (None, None) => bail!("no database URL and no private cluster"),
        }
    }

    /// Where a run ran, for the footnote of a markdown table: server
    /// version, cluster and durability, cores, date and build profile.
    pub fn setting(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let profile = if cfg!(debug_assertions) {
            "debug build (not for publishing)"
        } else {
            "release build"
        };
        format!(
            "{} ({}, {}); {cores} cores; {}; {profile}",
            self.version,
            if self.cluster.is_some() {
                "private cluster"
            } else {
                "server from --database-url"
            },
            self.durability,
            chrono::Utc::now().format("%Y-%m-%d"),
        )
    }

    /// Stops the private cluster if this run started it.
    async fn close(self) -> anyhow::Result<()> {
        let Some(cluster) = self.cluster.filter(|_| self.started) else {
            return Ok(());
        };
        eprintln!("tenantd-bench: stopping the private cluster");
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .context("stop the private cluster")?
            .context("stop the private cluster")
    }
}

/// The private cluster's URL in the form tenantd's URL parser takes: a
/// placeholder host that the `host` parameter (the socket directory)
/// replaces.
pub(crate) fn cluster_url(cluster: &LocalCluster, database: &str) -> String {
    let socket = cluster.socket_dir().display().to_string();
    let mut encoded = String::with_capacity(socket.len());
    for b in socket.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            encoded.push(b as char);
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    let port = cluster.connect_options(database).get_port();
    format!("postgres://postgres@localhost:{port}/{database}?host={encoded}")
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .context("--database-url is not a postgres:// URL")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let after_path = &tail[tail.find(['?', '#']).unwrap_or(tail.len())..];
    ensure!(
        !after_path.contains("dbname="),
        "--database-url must name its database in the path, not with dbname="
    );
    Ok(format!("{scheme}://{authority}/{database}{after_path}"))
}

/// A derived URL, handed on as a [`Secret`] since it may carry a password.
pub(crate) fn secret(url: &str) -> Secret {
    let Ok(secret) = url.parse::<Secret>();
    secret
}

/// The run's own database, `tenantd_bench_<random>`, on [`PgServer`].
pub struct BenchDatabase {
    pub name: String,
    pub options: PgConnectOptions,
    /// For tenantd's --database-url; may carry the server's password.
    pub url: Secret,
}

/// A run: finds the tenantd binary, opens the server, creates the run's
/// database, runs `phases` on it and hands what they measured to `report`;
/// then drops the database with the run's tenant roles and closes the server
/// — also when the phases fail or the run is interrupted with Ctrl-C.
pub async fn run_bench<T>(
    target: &Target,
    phases: impl AsyncFnOnce(&Path, &BenchDatabase) -> anyhow::Result<T>,
    report: impl FnOnce(&PgServer, &T),
) -> anyhow::Result<()> {
    let tenantd = tenantd_binary(target.tenantd.as_deref())?;
    let server = PgServer::open(target).await?;
    let outcome = async {
        let db = BenchDatabase::create(&server).await?;
        let ran = tokio::select! {
            ran = phases(&tenantd, &db) => ran,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let ran = ran.map(|results| report(&server, &results));
        let dropped = db.remove(&server).await;
        first_error(ran, dropped, "cleaning up failed too: ")
    }
    .await;
    let closed = server.close().await;
    first_error(outcome, closed, "")
}

/// The error of `ran`, else that of the `cleanup` after it; a cleanup error
/// behind a failure is printed (after `note`) rather than lost.
pub(crate) fn first_error(
    ran: anyhow::Result<()>,
    cleanup: anyhow::Result<()>,
    note: &str,
) -> anyhow::Result<()> {
    match (ran, cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => {
            eprintln!("tenantd-bench: {note}{cleanup:#}");
            Err(e)
        }
    }
}

impl BenchDatabase {
    async fn create(server: &PgServer) -> anyhow::Result<Self> {
        let name = format!("tenantd_bench_{:08x}", rand::random::<u32>());
        let (options, url) = server.database(&name)?;
        let mut admin = server.admin_connection().await?;
        // The name is made here from hex digits, not taken from input.
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create the bench database {name}"))?;
        let _ = admin.close().await;
        eprintln!("tenantd-bench: bench database {name}");
        Ok(Self { name, options, url })
    }

    /// A new connection to the run's database.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect_with(&self.options)
            .await
            .context("connect to the bench database")
    }

    /// Fails unless tenantd registered exactly the tenant migrations this
    /// binary embeds: otherwise the two sides would not run the same DDL.
    pub async fn check_same_migrations(&self, ours: &TenantMigrations) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let theirs: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT version, checksum FROM tenantd.tenant_migrations ORDER BY version",
        )
        .fetch_all(&mut conn)
        .await
        .context("read the tenant migrations tenantd registered")?;
        let _ = conn.close().await;
        let ours: Vec<(i64, Vec<u8>)> = ours
            .all()
            .iter()
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        ensure!(
            theirs == ours,
            "the tenantd binary registered other tenant migrations than this bench embeds; \
             build both from the same tree"
        );
        Ok(())
    }

    /// Ends every session on the database, reads the names of the tenant
    /// roles the run created from its catalog, drops the database, then the
    /// roles. If the names cannot be read the database is kept, so that the
    /// roles can still be found.
    async fn remove(self, server: &PgServer) -> anyhow::Result<()> {
        let Self { name, options, .. } = self;
        let mut admin = server.admin_connection().await?;
        // With no session left, no transaction can commit a tenant (and its
        // role) after the names are read.
        sqlx::query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .execute(&mut admin)
        .await
        .with_context(|| format!("end the sessions on {name}"))?;
        let roles = tenant_roles(&options)
            .await
            .with_context(|| format!("read the tenant roles of {name}; the database is kept"))?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("drop the bench database {name}"))?;
        for chunk in roles.chunks(500) {
            let list: Vec<String> = chunk.iter().map(|r| format!("\"{r}\"")).collect();
            sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {}", list.join(", ")))
                .execute(&mut admin)
                .await
                .context("drop the run's tenant roles")?;
        }
        let _ = admin.close().await;
        eprintln!(
            "tenantd-bench: dropped {name} and {} tenant roles",
            roles.len()
        );
        Ok(())
    }
}

/// The role of every tenant in the database's catalog (a role is named like
/// its schema); none when tenantd never got to create the catalog.
pub(crate) async fn tenant_roles(options: &PgConnectOptions) -> anyhow::Result<Vec<String>> {
    let mut conn = PgConnection::connect_with(options).await?;
    let roles: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM tenantd.tenants WHERE schema_name ~ '^tenant_[0-9a-f]{32}$'",
    )
    .fetch_all(&mut conn)
    .await
    .or_else(|e| match &e {
        // 42P01 undefined_table, 3F000 invalid_schema_name: no catalog yet.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("42P01" | "3F000")) => {
            Ok(Vec::new())
        }
        _ => Err(e),
    })?;
    let _ = conn.close().await;
    Ok(roles)
}
