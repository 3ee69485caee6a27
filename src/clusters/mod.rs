//! The PostgreSQL clusters tenants are placed on, and tenantd's
//! connections to them.
//!
//! `default` is the catalog's own database. Every other cluster is an
//! independent server registered in `tenantd.clusters`: a tenant placed
//! there has its role and schema there, its pool connects there, and its
//! lifecycle and upgrades run there. Each replica connects to a cluster the
//! first time it needs it (reading the password from the file or
//! environment variable the registry names) and keeps the connection pool;
//! a cluster removed, or registered again under its name, is noticed within
//! [`REFRESH_PERIOD`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::catalog::clusters::{self as registry, ClusterRecord};
use crate::catalog::{self, DbFailure, Engine, PoolSettings, audit::Audited};
use crate::domain::{ClusterLimits, ClusterName, ClusterState, NewCluster, PasswordSource};
use crate::pgtls::{DbTls, DbTlsSettings};

pub mod mover;
pub(crate) mod sweeper;

pub use mover::{MoveSettings, Mover};
pub use sweeper::sweep_intents;

/// How often a replica looks for clusters removed or registered again, and
/// for creates that died half-way.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(10);

/// One cluster tenantd can reach.
pub struct Cluster {
    pub name: ClusterName,
    /// tenantd's own role there: provisioning, lifecycle, upgrades.
    pub admin: PgPool,
    /// How to connect (host or socket, port, database; the password and
    /// TLS settings applied): tenant pools log in with these, as the
    /// tenant's role.
    pub options: PgConnectOptions,
    /// TLS for the connections tenantd opens itself (tenant pools).
    pub tls: Option<Arc<DbTls>>,
    /// The password in `options`, for what must pass it on (the
    /// subscription of a move from this cluster).
    pub password: Option<String>,
    pub engine: Engine,
    /// When the registry entry was made; `None` for `default`.
    generation: Option<DateTime<Utc>>,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0:?} is not registered")]
    NotFound(String),
    #[error("a cluster named {0:?} is already registered")]
    NameTaken(String),
    #[error("cannot connect to cluster {name:?}: {message}")]
    Unreachable { name: String, message: String },
    #[error("cluster {name:?} cannot hold tenants: {}", missing.join("; "))]
    Unfit { name: String, missing: Vec<String> },
    #[error(
        "cluster {name:?} is the very database of cluster {other:?} (same server, same database)"
    )]
    SameDatabase { name: String, other: String },
    #[error("cluster {name:?} has {moves} move(s) from or to it under way: cancel them or wait")]
    Moving { name: String, moves: i64 },
    #[error("cluster {name:?} still holds {tenants} tenant(s): move or purge them first")]
    NotEmpty { name: String, tenants: i64 },
    #[error("the default cluster (the catalog's own database) cannot be removed")]
    RemoveDefault,
    #[error("{field}: {message}")]
    InvalidSetting {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Db(#[from] DbFailure),
}

impl ClusterError {
    fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> ClusterError {
        DbFailure::of(context)
    }
}

/// What registering a cluster found there that tenantd would like but can
/// do without (each with how to fix it), and the server's facts.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    pub server_version: String,
    pub superuser: bool,
    pub wal_level: String,
    pub max_connections: i32,
    pub engine: Engine,
    pub warnings: Vec<String>,
}

/// A cluster's share of this replica's tenant connections: its cap (0:
/// none of its own) and the connections open to it now.
#[derive(Debug, Default)]
pub struct ConnectionBudget {
    limit: AtomicUsize,
    open: AtomicUsize,
    /// Callers waiting for a place: while there are any, a connection to
    /// the cluster handed back is closed instead of kept idle.
    waiters: AtomicUsize,
}

impl ConnectionBudget {
    /// The cap; 0 when the cluster has none of its own.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Connections open to the cluster now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether anyone waits for a place now.
    pub fn wanted(&self) -> bool {
        self.waiters.load(Ordering::SeqCst) > 0
    }

    /// Counts a waiter until the guard answered is dropped.
    pub fn waiting(self: &Arc<Self>) -> impl Drop + use<> {
        struct Waiting(Arc<ConnectionBudget>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }

    /// A place for one more connection, if the cap leaves one: held by the
    /// connection until it closes.
    pub fn try_take(self: &Arc<Self>) -> Option<BudgetSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                let limit = self.limit();
                (limit == 0 || open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| BudgetSlot(self.clone()))
    }
}

/// One connection's place in its cluster's budget, given back on drop.
#[derive(Debug)]
pub struct BudgetSlot(Arc<ConnectionBudget>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The clusters this replica has connected to. Cheap to clone.
#[derive(Clone)]
pub struct Clusters {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: PgPool,
    default: Arc<Cluster>,
    pool_settings: PoolSettings,
    /// Where password files may be; see [`PasswordSource::File`].
    secrets_dir: Option<PathBuf>,
    live: RwLock<HashMap<ClusterName, Arc<Cluster>>>,
    /// Clusters whose database held `max_relations` relations or more at
    /// the last count ([`Clusters::reread_limits`]).
    over_relations: RwLock<HashSet<ClusterName>>,
    /// Each cluster's cap on this replica's tenant connections to it, and
    /// how many are open; the caps are read again every [`REFRESH_PERIOD`]
    /// and at once after a change through this replica.
    budgets: RwLock<HashMap<ClusterName, Arc<ConnectionBudget>>>,
    /// Wakes this replica's move runner when a move is queued here.
    move_wake: Arc<tokio::sync::Notify>,
    /// One connect at a time, so concurrent first calls make one pool.
    connecting: tokio::sync::Mutex<()>,
}

impl Clusters {
    /// `default` is the catalog's database, reached through `catalog`.
    pub fn new(
        catalog: PgPool,
        options: PgConnectOptions,
        tls: Option<Arc<DbTls>>,
        engine: Engine,
        pool_settings: PoolSettings,
        secrets_dir: Option<PathBuf>,
        password: Option<String>,
    ) -> Self {
        let default = Arc::new(Cluster {
            name: ClusterName::default_cluster(),
            admin: catalog.clone(),
            options,
            tls,
            password,
            engine,
            generation: None,
        });
        Self {
            inner: Arc::new(Inner {
                catalog,
                default,
                pool_settings,
                secrets_dir,
                move_wake: Arc::new(tokio::sync::Notify::new()),
                live: RwLock::new(HashMap::new()),
                over_relations: RwLock::new(HashSet::new()),
                budgets: RwLock::new(HashMap::new()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn catalog(&self) -> &PgPool {
        &self.inner.catalog
    }

    /// Notified when a move is queued through this replica.
    pub fn move_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.move_wake.clone()
    }

    pub fn default_cluster(&self) -> &Arc<Cluster> {
        &self.inner.default
    }

    /// The cluster named `name`, connecting to it on first use.
    pub async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>, ClusterError> {
        if name.is_default() {
            return Ok(self.inner.default.clone());
        }
        if let Some(c) = self.cached(name) {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.cached(name) {
            return Ok(c);
        }
        let mut conn = self.catalog_conn().await?;
        let record = registry::get(&mut conn, name)
            .await
            .map_err(ClusterError::db("read the cluster registry"))?
            .ok_or_else(|| ClusterError::NotFound(name.to_string()))?;
        drop(conn);
        let cluster = Arc::new(connect(&record, &self.inner).await?);
        if let Ok(mut live) = self.inner.live.write() {
            live.insert(name.clone(), cluster.clone());
        }
        Ok(cluster)
    }

    fn cached(&self, name: &ClusterName) -> Option<Arc<Cluster>> {
        self.inner.live.read().ok()?.get(name).cloned()
    }

    async fn catalog_conn(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, ClusterError> {
        self.inner
            .catalog
            .acquire()
            .await
            .map_err(ClusterError::db("acquire catalog connection"))
    }

    /// Forgets clusters removed from the registry, or registered again
    /// under their name, and closes their pools.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let now: HashMap<String, DateTime<Utc>> = registry::generations(&self.inner.catalog)
            .await?
            .into_iter()
            .collect();
        let stale: Vec<Arc<Cluster>> = match self.inner.live.write() {
            Ok(mut live) => {
                let gone: Vec<ClusterName> = live
                    .iter()
                    .filter(|(name, c)| now.get(name.as_str()) != c.generation.as_ref())
                    .map(|(name, _)| name.clone())
                    .collect();
                gone.iter().filter_map(|n| live.remove(n)).collect()
            }
            Err(_) => Vec::new(),
        };
        for c in stale {
            tracing::info!(cluster = %c.name, "cluster left the registry; closing its connections");
            c.admin.close().await;
        }
        Ok(())
    }

    /// The clusters at or past their relation cap at the last count.
    pub fn over_relation_cap(&self) -> HashSet<ClusterName> {
        self.inner
            .over_relations
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Reads the registry's caps (one query) and applies them on this
    /// replica: [`Self::count_relations`] and the connection budgets. Run
    /// at start, every [`REFRESH_PERIOD`], and after a change of the
    /// registry through this replica (where the new caps hold at once; on
    /// the others within the period).
    pub async fn reread_limits(&self) {
        let caps = match registry::caps(self.catalog()).await {
            Ok(caps) => caps,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the clusters' caps");
                return;
            }
        };
        self.apply_budgets(&caps);
        if let Err(e) = self.count_relations(&caps).await {
            tracing::warn!(error = %e, "cannot count the relations of capped clusters");
        }
    }

    /// Counts the relations (pg_class rows) of every cluster with a
    /// relation cap: placement skips those at or past it until the next
    /// count. One query per capped cluster; none without caps.
    async fn count_relations(&self, caps: &[registry::Caps]) -> Result<(), ClusterError> {
        let mut over = HashSet::new();
        for c in caps {
            let Some(cap) = c.max_relations else {
                continue;
            };
            let cluster = self.get(&c.name).await?;
            let relations: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_catalog.pg_class")
                .fetch_one(&cluster.admin)
                .await
                .map_err(ClusterError::db("count a cluster's relations"))?;
            if relations >= cap {
                over.insert(c.name.clone());
            }
        }
        if let Ok(mut s) = self.inner.over_relations.write() {
            *s = over;
        }
        Ok(())
    }

    /// Cluster `name`'s connection budget on this replica, with the cap
    /// last read from the registry (none for a cluster that had none).
    pub fn connection_budget(&self, name: &ClusterName) -> Arc<ConnectionBudget> {
        if let Some(b) = self
            .inner
            .budgets
            .read()
            .ok()
            .and_then(|b| b.get(name).cloned())
        {
            return b;
        }
        match self.inner.budgets.write() {
            Ok(mut budgets) => budgets.entry(name.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Sets every cluster's connection cap to the registry's.
    fn apply_budgets(&self, caps: &[registry::Caps]) {
        let Ok(mut budgets) = self.inner.budgets.write() else {
            return;
        };
        for c in caps.iter().filter(|c| c.connection_budget.is_some()) {
            budgets.entry(c.name.clone()).or_default();
        }
        for (name, budget) in budgets.iter() {
            let cap = caps
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.connection_budget)
                .map_or(0, |n| usize::try_from(n).unwrap_or(0));
            budget.limit.store(cap, Ordering::Relaxed);
        }
    }

    /// Every [`REFRESH_PERIOD`]: [`Self::refresh`], [`Self::reread_limits`],
    /// then [`sweep_intents`].
    pub async fn maintain(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(REFRESH_PERIOD) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot read the cluster registry");
            }
            self.reread_limits().await;
            if let Err(e) = sweep_intents(self.clone(), sweeper::MIN_INTENT_AGE).await {
                tracing::warn!(error = %e, "cannot sweep half-made tenants");
            }
        }
        let live: Vec<Arc<Cluster>> = match self.inner.live.write() {
            Ok(mut live) => live.drain().map(|(_, c)| c).collect(),
            Err(_) => Vec::new(),
        };
        for c in live {
            c.admin.close().await;
        }
    }

    /// Registers a cluster after checking, on it, what tenantd needs:
    /// refused (naming each missing piece) when tenants could not be made
    /// there; what would only limit it comes back as warnings. Revokes
    /// what tenant roles must not call there, when tenantd may.
    pub async fn add(
        &self,
        new: NewCluster,
        actor: &str,
    ) -> Result<(ClusterRecord, Inspection), ClusterError> {
        let probe = ClusterRecord {
            name: new.name.clone(),
            url: Some(new.url.clone()),
            password: new.password.clone(),
            state: ClusterState::Open,
            limits: new.limits.clone(),
            tenants: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let cluster = connect(&probe, &self.inner).await?;
        let inspection = inspect(&cluster).await;
        let seen = self.registered_as(&cluster).await;
        cluster.admin.close().await;
        let mut inspection = inspection?;
        match seen {
            Ok((Some(other), _)) => {
                return Err(ClusterError::SameDatabase {
                    name: new.name.to_string(),
                    other: other.to_string(),
                });
            }
            Ok((None, unreachable)) => {
                for other in unreachable {
                    inspection.warnings.push(format!(
                        "cluster {other} could not be reached to check that it is not this \
                         same database"
                    ));
                }
            }
            Err(e) => return Err(ClusterError::db("read the new cluster's identity")(e)),
        }
        let mut tx = Audited::begin(&self.inner.catalog)
            .await
            .map_err(ClusterError::db("begin add cluster"))?;
        let record = registry::insert(&mut tx, &new)
            .await
            .map_err(ClusterError::db("register cluster"))?
            .ok_or_else(|| ClusterError::NameTaken(new.name.to_string()))?;
        let details = json!({
            "url": redact(&new.url),
            "weight": new.limits.weight,
            "max_tenants": new.limits.max_tenants,
            "max_relations": new.limits.max_relations,
            "connection_budget": new.limits.connection_budget,
            "server_version": inspection.server_version,
            "warnings": inspection.warnings,
        });
        tx.commit(actor, "cluster.add", &target(&new.name), &details)
            .await
            .map_err(ClusterError::db("commit add cluster"))?;
        self.reread_limits().await;
        Ok((record, inspection))
    }

    /// The registered cluster that is `cluster`'s very database (same
    /// server, same database), if any; and the clusters that could not be
    /// reached to tell.
    async fn registered_as(
        &self,
        cluster: &Cluster,
    ) -> Result<(Option<ClusterName>, Vec<ClusterName>), sqlx::Error> {
        let mine = identity(&cluster.admin).await?;
        let mut conn = self.inner.catalog.acquire().await?;
        let registered = registry::list(&mut conn).await?;
        drop(conn);
        let mut unreachable = Vec::new();
        for r in registered {
            let theirs = match self.get(&r.name).await {
                Ok(c) => identity(&c.admin).await.ok(),
                Err(_) => None,
            };
            match theirs {
                Some(theirs) if theirs == mine => return Ok((Some(r.name), unreachable)),
                Some(_) => {}
                None => unreachable.push(r.name),
            }
        }
        Ok((None, unreachable))
    }

    pub async fn record(&self, name: &ClusterName) -> Result<ClusterRecord, ClusterError> {
        let mut conn = self.catalog_conn().await?;
        registry::get(&mut conn, name)
            .await
            .map_err(ClusterError::db("read cluster"))?
            .ok_or_else(|| ClusterError::NotFound(name.to_string()))
    }

    pub async fn list(&self) -> Result<Vec<ClusterRecord>, ClusterError> {
        let mut conn = self.catalog_conn().await?;
        registry::list(&mut conn)
            .await
            .map_err(ClusterError::db("list clusters"))
    }

    /// Sets a cluster's state and limits (fields left `None` keep theirs).
    pub async fn update(
        &self,
        name: &ClusterName,
        state: Option<ClusterState>,
        limits: LimitsPatch,
        actor: &str,
    ) -> Result<ClusterRecord, ClusterError> {
        let mut tx = Audited::begin(&self.inner.catalog)
            .await
            .map_err(ClusterError::db("begin update cluster"))?;
        let (current_state, current) = registry::lock(&mut tx, name, true)
            .await
            .map_err(ClusterError::db("lock cluster"))?
            .ok_or_else(|| ClusterError::NotFound(name.to_string()))?;
        let state = state.unwrap_or(current_state);
        let limits = limits.apply(current);
        let record = registry::update(&mut tx, name, state, &limits)
            .await
            .map_err(ClusterError::db("update cluster"))?
            .ok_or_else(|| ClusterError::NotFound(name.to_string()))?;
        let details = json!({
            "from": current_state.as_str(),
            "state": state.as_str(),
            "weight": limits.weight,
            "max_tenants": limits.max_tenants,
            "max_relations": limits.max_relations,
            "connection_budget": limits.connection_budget,
        });
        tx.commit(actor, "cluster.update", &target(name), &details)
            .await
            .map_err(ClusterError::db("commit update cluster"))?;
        self.reread_limits().await;
        Ok(record)
    }

    /// Unregisters a cluster that holds no tenant (purged ones aside) and
    /// no half-made one.
    pub async fn remove(&self, name: &ClusterName, actor: &str) -> Result<(), ClusterError> {
        if name.is_default() {
            return Err(ClusterError::RemoveDefault);
        }
        let mut tx = Audited::begin(&self.inner.catalog)
            .await
            .map_err(ClusterError::db("begin remove cluster"))?;
        // Waits for creates placing a tenant there to end.
        registry::lock(&mut tx, name, true)
            .await
            .map_err(ClusterError::db("lock cluster"))?
            .ok_or_else(|| ClusterError::NotFound(name.to_string()))?;
        let tenants = registry::tenants_on(&mut tx, name)
            .await
            .map_err(ClusterError::db("count the cluster's tenants"))?;
        let half_made = registry::intents_on(&mut tx, name)
            .await
            .map_err(ClusterError::db("count the cluster's half-made tenants"))?;
        if tenants + half_made > 0 {
            return Err(ClusterError::NotEmpty {
                name: name.to_string(),
                tenants: tenants + half_made,
            });
        }
        let moving = crate::catalog::moves::active_on(&mut *tx, name)
            .await
            .map_err(ClusterError::db("count the moves from or to the cluster"))?;
        if moving > 0 {
            return Err(ClusterError::Moving {
                name: name.to_string(),
                moves: moving,
            });
        }
        registry::delete(&mut tx, name)
            .await
            .map_err(ClusterError::db("unregister cluster"))?;
        tx.commit(actor, "cluster.remove", &target(name), &json!({}))
            .await
            .map_err(ClusterError::db("commit remove cluster"))?;
        if let Ok(mut live) = self.inner.live.write() {
            live.remove(name);
        }
        Ok(())
    }
}

/// Limits to change; `None` keeps the current value. For the caps,
/// `Some(None)` lifts the cap.
#[derive(Debug, Clone, Default)]
pub struct LimitsPatch {
    pub weight: Option<i32>,
    pub max_tenants: Option<Option<i64>>,
    pub max_relations: Option<Option<i64>>,
    pub connection_budget: Option<Option<i32>>,
}

impl LimitsPatch {
    fn apply(self, current: ClusterLimits) -> ClusterLimits {
        ClusterLimits {
            weight: self.weight.unwrap_or(current.weight),
            max_tenants: self.max_tenants.unwrap_or(current.max_tenants),
            max_relations: self.max_relations.unwrap_or(current.max_relations),
            connection_budget: self.connection_budget.unwrap_or(current.connection_budget),
        }
    }
}

fn target(name: &ClusterName) -> String {
    format!("cluster:{name}")
}

/// The URL without its password, should it carry one.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Connects to a registered cluster: its URL's TLS settings, the password
/// from where the registry says, tenantd's usual pool settings.
async fn connect(record: &ClusterRecord, inner: &Inner) -> Result<Cluster, ClusterError> {
    let name = record.name.to_string();
    let invalid = |message: String| ClusterError::Unreachable {
        name: name.clone(),
        message,
    };
    let url = record.url.as_deref().unwrap_or_default();
    let tls_settings = DbTlsSettings::from_url(url).map_err(|e| invalid(format!("{e:#}")))?;
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|_| invalid("the URL is not a PostgreSQL URL".into()))
        .and_then(|o| {
            tls_settings
                .apply_to_sqlx(o)
                .map_err(|e| invalid(format!("{e:#}")))
        })?;
    let mut password_used = None;
    match &record.password {
        // No password: none is sent — not PGPASSWORD's, not ~/.pgpass's
        // (which sqlx would read), which may be tenantd's own.
        PasswordSource::None => options = options.password(""),
        PasswordSource::File(file) => {
            let path = secret_path(inner.secrets_dir.as_deref(), file)?;
            let bytes = crate::config::read_secret_file(&path, "cluster password")
                .map_err(|e| invalid(format!("{e:#}")))?;
            let password = String::from_utf8(bytes)
                .map_err(|_| invalid(format!("{file} (cluster password) is not UTF-8")))?;
            options = options.password(&password);
            password_used = Some(password);
        }
        PasswordSource::Env(var) => {
            check_env_name(var)?;
            let password = std::env::var(var).map_err(|_| {
                invalid(format!(
                    "the environment variable {var} (cluster password) is not set"
                ))
            })?;
            options = options.password(&password);
            password_used = Some(password);
        }
    }
    let tls = tls_settings
        .connector()
        .map_err(|e| invalid(format!("{e:#}")))?;
    let admin = catalog::connect(
        options.clone(),
        &inner.pool_settings,
        "connect to a cluster",
    )
    .await
    .map_err(|e| invalid(format!("{e:#}")))?;
    let engine = match Engine::detect(&admin).await {
        Ok(engine) => engine,
        Err(e) => {
            admin.close().await;
            return Err(invalid(e.to_string()));
        }
    };
    Ok(Cluster {
        name: record.name.clone(),
        admin,
        options,
        tls,
        password: password_used,
        engine,
        generation: Some(record.created_at),
    })
}

/// A server's system identifier and the database a pool is connected to.
pub(crate) async fn identity(db: &PgPool) -> Result<(String, String), sqlx::Error> {
    sqlx::query_as(
        "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
    )
    .fetch_one(db)
    .await
}

/// The prefix of the environment variables a cluster's password may come
/// from: a caller who may register clusters must not make tenantd send
/// any other variable (its own database password, say) to a server of the
/// caller's choosing.
pub const PASSWORD_ENV_PREFIX: &str = "TENANTD_CLUSTER_";

fn check_env_name(var: &str) -> Result<(), ClusterError> {
    let ok = var.len() > PASSWORD_ENV_PREFIX.len()
        && var.len() <= 100
        && var.starts_with(PASSWORD_ENV_PREFIX)
        && var
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidSetting {
            field: "password_env",
            message: format!(
                "must be an environment variable named {PASSWORD_ENV_PREFIX}… (upper-case \
                 letters, digits, underscores)"
            ),
        })
    }
}

/// The password file `file` names: a plain file name inside the secrets
/// directory, so that a caller cannot make tenantd read (and send to a
/// server of the caller's choosing) any other file.
fn secret_path(dir: Option<&Path>, file: &str) -> Result<PathBuf, ClusterError> {
    let invalid = |message: String| ClusterError::InvalidSetting {
        field: "password_file",
        message,
    };
    let Some(dir) = dir else {
        return Err(invalid(
            "tenantd was started without --cluster-secrets-dir, so no password file may be \
             named; use password_env"
                .into(),
        ));
    };
    let plain = !file.is_empty()
        && file.len() <= 255
        && file != "."
        && file != ".."
        && !file.contains(['/', '\\', '\0']);
    if !plain {
        return Err(invalid(
            "must be a file name (no directories) inside --cluster-secrets-dir".into(),
        ));
    }
    // A symbolic link is followed (a mounted Kubernetes secret is one, to
    // `..data/<name>`), but only to a file inside the directory; the path
    // read is the one checked. A file that is not there (yet) is reported
    // when it is read.
    let path = dir.join(file);
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(real), Ok(base)) if real.starts_with(&base) => Ok(real),
        (Ok(_), Ok(_)) => Err(invalid(format!(
            "{file} leads outside --cluster-secrets-dir"
        ))),
        _ => Ok(path),
    }
}

/// What tenantd needs on a cluster: PostgreSQL 15 or later, a role that
/// may create roles and schemas, and not another tenantd's catalog. Makes
/// tenant roles unable to reach past their schema there, as the catalog
/// migrations do on `default` (fully as a superuser; otherwise the rest is
/// a warning).
async fn inspect(cluster: &Cluster) -> Result<Inspection, ClusterError> {
    let name = cluster.name.to_string();
    let db = |e: sqlx::Error| ClusterError::Unreachable {
        name: name.clone(),
        message: e.to_string(),
    };
    let facts: (i32, String, bool, bool, bool, String, i32, bool) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
                r.rolsuper, r.rolcreaterole, \
                has_database_privilege(current_database(), 'CREATE'), \
                current_setting('wal_level'), current_setting('max_connections')::int, \
                to_regclass('tenantd.clusters') IS NOT NULL \
           FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&cluster.admin)
    .await
    .map_err(db)?;
    let (version_num, version, superuser, createrole, create, wal_level, max_connections, catalog) =
        facts;
    let mut missing = Vec::new();
    if version_num < 150000 {
        missing.push(format!("PostgreSQL {version}: tenantd needs 15 or later"));
    }
    if !superuser && !createrole {
        missing.push("tenantd's role there has no CREATEROLE (ALTER ROLE … CREATEROLE)".into());
    }
    if !superuser && !create {
        missing.push(
            "tenantd's role there may not create schemas in the database \
             (GRANT CREATE ON DATABASE … TO …)"
                .into(),
        );
    }
    if catalog {
        missing.push(
            "the database holds a tenantd catalog (the catalog's own database is the cluster \
             `default`; another deployment's must not be shared)"
                .into(),
        );
    }
    if !missing.is_empty() {
        return Err(ClusterError::Unfit { name, missing });
    }
    catalog::privileges::harden(&cluster.admin)
        .await
        .map_err(db)?;
    let mut warnings = Vec::new();
    if wal_level != "logical" {
        warnings.push(format!(
            "wal_level is {wal_level}: moving tenants to or from this cluster needs \
             wal_level = logical (a restart)"
        ));
    }
    let open = catalog::privileges::open_to_public(&cluster.admin)
        .await
        .map_err(db)?;
    if !open.is_empty() {
        warnings.push(format!(
            "open to every role there (tenantd is not a superuser; docs/security.md has the \
             SQL a superuser runs): {}",
            open.join(", ")
        ));
    }
    Ok(Inspection {
        server_version: version,
        superuser,
        wal_level,
        max_connections,
        engine: cluster.engine,
        warnings,
    })
}
