//! Numbers read at scrape time: the catalog pool's connections (from the
//! pool, no query) and upgrade runs and items by status (one catalog query).
//!
//! A scrape never fails or hangs on the database: the query runs under a
//! server-side statement timeout and a client-side deadline, at most one at
//! a time per process; when it fails, times out or is already running, the
//! upgrade gauges keep their last values, and a failure or time-out counts
//! in `tenantd_metrics_collect_errors_total`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use crate::metrics::{ITEM_STATES, Metrics, Name, RUN_STATES, Refresh, StateLabels};

/// How long the catalog query may run on the server.
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a scrape waits for the catalog at most (connection included).
const COLLECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Refreshes a [`Metrics`] from the catalog before it is encoded.
pub struct CatalogCollector {
    metrics: Metrics,
    pool: PgPool,
    /// Held while the catalog query runs: a burst of scrapes against a slow
    /// database makes one query, not one each.
    running: tokio::sync::Mutex<()>,
}

impl CatalogCollector {
    pub fn new(metrics: Metrics, pool: PgPool) -> Self {
        Self {
            metrics,
            pool,
            running: tokio::sync::Mutex::new(()),
        }
    }

    fn pool_stats(&self) {
        let m = self.metrics.catalog_pool();
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        let set = |state, value| {
            m.connections
                .get_or_create(&StateLabels { state: Name(state) })
                .set(value);
        };
        set("idle", idle.min(size));
        set("in_use", (size - idle).max(0));
        m.max
            .set(i64::from(self.pool.options().get_max_connections()));
    }

    async fn upgrade_states(&self) -> anyhow::Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("begin the metrics transaction")?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(STATEMENT_TIMEOUT.as_millis().to_string())
            .execute(&mut *tx)
            .await
            .context("set the statement timeout")?;
        let rows = super::upgrades::status_counts(&mut tx)
            .await
            .context("count upgrade runs and items by status")?;
        tx.commit().await.context("end the metrics transaction")?;
        let counts: HashMap<(&str, &str), i64> = rows
            .iter()
            .map(|(table, status, n)| ((table.as_str(), status.as_str()), *n))
            .collect();
        let upgrades = self.metrics.upgrades();
        // Every known status is set, to 0 when absent, so a status that
        // emptied does not keep its old number; unknown ones are ignored.
        for (family, table, states) in [
            (&upgrades.runs, "runs", &RUN_STATES[..]),
            (&upgrades.items, "items", &ITEM_STATES[..]),
        ] {
            for &state in states {
                let n = counts.get(&(table, state)).copied().unwrap_or(0);
                family
                    .get_or_create(&StateLabels { state: Name(state) })
                    .set(n);
            }
        }
        Ok(())
    }
}

impl Refresh for CatalogCollector {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Brings the scrape-time gauges up to date, as far as the database
    /// allows within [`COLLECT_TIMEOUT`].
    async fn refresh(&self) {
        self.pool_stats();
        let Ok(_one) = self.running.try_lock() else {
            // Another scrape's query is under way: serve the last values.
            return;
        };
        let failure = match tokio::time::timeout(COLLECT_TIMEOUT, self.upgrade_states()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {COLLECT_TIMEOUT:?}"),
        };
        self.metrics.collect_errors().inc();
        tracing::warn!(
            error = failure,
            "could not read upgrade states for metrics; serving the last values"
        );
    }
}
