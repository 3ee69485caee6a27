//! The workers of this process. Each worker takes a slot of a running run
//! (a run has as many slots as its concurrency, across every replica),
//! claims a few of its tenants at a time under a lease, upgrades them one by
//! one on a connection of its own, and records failures with retries and
//! backoff. A heartbeat extends this process's leases; when the process dies
//! its leases expire and any replica picks the work up. Connections retire
//! after a few hundred tenants so backend catalog caches stay small.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::apply::{self, Applied};
use crate::catalog::Engine;
use crate::catalog::audit;
use crate::catalog::upgrades::{self, Claimed, FailureEffect};
use crate::clusters::Clusters;
use crate::domain::upgrade::{RunId, RunStatus};
use crate::tenant::TenantMigrations;

/// How this process's workers behave.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Workers in this process (each can hold one slot of one run).
    pub workers: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often idle workers look for work.
    pub poll_interval: Duration,
    /// Tenants claimed at once by a worker.
    pub batch: i64,
    /// Tenants upgraded on one connection before it is replaced.
    pub retire_after: usize,
    /// Plain PostgreSQL, or Citus (tenant DDL one statement per message).
    pub engine: Engine,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            batch: 8,
            retire_after: 300,
            engine: Engine::Postgres,
        }
    }
}

/// Spawns the workers and the heartbeat; they stop when `stop` is cancelled,
/// giving back what they claimed but did not start.
pub fn spawn(
    clusters: Clusters,
    database: PgConnectOptions,
    migrations: Arc<TenantMigrations>,
    settings: RunnerSettings,
    wake: Arc<Notify>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> String {
    let owner = format!(
        "{}:{}:{}",
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into()),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let shared = Arc::new(Shared {
        pool: clusters.catalog().clone(),
        clusters,
        database,
        migrations,
        settings,
        owner: owner.clone(),
        wake,
        stop,
    });
    for n in 0..shared.settings.workers {
        let s = shared.clone();
        tasks.spawn(async move { s.worker(n).await });
    }
    let s = shared.clone();
    tasks.spawn(async move { s.heartbeat().await });
    owner
}

struct Shared {
    /// Claims, failures, heartbeats.
    pool: PgPool,
    /// Tenants not on the catalog's database are upgraded on their cluster.
    clusters: Clusters,
    /// For the workers' own upgrade connections.
    database: PgConnectOptions,
    migrations: Arc<TenantMigrations>,
    settings: RunnerSettings,
    /// Identifies this process's leases.
    owner: String,
    /// Signalled when this process starts, resumes or retries a run, so idle
    /// workers need not wait for their next poll.
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// A worker's upgrade connection and how many tenants it has served.
struct UpgradeConn {
    conn: Option<PgConnection>,
    used: usize,
}

impl Shared {
    async fn heartbeat(&self) {
        let every = self.settings.lease / 3;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let renewed = async {
                let mut conn = self.pool.acquire().await?;
                upgrades::renew_leases(&mut conn, &self.owner, self.settings.lease).await
            }
            .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "could not renew upgrade leases");
            }
        }
    }

    async fn worker(&self, n: usize) {
        let mut conn = UpgradeConn {
            conn: None,
            used: 0,
        };
        while !self.stop.is_cancelled() {
            let worked = match self.claim_slot().await {
                Ok(Some((run, slot))) => {
                    let result = self.work_on(run, slot, &mut conn).await;
                    if let Err(e) = self.release_slot(run, slot).await {
                        tracing::warn!(error = %e, %run, "could not release upgrade slot");
                    }
                    match result {
                        Ok(worked) => worked,
                        Err(e) => {
                            tracing::warn!(worker = n, %run, error = format!("{e:#}"), "upgrade worker error");
                            conn.conn = None;
                            false
                        }
                    }
                }
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "could not look for upgrade work");
                    false
                }
            };
            if !worked {
                tokio::select! {
                    () = self.stop.cancelled() => break,
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = self.wake.notified() => {}
                }
            }
        }
        if let Some(c) = conn.conn.take() {
            let _ = c.close().await;
        }
    }

    async fn claim_slot(&self) -> Result<Option<(RunId, i32)>, sqlx::Error> {
        let mut c = self.pool.acquire().await?;
        upgrades::claim_slot(
            &mut c,
            &self.owner,
            self.settings.lease,
            self.migrations.latest(),
        )
        .await
    }

    async fn release_slot(&self, run: RunId, slot: i32) -> Result<(), sqlx::Error> {
        let mut c = self.pool.acquire().await?;
        upgrades::release_slot(&mut c, run, slot, &self.owner).await
    }

    /// Upgrades the run's tenants while the run is running and has
    /// claimable tenants. True when it did some work.
    async fn work_on(&self, run: RunId, slot: i32, conn: &mut UpgradeConn) -> anyhow::Result<bool> {
        let settings = {
            let mut c = self.pool.acquire().await?;
            match upgrades::get_run(&mut c, run).await? {
                Some(r) if r.status == RunStatus::Running => r.settings,
                _ => return Ok(false),
            }
        };
        let mut worked = false;
        // One tenant at a time while canaries may be left, so they spread
        // over the workers and a failure pauses the run early.
        let mut size = if settings.canary_count > 0 {
            1
        } else {
            self.settings.batch
        };
        loop {
            let batch = {
                let mut c = self.pool.acquire().await?;
                upgrades::claim_items(&mut c, run, slot, &self.owner, self.settings.lease, size)
                    .await?
            };
            if !batch.iter().any(|c| c.canary) {
                size = self.settings.batch;
            }
            if batch.is_empty() {
                let mut tx = self.pool.begin().await?;
                match upgrades::finish_if_complete(&mut tx, run).await? {
                    Some(status) => {
                        audit::append(
                            &mut tx,
                            "tenantd",
                            "upgrade.finished",
                            &format!("upgrade:{run}"),
                            &serde_json::json!({ "status": status.as_str() }),
                        )
                        .await?;
                        tx.commit().await?;
                        tracing::info!(%run, %status, "upgrade run finished");
                    }
                    None => tx.commit().await?,
                }
                return Ok(worked);
            }
            worked = true;
            for (i, item) in batch.iter().enumerate() {
                // Between tenants: stop on shutdown. (A pause, halt or cancel
                // is seen inside each tenant's transaction.)
                let keep_going = !self.stop.is_cancelled()
                    && self.upgrade_one(run, &settings, item.clone(), conn).await?;
                if !keep_going {
                    let rest: Vec<_> = batch[i..].iter().map(|c| *c.tenant.as_uuid()).collect();
                    let mut c = self.pool.acquire().await?;
                    upgrades::release_items(&mut c, run, &self.owner, &rest).await?;
                    return Ok(worked);
                }
            }
        }
    }

    async fn upgrade_one(
        &self,
        run: RunId,
        settings: &crate::domain::upgrade::RunSettings,
        item: Claimed,
        conn: &mut UpgradeConn,
    ) -> anyhow::Result<bool> {
        if conn.conn.is_none() || conn.used >= self.settings.retire_after {
            if let Some(old) = conn.conn.take() {
                let _ = old.close().await;
            }
            conn.conn = Some(
                PgConnection::connect_with(&self.database)
                    .await
                    .context("open an upgrade connection")?,
            );
            conn.used = 0;
        }
        let Some(c) = conn.conn.as_mut() else {
            return Ok(true);
        };
        conn.used += 1;
        let result = if item.cluster.is_default() {
            apply::upgrade_tenant(
                self.settings.engine,
                c,
                &self.migrations,
                run,
                item.tenant,
                item.from_version,
                settings.target_version,
                settings.lock_timeout,
                settings.statement_timeout,
            )
            .await
        } else {
            match self.clusters.get(&item.cluster).await {
                Ok(cluster) => {
                    apply::upgrade_remote_tenant(
                        c,
                        &cluster,
                        &self.migrations,
                        run,
                        item.tenant,
                        settings.target_version,
                        settings.lock_timeout,
                        settings.statement_timeout,
                    )
                    .await
                }
                // Unreachable, or its password cannot be read: a failure
                // worth retrying (the 08 class), recorded as such.
                Err(e) => Err(sqlx::Error::Io(std::io::Error::other(e.to_string()))),
            }
        };
        match result {
            Ok(Applied::Upgraded { from, to }) => {
                tracing::debug!(%run, tenant = %item.tenant, from, to, "tenant upgraded");
            }
            Ok(Applied::AlreadyCurrent { version }) => {
                tracing::debug!(%run, tenant = %item.tenant, version, "tenant already current");
            }
            Ok(Applied::RunStopped) => return Ok(false),
            Ok(Applied::Gone) => {
                tracing::info!(%run, tenant = %item.tenant, "tenant gone; skipped")
            }
            Err(e) => {
                let transient = apply::is_transient(&e);
                if transient {
                    // The connection may be the problem.
                    conn.conn = None;
                }
                let (sqlstate, message) = apply::describe(&e);
                let retry_in = (transient && item.attempts < settings.max_attempts)
                    .then(|| backoff(item.attempts));
                let mut tx = self.pool.begin().await?;
                let effect = upgrades::record_failure(
                    &mut tx,
                    run,
                    item.tenant,
                    &sqlstate,
                    &message,
                    retry_in,
                )
                .await?;
                if effect != FailureEffect::Retrying {
                    audit::append(
                        &mut tx,
                        "tenantd",
                        "upgrade.tenant_failed",
                        &format!("tenant:{}", item.tenant.as_uuid()),
                        &serde_json::json!({
                            "run": run.to_string(),
                            "sqlstate": sqlstate,
                            "message": message,
                            "attempts": item.attempts,
                            "run_effect": match effect {
                                FailureEffect::PausedRun => "paused",
                                FailureEffect::HaltedRun => "halted",
                                _ => "none",
                            },
                        }),
                    )
                    .await?;
                }
                tx.commit().await?;
                match effect {
                    FailureEffect::Retrying => {
                        tracing::info!(%run, tenant = %item.tenant, %sqlstate, attempt = item.attempts, "tenant upgrade failed; will retry")
                    }
                    FailureEffect::Failed => {
                        tracing::warn!(%run, tenant = %item.tenant, %sqlstate, %message, "tenant upgrade failed")
                    }
                    FailureEffect::PausedRun => {
                        tracing::warn!(%run, tenant = %item.tenant, %sqlstate, %message, "canary failed; run paused")
                    }
                    FailureEffect::HaltedRun => {
                        tracing::warn!(%run, tenant = %item.tenant, %sqlstate, %message, "failure budget spent; run halted")
                    }
                }
                // The failure may have paused or halted the run; the next
                // tenant's transaction sees it.
            }
        }
        Ok(true)
    }
}

/// 0.5 s, 1 s, 2 s … up to 30 s, with up to 25 % jitter.
fn backoff(attempt: i32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(attempt.clamp(1, 16) as u32 - 1);
    let base = base.min(Duration::from_secs(30));
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(500) && backoff(1) < Duration::from_millis(650)
        );
        assert!(backoff(3) >= Duration::from_secs(2));
        assert!(backoff(20) <= Duration::from_millis(37_500));
    }
}
