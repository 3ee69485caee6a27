//! Dropping the pools of tenants that another replica moved out of ACTIVE.

use std::time::{Duration, Instant};

use crate::catalog;
use crate::domain::TenantId;

use super::TenantPools;

impl TenantPools {
    /// Every `period`: housekeeping, and dropping the pools of tenants that
    /// another replica moved out of ACTIVE since the last look.
    pub async fn watch_statuses(self, period: Duration, stop: tokio_util::sync::CancellationToken) {
        // The first look only reads the database's clock (no pool exists
        // yet); every later one covers the time since the look before.
        let mut since: Option<chrono::DateTime<chrono::Utc>> = None;
        loop {
            if since.is_some() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(period) => {}
                }
                self.maintain().await;
                self.log_failure_summaries(Instant::now());
            }
            match self.changed_since(since).await {
                Ok((now, ids)) => {
                    for id in ids {
                        if self.has_pool(id) {
                            tracing::info!(tenant_id = %id, "tenant left ACTIVE; closing its pool");
                            self.invalidate(id).await;
                        }
                    }
                    since = Some(now);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read tenant status changes");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(period) => {}
                    }
                }
            }
        }
    }

    /// Tenants not ACTIVE whose row changed since `since` (with slack for
    /// transactions that committed late), and the database's clock now.
    pub(super) async fn changed_since(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(chrono::DateTime<chrono::Utc>, Vec<TenantId>), sqlx::Error> {
        let now = catalog::tenants::now(&self.catalog).await?;
        let Some(since) = since else {
            return Ok((now, Vec::new()));
        };
        Ok((
            now,
            catalog::tenants::left_active_since(&self.catalog, since).await?,
        ))
    }
}
