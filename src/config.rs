//! The server's configuration: one clap struct, every flag also readable
//! from a `TENANTD_*` variable, durations in human form (`30s`, `5m`),
//! secrets that never print, checked before anything starts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::pgtls::DbTlsSettings;

/// A value that must never reach a log line or an error message.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn new(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `tenantd serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on (port 0 picks a free port).
    #[arg(long, env = "TENANTD_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Certificate chain (PEM, leaf first) for gRPC over TLS; with
    /// --tls-key. Without them gRPC is plaintext (keep it on loopback or a
    /// private network).
    #[arg(long, env = "TENANTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TENANTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that clients' certificates must chain to: with
    /// it, gRPC is mutual TLS and a client without such a certificate is
    /// refused during the handshake. Needs --tls-cert.
    #[arg(long, env = "TENANTD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the Prometheus metrics listener (plain HTTP, GET /metrics;
    /// port 0 picks a free port), or `off` for none.
    // The full path keeps clap from reading `Option` as "flag may be absent":
    // the parser below gives `None` for `off`.
    #[arg(long, env = "TENANTD_METRICS_ADDR", default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: std::option::Option<SocketAddr>,

    /// gRPC connections open at once; new ones past this are closed at
    /// once. At start the open-file limit is raised to its hard limit; if
    /// this many still do not fit beside the database connections and the
    /// HTTP listeners', it is lowered to what fits, with a warning.
    #[arg(long, env = "TENANTD_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// gRPC connections open at once from one client address; new ones
    /// past this are closed at once.
    #[arg(long, env = "TENANTD_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_address: u32,

    /// How long a new gRPC connection may stay silent (no TLS or HTTP/2
    /// handshake) before it is closed, and how long a request may take to
    /// arrive whole after its headers (its call then ends
    /// DEADLINE_EXCEEDED).
    #[arg(long, env = "TENANTD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Calls (HTTP/2 streams) in flight at once on one gRPC connection; a
    /// client opens more only as earlier ones end.
    #[arg(long, env = "TENANTD_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_connection: u32,

    /// gRPC calls in flight at once; past this a call is answered
    /// RESOURCE_EXHAUSTED at once (a call counts until its response
    /// starts, so open watches do not).
    #[arg(long, env = "TENANTD_MAX_CALLS", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_calls: u32,

    /// gRPC calls in flight at once from one client address; past this a
    /// call is answered RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "TENANTD_MAX_CALLS_PER_ADDRESS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_calls_per_address: u32,

    /// Address of the operator console (plain HTTP: a page showing the
    /// fleet, live), or `off` (the default). It must be a loopback address
    /// unless --console-allow-remote is given; put a TLS proxy in front to
    /// reach it from elsewhere. Signing in needs a service key with
    /// tenants:read and events:read.
    #[arg(long, env = "TENANTD_CONSOLE_ADDR", default_value = "off", value_parser = parse_metrics_addr)]
    pub console_addr: std::option::Option<SocketAddr>,

    /// Let --console-addr be an address other than loopback.
    #[arg(long, env = "TENANTD_CONSOLE_ALLOW_REMOTE")]
    pub console_allow_remote: bool,

    /// How often each replica looks for new events while anyone watches
    /// them (EventService.WatchEvents): the longest a committed change waits
    /// before its watchers are sent it.
    #[arg(long, env = "TENANTD_EVENTS_POLL_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub events_poll_interval: Duration,

    /// Events each replica keeps for its watchers; a watcher further
    /// behind the newest is cut off (RESOURCE_EXHAUSTED) and resumes from
    /// its cursor.
    #[arg(long, env = "TENANTD_EVENTS_BUFFER", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub events_buffer: u32,

    /// Event watchers (EventService.WatchEvents streams) one replica
    /// serves at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TENANTD_EVENTS_MAX_WATCHERS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_max_watchers: u32,

    /// Event watchers one caller (a user, a service key) may have open on
    /// one replica at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TENANTD_EVENTS_MAX_WATCHERS_PER_CALLER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_max_watchers_per_caller: u32,

    /// How often tenant schema sizes are sampled (one catalog query per
    /// cluster).
    #[arg(long, env = "TENANTD_USAGE_SAMPLE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub usage_sample_interval: Duration,

    /// PostgreSQL URL of the database that holds the catalog and the tenant
    /// schemas, e.g. postgres://tenantd@db.internal/platform. TLS as libpq
    /// reads it: ?sslmode=verify-full&sslrootcert=/path/ca.pem (also
    /// sslcert, sslkey; PGSSLMODE and friends where the URL is silent).
    /// Without it tenantd runs a private PostgreSQL cluster under --data-dir.
    #[arg(long, env = "TENANTD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Directory of the private PostgreSQL cluster used when no database URL
    /// is given; created on first start and reused afterwards. One tenantd
    /// owns it at a time (lock file tenantd.lock, naming its pid).
    #[arg(long, env = "TENANTD_DATA_DIR", default_value = "tenantd-data")]
    pub data_dir: PathBuf,

    /// File holding the database password (a Kubernetes secret, say): it
    /// replaces any password in --database-url, so the URL can be given
    /// without one where `ps` and the environment can be read.
    #[arg(
        long,
        env = "TENANTD_DATABASE_PASSWORD_FILE",
        requires = "database_url"
    )]
    pub database_password_file: Option<PathBuf>,

    /// The longest a tenant move's switch may hold the tenant's writes
    /// (they wait, they are not refused); past it the switch is given up,
    /// the writes go on at the source, and it is tried again (3 times).
    #[arg(long, env = "TENANTD_MOVE_CUTOVER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub move_cutover_timeout: Duration,

    /// How long a moved tenant's schema and role stay on the cluster it
    /// left, for a look or a way back, before they are dropped.
    #[arg(long, env = "TENANTD_MOVE_SOURCE_GRACE", value_parser = humantime::parse_duration, default_value = "1h")]
    pub move_source_grace: Duration,

    /// Directory of the files that hold the passwords of registered
    /// clusters (AddCluster's password_file names a file in it, a mounted
    /// secret, say); without it, clusters take their passwords from
    /// TENANTD_CLUSTER_* environment variables only.
    #[arg(long, env = "TENANTD_CLUSTER_SECRETS_DIR")]
    pub cluster_secrets_dir: Option<PathBuf>,

    /// File holding the key access tokens are signed with (at least 32
    /// bytes; every replica must read the same). Without it, the key is
    /// generated once and kept in the catalog.
    #[arg(long, env = "TENANTD_TOKEN_SIGNING_KEY_FILE")]
    pub token_signing_key_file: Option<PathBuf>,

    /// Log output: human-readable text or one JSON object per line.
    #[arg(long, env = "TENANTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,tenantd=debug`.
    #[arg(long, env = "TENANTD_LOG", default_value = "info")]
    pub log_filter: String,

    /// Maximum connections of the catalog pool (catalog reads and writes,
    /// tenant provisioning).
    #[arg(long, env = "TENANTD_CATALOG_POOL_SIZE", default_value_t = 16)]
    pub catalog_pool_size: u32,

    /// How long a request waits for a catalog connection before UNAVAILABLE.
    #[arg(long, env = "TENANTD_CATALOG_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub catalog_acquire_timeout: Duration,

    /// Directory of tenant migrations (NNNN_name.sql) that replaces the set
    /// built into the binary.
    #[arg(long, env = "TENANTD_TENANT_MIGRATIONS")]
    pub tenant_migrations: Option<PathBuf>,

    /// Fleet-upgrade workers in this process: each can upgrade one tenant at
    /// a time, for whichever run has a free slot (0: this replica runs none).
    #[arg(long, env = "TENANTD_UPGRADE_WORKERS", default_value_t = 4)]
    pub upgrade_workers: usize,

    /// How long a worker's claim on a tenant or a run slot, or a replica's
    /// on a placement job (Citus), lasts without a heartbeat; after a crash
    /// other replicas take the work over then.
    #[arg(long, env = "TENANTD_UPGRADE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub upgrade_lease: Duration,

    /// File holding the bootstrap admin service key (every scope). Created
    /// with a fresh key (mode 0600) when missing; the key is stored (hashed)
    /// in the catalog if it is not there yet. Defaults to `<data-dir>/admin.key`
    /// when tenantd runs its private cluster; otherwise no bootstrap key.
    #[arg(long, env = "TENANTD_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// Lifetime of access tokens. Revocation reaches every replica within 5s
    /// regardless.
    #[arg(long, env = "TENANTD_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of a session (its refresh tokens).
    #[arg(long, env = "TENANTD_REFRESH_TOKEN_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long shutdown waits for in-flight requests and tenant changes.
    #[arg(long, env = "TENANTD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Login attempts per minute per account (e-mail or phone); more are
    /// answered RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "TENANTD_LOGINS_PER_MINUTE_PER_ACCOUNT",
        default_value_t = 10
    )]
    pub logins_per_minute_per_account: u32,

    /// Login attempts per minute per client address (the request's
    /// client_ip); more are answered RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "TENANTD_LOGINS_PER_MINUTE_PER_ADDRESS",
        default_value_t = 60
    )]
    pub logins_per_minute_per_address: u32,

    /// Password hashes (argon2id, 19 MiB and a core each) computed at once;
    /// bounds login and password-change throughput.
    #[arg(long, env = "TENANTD_PASSWORD_HASH_CONCURRENCY", default_value_t = 2)]
    pub password_hash_concurrency: usize,

    /// Connections one tenant's pool may hold (the tenant's own PostgreSQL
    /// role logs in on each).
    #[arg(long, env = "TENANTD_TENANT_POOL_SIZE", default_value_t = 4)]
    pub tenant_pool_size: usize,

    /// Tenant pools kept open at most; past it the least recently used pool
    /// is closed.
    #[arg(long, env = "TENANTD_TENANT_POOL_CACHE", default_value_t = 1000)]
    pub tenant_pool_cache: u64,

    /// A tenant pool unused this long is closed with its connections.
    #[arg(long, env = "TENANTD_TENANT_POOL_IDLE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tenant_pool_idle: Duration,

    /// A tenant connection older than this is replaced when next handed out.
    #[arg(long, env = "TENANTD_TENANT_CONNECTION_LIFETIME", default_value = "30m", value_parser = humantime::parse_duration)]
    pub tenant_connection_lifetime: Duration,

    /// Connections of all tenant pools together in this process. At the cap,
    /// idle connections of the least recently used pools are closed first.
    /// Size PostgreSQL's max_connections for (this budget + catalog pool +
    /// upgrade workers) × replicas + headroom.
    #[arg(long, env = "TENANTD_TENANT_CONNECTION_BUDGET", default_value_t = 64)]
    pub tenant_connection_budget: usize,

    /// How long a data call waits for a tenant connection within the budget
    /// before RESOURCE_EXHAUSTED.
    #[arg(long, env = "TENANTD_TENANT_CONNECTION_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tenant_connection_wait: Duration,

    /// statement_timeout of a data call that sets none.
    #[arg(long, env = "TENANTD_DATA_DEFAULT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub data_default_timeout: Duration,

    /// The longest statement_timeout a data call may ask for.
    #[arg(long, env = "TENANTD_DATA_MAX_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub data_max_timeout: Duration,

    /// Rows a data call returns when it sets no max_rows.
    #[arg(long, env = "TENANTD_DATA_DEFAULT_MAX_ROWS", default_value_t = 1000)]
    pub data_default_max_rows: u32,

    /// The most rows a data call may ask for; rows past the limit are
    /// dropped and the result is flagged truncated.
    #[arg(long, env = "TENANTD_DATA_MAX_ROWS", default_value_t = 10_000)]
    pub data_max_rows: u32,
}

impl ServeArgs {
    /// The tenant pool settings these flags give.
    pub fn tenant_pools(&self) -> crate::data::PoolSettings {
        crate::data::PoolSettings {
            pool_size: self.tenant_pool_size,
            cache_capacity: self.tenant_pool_cache,
            pool_idle: self.tenant_pool_idle,
            connection_lifetime: self.tenant_connection_lifetime,
            budget: self.tenant_connection_budget,
            wait: self.tenant_connection_wait,
        }
    }

    /// The data-call limits these flags give.
    pub fn data_calls(&self) -> crate::data::CallSettings {
        crate::data::CallSettings {
            default_max_rows: self.data_default_max_rows,
            max_rows: self.data_max_rows,
            default_timeout: self.data_default_timeout,
            max_timeout: self.data_max_timeout,
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=1000).contains(&self.catalog_pool_size) {
            bail!(
                "--catalog-pool-size must be between 1 and 1000, not {}",
                self.catalog_pool_size
            );
        }
        if self.catalog_acquire_timeout.is_zero() {
            bail!("--catalog-acquire-timeout must be more than zero");
        }
        if self.access_token_ttl < Duration::from_secs(10)
            || self.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            bail!("--access-token-ttl must be between 10s and 24h");
        }
        if self.refresh_token_ttl < self.access_token_ttl {
            bail!("--refresh-token-ttl must be at least --access-token-ttl");
        }
        if self.upgrade_workers > 64 {
            bail!(
                "--upgrade-workers must be at most 64, not {}",
                self.upgrade_workers
            );
        }
        if self.upgrade_lease < Duration::from_secs(1) {
            bail!("--upgrade-lease must be at least 1s");
        }
        if self.logins_per_minute_per_account == 0 {
            bail!("--logins-per-minute-per-account must be at least 1");
        }
        if self.logins_per_minute_per_address == 0 {
            bail!("--logins-per-minute-per-address must be at least 1");
        }
        if !(1..=64).contains(&self.password_hash_concurrency) {
            bail!(
                "--password-hash-concurrency must be between 1 and 64, not {}",
                self.password_hash_concurrency
            );
        }
        if !(1..=1000).contains(&self.tenant_pool_size) {
            bail!(
                "--tenant-pool-size must be between 1 and 1000, not {}",
                self.tenant_pool_size
            );
        }
        if self.tenant_pool_cache == 0 {
            bail!("--tenant-pool-cache must be at least 1");
        }
        if self.tenant_connection_budget < self.tenant_pool_size {
            bail!(
                "--tenant-connection-budget ({}) must be at least --tenant-pool-size ({})",
                self.tenant_connection_budget,
                self.tenant_pool_size
            );
        }
        for (flag, d) in [
            ("--tenant-pool-idle", self.tenant_pool_idle),
            (
                "--tenant-connection-lifetime",
                self.tenant_connection_lifetime,
            ),
            ("--tenant-connection-wait", self.tenant_connection_wait),
            ("--data-default-timeout", self.data_default_timeout),
        ] {
            if d.is_zero() {
                bail!("{flag} must be more than zero");
            }
        }
        if self.data_max_timeout < self.data_default_timeout
            || self.data_max_timeout > Duration::from_secs(3600)
        {
            bail!("--data-max-timeout must be at least --data-default-timeout and at most 1h");
        }
        if self.tenant_connection_wait > Duration::from_secs(600) {
            bail!("--tenant-connection-wait must be at most 10m");
        }
        if self.data_default_max_rows == 0 || self.data_max_rows < self.data_default_max_rows {
            bail!("--data-default-max-rows must be at least 1 and at most --data-max-rows");
        }
        if let Some(dir) = &self.tenant_migrations
            && !dir.is_dir()
        {
            bail!("--tenant-migrations {} is not a directory", dir.display());
        }
        if let Some(url) = &self.database_url {
            parse_database_url(url)?;
            DbTlsSettings::from_url(url.expose()).context("--database-url")?;
        }
        Ok(())
    }
}

impl ServeArgs {
    /// `--console-addr`, refused when not loopback unless allowed.
    pub fn console_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.console_addr {
            Some(addr) if !addr.ip().is_loopback() && !self.console_allow_remote => {
                anyhow::bail!(
                    "--console-addr {addr} is not a loopback address: the console is plain \
                     HTTP; give --console-allow-remote to serve it there anyway (behind a TLS proxy)"
                )
            }
            addr => Ok(addr),
        }
    }
}

/// `--metrics-addr`: a socket address, or `off`.
fn parse_metrics_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is neither an address like 127.0.0.1:9464 nor `off`"))
}

/// Parses a database URL without echoing it: it may carry a password.
pub fn parse_database_url(url: &Secret) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url.expose()).ok().context(
        "--database-url is not a valid PostgreSQL URL (postgres://user@host:port/database)",
    )
}

impl ServeArgs {
    /// The gRPC listener's TLS files, when given.
    pub fn tls(&self) -> Option<crate::grpc::tls::ServerTls> {
        Some(crate::grpc::tls::ServerTls {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

/// Reads a secret mounted as a file: one trailing newline (`\n` or `\r\n`)
/// is dropped, as files written by `echo` or editors end in one; an empty
/// secret is refused.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = crate::files::read_bounded(path, what, crate::files::SECRET_LIMIT)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        bail!("{} ({what}) is empty", path.display());
    }
    Ok(bytes)
}

/// The database to use: `--database-url`, with the password from
/// `--database-password-file` when one is given.
/// Its TLS settings come with it (libpq's sslmode, sslrootcert, sslcert,
/// sslkey), already applied to the options.
pub fn database_options(
    url: &Secret,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<(PgConnectOptions, DbTlsSettings)> {
    let tls = DbTlsSettings::from_url(url.expose()).context("--database-url")?;
    let options = tls
        .apply_to_sqlx(parse_database_url(url)?)
        .context("--database-url")?;
    let Some(path) = password_file else {
        return Ok((options, tls));
    };
    let password = String::from_utf8(read_secret_file(path, "database password")?)
        .ok()
        .with_context(|| format!("{} (database password) is not UTF-8", path.display()))?;
    Ok((options.password(&password), tls))
}

/// The password tenantd logs in to the catalog's database with, for what
/// must pass it on (a move's subscription connecting to `default`): from
/// `--database-password-file`, or else the URL's.
pub fn database_password(
    url: &Secret,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = password_file {
        let password = String::from_utf8(read_secret_file(path, "database password")?)
            .ok()
            .with_context(|| format!("{} (database password) is not UTF-8", path.display()))?;
        return Ok(Some(Secret::new(&password)));
    }
    let parsed = url::Url::parse(url.expose()).ok();
    Ok(parsed
        .as_ref()
        .and_then(|u| u.password())
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .map(|p| Secret::new(&p)))
}

/// The token signing key from `--token-signing-key-file`: at least 32 bytes,
/// as the catalog's own generated key is.
pub fn token_signing_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let key = read_secret_file(path, "token signing key")?;
    if key.len() < 32 {
        bail!(
            "{} (token signing key) holds {} bytes; it needs at least 32 (e.g. `openssl rand -hex 32`)",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

/// Reads the bootstrap admin key from `path`, or creates the file with a
/// fresh key (readable by the owner only) when it does not exist.
pub fn load_or_create_admin_key(path: &std::path::Path) -> anyhow::Result<(Secret, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if !crate::identity::keys::is_well_formed(&key) {
                bail!("{} does not hold a tdk_… service key", path.display());
            }
            Ok((Secret(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let key = crate::identity::keys::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("create {}", path.display()))?;
            writeln!(file, "{key}").with_context(|| format!("write {}", path.display()))?;
            Ok((Secret(key), true))
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    #[test]
    fn secret_files_lose_one_trailing_newline_and_must_not_be_empty() {
        for (content, want) in [
            (&b"s3cret\n"[..], &b"s3cret"[..]),
            (b"s3cret\r\n", b"s3cret"),
            (b"s3cret", b"s3cret"),
            (b"s3cret\n\n", b"s3cret\n"),
            (b" spaced ", b" spaced "),
        ] {
            assert_eq!(read_secret_file(file(content).path(), "x").unwrap(), want);
        }
        for empty in [&b""[..], b"\n", b"\r\n"] {
            let err = read_secret_file(file(empty).path(), "x").unwrap_err();
            assert!(err.to_string().contains("empty"), "{err}");
        }
        assert!(read_secret_file(std::path::Path::new("/nonexistent/secret"), "x").is_err());
    }

    #[test]
    fn the_database_password_file_replaces_the_urls_password() {
        let url = Secret::new("postgres://app:inline@db.example:5432/tenantd");
        let pw = file(b"from-file\n");
        let (with, _) = database_options(&url, Some(pw.path())).unwrap();
        let (without, _) = database_options(&url, None).unwrap();
        // PgConnectOptions hides its password; the two differ only there.
        assert_ne!(format!("{with:?}"), format!("{without:?}"));
        assert_eq!(with.get_username(), "app");
        assert_eq!(with.get_host(), "db.example");
    }

    #[test]
    fn a_token_signing_key_file_needs_32_bytes() {
        assert!(token_signing_key(file(&[7u8; 31]).path()).is_err());
        assert_eq!(
            token_signing_key(file(&[7u8; 32]).path()).unwrap().len(),
            32
        );
        let hex = file(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n");
        assert_eq!(token_signing_key(hex.path()).unwrap().len(), 64);
    }
}
