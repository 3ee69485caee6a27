//! Operator actions on upgrade runs: plan, start (or dry-run), read, list,
//! pause, resume, cancel, retry failed tenants, and the events a watcher sees.
//! Every state change is one transaction with its audit event.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;

use crate::catalog::{DbFailure, audit::Audited, upgrades};
use crate::clusters::Clusters;
use crate::domain::ValidationError;
use crate::domain::upgrade::{
    Drift, Outcome, Plan, PlanFailure, Run, RunId, RunSettingsInput, RunStatus, TenantSelector,
    Totals,
};
use crate::domain::{ClusterName, TenantId};
use crate::tenant::TenantMigrations;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("upgrade run not found")]
    NotFound,
    #[error("cannot {action} a run that is {status}")]
    InvalidTransition {
        action: &'static str,
        status: RunStatus,
    },
    /// A tenant's cluster could not be reached.
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    Db(#[from] DbFailure),
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> UpgradeError {
    DbFailure::of(context)
}

/// An operator action on a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    Pause,
    Resume,
    Cancel,
    RetryFailed,
}

impl RunAction {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::RetryFailed => "retry",
        }
    }

    /// The status the action leads to from `from`; `Ok(None)`: nothing to do.
    fn after(self, from: RunStatus) -> Result<Option<RunStatus>, ()> {
        use RunStatus as S;
        match (self, from) {
            (Self::Pause, S::Running) => Ok(Some(S::Paused)),
            (Self::Pause, S::Paused) => Ok(None),
            (Self::Resume, S::Paused | S::Halted) => Ok(Some(S::Running)),
            (Self::Resume, S::Running) => Ok(None),
            (Self::Cancel, S::Running | S::Paused | S::Halted) => Ok(Some(S::Cancelled)),
            (Self::Cancel, S::Cancelled) => Ok(None),
            (Self::RetryFailed, S::Running | S::Paused | S::Halted | S::Failed) => {
                Ok(Some(S::Running))
            }
            _ => Err(()),
        }
    }
}

/// What a watcher is told.
#[derive(Debug, Clone)]
pub enum Event {
    Tenant(Outcome),
    Progress(Run),
}

/// Fleet upgrades over the catalog pool.
#[derive(Clone)]
pub struct Upgrades {
    pool: PgPool,
    /// Where the ledgers of tenants outside `default` are read.
    clusters: Clusters,
    migrations: Arc<TenantMigrations>,
    /// Wakes this process's idle workers when a run becomes runnable.
    wake: Arc<tokio::sync::Notify>,
}

impl Upgrades {
    pub fn new(
        clusters: Clusters,
        migrations: Arc<TenantMigrations>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            pool: clusters.catalog().clone(),
            clusters,
            migrations,
            wake,
        }
    }

    pub fn latest_version(&self) -> i64 {
        self.migrations.latest()
    }

    fn target(&self, target: Option<i64>) -> Result<i64, UpgradeError> {
        let latest = self.migrations.latest();
        let target = target.unwrap_or(latest);
        if target < 1 || target > latest {
            return Err(ValidationError::single(
                "target_version",
                format!("must be between 1 and the latest tenant migration, {latest}"),
            )
            .into());
        }
        Ok(target)
    }

    /// The fleet by schema version, who is behind, who failed before, and
    /// (when asked) who drifted. Catalog reads only, unless drift is checked.
    pub async fn plan(
        &self,
        target: Option<i64>,
        selector: &TenantSelector,
        sample: i64,
        check_drift: bool,
    ) -> Result<Plan, UpgradeError> {
        let target = self.target(target)?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let versions = upgrades::version_counts(&mut conn, selector)
            .await
            .map_err(db("count tenants by version"))?;
        let behind_sample = upgrades::behind_sample(&mut conn, selector, target, sample)
            .await
            .map_err(db("sample tenants behind"))?;
        let (failed_before, failed) = upgrades::failed_before(&mut conn, selector, target, sample)
            .await
            .map_err(db("find failed tenants"))?;
        let clusters = upgrades::cluster_counts(&mut conn, selector, target)
            .await
            .map_err(db("count tenants by cluster"))?;
        let drifted = if check_drift {
            let mut drifted = upgrades::drifted(&mut conn, selector)
                .await
                .map_err(db("compare ledgers with the catalog"))?;
            let elsewhere = upgrades::placed_elsewhere(&mut conn, selector)
                .await
                .map_err(db("list tenants on other clusters"))?;
            drop(conn);
            drifted.extend(self.drifted_elsewhere(elsewhere).await?);
            drifted
        } else {
            Vec::new()
        };
        Ok(Plan {
            target_version: target,
            latest_version: self.migrations.latest(),
            total_tenants: versions.iter().map(|(_, n)| n).sum(),
            behind: versions
                .iter()
                .filter(|(v, _)| *v < target)
                .map(|(_, n)| n)
                .sum(),
            versions,
            failed_before,
            behind_sample: behind_sample.into_iter().map(TenantId::from_uuid).collect(),
            failed_sample: failed
                .into_iter()
                .map(|(t, r, sqlstate, message, version)| PlanFailure {
                    tenant_id: TenantId::from_uuid(t),
                    run_id: RunId(r),
                    sqlstate,
                    message,
                    version,
                })
                .collect(),
            drifted: drifted
                .into_iter()
                .map(|(t, catalog_version, ledger)| Drift {
                    tenant_id: TenantId::from_uuid(t),
                    catalog_version,
                    ledger_version: ledger.unwrap_or(-1),
                })
                .collect(),
            drift_checked: check_drift,
            clusters,
        })
    }

    /// The tenants, placed outside `default`, whose ledger on their cluster
    /// disagrees with the catalog: one query per tenant, as on `default`.
    async fn drifted_elsewhere(
        &self,
        tenants: Vec<(uuid::Uuid, i64, String)>,
    ) -> Result<Vec<(uuid::Uuid, i64, Option<i64>)>, UpgradeError> {
        let mut drifted = Vec::new();
        for (id, catalog_version, cluster) in tenants {
            let cluster = self
                .clusters
                .get(&ClusterName::from_catalog(cluster))
                .await
                .map_err(|e| UpgradeError::Cluster(e.to_string()))?;
            let ledger = super::apply::remote_ledger(&cluster, TenantId::from_uuid(id))
                .await
                .map_err(db("read a ledger on its cluster"))?;
            if ledger != Some(catalog_version) {
                drifted.push((id, catalog_version, ledger));
            }
        }
        Ok(drifted)
    }

    /// Creates a run (or, dry, says what it would hold).
    pub async fn start(
        &self,
        input: RunSettingsInput,
        selector: TenantSelector,
        dry_run: bool,
        actor: &str,
    ) -> Result<Run, UpgradeError> {
        let settings = input.validate(self.migrations.latest())?;
        let id = RunId::new();
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin start upgrade"))?;
        if dry_run {
            let behind = upgrades::count_behind(&mut tx, &selector, settings.target_version)
                .await
                .map_err(db("count tenants behind"))?;
            let now = Utc::now();
            return Ok(Run {
                id,
                settings,
                status: RunStatus::Planned,
                status_reason: "dry run: nothing was created".into(),
                totals: Totals {
                    total: behind,
                    pending: behind,
                    ..Totals::default()
                },
                created_at: now,
                updated_at: now,
                finished_at: None,
            });
        }
        let items = upgrades::create_run(&mut tx, id, &settings, &selector, actor)
            .await
            .map_err(db("create upgrade run"))?;
        if items == 0 {
            upgrades::set_status(
                &mut tx,
                id,
                RunStatus::Succeeded,
                "no tenant was behind the target",
            )
            .await
            .map_err(db("finish empty run"))?;
        }
        let details = json!({
            "target_version": settings.target_version,
            "tenants": items,
            "concurrency": settings.concurrency,
            "canary_count": settings.canary_count,
            "max_failures": settings.max_failures,
            "selector": selector,
        });
        let run = upgrades::get_run(&mut tx, id)
            .await
            .map_err(db("read the new run"))?
            .ok_or(UpgradeError::NotFound)?;
        tx.commit(actor, "upgrade.start", &format!("upgrade:{id}"), &details)
            .await
            .map_err(db("commit start upgrade"))?;
        tracing::info!(run = %id, tenants = items, target = settings.target_version, "upgrade run started");
        self.wake.notify_waiters();
        Ok(run)
    }

    pub async fn get(&self, id: RunId) -> Result<Run, UpgradeError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        upgrades::get_run(&mut conn, id)
            .await
            .map_err(db("read upgrade run"))?
            .ok_or(UpgradeError::NotFound)
    }

    /// Newest first; the next page starts before the last run returned.
    pub async fn list(
        &self,
        before: Option<RunId>,
        limit: usize,
    ) -> Result<(Vec<Run>, Option<RunId>), UpgradeError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let mut runs = upgrades::list_runs(&mut conn, before, limit as i64 + 1)
            .await
            .map_err(db("list upgrade runs"))?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Ok((runs, next))
    }

    /// Pause, resume, cancel or retry the failed tenants of a run.
    pub async fn act(
        &self,
        id: RunId,
        action: RunAction,
        reason: &str,
        actor: &str,
    ) -> Result<Run, UpgradeError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin run change"))?;
        let status = upgrades::lock_run(&mut tx, id)
            .await
            .map_err(db("lock upgrade run"))?
            .ok_or(UpgradeError::NotFound)?;
        let next = action
            .after(status)
            .map_err(|()| UpgradeError::InvalidTransition {
                action: action.as_str(),
                status,
            })?;
        let mut changed = 0;
        match action {
            RunAction::Cancel if next.is_some() => {
                changed = upgrades::skip_pending(&mut tx, id)
                    .await
                    .map_err(db("skip pending tenants"))?;
            }
            RunAction::RetryFailed => {
                changed = upgrades::retry_failed(&mut tx, id)
                    .await
                    .map_err(db("requeue failed tenants"))?;
            }
            _ => {}
        }
        if let Some(next) = next {
            if action != RunAction::RetryFailed || changed > 0 || status != RunStatus::Failed {
                upgrades::set_status(&mut tx, id, next, reason)
                    .await
                    .map_err(db("change run status"))?;
            }
            let details = json!({ "from": status.as_str(), "to": next.as_str(), "reason": reason, "tenants": changed });
            tx.commit(
                actor,
                &format!("upgrade.{}", action.as_str()),
                &format!("upgrade:{id}"),
                &details,
            )
            .await
            .map_err(db("commit run change"))?;
        } else {
            // Retrying a running run's failed tenants requeues them without
            // changing the run's status: not an event of its own.
            tx.commit_unaudited("requeued failed tenants of a running run")
                .await
                .map_err(db("commit run change"))?;
        }
        // Read after the commit: a tenant that finished while the change was
        // being made is counted, so what the caller sees is the run as the
        // change left it, with at most the tenants then in flight to come.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let run = upgrades::get_run(&mut conn, id)
            .await
            .map_err(db("read upgrade run"))?
            .ok_or(UpgradeError::NotFound)?;
        if run.status == RunStatus::Running {
            self.wake.notify_waiters();
        }
        Ok(run)
    }

    /// Every outcome a watcher has not seen yet, in order, for a watcher
    /// that keeps `cursor` (all transactions up to it are done and were read)
    /// and `seen` (outcomes read above the cursor). Never skips an outcome
    /// whose transaction commits late; never repeats one.
    pub async fn new_outcomes(
        &self,
        id: RunId,
        cursor: &mut Option<i64>,
        seen: &mut std::collections::HashSet<(TenantId, i64)>,
    ) -> Result<Vec<Outcome>, UpgradeError> {
        const PAGE: i64 = 1000;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let mut fresh = Vec::new();
        let mut after = *cursor;
        let xmin = loop {
            let (page, xmin) = upgrades::outcomes_after(&mut conn, id, after, PAGE)
                .await
                .map_err(db("read tenant outcomes"))?;
            let full = page.len() as i64 == PAGE;
            for (outcome, xid) in page {
                after = Some(xid);
                if seen.insert((outcome.tenant_id, xid)) {
                    fresh.push(outcome);
                }
            }
            if !full {
                break xmin;
            }
        };
        // Everything below the oldest running transaction is final.
        let settled = xmin - 1;
        if cursor.is_none_or(|c| c < settled) {
            *cursor = Some(settled);
        }
        let floor = cursor.unwrap_or(i64::MIN);
        seen.retain(|(_, xid)| *xid > floor);
        Ok(fresh)
    }
}

pub use RunAction as Action;
