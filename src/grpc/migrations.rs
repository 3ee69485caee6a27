//! `tenantd.v1.MigrationService`: plan, start, watch and steer fleet upgrades.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{caller, require_scope};
use super::convert::timestamp;
use super::pb::{self, migration_service_server::MigrationService};
use super::status;
use crate::domain::identity::Scope;
use crate::domain::upgrade::{Outcome, Run, RunId, RunSettingsInput, RunStatus, TenantSelector};
use crate::domain::{Slug, TenantId, ValidationError, Violations};
use crate::fleet::{Action, UpgradeError, Upgrades};

pub struct MigrationApi {
    upgrades: Upgrades,
    /// Ends watch streams when the server shuts down.
    shutdown: CancellationToken,
}

impl MigrationApi {
    pub fn new(upgrades: Upgrades, shutdown: CancellationToken) -> Self {
        Self { upgrades, shutdown }
    }

    async fn act(
        &self,
        request: Request<pb::UpgradeRunRequest>,
        action: Action,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::UpgradesRun)?;
        let actor = who.actor();
        let r = request.into_inner();
        let id = RunId::parse("run_id", &r.run_id).map_err(status::invalid)?;
        let run = self
            .upgrades
            .act(id, action, &r.reason, &actor)
            .await
            .map_err(status::upgrade)?;
        Ok(Response::new(run_to_pb(run)))
    }
}

fn selector(s: Option<pb::TenantSelector>) -> Result<TenantSelector, ValidationError> {
    let s = s.unwrap_or_default();
    let mut v = Violations::new();
    let mut out = TenantSelector::default();
    for (i, id) in s.tenant_ids.iter().enumerate() {
        if let Some(id) = v.check(TenantId::parse(&format!("selector.tenant_ids[{i}]"), id)) {
            out.tenant_ids.push(*id.as_uuid());
        }
    }
    for (i, slug) in s.slugs.iter().enumerate() {
        if let Some(slug) = v.check(Slug::parse(&format!("selector.slugs[{i}]"), slug)) {
            out.slugs.push(slug.as_str().to_owned());
        }
    }
    v.finish()?;
    Ok(out)
}

fn duration(
    field: &str,
    d: Option<prost_types::Duration>,
) -> Result<Option<Duration>, ValidationError> {
    match d {
        None => Ok(None),
        Some(d) => Duration::try_from(d)
            .map(Some)
            .map_err(|_| ValidationError::single(field, "must be a non-negative duration")),
    }
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn status_to_pb(s: RunStatus) -> pb::UpgradeStatus {
    match s {
        RunStatus::Running => pb::UpgradeStatus::Running,
        RunStatus::Paused => pb::UpgradeStatus::Paused,
        RunStatus::Halted => pb::UpgradeStatus::Halted,
        RunStatus::Cancelled => pb::UpgradeStatus::Cancelled,
        RunStatus::Succeeded => pb::UpgradeStatus::Succeeded,
        RunStatus::Failed => pb::UpgradeStatus::Failed,
        RunStatus::Planned => pb::UpgradeStatus::Planned,
    }
}

pub fn run_to_pb(r: Run) -> pb::UpgradeRun {
    // An ETA only means something while the run moves.
    let eta = if r.status == RunStatus::Running {
        r.totals.eta()
    } else {
        None
    };
    pb::UpgradeRun {
        id: r.id.to_string(),
        target_version: r.settings.target_version,
        status: status_to_pb(r.status) as i32,
        concurrency: r.settings.concurrency,
        canary_count: r.settings.canary_count,
        max_failures: r.settings.max_failures,
        max_attempts: r.settings.max_attempts,
        lock_timeout: Some(pb_duration(r.settings.lock_timeout)),
        statement_timeout: Some(pb_duration(r.settings.statement_timeout)),
        totals: Some(pb::UpgradeTotals {
            total: r.totals.total,
            pending: r.totals.pending,
            running: r.totals.running,
            done: r.totals.done,
            failed: r.totals.failed,
            skipped: r.totals.skipped,
            rate: r.totals.rate,
            eta: eta.map(pb_duration),
        }),
        status_reason: r.status_reason,
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        finished_at: r.finished_at.map(timestamp),
    }
}

fn outcome_to_pb(o: Outcome) -> pb::TenantOutcome {
    pb::TenantOutcome {
        tenant_id: o.tenant_id.to_string(),
        ok: o.ok,
        from_version: o.from_version,
        to_version: o.to_version,
        attempts: o.attempts,
        sqlstate: o.sqlstate,
        message: o.message,
        finished_at: Some(timestamp(o.finished_at)),
    }
}

const PAGE_TOKEN_PREFIX: &str = "r1:";

type WatchStream = ReceiverStream<Result<pb::UpgradeEvent, Status>>;

#[tonic::async_trait]
impl MigrationService for MigrationApi {
    async fn plan_upgrade(
        &self,
        request: Request<pb::PlanUpgradeRequest>,
    ) -> Result<Response<pb::UpgradePlan>, Status> {
        require_scope(&caller(&request)?, Scope::UpgradesRun)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let sel = v.check(selector(r.selector));
        let sample = match r.sample_size {
            0 => 20,
            n if (1..=1000).contains(&n) => i64::from(n),
            _ => {
                v.add("sample_size", "must be between 1 and 1000");
                0
            }
        };
        v.finish().map_err(status::invalid)?;
        let sel = sel.unwrap_or_default();
        let plan = self
            .upgrades
            .plan(r.target_version, &sel, sample, r.check_drift)
            .await
            .map_err(status::upgrade)?;
        Ok(Response::new(pb::UpgradePlan {
            target_version: plan.target_version,
            latest_version: plan.latest_version,
            versions: plan
                .versions
                .iter()
                .map(|(version, tenants)| pb::VersionCount {
                    version: *version,
                    tenants: *tenants,
                })
                .collect(),
            total_tenants: plan.total_tenants,
            behind: plan.behind,
            failed_before: plan.failed_before,
            behind_sample: plan.behind_sample.iter().map(ToString::to_string).collect(),
            failed_sample: plan
                .failed_sample
                .into_iter()
                .map(|f| pb::TenantFailure {
                    tenant_id: f.tenant_id.to_string(),
                    run_id: f.run_id.to_string(),
                    sqlstate: f.sqlstate,
                    message: f.message,
                    version: f.version,
                })
                .collect(),
            drifted: plan
                .drifted
                .into_iter()
                .map(|d| pb::TenantDrift {
                    tenant_id: d.tenant_id.to_string(),
                    catalog_version: d.catalog_version,
                    ledger_version: d.ledger_version,
                })
                .collect(),
            drift_checked: plan.drift_checked,
            clusters: plan
                .clusters
                .into_iter()
                .map(|(cluster, tenants, behind)| pb::ClusterCount {
                    cluster,
                    tenants,
                    behind,
                })
                .collect(),
        }))
    }

    async fn start_upgrade(
        &self,
        request: Request<pb::StartUpgradeRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::UpgradesRun)?;
        let actor = who.actor();
        let r = request.into_inner();
        let mut v = Violations::new();
        let sel = v.check(selector(r.selector));
        let lock_timeout = v.check(duration("lock_timeout", r.lock_timeout)).flatten();
        let statement_timeout = v
            .check(duration("statement_timeout", r.statement_timeout))
            .flatten();
        v.finish().map_err(status::invalid)?;
        let input = RunSettingsInput {
            target_version: r.target_version,
            concurrency: r.concurrency,
            canary_count: r.canary_count,
            max_failures: r.max_failures,
            max_attempts: r.max_attempts,
            lock_timeout,
            statement_timeout,
        };
        let run = self
            .upgrades
            .start(input, sel.unwrap_or_default(), r.dry_run, &actor)
            .await
            .map_err(status::upgrade)?;
        Ok(Response::new(run_to_pb(run)))
    }

    type WatchUpgradeStream = WatchStream;

    async fn watch_upgrade(
        &self,
        request: Request<pb::WatchUpgradeRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        require_scope(&caller(&request)?, Scope::UpgradesRun)?;
        let r = request.into_inner();
        let id = RunId::parse("run_id", &r.run_id).map_err(status::invalid)?;
        let interval = match duration("interval", r.interval).map_err(status::invalid)? {
            None => Duration::from_secs(1),
            Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(60) => d,
            Some(_) => {
                return Err(status::invalid(ValidationError::single(
                    "interval",
                    "must be between 100ms and 60s",
                )));
            }
        };
        // Fails fast for an unknown run.
        self.upgrades.get(id).await.map_err(status::upgrade)?;
        let mut cursor = None;
        // Outcomes sent whose transactions are above the cursor.
        let mut seen = std::collections::HashSet::new();
        if !r.from_start {
            // Count everything committed so far as seen: only what finishes
            // from now on is sent.
            self.upgrades
                .new_outcomes(id, &mut cursor, &mut seen)
                .await
                .map_err(status::upgrade)?;
        }
        let (tx, rx) = mpsc::channel(256);
        let upgrades = self.upgrades.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                // Every outcome since the last look, then the totals.
                let step = async {
                    // The run first: every outcome committed before it ended
                    // is then visible to the read below, so the last
                    // progress event comes after the last outcome.
                    let run = upgrades.get(id).await?;
                    for o in upgrades.new_outcomes(id, &mut cursor, &mut seen).await? {
                        let event = pb::UpgradeEvent {
                            event: Some(pb::upgrade_event::Event::Tenant(outcome_to_pb(o))),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return Ok(None);
                        }
                    }
                    let ended = run.status.is_final() || run.status == RunStatus::Halted;
                    let event = pb::UpgradeEvent {
                        event: Some(pb::upgrade_event::Event::Progress(run_to_pb(run))),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(None);
                    }
                    Ok::<_, UpgradeError>(Some(ended))
                }
                .await;
                match step {
                    Ok(Some(false)) => {}
                    Ok(Some(true) | None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(status::upgrade(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; watch again on another replica"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_upgrade(
        &self,
        request: Request<pb::GetUpgradeRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        require_scope(&caller(&request)?, Scope::UpgradesRun)?;
        let id = RunId::parse("run_id", &request.into_inner().run_id).map_err(status::invalid)?;
        let run = self.upgrades.get(id).await.map_err(status::upgrade)?;
        Ok(Response::new(run_to_pb(run)))
    }

    async fn list_upgrades(
        &self,
        request: Request<pb::ListUpgradesRequest>,
    ) -> Result<Response<pb::ListUpgradesResponse>, Status> {
        require_scope(&caller(&request)?, Scope::UpgradesRun)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let limit = match r.page_size {
            0 => 20,
            n if (1..=100).contains(&n) => n as usize,
            _ => {
                v.add("page_size", "must be between 1 and 100");
                0
            }
        };
        let before = if r.page_token.is_empty() {
            None
        } else {
            let parsed = r
                .page_token
                .strip_prefix(PAGE_TOKEN_PREFIX)
                .and_then(|t| RunId::parse("page_token", t).ok());
            if parsed.is_none() {
                v.add("page_token", "is not a token this service issued");
            }
            parsed
        };
        v.finish().map_err(status::invalid)?;
        let (runs, next) = self
            .upgrades
            .list(before, limit)
            .await
            .map_err(status::upgrade)?;
        Ok(Response::new(pb::ListUpgradesResponse {
            runs: runs.into_iter().map(run_to_pb).collect(),
            next_page_token: next
                .map(|n| format!("{PAGE_TOKEN_PREFIX}{n}"))
                .unwrap_or_default(),
        }))
    }

    async fn pause_upgrade(
        &self,
        request: Request<pb::UpgradeRunRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        self.act(request, Action::Pause).await
    }

    async fn resume_upgrade(
        &self,
        request: Request<pb::UpgradeRunRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        self.act(request, Action::Resume).await
    }

    async fn cancel_upgrade(
        &self,
        request: Request<pb::UpgradeRunRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        self.act(request, Action::Cancel).await
    }

    async fn retry_failed(
        &self,
        request: Request<pb::UpgradeRunRequest>,
    ) -> Result<Response<pb::UpgradeRun>, Status> {
        self.act(request, Action::RetryFailed).await
    }
}
