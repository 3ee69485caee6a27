//! Prometheus metrics: one [`Metrics`] per server, owning its registry and
//! every metric in it (no global recorder, so several servers in one process
//! never mix their numbers), encoded in the OpenMetrics text format.
//!
//! Invariant: every label value is a `&'static str` from a fixed set — a gRPC
//! method of the served API or "unknown", a status code name, a state name of
//! the catalog's CHECK constraints, a reason listed here. A tenant, user or
//! run id can therefore never become a label value.

pub mod http;

/// What the metrics listener asks before each scrape: bring the gauges read
/// at scrape time up to date, then hand over the metrics to encode. The
/// implementation lives where the numbers come from (the catalog), so this
/// module stays a leaf.
pub trait Refresh: Send + Sync + 'static {
    fn refresh(&self) -> impl std::future::Future<Output = ()> + Send;
    fn metrics(&self) -> &Metrics;
}

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// gRPC call durations: 100 µs to 30 s (longer streams land in +Inf).
const GRPC_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Tenant connection checkouts: 10 µs (a cached idle connection) to 10 s.
const CHECKOUT_BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric of one server. Cloning is cheap (one `Arc`); clones share
/// the numbers.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    grpc: GrpcMetrics,
    tenants: TenantMetrics,
    upgrades: UpgradeMetrics,
    catalog_pool: CatalogPoolMetrics,
    pool: PoolMetrics,
    collect_errors: Counter,
    watch: WatchMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (at zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tenantd");
        let grpc = GrpcMetrics::register(&mut registry);
        let tenants = TenantMetrics::register(&mut registry);
        let upgrades = UpgradeMetrics::register(&mut registry);
        let catalog_pool = CatalogPoolMetrics::register(&mut registry);
        let pool = PoolMetrics::register(&mut registry);
        let watch = WatchMetrics::register(&mut registry);
        let collect_errors = Counter::default();
        registry.register(
            "metrics_collect_errors",
            "Scrapes whose catalog query failed or timed out; the upgrade gauges then keep their last values",
            collect_errors.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                grpc,
                tenants,
                upgrades,
                catalog_pool,
                pool,
                collect_errors,
                watch,
            }),
        }
    }

    /// The tenant data-plane pool cache's metrics, for it to update.
    pub fn pool(&self) -> &PoolMetrics {
        &self.inner.pool
    }

    /// Event watchers and the usage sampler.
    pub fn watch(&self) -> &WatchMetrics {
        &self.inner.watch
    }

    /// Tenant creation outcomes.
    pub fn tenants(&self) -> &TenantMetrics {
        &self.inner.tenants
    }

    pub(crate) fn grpc(&self) -> &GrpcMetrics {
        &self.inner.grpc
    }

    pub(crate) fn upgrades(&self) -> &UpgradeMetrics {
        &self.inner.upgrades
    }

    pub(crate) fn catalog_pool(&self) -> &CatalogPoolMetrics {
        &self.inner.catalog_pool
    }

    pub(crate) fn collect_errors(&self) -> &Counter {
        &self.inner.collect_errors
    }

    /// The current values in the OpenMetrics text format ([`CONTENT_TYPE`]),
    /// ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// A label value that is one of a fixed set of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name(pub &'static str);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub method: Name,
    pub code: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub method: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: Name,
}

/// `tenantd_grpc_*`: calls by method and status code, durations by method.
pub(crate) struct GrpcMetrics {
    pub requests: Family<CallLabels, Counter>,
    pub duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl GrpcMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by method (\"unknown\" for paths the server does not serve) and status code",
            requests.clone(),
        );
        let duration: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(GRPC_BUCKETS));
        registry.register_with_unit(
            "grpc_request_duration",
            "gRPC call durations by method, from the request to the status (a stream's whole life)",
            Unit::Seconds,
            duration.clone(),
        );
        Self { requests, duration }
    }
}

/// Why a CreateTenant call failed, as a label value.
pub mod create_failure {
    /// The request did not validate (INVALID_ARGUMENT).
    pub const INVALID: &str = "invalid";
    pub const SLUG_TAKEN: &str = "slug_taken";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    pub const OWNER_NOT_FOUND: &str = "owner_not_found";
    /// No cluster could take the tenant (named one unknown, closed or
    /// full; none open with room).
    pub const NO_CLUSTER: &str = "no_cluster";
    /// The database failed or was unreachable (the tenant's cluster too).
    pub const DATABASE: &str = "database";
    pub const OTHER: &str = "other";
}

/// `tenantd_tenant*`: what CreateTenant did.
pub struct TenantMetrics {
    /// `tenantd_tenants_created_total`: tenants actually created.
    pub created: Counter,
    /// `tenantd_tenant_create_replays_total`: idempotent replays answered
    /// with the tenant an earlier call created.
    pub replayed: Counter,
    /// `tenantd_tenant_create_failures_total{reason}`, reasons from
    /// [`create_failure`].
    pub create_failures: Family<ReasonLabels, Counter>,
}

impl TenantMetrics {
    fn register(registry: &mut Registry) -> Self {
        let created = Counter::default();
        registry.register(
            "tenants_created",
            "Tenants created (schema, role and catalog row committed)",
            created.clone(),
        );
        let replayed = Counter::default();
        registry.register(
            "tenant_create_replays",
            "CreateTenant calls answered with the tenant an earlier call with the same idempotency key created",
            replayed.clone(),
        );
        let create_failures = Family::default();
        registry.register(
            "tenant_create_failures",
            "CreateTenant calls that created nothing, by reason",
            create_failures.clone(),
        );
        Self {
            created,
            replayed,
            create_failures,
        }
    }

    /// Counts a failed CreateTenant; `reason` is one of [`create_failure`].
    pub fn create_failed(&self, reason: &'static str) {
        self.create_failures
            .get_or_create(&ReasonLabels {
                reason: Name(reason),
            })
            .inc();
    }
}

/// Statuses of `tenantd.upgrade_runs` (its CHECK constraint).
pub const RUN_STATES: [&str; 6] = [
    "running",
    "paused",
    "halted",
    "cancelled",
    "succeeded",
    "failed",
];

/// Statuses of `tenantd.upgrade_items` (its CHECK constraint).
pub const ITEM_STATES: [&str; 5] = ["pending", "running", "done", "failed", "skipped"];

/// `tenantd_upgrade_*`: catalog state, read at scrape time.
pub(crate) struct UpgradeMetrics {
    pub runs: Family<StateLabels, Gauge>,
    pub items: Family<StateLabels, Gauge>,
}

impl UpgradeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let runs = Family::default();
        registry.register(
            "upgrade_runs",
            "Fleet upgrade runs in the catalog by status, as of the last successful scrape",
            runs.clone(),
        );
        let items = Family::default();
        registry.register(
            "upgrade_items",
            "Tenants of unfinished (running, paused, halted) upgrade runs by item status, as of the last successful scrape",
            items.clone(),
        );
        Self { runs, items }
    }
}

/// `tenantd_catalog_pool_*`: the catalog pool, read at scrape time.
pub(crate) struct CatalogPoolMetrics {
    pub connections: Family<StateLabels, Gauge>,
    pub max: Gauge,
}

impl CatalogPoolMetrics {
    fn register(registry: &mut Registry) -> Self {
        let connections = Family::default();
        registry.register(
            "catalog_pool_connections",
            "Open catalog pool connections, idle or in use",
            connections.clone(),
        );
        let max = Gauge::default();
        registry.register(
            "catalog_pool_max_connections",
            "Size limit of the catalog pool",
            max.clone(),
        );
        Self { connections, max }
    }
}

/// Why the tenant pool cache closed a tenant's pool or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// Unused for longer than the idle time.
    Idle,
    /// The cache was full and this pool was the least recently used.
    Capacity,
    /// The tenant was suspended, archived or purged.
    TenantState,
    /// Closed to give connections back to the process-wide budget.
    Budget,
    /// The connection or pool failed.
    Broken,
}

impl EvictionReason {
    pub const ALL: [Self; 5] = [
        Self::Idle,
        Self::Capacity,
        Self::TenantState,
        Self::Budget,
        Self::Broken,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Capacity => "capacity",
            Self::TenantState => "tenant_state",
            Self::Budget => "budget",
            Self::Broken => "broken",
        }
    }
}

impl EncodeLabelValue for EvictionReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EvictionLabels {
    pub reason: EvictionReason,
}

/// `tenantd_tenant_*`: the tenant data-plane pool cache and its connection
/// budget. The cache updates these; every series exists from the start.
pub struct PoolMetrics {
    /// `tenantd_tenant_pool_cache_hits_total`: checkouts that found the
    /// tenant's pool open.
    pub cache_hits: Counter,
    /// `tenantd_tenant_pool_cache_misses_total`: checkouts that had to open it.
    pub cache_misses: Counter,
    /// `tenantd_tenant_pool_evictions_total{reason}`; see [`Self::evicted`].
    pub evictions: Family<EvictionLabels, Counter>,
    /// `tenantd_tenant_connection_budget_waits_total`: checkouts that waited
    /// for the connection budget.
    pub budget_waits: Counter,
    /// `tenantd_tenant_connection_budget_timeouts_total`: checkouts that gave
    /// up waiting for it.
    pub budget_timeouts: Counter,
    /// `tenantd_tenant_pools_open`: tenant pools in the cache.
    pub pools_open: Gauge,
    /// `tenantd_tenant_connections_open`: connections of all tenant pools.
    pub connections_open: Gauge,
    /// `tenantd_tenant_connections_in_use`: of those, checked out.
    pub connections_in_use: Gauge,
    /// `tenantd_tenant_connection_budget`: the most tenant connections this
    /// process may hold.
    pub connection_budget: Gauge,
    /// `tenantd_tenant_connection_checkout_seconds`: time to get a tenant
    /// connection, waits for the budget and pool opening included.
    pub checkout_seconds: Histogram,
}

impl PoolMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            evictions: Family::default(),
            budget_waits: Counter::default(),
            budget_timeouts: Counter::default(),
            pools_open: Gauge::default(),
            connections_open: Gauge::default(),
            connections_in_use: Gauge::default(),
            connection_budget: Gauge::default(),
            checkout_seconds: Histogram::new(CHECKOUT_BUCKETS),
        };
        for reason in EvictionReason::ALL {
            let _ = m.evictions.get_or_create(&EvictionLabels { reason });
        }
        registry.register(
            "tenant_pool_cache_hits",
            "Tenant connection checkouts that found the tenant's pool open",
            m.cache_hits.clone(),
        );
        registry.register(
            "tenant_pool_cache_misses",
            "Tenant connection checkouts that had to open the tenant's pool",
            m.cache_misses.clone(),
        );
        registry.register(
            "tenant_pool_evictions",
            "Tenant pools closed (reasons idle, capacity, tenant_state) and tenant connections closed (reasons budget, broken), by reason",
            m.evictions.clone(),
        );
        registry.register(
            "tenant_connection_budget_waits",
            "Tenant connection checkouts that waited for the process-wide connection budget",
            m.budget_waits.clone(),
        );
        registry.register(
            "tenant_connection_budget_timeouts",
            "Tenant connection checkouts that gave up waiting for the connection budget",
            m.budget_timeouts.clone(),
        );
        registry.register(
            "tenant_pools_open",
            "Tenant pools open in the cache",
            m.pools_open.clone(),
        );
        registry.register(
            "tenant_connections_open",
            "Connections open across all tenant pools",
            m.connections_open.clone(),
        );
        registry.register(
            "tenant_connections_in_use",
            "Tenant connections checked out",
            m.connections_in_use.clone(),
        );
        registry.register(
            "tenant_connection_budget",
            "Most tenant connections this process may hold at once",
            m.connection_budget.clone(),
        );
        registry.register_with_unit(
            "tenant_connection_checkout",
            "Time to check out a tenant connection, budget waits and pool opening included",
            Unit::Seconds,
            m.checkout_seconds.clone(),
        );
        m
    }

    /// Counts a pool closed by the cache.
    pub fn evicted(&self, reason: EvictionReason) {
        self.evictions
            .get_or_create(&EvictionLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_help_and_zero_series_from_the_start() {
        let metrics = Metrics::new();
        metrics.pool().evicted(EvictionReason::TenantState);
        metrics.pool().checkout_seconds.observe(0.00002);
        metrics.tenants().created.inc();
        let text = metrics.encode();
        for line in [
            "# TYPE tenantd_tenant_pool_cache_hits counter",
            "tenantd_tenant_pool_cache_hits_total 0",
            "tenantd_tenant_pool_cache_misses_total 0",
            "tenantd_tenant_pool_evictions_total{reason=\"idle\"} 0",
            "tenantd_tenant_pool_evictions_total{reason=\"tenant_state\"} 1",
            "tenantd_tenant_connection_budget_waits_total 0",
            "tenantd_tenant_connection_budget_timeouts_total 0",
            "tenantd_tenant_pools_open 0",
            "tenantd_tenant_connections_open 0",
            "tenantd_tenant_connections_in_use 0",
            "tenantd_tenant_connection_budget 0",
            "tenantd_tenant_connection_checkout_seconds_bucket{le=\"0.00001\"} 0",
            "tenantd_tenant_connection_checkout_seconds_bucket{le=\"0.000025\"} 1",
            "tenantd_tenant_connection_checkout_seconds_count 1",
            "tenantd_tenants_created_total 1",
            "tenantd_metrics_collect_errors_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn registries_are_per_instance() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.tenants().created.inc();
        assert_eq!(a.tenants().created.get(), 1);
        assert_eq!(b.tenants().created.get(), 0);
        assert_eq!(a.clone().tenants().created.get(), 1, "clones share values");
    }
}

/// The event stream's watchers and the usage sampler (nothing per tenant).
#[derive(Clone, Default)]
pub struct WatchMetrics {
    /// Event watchers connected to this replica.
    pub watchers: Gauge,
    /// Watchers cut off for falling a whole buffer behind.
    pub cut_off: Counter,
    /// The last usage sampling's wall time, in milliseconds.
    pub sample_millis: Gauge,
    /// Tenants the last usage sampling covered.
    pub sampled_tenants: Gauge,
}

impl WatchMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "event_watchers",
            "EventService.WatchEvents streams open on this replica",
            m.watchers.clone(),
        );
        registry.register(
            "event_watchers_cut_off",
            "Event watchers cut off (RESOURCE_EXHAUSTED) for falling more than --events-buffer events behind",
            m.cut_off.clone(),
        );
        registry.register(
            "usage_sample_milliseconds",
            "Wall time of the last sampling of tenant schema sizes (every cluster's query and the catalog's)",
            m.sample_millis.clone(),
        );
        registry.register(
            "usage_sampled_tenants",
            "Tenants the last sampling of schema sizes covered",
            m.sampled_tenants.clone(),
        );
        m
    }
}
