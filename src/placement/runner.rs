//! Runs placement jobs: in every replica one loop claims the oldest job
//! that is pending, or running under a lapsed lease, and moves its tenants
//! one at a time with `citus_schema_move` on a connection of its own.
//!
//! - The move's connection sets `client_connection_check_interval`, so a
//!   replica killed mid-move ends its backend within a second; Citus then
//!   rolls the move back and the tenant stays where it was, serving.
//! - The move's backend pid is recorded before the move starts. A replica
//!   taking a job over waits for that backend to end, then asks Citus where
//!   the tenant is: there is no guessing from the job's own record.
//! - A move holds the tenant's advisory lock (the one every upgrade of the
//!   tenant takes), so a tenant's upgrade and its move exclude each other.
//! - Cancel and shutdown cancel the move's backend; what Citus had finished
//!   is found out the same way, from where the tenant is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Job, JobStatus, MoveStatus, TenantMove, load_job, node_of};
use crate::catalog::audit;

/// How a running job is told to stop moving.
#[derive(Clone, Default)]
struct Signals {
    /// The operator cancelled the job.
    cancel: CancellationToken,
    /// This replica shuts down, or lost the job's lease: hand it over.
    hand_over: CancellationToken,
}

impl Signals {
    async fn any(&self) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.hand_over.cancelled() => {}
        }
    }

    fn fired(&self) -> bool {
        self.cancel.is_cancelled() || self.hand_over.is_cancelled()
    }
}

pub struct Runner {
    pool: PgPool,
    /// Options for a move's own connection.
    database: PgConnectOptions,
    owner: String,
    lease: Duration,
    poll: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// Starts this replica's placement loop.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    pool: PgPool,
    database: PgConnectOptions,
    owner: String,
    lease: Duration,
    poll: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let runner = Arc::new(Runner {
        pool,
        database,
        owner,
        lease,
        poll,
        wake,
        stop,
    });
    tasks.spawn(runner.run_loop());
}

/// Attempts at one move when it fails for a reason that passes.
const MOVE_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Whether a failed move is worth another attempt: a lock another move
/// holds ("could not acquire the lock required to move"), a conflict, a
/// lost connection.
fn retryable(e: &sqlx::Error) -> bool {
    crate::fleet::apply::is_transient(e)
        || matches!(e, sqlx::Error::Io(_))
        || e.as_database_error().is_some_and(|d| {
            d.message().contains("could not acquire the lock")
                || d.code().is_some_and(|c| c.starts_with("08"))
        })
}

/// The application_name of a move's connection.
fn application_name(job: Uuid) -> String {
    format!("tenantd move {job}")
}

impl Runner {
    async fn run_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
            match self.claim().await {
                Ok(Some(id)) => {
                    if let Err(e) = self.run(id).await {
                        tracing::warn!(job = %id, error = format!("{e:#}"), "placement job interrupted; it is taken up again");
                        // The lease lapses and a replica (maybe this one)
                        // takes the job up where Citus says it stands.
                        tokio::time::sleep(self.poll).await;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for placement jobs"),
            }
        }
    }

    /// The oldest unfinished job, if no other replica holds its lease.
    async fn claim(&self) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "WITH head AS (SELECT id, lease_owner, lease_expires_at FROM tenantd.cluster_jobs \
                            WHERE status IN ('pending', 'running') \
                            ORDER BY created_at, id LIMIT 1 FOR UPDATE) \
             UPDATE tenantd.cluster_jobs j SET status = 'running', \
                    started_at = coalesce(j.started_at, now()), lease_owner = $1, \
                    lease_expires_at = now() + $2 * interval '1 millisecond' \
               FROM head WHERE j.id = head.id \
                AND (head.lease_owner IS NULL OR head.lease_owner = $1 \
                     OR head.lease_expires_at < now()) \
             RETURNING j.id",
        )
        .bind(&self.owner)
        .bind(self.lease.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await
    }

    /// Renews the lease until `done`; fires `signals` on a cancel request,
    /// on shutdown, or when the lease is lost.
    async fn heartbeat(&self, job: Uuid, signals: Signals, done: CancellationToken) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = self.stop.cancelled() => {
                    signals.hand_over.cancel();
                    return;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.lease / 6) => {}
            }
            let renewed: Result<Option<bool>, _> = sqlx::query_scalar(
                "UPDATE tenantd.cluster_jobs \
                    SET lease_expires_at = now() + $3 * interval '1 millisecond' \
                  WHERE id = $1 AND lease_owner = $2 RETURNING cancel_requested",
            )
            .bind(job)
            .bind(&self.owner)
            .bind(self.lease.as_millis() as f64)
            .fetch_optional(&self.pool)
            .await;
            match renewed {
                Ok(Some(cancel)) => {
                    last_renewal = Instant::now();
                    if cancel {
                        signals.cancel.cancel();
                    }
                }
                Ok(None) => {
                    tracing::warn!(%job, "lost the placement job's lease; stopping its move");
                    signals.hand_over.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(%job, error = %e, "could not renew the placement job's lease");
                    if last_renewal.elapsed() > self.lease / 2 {
                        signals.hand_over.cancel();
                        return;
                    }
                }
            }
        }
    }

    async fn run(&self, id: Uuid) -> anyhow::Result<()> {
        let signals = Signals::default();
        let done = CancellationToken::new();
        let heartbeat = self.heartbeat(id, signals.clone(), done.clone());
        let work = async {
            let result = self.run_moves(id, &signals).await;
            done.cancel();
            result
        };
        let ((), result) = tokio::join!(heartbeat, work);
        result
    }

    async fn run_moves(&self, id: Uuid, signals: &Signals) -> anyhow::Result<()> {
        let job = self.job(id).await?;
        if job.cancel_requested {
            signals.cancel.cancel();
        }
        tracing::info!(job = %id, kind = %job.kind, moves = job.moves.len(), "placement job running");
        for m in &job.moves {
            if !matches!(m.status, MoveStatus::Pending | MoveStatus::Running) {
                continue;
            }
            // Once told to stop, pending moves stay pending; a move a dead
            // replica left running is still looked at, to record what
            // Citus made of it.
            if signals.fired() && m.status == MoveStatus::Pending {
                continue;
            }
            // A move that failed for a reason that passes (a lock another
            // move holds, a deadlock, a connection lost) is tried again.
            let mut attempt = 1;
            let mut m = m.clone();
            while self
                .run_move(&job, &m, signals, attempt < MOVE_ATTEMPTS)
                .await?
            {
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                m.status = MoveStatus::Pending;
                m.backend_pid = None;
            }
        }
        if signals.hand_over.is_cancelled() {
            // Shutdown or a lost lease: another replica finishes the job.
            sqlx::query(
                "UPDATE tenantd.cluster_jobs SET lease_expires_at = now() \
                  WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(&self.owner)
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        self.finish(id).await
    }

    async fn job(&self, id: Uuid) -> anyhow::Result<Job> {
        let mut conn = self.pool.acquire().await?;
        load_job(&mut conn, id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("placement job {id} vanished"))
    }

    /// Ends the job: cancelled moves left pending, the status from the
    /// moves, an audit event.
    async fn finish(&self, id: Uuid) -> anyhow::Result<()> {
        let mut tx = audit::Audited::begin(&self.pool).await?;
        let cancel: bool = sqlx::query_scalar(
            "SELECT cancel_requested FROM tenantd.cluster_jobs \
              WHERE id = $1 AND lease_owner = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(&self.owner)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| anyhow::anyhow!("lost the lease of placement job {id}"))?;
        if cancel {
            sqlx::query(
                "UPDATE tenantd.cluster_job_moves SET status = 'cancelled', finished_at = now() \
                  WHERE job_id = $1 AND status IN ('pending', 'running')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM tenantd.cluster_job_moves WHERE job_id = $1 GROUP BY 1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let count = |s: MoveStatus| {
            counts
                .iter()
                .find(|(w, _)| w == s.as_str())
                .map_or(0, |(_, n)| *n)
        };
        let status = if count(MoveStatus::Failed) > 0 {
            JobStatus::Failed
        } else if count(MoveStatus::Cancelled) > 0 {
            JobStatus::Cancelled
        } else {
            JobStatus::Succeeded
        };
        sqlx::query(
            "UPDATE tenantd.cluster_jobs SET status = $2, finished_at = now(), lease_owner = NULL, \
                    lease_expires_at = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .execute(&mut *tx)
        .await?;
        let details: serde_json::Map<String, serde_json::Value> = counts
            .into_iter()
            .map(|(s, n)| (s, serde_json::Value::from(n)))
            .collect();
        tx.commit(
            &format!("tenantd:{}", self.owner),
            "cluster_job.finished",
            &id.to_string(),
            &serde_json::json!({ "status": status.as_str(), "moves": details }),
        )
        .await?;
        tracing::info!(job = %id, %status, "placement job ended");
        Ok(())
    }

    async fn set_move(
        &self,
        job: Uuid,
        position: i32,
        status: MoveStatus,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE tenantd.cluster_job_moves SET status = $3, error = $4, backend_pid = NULL, \
                    finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END \
              WHERE job_id = $1 AND position = $2",
        )
        .bind(job)
        .bind(position)
        .bind(status.as_str())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether backend `pid` still runs a move of `job`.
    async fn backend_alive(&self, job: Uuid, pid: i32) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND application_name = $2)",
        )
        .bind(pid)
        .bind(application_name(job))
        .fetch_one(&self.pool)
        .await
    }

    async fn cancel_backend(&self, pid: i32) {
        if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(pid, error = %e, "could not cancel a move's backend");
        }
    }

    /// Moves one tenant and records the outcome; `Ok(true)` when it failed
    /// in a way worth another attempt and `may_retry` allowed one (the move
    /// is then left running, to be tried again).
    async fn run_move(
        &self,
        job: &Job,
        m: &TenantMove,
        signals: &Signals,
        may_retry: bool,
    ) -> anyhow::Result<bool> {
        let tenant: Option<(String, String)> =
            sqlx::query_as("SELECT schema_name, status FROM tenantd.tenants WHERE id = $1")
                .bind(m.tenant.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        let schema = match tenant {
            Some((schema, status)) if status != "purged" => schema,
            _ => {
                self.set_move(
                    job.id,
                    m.position,
                    MoveStatus::Skipped,
                    "the tenant was purged",
                )
                .await?;
                return Ok(false);
            }
        };

        // Taken over from a replica that died or shut down mid-move: its
        // backend may still be moving the tenant.
        if let (MoveStatus::Running, Some(pid)) = (m.status, m.backend_pid) {
            while self.backend_alive(job.id, pid).await? {
                if signals.fired() {
                    self.cancel_backend(pid).await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }

        let here = node_of(&mut *self.pool.acquire().await?, &schema).await?;
        match here {
            None => {
                self.set_move(
                    job.id,
                    m.position,
                    MoveStatus::Skipped,
                    "not a distributed schema with tables",
                )
                .await?;
                return Ok(false);
            }
            Some(here) if here == m.target => {
                // A move a dead replica had finished, or a stale plan.
                let (status, note) = match m.status {
                    MoveStatus::Running => (MoveStatus::Done, ""),
                    _ => (MoveStatus::Skipped, "already on the target"),
                };
                self.set_move(job.id, m.position, status, note).await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        if signals.cancel.is_cancelled() {
            self.set_move(
                job.id,
                m.position,
                MoveStatus::Cancelled,
                "cancelled before it started",
            )
            .await?;
            return Ok(false);
        }
        if signals.hand_over.is_cancelled() {
            self.set_move(job.id, m.position, MoveStatus::Pending, "")
                .await?;
            return Ok(false);
        }
        let Some((host, port)) = m
            .target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<i32>().ok()?)))
        else {
            self.set_move(
                job.id,
                m.position,
                MoveStatus::Failed,
                "the target is not host:port",
            )
            .await?;
            return Ok(false);
        };

        let mut conn = PgConnection::connect_with(
            &self
                .database
                .clone()
                .application_name(&application_name(job.id))
                .options([
                    ("citus.enable_schema_based_sharding", "off"),
                    ("client_connection_check_interval", "1000"),
                    ("statement_timeout", "0"),
                ]),
        )
        .await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        sqlx::query(
            "UPDATE tenantd.cluster_job_moves SET status = 'running', backend_pid = $3, error = '', \
                    started_at = coalesce(started_at, now()) \
              WHERE job_id = $1 AND position = $2",
        )
        .bind(job.id)
        .bind(m.position)
        .bind(pid)
        .execute(&self.pool)
        .await?;

        // The tenant's upgrade lock: a running upgrade of this tenant
        // finishes first, and no upgrade starts until the move ends.
        let key = crate::fleet::apply::lock_key(m.tenant);
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if got {
                break;
            }
            if signals.fired() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let started = Instant::now();
        let outcome = if signals.fired() {
            Err(None)
        } else {
            tracing::info!(job = %job.id, tenant = %m.tenant, source = %m.source, target = %m.target, "moving a tenant");
            let moving = sqlx::query("SELECT citus_schema_move($1::regnamespace, $2, $3)")
                .bind(&schema)
                .bind(&host)
                .bind(port)
                .execute(&mut conn);
            tokio::pin!(moving);
            let result = tokio::select! {
                r = &mut moving => r,
                () = signals.any() => {
                    self.cancel_backend(pid).await;
                    moving.await
                }
            };
            result.map(|_| ()).map_err(Some)
        };
        let _ = conn.close().await;

        let now_at = node_of(&mut *self.pool.acquire().await?, &schema).await?;
        let millis = started.elapsed().as_millis() as i64;
        if now_at.as_deref() == Some(m.target.as_str()) {
            self.set_move(job.id, m.position, MoveStatus::Done, "")
                .await?;
            audit::append(
                &mut *self.pool.acquire().await?,
                &format!("tenantd:{}", self.owner),
                "tenant.moved",
                &m.tenant.to_string(),
                &serde_json::json!({
                    "job": job.id.to_string(),
                    "source": m.source,
                    "target": m.target,
                    "ms": millis,
                }),
            )
            .await?;
            tracing::info!(job = %job.id, tenant = %m.tenant, target = %m.target, ms = millis, "tenant moved");
            return Ok(false);
        }
        if signals.cancel.is_cancelled() {
            self.set_move(
                job.id,
                m.position,
                MoveStatus::Cancelled,
                "cancelled; the tenant stayed where it was",
            )
            .await?;
        } else if signals.hand_over.is_cancelled() {
            self.set_move(job.id, m.position, MoveStatus::Pending, "")
                .await?;
        } else {
            if may_retry && matches!(&outcome, Err(Some(e)) if retryable(e)) {
                tracing::info!(job = %job.id, tenant = %m.tenant, error = ?outcome, "a tenant move failed; trying again");
                return Ok(true);
            }
            let why = match outcome {
                Err(Some(sqlx::Error::Database(db))) => {
                    format!("{}: {}", db.code().unwrap_or_default(), db.message())
                }
                Err(Some(e)) => e.to_string(),
                Err(None) | Ok(()) => {
                    "Citus reported success, but the tenant is not on the target".to_owned()
                }
            };
            tracing::warn!(job = %job.id, tenant = %m.tenant, error = %why, "a tenant move failed");
            self.set_move(job.id, m.position, MoveStatus::Failed, &why)
                .await?;
        }
        Ok(false)
    }
}
