//! What each tenant weighs. Two halves:
//!
//! - its schema's size, rows and relations, sampled on a schedule from each
//!   cluster's system catalog in one query per cluster (PostgreSQL's own
//!   estimates: `relpages`, `reltuples`), never one query per tenant;
//! - the data calls this replica served it: count, failures and a latency
//!   histogram, in memory, for a bounded number of tenants.
//!
//! Prometheus sees neither per tenant (its labels stay fixed); the sampler's
//! own cost is a metric.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clusters::Clusters;
use crate::domain::cluster::ClusterName;

/// How usage is kept.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// How often schema sizes are sampled.
    pub sample_interval: Duration,
    /// Tenants whose call counts a replica keeps (least recently called
    /// forgotten first).
    pub max_tenants: u64,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(60),
            max_tenants: 100_000,
        }
    }
}

/// A schema as last sampled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaSample {
    pub bytes: i64,
    pub rows: i64,
    pub relations: i64,
}

/// A tenant as the catalog names it, with its last sample.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub slug: String,
    pub cluster: String,
    pub schema: SchemaSample,
}

/// The last sampling of every tenant.
#[derive(Debug, Default)]
struct Samples {
    at: Option<DateTime<Utc>>,
    tenants: HashMap<Uuid, Sampled>,
}

/// Latency buckets: upper bounds 50 µs × √2^i.
const BUCKETS: usize = 48;

fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= 50.0 {
        return 0;
    }
    // √2^i ≥ us / 50  ⇔  i ≥ 2·log2(us / 50)
    let i = (2.0 * (us / 50.0).log2()).ceil() as usize;
    i.min(BUCKETS - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    0.05 * 2f64.powf(i as f64 / 2.0)
}

/// One tenant's data calls on this replica.
#[derive(Debug)]
pub struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for CallStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl CallStats {
    fn record(&self, took: Duration, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which `q` of the calls fell (a bucket's upper
    /// bound, so within a factor √2), in ms; 0 without calls.
    fn quantile_ms(counts: &[u64; BUCKETS], q: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper_ms(i);
            }
        }
        bucket_upper_ms(BUCKETS - 1)
    }

    fn snapshot(&self) -> Calls {
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        Calls {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p50_ms: Self::quantile_ms(&counts, 0.50),
            p99_ms: Self::quantile_ms(&counts, 0.99),
        }
    }
}

/// A tenant's data calls, read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Calls {
    pub calls: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Everything known of one tenant's weight.
#[derive(Debug, Clone)]
pub struct TenantUsage {
    pub tenant: Uuid,
    pub sampled: Option<Sampled>,
    pub sampled_at: Option<DateTime<Utc>>,
    pub calls: Calls,
    pub since: DateTime<Utc>,
}

/// How the heaviest are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Size,
    Calls,
    Errors,
}

/// One sampling's cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleCost {
    pub tenants: usize,
    pub clusters: usize,
    /// Wall time of the queries, catalog included.
    pub took: Duration,
}

#[derive(Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

struct Inner {
    clusters: Clusters,
    metrics: crate::metrics::Metrics,
    settings: UsageSettings,
    since: DateTime<Utc>,
    calls: moka::sync::Cache<Uuid, Arc<CallStats>>,
    samples: RwLock<Arc<Samples>>,
}

/// Sums a cluster's tenant schemas from its system catalog: table, index,
/// materialized view and TOAST pages (× the block size), rows of tables,
/// and how many tables. One scan of pg_class; no relation is opened or
/// locked, so a migration holding a lock does not hold it up.
pub const SCHEMA_SIZES: &str = "\
SELECT n.nspname::text, \
       (coalesce(sum(c.relpages::bigint + coalesce(t.relpages, 0)), 0) \
          * current_setting('block_size')::bigint)::bigint, \
       coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind IN ('r', 'p', 'm')), 0)::bigint, \
       count(c.oid) FILTER (WHERE c.relkind IN ('r', 'p', 'm')) \
FROM pg_namespace n \
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'm', 'i') \
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
WHERE n.nspname LIKE 'tenant\\_%' \
GROUP BY n.nspname";

/// The same on a Citus coordinator, where a distributed schema's tables
/// are shards on the nodes: their sizes as Citus reports them (it asks each
/// node once), rows as the coordinator's shells estimate them.
const CITUS_SCHEMA_SIZES: &str = "\
WITH sizes AS ( \
    SELECT s.table_name::oid AS rel, sum(s.shard_size)::bigint AS bytes \
    FROM citus_shards s GROUP BY 1) \
SELECT n.nspname::text, \
       coalesce(sum(sz.bytes), 0)::bigint, \
       coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint, \
       count(c.oid) \
FROM pg_namespace n \
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p') \
LEFT JOIN sizes sz ON sz.rel = c.oid \
WHERE n.nspname LIKE 'tenant\\_%' \
GROUP BY n.nspname";

impl Usage {
    pub fn new(
        clusters: Clusters,
        settings: UsageSettings,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let calls = moka::sync::Cache::builder()
            .max_capacity(settings.max_tenants)
            .build();
        Self {
            inner: Arc::new(Inner {
                clusters,
                metrics,
                settings,
                since: Utc::now(),
                calls,
                samples: RwLock::new(Arc::default()),
            }),
        }
    }

    /// Counts one data call of `tenant`.
    pub fn record_call(&self, tenant: Uuid, took: Duration, ok: bool) {
        self.inner
            .calls
            .get_with(tenant, Default::default)
            .record(took, ok);
    }

    /// Samples now, then every interval, until `shutdown`.
    pub async fn sample_loop(self, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            match self.sample().await {
                Ok(cost) => {
                    if failing {
                        tracing::info!("tenant usage sampling works again");
                        failing = false;
                    }
                    tracing::debug!(tenants = cost.tenants, clusters = cost.clusters, took = ?cost.took, "sampled tenant usage");
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "cannot sample tenant usage; retrying at the next interval");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.inner.settings.sample_interval) => {}
            }
        }
    }

    /// Samples every cluster's tenant schemas once: one catalog query for
    /// the tenants, one query per cluster for the sizes.
    pub async fn sample(&self) -> anyhow::Result<SampleCost> {
        use anyhow::Context;
        let started = Instant::now();
        let catalog = self.inner.clusters.catalog();
        let tenants = crate::catalog::tenants::placed(catalog)
            .await
            .context("list tenants and their clusters")?;
        let mut by_cluster: HashMap<String, Vec<(Uuid, String, String)>> = HashMap::new();
        for (id, slug, schema, cluster) in tenants {
            by_cluster
                .entry(cluster)
                .or_default()
                .push((id, slug, schema));
        }
        let mut sampled = HashMap::with_capacity(by_cluster.values().map(Vec::len).sum());
        // A cluster that could not be read keeps its last sample.
        let previous = self.samples();
        let mut failures = Vec::new();
        for (cluster, tenants) in &by_cluster {
            let sizes = match self.sizes(cluster).await {
                Ok(sizes) => Some(sizes),
                Err(e) => {
                    failures.push(format!("{cluster}: {e:#}"));
                    None
                }
            };
            for (id, slug, schema) in tenants {
                let sample = match &sizes {
                    Some(sizes) => Sampled {
                        slug: slug.clone(),
                        cluster: cluster.clone(),
                        schema: sizes.get(schema).cloned().unwrap_or_default(),
                    },
                    None => match previous.tenants.get(id) {
                        Some(s) => s.clone(),
                        None => continue,
                    },
                };
                sampled.insert(*id, sample);
            }
        }
        let cost = SampleCost {
            tenants: sampled.len(),
            clusters: by_cluster.len(),
            took: started.elapsed(),
        };
        if let Ok(mut s) = self.inner.samples.write() {
            *s = Arc::new(Samples {
                at: Some(Utc::now()),
                tenants: sampled,
            });
        }
        let m = self.inner.metrics.watch();
        m.sample_millis
            .set(i64::try_from(cost.took.as_millis()).unwrap_or(i64::MAX));
        m.sampled_tenants
            .set(i64::try_from(cost.tenants).unwrap_or(i64::MAX));
        if !failures.is_empty() {
            anyhow::bail!(
                "some clusters could not be sampled: {}",
                failures.join("; ")
            );
        }
        Ok(cost)
    }

    async fn sizes(&self, cluster: &str) -> anyhow::Result<HashMap<String, SchemaSample>> {
        let name = ClusterName::parse("cluster", cluster)?;
        let cluster = self.inner.clusters.get(&name).await?;
        let sql = match cluster.engine {
            crate::catalog::Engine::Citus => CITUS_SCHEMA_SIZES,
            _ => SCHEMA_SIZES,
        };
        let rows: Vec<(String, i64, i64, i64)> =
            sqlx::query_as(sql).fetch_all(&cluster.admin).await?;
        Ok(rows
            .into_iter()
            .map(|(schema, bytes, rows, relations)| {
                (
                    schema,
                    SchemaSample {
                        bytes,
                        rows,
                        relations,
                    },
                )
            })
            .collect())
    }

    fn samples(&self) -> Arc<Samples> {
        self.inner
            .samples
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// One tenant's usage.
    pub fn tenant(&self, tenant: Uuid) -> TenantUsage {
        let samples = self.samples();
        TenantUsage {
            tenant,
            sampled: samples.tenants.get(&tenant).cloned(),
            sampled_at: samples.at,
            calls: self
                .inner
                .calls
                .get(&tenant)
                .map(|s| s.snapshot())
                .unwrap_or_default(),
            since: self.inner.since,
        }
    }

    /// One tenant's usage with its slug and cluster as the catalog has them
    /// now (a tenant made since the last sampling has them too, its sizes
    /// zero until the next); `None` when it does not exist or was purged.
    pub async fn current(
        &self,
        tenant: crate::domain::TenantId,
    ) -> Result<Option<TenantUsage>, sqlx::Error> {
        let mut conn = self.inner.clusters.catalog().acquire().await?;
        let Some(row) = crate::catalog::tenants::get(&mut conn, tenant).await? else {
            return Ok(None);
        };
        if row.status == crate::domain::TenantStatus::Purged {
            return Ok(None);
        }
        let mut usage = self.tenant(*tenant.as_uuid());
        let sampled = usage.sampled.get_or_insert_with(|| Sampled {
            slug: String::new(),
            cluster: String::new(),
            schema: SchemaSample::default(),
        });
        sampled.slug = row.slug;
        sampled.cluster = row.placement.to_string();
        Ok(Some(usage))
    }

    /// The `limit` heaviest tenants by `order`, and how many the last
    /// sampling covered.
    pub fn heaviest(&self, order: Order, limit: usize) -> (Vec<TenantUsage>, usize) {
        let samples = self.samples();
        let ids: Vec<Uuid> = match order {
            Order::Size => {
                let mut all: Vec<(&Uuid, i64)> = samples
                    .tenants
                    .iter()
                    .map(|(id, s)| (id, s.schema.bytes))
                    .collect();
                all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                all.into_iter().take(limit).map(|(id, _)| *id).collect()
            }
            Order::Calls | Order::Errors => {
                let mut all: Vec<(Uuid, u64)> = self
                    .inner
                    .calls
                    .iter()
                    .map(|(id, s)| {
                        let n = if order == Order::Calls {
                            s.calls.load(Ordering::Relaxed)
                        } else {
                            s.errors.load(Ordering::Relaxed)
                        };
                        (*id, n)
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                all.into_iter().take(limit).map(|(id, _)| id).collect()
            }
        };
        (
            ids.into_iter().map(|id| self.tenant(id)).collect(),
            samples.tenants.len(),
        )
    }
}

/// Bytes for people: `512 B`, `1.5 kB`, `3.2 GB` (powers of 1024).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(-5), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
    }

    #[test]
    fn buckets_grow_by_root_two_and_quantiles_land_in_them() {
        assert_eq!(bucket_of(Duration::from_micros(10)), 0);
        assert_eq!(bucket_of(Duration::from_micros(50)), 0);
        assert_eq!(bucket_of(Duration::from_micros(70)), 1);
        assert_eq!(bucket_of(Duration::from_micros(71)), 2);
        assert_eq!(bucket_of(Duration::from_micros(100)), 2);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
        let s = CallStats::default();
        for _ in 0..98 {
            s.record(Duration::from_micros(900), true);
        }
        s.record(Duration::from_millis(40), false);
        s.record(Duration::from_millis(40), false);
        let c = s.snapshot();
        assert_eq!((c.calls, c.errors), (100, 2));
        assert!(c.p50_ms >= 0.9 && c.p50_ms < 0.9 * 1.42, "{c:?}");
        assert!(c.p99_ms >= 40.0 && c.p99_ms < 40.0 * 1.42, "{c:?}");
    }
}
