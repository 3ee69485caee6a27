//! One connection pool per tenant, cached, under one connection budget.
//!
//! Each pool logs in as the tenant's own role (its password derived again
//! from the catalog secret) with search_path pinned to the tenant's schema,
//! so PostgreSQL itself keeps a tenant's calls inside its schema. Pools are
//! built on first use — concurrent first calls build one — only for an
//! ACTIVE tenant, and dropped when the tenant leaves ACTIVE, when unused for
//! the idle time, or when the cache is full (least recently used first).
//!
//! The budget caps the connections of all pools together: every connection
//! holds a permit. A pool that needs a connection at the cap first closes
//! idle connections of the least recently used pools; a caller that still
//! finds none waits up to the deadline, and then gets
//! [`PoolError::Exhausted`]. While anyone waits, a connection handed back is
//! closed instead of kept idle, so its permit goes to the longest waiter.
//! Broken connections (a restart, a terminated backend) are found when
//! handed out again and replaced, never used.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Semaphore;

use super::socket::Endpoint;
use crate::catalog;
use crate::clusters::{Clusters, ConnectionBudget};
use crate::domain::{ClusterName, TenantId, TenantStatus};
use crate::log_bursts::LogBursts;
use crate::metrics::{EvictionReason, Metrics};
use crate::pgtls::DbTls;
use crate::tenant::role_password;

mod budget;
mod checkout;
mod manager;
mod watch;

use budget::Shared;
pub use checkout::{Canceller, Checkout};
pub use manager::{ConnectError, TenantManager};

/// Sizing of the tenant pools; see `tenantd serve --help`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections one tenant's pool may hold.
    pub pool_size: usize,
    /// Pools kept at most.
    pub cache_capacity: u64,
    /// A pool unused this long is closed.
    pub pool_idle: Duration,
    /// A connection older than this is replaced when next handed out.
    pub connection_lifetime: Duration,
    /// Connections of all tenant pools together.
    pub budget: usize,
    /// How long a call waits for a connection before RESOURCE_EXHAUSTED.
    pub wait: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            pool_size: 4,
            cache_capacity: 1000,
            pool_idle: Duration::from_secs(300),
            connection_lifetime: Duration::from_secs(1800),
            budget: 64,
            wait: Duration::from_secs(5),
        }
    }
}

/// Statements one connection keeps prepared before its cache is cleared.
const STATEMENT_CACHE_LIMIT: usize = 256;
/// Bytes of SQL text one connection keeps prepared before its cache is
/// cleared (the statements' plans live in the backend as long).
const STATEMENT_CACHE_BYTES: usize = 512 * 1024;
/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiter looks again for idle connections to close.
const WAIT_SLICE: Duration = Duration::from_millis(20);
/// How many times one checkout looks its tenant's pool up when the pool it
/// found is closed under it (dropped by the cache meanwhile) or its login
/// is refused because the tenant changed (left ACTIVE, moved).
const MAX_POOL_LOOKUPS: u32 = 6;
/// How soon a backend whose client closed the connection notices, even in
/// the middle of a statement that ignores cancels.
const CLIENT_CHECK_INTERVAL_MS: u32 = 500;
/// Bytes one message from PostgreSQL may have: a row larger than a whole
/// response is dropped unread, any other message ends the connection.
const MAX_MESSAGE_BYTES: usize = super::MAX_RESPONSE_BYTES + 64 * 1024;
/// A failure logged in full is not logged again for this long: its repeats
/// are counted and logged as one summary line per period.
const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Why no connection could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("tenant not found")]
    NotFound,
    #[error("tenant is {0}, not active")]
    NotActive(TenantStatus),
    #[error(
        "no tenant connection free within {0:?}: the replica's connection budget of {1} is in use"
    )]
    Exhausted(Duration, usize),
    #[error(
        "no tenant connection free within {0:?}: the replica's connection budget of {2} \
         for cluster {1} is in use"
    )]
    ClusterExhausted(Duration, String, usize),
    #[error(
        "all {1} connections of the tenant's pool stayed busy for {0:?}; \
         the tenant's calls are too many or too long"
    )]
    PoolBusy(Duration, usize),
    /// PostgreSQL, or the way to it, refused the tenant role's login.
    #[error("cannot connect as the tenant's role: {}", with_sqlstate(sqlstate.as_deref(), message))]
    Connect {
        /// The SQLSTATE PostgreSQL refused the login with; none for I/O
        /// failures and time-outs.
        sqlstate: Option<String>,
        /// The error and its whole cause chain.
        message: String,
    },
    #[error("catalog lookup failed: {0}")]
    Catalog(String),
    /// The tenant's cluster could not be reached (or is not registered).
    #[error("the tenant's cluster: {0}")]
    Cluster(String),
    #[error("tenant pools are closed")]
    Closed,
}

impl PoolError {
    /// A refused login, with PostgreSQL's SQLSTATE when it has one.
    fn connect(e: &(dyn std::error::Error + 'static), sqlstate: Option<&str>) -> Self {
        PoolError::Connect {
            sqlstate: sqlstate.map(str::to_owned),
            message: cause_chain(e),
        }
    }
}

/// `message`, led by its SQLSTATE when there is one.
fn with_sqlstate(sqlstate: Option<&str>, message: &str) -> String {
    match sqlstate {
        Some(code) => format!("SQLSTATE {code}: {message}"),
        None => message.to_owned(),
    }
}

/// `e` and every `source()` below it, "outer: inner: innermost"; a source
/// whose text the outer ones already show is left out. (tokio_postgres's
/// own text is only "db error": PostgreSQL's message is its source.)
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// One tenant's pool in the cache.
pub struct TenantPool {
    pool: managed::Pool<TenantManager>,
    /// Milliseconds since the cache started, at the last checkout.
    last_used: AtomicU64,
    /// The invalidation epoch when the pool was built.
    built_at: u64,
    /// The cluster its connections go to, and that cluster's budget.
    cluster: ClusterName,
    budget: Arc<ConnectionBudget>,
}

/// The pool cache. Cheap to clone.
#[derive(Clone)]
pub struct TenantPools {
    shared: Arc<Shared>,
    catalog: PgPool,
    /// Where each tenant's role and schema live.
    clusters: Clusters,
    role_secret: Arc<Vec<u8>>,
    settings: Arc<PoolSettings>,
    /// Bumped by every invalidation.
    epoch: Arc<AtomicU64>,
    /// Tenants invalidated recently, with the epoch: a pool built before it
    /// (its status read before the change) is not used.
    invalidated: moka::sync::Cache<TenantId, u64>,
    /// Failed logins and catalog lookups, so that a burst of one failure
    /// (a PostgreSQL restart fails every call alike) is logged once.
    failures: Arc<LogBursts>,
}

impl TenantPools {
    pub fn new(
        clusters: Clusters,
        role_secret: Vec<u8>,
        settings: PoolSettings,
        metrics: Metrics,
    ) -> Self {
        let listener_metrics = metrics.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            // Least recently used goes first (moka's default, TinyLFU, would
            // turn new pools away in favour of frequently used ones).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_idle(settings.pool_idle)
            .eviction_listener(move |_id, pool: Arc<TenantPool>, cause| {
                use moka::notification::RemovalCause;
                let reason = match cause {
                    RemovalCause::Expired => Some(EvictionReason::Idle),
                    RemovalCause::Size => Some(EvictionReason::Capacity),
                    RemovalCause::Explicit => Some(EvictionReason::TenantState),
                    RemovalCause::Replaced => None,
                };
                if let Some(reason) = reason {
                    listener_metrics.pool().evicted(reason);
                }
                listener_metrics.pool().pools_open.dec();
                pool.pool.close();
            })
            .build();
        metrics.pool().connection_budget.set(settings.budget as i64);
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(settings.budget)),
            budget: settings.budget,
            wait: settings.wait,
            waiters: AtomicUsize::new(0),
            metrics,
            cache,
            started: Instant::now(),
            running: Mutex::new(slab::Slab::new()),
            next_call: AtomicU64::new(0),
            cancels: tokio_util::task::TaskTracker::new(),
        });
        Self {
            shared,
            catalog: clusters.catalog().clone(),
            clusters,
            role_secret: Arc::new(role_secret),
            settings: Arc::new(settings),
            epoch: Arc::new(AtomicU64::new(0)),
            invalidated: moka::sync::Cache::builder()
                .time_to_live(Duration::from_secs(600))
                .build(),
            failures: Arc::new(LogBursts::new(FAILURE_LOG_WINDOW)),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// A connection of tenant `id`'s pool, building the pool if needed.
    pub async fn checkout(&self, id: TenantId) -> Result<Checkout, PoolError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        let mut lookups = 0;
        let (obj, budget) = loop {
            let pool = self.pool(id).await.map_err(|e| self.failed(id, e))?;
            lookups += 1;
            pool.last_used
                .store(self.shared.now_ms(), Ordering::Relaxed);
            match tokio::time::timeout_at(deadline, pool.pool.get()).await {
                Ok(Ok(obj)) => break (obj, pool.budget.clone()),
                Ok(Err(managed::PoolError::Backend(ConnectError::Budget(e)))) => return Err(e),
                // The role may not log in: the tenant left ACTIVE (through
                // another replica, whose news has not reached this one yet),
                // or moved to another cluster, whose switch also ends the
                // sessions (a login under way included) on the one it left,
                // and later drops the role there (a password refused for a
                // role that is not there). Drop the pool and look again,
                // which reads its status and its cluster.
                Ok(Err(managed::PoolError::Backend(ConnectError::Pg(e))))
                    if [
                        &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                        &tokio_postgres::error::SqlState::ADMIN_SHUTDOWN,
                        &tokio_postgres::error::SqlState::INVALID_PASSWORD,
                    ]
                    .into_iter()
                    .any(|code| e.code() == Some(code))
                        && lookups < MAX_POOL_LOOKUPS =>
                {
                    self.drop_stale(id, pool.built_at).await;
                }
                Ok(Err(managed::PoolError::Backend(e))) => {
                    return Err(self.failed(id, e.into_pool_error()));
                }
                // The cache dropped the pool while this call was getting a
                // connection of it (the cache was full, or the tenant left
                // ACTIVE): look the tenant up again, which builds a new pool
                // or refuses a tenant that is no longer active.
                Ok(Err(managed::PoolError::Closed)) if lookups < MAX_POOL_LOOKUPS => {}
                Ok(Err(managed::PoolError::Closed)) => return Err(PoolError::Closed),
                Ok(Err(e)) => return Err(self.failed(id, PoolError::connect(&e, None))),
                // Waited past the deadline: for a connection of the
                // tenant's own full pool, for its cluster's share of the
                // budget, or for the replica's budget.
                Err(_) if pool.pool.status().size >= self.settings.pool_size => {
                    return Err(PoolError::PoolBusy(
                        self.settings.wait,
                        self.settings.pool_size,
                    ));
                }
                Err(_) if pool.budget.limit() > 0 && pool.budget.open() >= pool.budget.limit() => {
                    self.shared.metrics.pool().budget_timeouts.inc();
                    return Err(PoolError::ClusterExhausted(
                        self.settings.wait,
                        pool.cluster.to_string(),
                        pool.budget.limit(),
                    ));
                }
                Err(_) => {
                    self.shared.metrics.pool().budget_timeouts.inc();
                    return Err(PoolError::Exhausted(self.settings.wait, self.shared.budget));
                }
            }
        };
        // The cache applies its evictions in batches (every 64 inserts or
        // 300 ms), so a full cache would hold up to 64 pools more than its
        // capacity until then: evict now. After the connection is out, so
        // that this call's own pool, if the cache turns it away, is closed
        // behind it rather than under it.
        let capacity = i64::try_from(self.settings.cache_capacity).unwrap_or(i64::MAX);
        if self.shared.metrics.pool().pools_open.get() > capacity {
            self.shared.cache.run_pending_tasks().await;
        }
        self.shared.metrics.pool().connections_in_use.inc();
        self.shared
            .metrics
            .pool()
            .checkout_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Checkout {
            obj: Some(obj),
            shared: self.shared.clone(),
            budget: budget.clone(),
            discard: false,
        })
    }

    async fn pool(&self, id: TenantId) -> Result<Arc<TenantPool>, PoolError> {
        if let Some(pool) = self.shared.cache.get(&id).await {
            match self.invalidated.get(&id) {
                Some(at) if at >= pool.built_at => self.remove_if_built_by(id, at).await,
                _ => {
                    self.shared.metrics.pool().cache_hits.inc();
                    return Ok(pool);
                }
            }
        }
        // Concurrent first calls for one tenant build one pool: the others
        // wait for it, and count as hits.
        let built = std::sync::atomic::AtomicBool::new(false);
        let pool = self
            .shared
            .cache
            .try_get_with(id, async {
                built.store(true, Ordering::Relaxed);
                self.build(id).await
            })
            .await
            .map_err(|e| (*e).clone())?;
        if built.load(Ordering::Relaxed) {
            self.shared.metrics.pool().cache_misses.inc();
        } else {
            self.shared.metrics.pool().cache_hits.inc();
        }
        Ok(pool)
    }

    /// Logs a checkout that failed through PostgreSQL or the catalog — its
    /// SQLSTATE and cause chain, once per burst of one kind of failure, the
    /// repeats counted into a summary — and answers the error.
    fn failed(&self, id: TenantId, e: PoolError) -> PoolError {
        let (key, sqlstate) = match &e {
            PoolError::Connect { sqlstate, message } => (
                sqlstate.as_ref().unwrap_or(message).clone(),
                sqlstate.as_deref(),
            ),
            PoolError::Catalog(message) => (format!("catalog: {message}"), None),
            PoolError::Cluster(message) => (format!("cluster: {message}"), None),
            _ => return e,
        };
        let now = Instant::now();
        self.log_failure_summaries(now);
        if self.failures.first(&key, &e.to_string(), now) {
            tracing::warn!(
                tenant_id = %id,
                sqlstate = sqlstate.unwrap_or_default(),
                error = %e,
                "no tenant connection; repeats of this failure are counted and summed up every {}s",
                FAILURE_LOG_WINDOW.as_secs()
            );
        }
        e
    }

    /// Logs how many failures were counted, not logged, per kind whose
    /// window has passed.
    fn log_failure_summaries(&self, now: Instant) {
        for s in self.failures.due(now) {
            tracing::warn!(
                error = %s.sample,
                more = s.more,
                "{} more tenant connection failures like this in the last {}s",
                s.more,
                s.over.as_secs()
            );
        }
    }

    /// Checks that the tenant is active and makes its (empty) pool.
    async fn build(&self, id: TenantId) -> Result<Arc<TenantPool>, PoolError> {
        let built_at = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let (status, placement) = catalog::tenants::status_of(&self.catalog, id)
            .await
            .map_err(|e| {
                let sqlstate = e.as_database_error().and_then(|d| d.code());
                PoolError::Catalog(with_sqlstate(sqlstate.as_deref(), &cause_chain(&e)))
            })?
            .ok_or(PoolError::NotFound)?;
        if status != TenantStatus::Active {
            return Err(PoolError::NotActive(status));
        }
        let cluster = self
            .clusters
            .get(&placement)
            .await
            .map_err(|e| PoolError::Cluster(e.to_string()))?;
        let budget = self.clusters.connection_budget(&placement);
        let manager = TenantManager {
            tenant: id,
            cluster: placement.clone(),
            budget: budget.clone(),
            admin: cluster.admin.clone(),
            role_secret: self.role_secret.clone(),
            config: connect_config(&cluster.options, id, &self.role_secret),
            endpoint: Arc::new(endpoint(&cluster.options, cluster.tls.clone())),
            shared: self.shared.clone(),
            lifetime: self.settings.connection_lifetime,
        };
        let pool = managed::Pool::builder(manager)
            .max_size(self.settings.pool_size)
            .build()
            .map_err(|e| PoolError::connect(&e, None))?;
        self.shared.metrics.pool().pools_open.inc();
        Ok(Arc::new(TenantPool {
            pool,
            last_used: AtomicU64::new(self.shared.now_ms()),
            built_at,
            cluster: placement.clone(),
            budget,
        }))
    }

    /// Drops tenant `id`'s pool now (its status changed): idle connections
    /// close at once, busy ones when handed back; no call starting later
    /// uses a pool built before this.
    pub async fn invalidate(&self, id: TenantId) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.invalidated.insert(id, epoch);
        self.shared.cache.invalidate(&id).await;
    }

    /// Drops tenant `id`'s pool if it is the one built at `built_at` (or
    /// older): its login was refused, so its status or cluster changed. A
    /// newer pool, built meanwhile by another call that looked again, stays:
    /// many calls failing on one stale pool at once must not throw away,
    /// one after the other, the pools each of them builds.
    async fn drop_stale(&self, id: TenantId, built_at: u64) {
        use moka::ops::compute::{CompResult, Op};
        // The latest of the two invalidations, set atomically: a status
        // change's newer epoch is never lowered.
        let at = match self
            .invalidated
            .entry(id)
            .and_compute_with(|entry| match entry {
                Some(entry) if *entry.value() >= built_at => Op::Nop,
                _ => Op::Put(built_at),
            }) {
            CompResult::Unchanged(entry)
            | CompResult::Inserted(entry)
            | CompResult::ReplacedWith(entry) => *entry.value(),
            _ => built_at,
        };
        self.remove_if_built_by(id, at).await;
    }

    /// Removes tenant `id`'s cached pool if it was built at or before
    /// epoch `at`, atomically with respect to the cache's other writers.
    async fn remove_if_built_by(&self, id: TenantId, at: u64) {
        use moka::ops::compute::Op;
        self.shared
            .cache
            .entry(id)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(entry) if entry.value().built_at <= at => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Pools open now.
    pub fn pools_open(&self) -> u64 {
        self.shared.cache.entry_count()
    }

    /// Connections of all pools now, and the budget.
    pub fn connections(&self) -> (usize, usize) {
        (
            self.shared.budget - self.shared.permits.available_permits(),
            self.shared.budget,
        )
    }

    /// Whether tenant `id` has a pool now.
    pub fn has_pool(&self, id: TenantId) -> bool {
        self.shared.cache.contains_key(&id)
    }

    /// Runs moka's housekeeping (idle expiry) now.
    pub async fn maintain(&self) {
        self.shared.cache.run_pending_tasks().await;
    }

    /// Cancels every call running now and waits until the cancel requests
    /// are sent (bounded): the shutdown deadline has come.
    pub async fn cancel_running(&self) {
        let running: Vec<Canceller> = match self.shared.running.lock() {
            Ok(mut r) => r.drain().map(|(_, c)| c).collect(),
            Err(_) => Vec::new(),
        };
        if !running.is_empty() {
            tracing::warn!(
                calls = running.len(),
                "cancelling the tenant calls still running"
            );
        }
        let cancels = futures::future::join_all(running.into_iter().map(Canceller::cancel));
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, cancels).await;
        self.shared.cancels.close();
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.shared.cancels.wait()).await;
    }

    /// Closes every pool (shutdown): cancels what still runs, and waits
    /// (bounded) until PostgreSQL has ended every backend of the pools.
    pub async fn close(&self) {
        self.cancel_running().await;
        self.shared.cache.invalidate_all();
        self.shared.cache.run_pending_tasks().await;
        let all = u32::try_from(self.shared.budget).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.shared.permits.acquire_many(all)).await;
    }
}

/// Where a cluster's tenant connections go: its Unix socket, or its host
/// and port with the cluster's TLS.
fn endpoint(db: &PgConnectOptions, tls: Option<Arc<DbTls>>) -> Endpoint {
    match db.get_socket() {
        Some(dir) => Endpoint::Unix {
            dir: dir.clone(),
            port: db.get_port(),
        },
        None => Endpoint::Tcp {
            host: db.get_host().to_owned(),
            port: db.get_port(),
            tls,
        },
    }
}

/// Logs in as the tenant's role on its cluster's database, with the
/// tenant's schema as the whole search_path.
fn connect_config(db: &PgConnectOptions, id: TenantId, secret: &[u8]) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(id.role_name().as_str())
        .password(role_password(secret, id))
        .dbname(db.get_database().unwrap_or(db.get_username()))
        .application_name("tenantd")
        // The socket speaks TLS itself, under the driver (data::socket).
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        // The statement screen reads strings with standard_conforming_strings
        // = on, PostgreSQL's default; the session is pinned to it (a call
        // cannot SET it, and RESET ALL returns to these values).
        .options(format!(
            "-c search_path={} -c standard_conforming_strings=on \
             -c client_connection_check_interval={CLIENT_CHECK_INTERVAL_MS}",
            id.schema_name().as_str()
        ));
    config
}

#[cfg(test)]
mod tests {
    use super::budget::oldest_first;
    use super::*;

    /// Many pools (Rust's sort checks its comparisons from 21 elements on),
    /// their times moved on by another thread during the sort, as checkouts
    /// do; and, deterministically, a time that is different at every read.
    #[test]
    fn ordering_by_last_use_reads_each_time_once() {
        const POOLS: usize = 100;
        let times: Arc<Vec<AtomicU64>> = Arc::new((0..POOLS as u64).map(AtomicU64::new).collect());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mover = {
            let (times, stop) = (times.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut now = POOLS as u64;
                while !stop.load(Ordering::Relaxed) {
                    now += 1;
                    // A pseudo-random pool is used "now".
                    let i = (now.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % POOLS;
                    times[i].store(now, Ordering::Relaxed);
                }
            })
        };
        for _ in 0..2000 {
            let reads = AtomicUsize::new(0);
            let ordered = oldest_first(0..POOLS, |&i| {
                reads.fetch_add(1, Ordering::Relaxed);
                times[i].load(Ordering::Relaxed)
            });
            assert_eq!(
                reads.load(Ordering::Relaxed),
                POOLS,
                "each time is read once"
            );
            let mut seen = ordered.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..POOLS).collect::<Vec<_>>(), "every pool, once");
        }
        stop.store(true, Ordering::Relaxed);
        mover.join().unwrap();

        // Every read answers an earlier time than the one before: ordered by
        // what was read, the pools come out last first.
        let clock = AtomicU64::new(u64::MAX);
        let ordered = oldest_first(0..POOLS, |_| clock.fetch_sub(1, Ordering::Relaxed));
        assert_eq!(ordered, (0..POOLS).rev().collect::<Vec<_>>());
    }
}
