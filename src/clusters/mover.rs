//! Moving a tenant from one cluster to another while it serves.
//!
//! A move is a durable job (`tenantd.tenant_moves`) run by whichever
//! replica holds its lease:
//!
//! 1. **preparing** — under the tenant's advisory lock (held for the whole
//!    move, so no upgrade changes its schema meanwhile), its role and schema
//!    are made on the target at the version of its ledger, tables emptied,
//!    their secondary indexes and constraints dropped there (not the
//!    primary keys, which the replication needs); a marker table beside
//!    them on both sides; a publication of its tables on the source; a
//!    subscription on the target.
//! 2. **copying** — PostgreSQL copies every table, then streams changes.
//! 3. **indexing** — the secondary indexes and constraints made again.
//! 4. **catching_up** — until a marker written on the source shows on the
//!    target quickly.
//! 5. **verifying** — under a short hold of the writes (as at the switch,
//!    below) a snapshot is taken on each side; the hold released, every
//!    table's row count and checksum are compared in the two snapshots
//!    (outside any pause, so the switch does not grow with the tenant).
//! 6. **cutting_over** — the source's tables are locked against writes
//!    (reads go on; writers wait, they are not refused); a marker written
//!    after the lock shows on the target, so every write acknowledged
//!    before it is there; sequences are set; the target role may log in;
//!    the catalog flips the placement (**switched**); the source role may
//!    not log in and its
//!    sessions end — the held calls, which committed nothing, run again on
//!    the target; the lock goes.
//! 7. **cleaning_up** — subscription, slot, publication and markers
//!    dropped; the source's schema and role after `source_grace`.
//!
//! A cancel, a failure or a crash before the switch undoes everything on
//! the target and every replication object, and the tenant stays on the
//! source, serving. After the switch a move only cleans up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Cluster, Clusters};
use crate::catalog::audit::Audited;
use crate::catalog::moves::{self, MoveRow};
use crate::catalog::{Engine, execute_batch, tenants};
use crate::domain::TenantStatus;
use crate::fleet::apply::{lock_key, remote_ledger};
use crate::tenant::{
    TenantMigrations, create_tenant_ddl_with, purge_tenant_ddl_if_exists, role_login_ddl,
    role_verifier,
};

/// How the move runner works; see `tenantd serve --help`.
#[derive(Debug, Clone)]
pub struct MoveSettings {
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often an idle replica looks for moves.
    pub poll_interval: Duration,
    /// The longest a switch may hold the tenant's writes; past it the
    /// switch is given up (the writes go on at the source) and tried again.
    pub cutover_timeout: Duration,
    /// How long the source's schema and role are kept after a switch.
    pub source_grace: Duration,
}

impl Default for MoveSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            cutover_timeout: Duration::from_secs(5),
            source_grace: Duration::from_secs(3600),
        }
    }
}

/// Sequences continue on the target this far past the source's last value:
/// a `nextval()` a tenant calls directly (not an INSERT, which the switch
/// holds) while the switch reads them may take a few more.
const SEQUENCE_MARGIN: i64 = 1000;
/// Times a switch is tried before the move fails (each gives up at the
/// cutover timeout, the writes going on at the source).
const SWITCH_TRIES: u32 = 3;
/// Attempts of a move whose failure may pass (a lost connection, a lock
/// time-out) before it is recorded failed.
const MAX_ATTEMPTS: i32 = 3;
/// The round trip of a marker under which the target counts as caught up.
const CAUGHT_UP: Duration = Duration::from_millis(200);

/// Why a move stopped before its end.
#[derive(Debug)]
enum Stop {
    Cancelled,
    /// The lease went to another replica, or this one shuts down: leave
    /// the move to whoever takes it next.
    Abandoned,
    Failed {
        error: anyhow::Error,
        retry: bool,
    },
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Self {
        let retry = error.chain().any(|c| {
            c.downcast_ref::<sqlx::Error>()
                .is_some_and(crate::fleet::apply::is_transient)
        });
        Stop::Failed { error, retry }
    }
}

/// The names a move gives what it makes: all derived from its id.
struct Names {
    /// Publication, subscription and slot.
    replication: String,
    /// The marker table, in schema `tenantd_move` on both sides.
    marker: String,
}

impl Names {
    fn of(id: Uuid) -> Self {
        let hex = id.simple();
        Self {
            replication: format!("tenantd_move_{hex}"),
            marker: format!("tenantd_move.\"m_{hex}\""),
        }
    }
}

/// Runs moves on this replica.
pub struct Mover {
    clusters: Clusters,
    migrations: Arc<TenantMigrations>,
    role_secret: Arc<[u8]>,
    settings: MoveSettings,
    owner: String,
}

impl Mover {
    pub fn new(
        clusters: Clusters,
        migrations: Arc<TenantMigrations>,
        role_secret: Vec<u8>,
        settings: MoveSettings,
        owner: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            clusters,
            migrations,
            role_secret: role_secret.into(),
            settings,
            owner,
        })
    }

    /// The runner loop: claims a move, runs it, drops sources past their
    /// grace; until `stop`.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken, tasks: &TaskTracker) {
        let wake = self.clusters.move_wake();
        tasks.spawn(async move {
            loop {
                let worked = match moves::claim(self.clusters.catalog(), &self.owner, self.settings.lease).await {
                    Ok(Some(m)) => {
                        self.run(m, &stop).await;
                        true
                    }
                    Ok(None) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for tenant moves");
                        false
                    }
                };
                if let Err(e) = self.drop_sources().await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot drop the source of a finished move");
                }
                if worked {
                    continue;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = wake.notified() => {}
                }
            }
        });
    }

    async fn run(&self, m: MoveRow, stop: &CancellationToken) {
        let flags = Arc::new(Flags::default());
        let beat = self.heartbeat(m.id, flags.clone(), stop.clone());
        tracing::info!(move_id = %m.id, tenant_id = %m.tenant_id, source = %m.source,
            target = %m.target, attempt = m.attempts, phase = %m.phase, "moving a tenant");
        let outcome = self.execute(&m, &flags).await;
        beat.cancel();
        let catalog = self.clusters.catalog();
        let result = match outcome {
            Ok(()) => {
                tracing::info!(move_id = %m.id, tenant_id = %m.tenant_id, "tenant moved");
                moves::finish(catalog, m.id, &self.owner, "succeeded", None).await
            }
            Err(Stop::Abandoned) => return,
            Err(Stop::Cancelled) => {
                if !self.undo_or_record(&m).await {
                    return;
                }
                self.audit(&m, "tenant.move_cancelled", json!({})).await;
                moves::finish(catalog, m.id, &self.owner, "cancelled", None).await
            }
            Err(Stop::Failed { error, retry }) => {
                let message = format!("{error:#}");
                tracing::warn!(move_id = %m.id, tenant_id = %m.tenant_id, error = %message, retry, "tenant move failed");
                if !self.undo_or_record(&m).await {
                    return;
                }
                if retry && m.attempts < MAX_ATTEMPTS {
                    // Pending again, for any replica.
                    sqlx::query(
                        "UPDATE tenantd.tenant_moves SET status = 'pending', phase = 'queued', \
                             error = $3, lease_owner = NULL, lease_expires_at = NULL \
                          WHERE id = $1 AND lease_owner = $2",
                    )
                    .bind(m.id)
                    .bind(&self.owner)
                    .bind(&message)
                    .execute(catalog)
                    .await
                    .map(drop)
                } else {
                    self.audit(&m, "tenant.move_failed", json!({ "error": message }))
                        .await;
                    moves::finish(catalog, m.id, &self.owner, "failed", Some(&message)).await
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(move_id = %m.id, error = %e, "cannot record the end of a move");
        }
    }

    /// Keeps the lease and reads cancel requests until cancelled.
    fn heartbeat(&self, id: Uuid, flags: Arc<Flags>, stop: CancellationToken) -> CancellationToken {
        let done = CancellationToken::new();
        let (catalog, owner, lease) = (
            self.clusters.catalog().clone(),
            self.owner.clone(),
            self.settings.lease,
        );
        let until = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = until.cancelled() => return,
                    () = stop.cancelled() => flags.abandoned.store(true, Ordering::SeqCst),
                    () = tokio::time::sleep(lease / 4) => {}
                }
                match moves::heartbeat(&catalog, id, &owner, lease).await {
                    Ok(Some(cancel)) => flags.cancel.store(cancel, Ordering::SeqCst),
                    Ok(None) => flags.abandoned.store(true, Ordering::SeqCst),
                    Err(e) => {
                        tracing::warn!(move_id = %id, error = %e, "cannot extend a move's lease")
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        });
        done
    }

    async fn phase(
        &self,
        m: &MoveRow,
        phase: &str,
        tables: Option<(i32, i32)>,
    ) -> Result<(), Stop> {
        moves::set_phase(self.clusters.catalog(), m.id, &self.owner, phase, tables)
            .await
            .context("record the move's phase")?;
        Ok(())
    }

    async fn execute(&self, m: &MoveRow, flags: &Flags) -> Result<(), Stop> {
        let source = self
            .clusters
            .get(&m.source())
            .await
            .map_err(|e| anyhow!(e))?;
        let target = self
            .clusters
            .get(&m.target())
            .await
            .map_err(|e| anyhow!(e))?;
        let names = Names::of(m.id);
        if matches!(m.phase.as_str(), "switched" | "cleaning_up") {
            return self.clean_up(m, &source, &target, &names).await;
        }
        // What an earlier attempt left, before anything new.
        self.undo(m).await?;
        flags.check()?;
        self.phase(m, "preparing", None).await?;
        let id = m.tenant();
        // Held until the move ends: upgrades of the tenant wait.
        let mut lock = self
            .clusters
            .catalog()
            .acquire()
            .await
            .context("a catalog connection for the tenant's lock")?
            .detach();
        let result = async {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(lock_key(id))
                .execute(&mut lock)
                .await
                .context("take the tenant's lock")?;
            let tenant = tenants::get(&mut lock, id)
                .await
                .context("read the tenant")?
                .ok_or_else(|| anyhow!("the tenant no longer exists"))?;
            if tenant.status == TenantStatus::Purged {
                return Err(Stop::Failed { error: anyhow!("the tenant was purged"), retry: false });
            }
            if tenant.placement != m.source() {
                return Err(Stop::Failed {
                    error: anyhow!("the tenant is on cluster {}, not {}", tenant.placement, m.source),
                    retry: false,
                });
            }
            let (tables, deferred) = self.prepare(m, &source, &target, &names, &mut lock).await?;
            flags.check()?;
            self.copy(m, &target, &names, flags).await?;
            flags.check()?;
            self.index(m, &target, &deferred).await?;
            crate::crash::point("move.indexed");
            self.catch_up(m, &source, &target, &names, flags).await?;
            crate::crash::point("move.caught_up");
            let verified = self.verify(m, &source, &target, &names, &tables).await?;
            crate::crash::point("move.verified");
            let mut tries = 0;
            loop {
                flags.check()?;
                // The verification (or a switch given up) may have left
                // the target behind: the switch starts caught up, or its
                // pause would include the backlog.
                self.catch_up(m, &source, &target, &names, flags).await?;
                self.phase(m, "cutting_over", None).await?;
                tries += 1;
                match self.switch(m, &source, &target, &names, &tables, &verified).await {
                    Ok(()) => break,
                    Err(Stop::Failed { error, retry: true }) if tries < SWITCH_TRIES => {
                        tracing::warn!(move_id = %m.id, error = %format!("{error:#}"), "switch given up; trying again");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        .await;
        let _ = lock.close().await;
        result?;
        self.clean_up(m, &source, &target, &names).await
    }

    /// Role, schema and marker on the target; marker and publication on
    /// the source; the subscription. Answers the tenant's tables, and what
    /// makes the target's secondary indexes and constraints again after
    /// the copy ([`defer_secondary`]).
    async fn prepare(
        &self,
        m: &MoveRow,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
        catalog: &mut PgConnection,
    ) -> Result<(Vec<String>, Vec<String>), Stop> {
        for (side, c) in [("source", source), ("target", target)] {
            if c.engine != Engine::Postgres {
                return Err(Stop::Failed {
                    error: anyhow!(
                        "the {side} cluster {} is a Citus coordinator: move the tenant with Citus's own moves",
                        c.name
                    ),
                    retry: false,
                });
            }
        }
        let id = m.tenant();
        let schema = id.schema_name();
        let ledger = if m.source().is_default() {
            crate::catalog::upgrade_batches::ledger_version(catalog, id).await
        } else {
            remote_ledger(source, id).await
        }
        .context("read the tenant's ledger on the source")?
        .ok_or_else(|| anyhow!("the tenant has no schema on the source"))?;
        let applied = self.migrations.between(0, ledger);
        if applied.len() as i64 != ledger {
            return Err(Stop::Failed {
                error: anyhow!("the tenant is at version {ledger}, which this build does not know"),
                retry: false,
            });
        }
        let verifier = role_verifier(&self.role_secret, id);
        let mut ddl = create_tenant_ddl_with(id, &verifier, applied);
        ddl.push_str(&role_login_ddl(id, false));
        ddl.push_str(";\n");
        let marker = format!(
            "CREATE SCHEMA IF NOT EXISTS tenantd_move; REVOKE ALL ON SCHEMA tenantd_move FROM PUBLIC; \
             CREATE TABLE IF NOT EXISTS {} (token uuid PRIMARY KEY);",
            names.marker
        );
        let mut t = target.admin.begin().await.context("begin on the target")?;
        execute_batch(&mut t, &ddl)
            .await
            .context("make the tenant's role and schema on the target")?;
        let tables = tables_of(&mut t, schema.as_str())
            .await
            .context("list the tables on the target")?;
        if !tables.is_empty() {
            // What the migrations wrote (the ledger, seed rows) comes over
            // with the copy.
            execute_batch(&mut t, &format!("TRUNCATE {}", tables.join(", ")))
                .await
                .context("empty the target's tables")?;
        }
        let deferred = defer_secondary(&mut t, schema.as_str())
            .await
            .context("put off the target's secondary indexes")?;
        execute_batch(&mut t, &marker)
            .await
            .context("make the marker on the target")?;
        t.commit().await.context("commit on the target")?;

        let mut s = source
            .admin
            .acquire()
            .await
            .context("connect to the source")?;
        let source_tables = tables_of(&mut s, schema.as_str())
            .await
            .context("list the tables on the source")?;
        if source_tables != tables {
            return Err(Stop::Failed {
                error: anyhow!(
                    "the tenant's tables differ between its ledger's version and its schema on the source"
                ),
                retry: false,
            });
        }
        // UPDATE and DELETE of a published table need a replica identity.
        let without_key: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relreplident = 'd' \
                AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
        )
        .bind(schema.as_str())
        .fetch_all(&mut *s)
        .await
        .context("find tables without a primary key")?;
        for table in without_key {
            execute_batch(
                &mut s,
                &format!("ALTER TABLE {table} REPLICA IDENTITY FULL"),
            )
            .await
            .context("give a table a replica identity")?;
        }
        execute_batch(&mut s, &marker)
            .await
            .context("make the marker on the source")?;
        let published: Vec<String> = tables
            .iter()
            .cloned()
            .chain([names.marker.clone()])
            .collect();
        execute_batch(
            &mut s,
            &format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                names.replication,
                published.join(", ")
            ),
        )
        .await
        .context("publish the tenant's tables on the source")?;
        drop(s);
        execute_batch(
            &mut *target
                .admin
                .acquire()
                .await
                .context("connect to the target")?,
            &format!(
                "CREATE SUBSCRIPTION {r} CONNECTION '{}' PUBLICATION {r} WITH (slot_name = '{r}')",
                conninfo(source).replace('\'', "''"),
                r = names.replication,
            ),
        )
        .await
        .context("subscribe the target to the source")?;
        crate::crash::point("move.after_subscribe");
        Ok((tables, deferred))
    }

    /// The secondary indexes and constraints put off by the preparation,
    /// made on the target now that the copy is done (the changes streamed
    /// meanwhile wait for each).
    async fn index(&self, m: &MoveRow, target: &Cluster, deferred: &[String]) -> Result<(), Stop> {
        if deferred.is_empty() {
            return Ok(());
        }
        self.phase(m, "indexing", None).await?;
        let mut t = target
            .admin
            .acquire()
            .await
            .context("connect to the target")?;
        let started = Instant::now();
        execute_batch(
            &mut t,
            &format!(
                "SET maintenance_work_mem = '256MB'; {}; RESET maintenance_work_mem",
                deferred.join(";\n")
            ),
        )
        .await
        .context("make the secondary indexes and constraints on the target")?;
        tracing::info!(move_id = %m.id, statements = deferred.len(), took_ms = started.elapsed().as_millis() as u64, "indexes made on the target");
        Ok(())
    }

    /// Until PostgreSQL has copied every table.
    async fn copy(
        &self,
        m: &MoveRow,
        target: &Cluster,
        names: &Names,
        flags: &Flags,
    ) -> Result<(), Stop> {
        loop {
            flags.check()?;
            let (total, ready): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE r.srsubstate IN ('r', 's')) \
                   FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                  WHERE s.subname = $1",
            )
            .bind(&names.replication)
            .fetch_one(&target.admin)
            .await
            .context("read the copy's progress")?;
            self.phase(m, "copying", Some((total as i32, ready as i32)))
                .await?;
            crate::crash::point("move.copying");
            if total > 0 && ready == total {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until a marker written on the source shows on the target within
    /// [`CAUGHT_UP`].
    async fn catch_up(
        &self,
        m: &MoveRow,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
        flags: &Flags,
    ) -> Result<(), Stop> {
        self.phase(m, "catching_up", None).await?;
        loop {
            flags.check()?;
            let started = Instant::now();
            let token = write_marker(source, names).await?;
            wait_for_marker(target, names, token, Duration::from_secs(60), flags).await?;
            if started.elapsed() <= CAUGHT_UP {
                return Ok(());
            }
        }
    }

    /// Holds the tenant's writes on the source — its tables locked against
    /// writes (reads go on; writers wait, they are not refused) in the
    /// transaction answered, which ends the hold — until a marker written
    /// under the hold shows on the target: from then on both sides hold
    /// the same rows. Answers when the hold began.
    async fn hold_writes<'c>(
        &self,
        conn: &'c mut PgConnection,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
        tables: &[String],
    ) -> Result<(sqlx::Transaction<'c, sqlx::Postgres>, Instant), Stop> {
        let mut x = sqlx::Connection::begin(conn)
            .await
            .context("begin the hold")?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *x)
            .await
            .context("begin the hold")?;
        let started = Instant::now();
        let lock_sql = format!(
            "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '{}ms'; \
             LOCK TABLE {} IN EXCLUSIVE MODE",
            self.settings.cutover_timeout.as_millis(),
            tables.join(", ")
        );
        let lock = execute_batch(&mut x, &lock_sql);
        // An autovacuum of the tenant's tables would hold the lock up
        // until PostgreSQL cancels it for us, after deadlock_timeout (1 s):
        // cancelled at once instead (it runs again later).
        let unblock = async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = sqlx::query(
                    "SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a \
                      WHERE a.pid = ANY (pg_blocking_pids($1)) AND a.backend_type = 'autovacuum worker'",
                )
                .bind(pid)
                .execute(&source.admin)
                .await;
            }
        };
        tokio::select! {
            locked = lock => locked.context("hold the tenant's writes on the source")?,
            () = unblock => {}
        }
        let token = write_marker(source, names).await?;
        let left = self
            .settings
            .cutover_timeout
            .saturating_sub(started.elapsed());
        wait_for_marker(target, names, token, left, &Flags::default()).await?;
        Ok((x, started))
    }

    /// The copy compared with the source before the switch, at one moment:
    /// under a short hold of the writes ([`Self::hold_writes`]) a snapshot
    /// is taken on each side; the hold released (writes go on at the
    /// source), every table's row count and checksum are computed in the
    /// two snapshots, in parallel. A difference fails the move, which
    /// leaves the tenant on the source. What happens after that moment
    /// reaches the target through the same replication, and the switch
    /// waits for all of it; so the switch's own pause does not grow with
    /// the tenant's size. Answers what was compared.
    async fn verify(
        &self,
        m: &MoveRow,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
        tables: &[String],
    ) -> Result<serde_json::Value, Stop> {
        self.phase(m, "verifying", None).await?;
        const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; \
             SET LOCAL extra_float_digits = 3; SELECT 1";
        let mut here = source
            .admin
            .acquire()
            .await
            .context("connect to the source")?;
        let mut there = target
            .admin
            .acquire()
            .await
            .context("connect to the target")?;
        let mut hold = source
            .admin
            .acquire()
            .await
            .context("connect to the source")?;
        let (x, held_from) = self
            .hold_writes(&mut hold, source, target, names, tables)
            .await?;
        // Nothing commits on the tenant's tables while the hold lasts: the
        // two snapshots see the same rows.
        let snapshots = async {
            execute_batch(&mut here, SNAPSHOT).await?;
            execute_batch(&mut there, SNAPSHOT).await
        }
        .await;
        let _ = x.rollback().await;
        let held = held_from.elapsed();
        snapshots.context("take a snapshot on each side")?;
        let (mine, theirs) =
            tokio::join!(checksums(&mut here, tables), checksums(&mut there, tables));
        let _ = execute_batch(&mut here, "ROLLBACK").await;
        let _ = execute_batch(&mut there, "ROLLBACK").await;
        let mine = mine.context("checksum the source's tables")?;
        let theirs = theirs.context("checksum the target's tables")?;
        if mine != theirs {
            let differ: Vec<&String> = mine
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| &a.0)
                .collect();
            return Err(Stop::Failed {
                error: anyhow!(
                    "the copies differ after the catch-up (tables {differ:?}); the tenant stays on the source"
                ),
                retry: false,
            });
        }
        tracing::info!(move_id = %m.id, held_ms = held.as_millis() as u64, "copy verified");
        Ok(json!(
            mine.iter()
                .map(|(t, rows, sum)| (t.clone(), json!([rows, sum])))
                .collect::<serde_json::Map<_, _>>()
        ))
    }

    /// The switch: see the module's documentation.
    async fn switch(
        &self,
        m: &MoveRow,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
        tables: &[String],
        verified: &serde_json::Value,
    ) -> Result<(), Stop> {
        let id = m.tenant();
        let mut hold = source
            .admin
            .acquire()
            .await
            .context("connect to the source")?;
        let (mut x, started) = self
            .hold_writes(&mut hold, source, target, names, tables)
            .await?;
        crate::crash::point("move.holding_writes");
        // Sequences: the source's values (INSERTs are held; see
        // SEQUENCE_MARGIN), continued on the target.
        let sequences: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY 1",
        )
        .bind(id.schema_name().as_str())
        .fetch_all(&mut *x)
        .await
        .context("list the tenant's sequences")?;
        let mut setvals = String::new();
        for seq in &sequences {
            let (last, called): (i64, bool) =
                sqlx::query_as(&format!("SELECT last_value, is_called FROM {seq}"))
                    .fetch_one(&mut *x)
                    .await
                    .context("read a sequence on the source")?;
            let next = if called || last > 1 {
                last + SEQUENCE_MARGIN
            } else {
                last
            };
            setvals.push_str(&format!(
                "SELECT setval('{}', {next}, {});\n",
                seq.replace('\'', "''"),
                called || last > 1
            ));
        }
        let mut t = target
            .admin
            .acquire()
            .await
            .context("connect to the target")?;
        if !setvals.is_empty() {
            execute_batch(&mut t, &setvals)
                .await
                .context("set the sequences on the target")?;
        }
        // The catalog's rows of the move and the tenant, locked until the
        // flip commits: a cancel that came first is honoured; the target
        // role may log in only if the tenant is active now (a suspend or an
        // archive meanwhile waits, and then acts on the new cluster).
        let mut flip = Audited::begin(self.clusters.catalog())
            .await
            .context("begin the switch in the catalog")?;
        let (cancelled, status) = moves::lock_for_switch(&mut flip, m)
            .await
            .context("lock the move and the tenant")?;
        if cancelled {
            return Err(Stop::Cancelled);
        }
        let active = status.as_deref() == Some(TenantStatus::Active.as_str());
        execute_batch(&mut t, &role_login_ddl(id, active))
            .await
            .context("let the tenant's role log in on the target")?;
        drop(t);
        let pause_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        if !moves::switch(&mut flip, m, pause_ms, verified)
            .await
            .context("switch the placement")?
        {
            return Err(Stop::Failed {
                error: anyhow!("the tenant left the source during the move"),
                retry: false,
            });
        }
        flip.commit(
            "tenantd",
            "tenant.moved",
            &format!("tenant:{id}"),
            &json!({ "move_id": m.id, "from": m.source, "to": m.target, "requested_by": m.requested_by, "verified": verified }),
        )
        .await
        .context("commit the switch")?;
        crate::crash::point("move.after_switch");
        // The source: no new session, the held ones ended (they committed
        // nothing and run again on the target), then the lock goes.
        let role = id.role_name();
        let mut other = source
            .admin
            .acquire()
            .await
            .context("connect to the source")?;
        execute_batch(&mut other, &role_login_ddl(id, false))
            .await
            .context("stop the role's logins on the source")?;
        for _ in 0..200 {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                  WHERE usename = $1 AND datname = current_database()",
            )
            .bind(role.as_str())
            .fetch_one(&mut *other)
            .await
            .context("end the role's sessions on the source")?;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = x.rollback().await;
        tracing::info!(move_id = %m.id, tenant_id = %id, pause_ms = started.elapsed().as_millis() as u64, "switched");
        Ok(())
    }

    /// After the switch: the replication objects and markers go.
    async fn clean_up(
        &self,
        m: &MoveRow,
        source: &Cluster,
        target: &Cluster,
        names: &Names,
    ) -> Result<(), Stop> {
        self.phase(m, "cleaning_up", None).await?;
        drop_replication(source, target, names).await?;
        if self.settings.source_grace.is_zero() {
            self.drop_source(m).await?;
        }
        Ok(())
    }

    /// Before the switch: everything the move made, on both sides.
    async fn undo(&self, m: &MoveRow) -> anyhow::Result<()> {
        let source = self.clusters.get(&m.source()).await?;
        let target = self.clusters.get(&m.target()).await?;
        drop_replication(&source, &target, &Names::of(m.id))
            .await
            .map_err(|e| match e {
                Stop::Failed { error, .. } => error,
                other => anyhow!("{other:?}"),
            })?;
        // The tenant's schema on the target only while the catalog places
        // it elsewhere — and never on the source's own server (its role is
        // the source's there).
        let placed = tenants::status_of(self.clusters.catalog(), m.tenant()).await?;
        if one_server(&source, &target).await? {
            bail!(
                "clusters {} and {} are on one PostgreSQL server: nothing of the tenant is dropped there",
                m.source,
                m.target
            );
        }
        if placed.is_none_or(|(_, cluster)| cluster != m.target()) {
            let mut t = target.admin.acquire().await?;
            execute_batch(&mut t, &purge_tenant_ddl_if_exists(m.tenant()))
                .await
                .context("drop the tenant's schema and role on the target")?;
        }
        Ok(())
    }

    /// [`Self::undo`]; when it fails, the move keeps the error for GetMove
    /// and is tried again later — until its attempts run out: then it ends
    /// failed, saying what may be left (the tenant stays on the source).
    async fn undo_or_record(&self, m: &MoveRow) -> bool {
        let Err(e) = self.undo(m).await else {
            return true;
        };
        let message = format!("cannot undo the move: {e:#}");
        tracing::warn!(move_id = %m.id, error = %message, "cannot undo a move yet");
        let catalog = self.clusters.catalog();
        let recorded = if m.attempts >= MAX_ATTEMPTS + 2 {
            self.audit(m, "tenant.move_failed", json!({ "error": message }))
                .await;
            let message = format!(
                "{message}; the tenant stays on the source, and what the move made on the \
                 target may be left there"
            );
            moves::finish(catalog, m.id, &self.owner, "failed", Some(&message)).await
        } else {
            sqlx::query("UPDATE tenantd.tenant_moves SET error = $2 WHERE id = $1")
                .bind(m.id)
                .bind(&message)
                .execute(catalog)
                .await
                .map(drop)
        };
        if let Err(e) = recorded {
            tracing::warn!(move_id = %m.id, error = %e, "cannot record a move's state");
        }
        false
    }

    /// The sources of moves past their grace.
    async fn drop_sources(&self) -> anyhow::Result<()> {
        for m in moves::sources_left(self.clusters.catalog(), self.settings.source_grace).await? {
            self.drop_source(&m).await.map_err(|e| anyhow!("{e:?}"))?;
        }
        Ok(())
    }

    async fn drop_source(&self, m: &MoveRow) -> Result<(), Stop> {
        let placed = tenants::status_of(self.clusters.catalog(), m.tenant())
            .await
            .context("read the tenant's placement")?;
        if placed.is_some_and(|(_, cluster)| cluster != m.source()) {
            let source = self
                .clusters
                .get(&m.source())
                .await
                .map_err(|e| anyhow!(e))?;
            let mut s = source
                .admin
                .acquire()
                .await
                .context("connect to the source")?;
            execute_batch(&mut s, &purge_tenant_ddl_if_exists(m.tenant()))
                .await
                .context("drop the tenant's schema and role on the source")?;
        }
        moves::source_dropped(self.clusters.catalog(), m.id)
            .await
            .context("record the source dropped")?;
        Ok(())
    }

    async fn audit(&self, m: &MoveRow, action: &str, mut details: serde_json::Value) {
        details["move_id"] = json!(m.id);
        details["from"] = json!(m.source);
        details["to"] = json!(m.target);
        let result = async {
            let tx = Audited::begin(self.clusters.catalog()).await?;
            tx.commit(
                "tenantd",
                action,
                &format!("tenant:{}", m.tenant_id),
                &details,
            )
            .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(move_id = %m.id, error = %e, "cannot audit a move");
        }
    }
}

/// What the heartbeat tells the move.
#[derive(Default)]
struct Flags {
    cancel: AtomicBool,
    abandoned: AtomicBool,
}

impl Flags {
    fn check(&self) -> Result<(), Stop> {
        if self.abandoned.load(Ordering::SeqCst) {
            return Err(Stop::Abandoned);
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }
}

/// The tenant schema's tables, qualified and quoted, by name.
async fn tables_of(conn: &mut PgConnection, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
}

/// Rows and an order-independent checksum of every table.
/// Drops the secondary indexes and constraints (unique, exclusion,
/// foreign keys; not the primary keys, which the replication needs to
/// apply updates and deletes) of `schema`'s tables on the target, as
/// Citus's moves copy into tables without them: each copied row then
/// updates its table and primary key only. Answers the statements that
/// make them again, in order: indexes and unique and exclusion
/// constraints, then foreign keys.
async fn defer_secondary(t: &mut PgConnection, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    // Foreign keys first: they may lean on a unique index dropped after.
    let constraints: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname), \
                format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, \
                       pg_get_constraintdef(k.oid)), \
                k.contype = 'f' \
           FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
          WHERE n.nspname = $1 AND k.contype IN ('f', 'u', 'x') \
          ORDER BY k.contype <> 'f', k.conname",
    )
    .bind(schema)
    .fetch_all(&mut *t)
    .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid) \
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = $1 AND NOT i.indisprimary AND NOT i.indisreplident \
            AND NOT EXISTS (SELECT FROM pg_constraint k \
                             WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x')) \
          ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *t)
    .await?;
    let mut drops = String::new();
    for drop in constraints
        .iter()
        .map(|(drop, _, _)| drop)
        .chain(indexes.iter().map(|(drop, _)| drop))
    {
        drops.push_str(drop);
        drops.push_str(";\n");
    }
    if !drops.is_empty() {
        execute_batch(t, &drops).await?;
    }
    // Again: indexes, then the constraints, foreign keys last.
    let (keys, others): (Vec<_>, Vec<_>) = constraints
        .into_iter()
        .partition(|(_, _, foreign)| *foreign);
    Ok(indexes
        .into_iter()
        .map(|(_, make)| make)
        .chain(others.into_iter().map(|(_, make, _)| make))
        .chain(keys.into_iter().map(|(_, make, _)| make))
        .collect())
}

/// Whether two clusters are on one PostgreSQL server (its system
/// identifier), whichever databases they name.
pub(crate) async fn one_server(a: &Cluster, b: &Cluster) -> anyhow::Result<bool> {
    let (x, y) = tokio::try_join!(super::identity(&a.admin), super::identity(&b.admin))
        .context("read the servers' system identifiers")?;
    Ok(x.0 == y.0)
}

async fn checksums(
    conn: &mut PgConnection,
    tables: &[String],
) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let (rows, sum): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t"
        ))
        .fetch_one(&mut *conn)
        .await?;
        out.push((table.clone(), rows, sum));
    }
    Ok(out)
}

async fn write_marker(source: &Cluster, names: &Names) -> Result<Uuid, Stop> {
    let token = Uuid::new_v4();
    sqlx::query(&format!("INSERT INTO {} (token) VALUES ($1)", names.marker))
        .bind(token)
        .execute(&source.admin)
        .await
        .context("write a marker on the source")?;
    Ok(token)
}

async fn wait_for_marker(
    target: &Cluster,
    names: &Names,
    token: Uuid,
    within: Duration,
    flags: &Flags,
) -> Result<(), Stop> {
    let deadline = Instant::now() + within;
    let mut conn = target
        .admin
        .acquire()
        .await
        .context("connect to the target")?;
    let sql = format!(
        "SELECT EXISTS (SELECT FROM {} WHERE token = $1)",
        names.marker
    );
    loop {
        let arrived: bool = sqlx::query_scalar(&sql)
            .bind(token)
            .fetch_one(&mut *conn)
            .await
            .context("look for the marker on the target")?;
        if arrived {
            return Ok(());
        }
        flags.check()?;
        if Instant::now() >= deadline {
            return Err(Stop::Failed {
                error: anyhow!("the target did not catch up within {within:?}"),
                retry: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Drops the subscription (on the target), the slot and the publication
/// (on the source) and the markers; each only if it is there.
async fn drop_replication(source: &Cluster, target: &Cluster, names: &Names) -> Result<(), Stop> {
    let r = &names.replication;
    let mut t = target
        .admin
        .acquire()
        .await
        .context("connect to the target")?;
    let subscribed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = $1)")
            .bind(r)
            .fetch_one(&mut *t)
            .await
            .context("look for the subscription")?;
    if subscribed {
        // Detached from its slot first, so that the drop needs no
        // connection to the source; the slot goes below.
        execute_batch(
            &mut t,
            &format!("ALTER SUBSCRIPTION {r} DISABLE; ALTER SUBSCRIPTION {r} SET (slot_name = NONE); DROP SUBSCRIPTION {r}"),
        )
        .await
        .context("drop the subscription")?;
    }
    execute_batch(&mut t, &format!("DROP TABLE IF EXISTS {}", names.marker))
        .await
        .context("drop the target's marker")?;
    drop(t);
    let mut s = source
        .admin
        .acquire()
        .await
        .context("connect to the source")?;
    for _ in 0..100 {
        let slot: Option<Option<i32>> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(r)
                .fetch_optional(&mut *s)
                .await
                .context("look for the slot")?;
        match slot {
            None => break,
            Some(Some(pid)) => {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *s)
                    .await
                    .context("end the slot's sender")?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(None) => {
                sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(r)
                    .execute(&mut *s)
                    .await
                    .context("drop the slot")?;
            }
        }
    }
    execute_batch(
        &mut s,
        &format!(
            "DROP PUBLICATION IF EXISTS {r}; DROP TABLE IF EXISTS {}",
            names.marker
        ),
    )
    .await
    .context("drop the publication and the source's marker")?;
    Ok(())
}

/// How the target reaches the source: libpq's keywords, from what tenantd
/// connects with. TLS as the source's URL asks, without verification (the
/// target has none of tenantd's certificate files).
fn conninfo(c: &Cluster) -> String {
    let o = &c.options;
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let host = match o.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => o.get_host().to_owned(),
    };
    let mut info = format!(
        "host={} port={} dbname={} user={}",
        quote(&host),
        o.get_port(),
        quote(o.get_database().unwrap_or(o.get_username())),
        quote(o.get_username()),
    );
    if let Some(password) = &c.password {
        info.push_str(&format!(" password={}", quote(password)));
    }
    let sslmode = match o.get_ssl_mode() {
        sqlx::postgres::PgSslMode::Disable => "disable",
        sqlx::postgres::PgSslMode::Allow => "allow",
        sqlx::postgres::PgSslMode::Prefer => "prefer",
        _ => "require",
    };
    info.push_str(&format!(" sslmode={sslmode}"));
    info
}

/// Checks a requested move before it is queued: both clusters plain
/// PostgreSQL, logical replication possible, and tenantd's role on the
/// target able to create a subscription.
pub async fn check_possible(source: &Cluster, target: &Cluster) -> anyhow::Result<()> {
    for (side, c) in [("source", source), ("target", target)] {
        if c.engine != Engine::Postgres {
            bail!(
                "the {side} cluster {} is a Citus coordinator: move the tenant with Citus's own moves",
                c.name
            );
        }
    }
    if one_server(source, target).await? {
        bail!(
            "clusters {} and {} are on one PostgreSQL server, whose roles their databases share: \
             a tenant cannot be moved between them",
            source.name,
            target.name
        );
    }
    let (wal_level, replication): (String, bool) = sqlx::query_as(
        "SELECT current_setting('wal_level'), rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&source.admin)
    .await
    .context("read the source's settings")?;
    if wal_level != "logical" {
        bail!(
            "the source cluster {} has wal_level = {wal_level}; a move needs logical (a restart)",
            source.name
        );
    }
    if !replication {
        bail!(
            "tenantd's role on the source cluster {} may not replicate (ALTER ROLE … REPLICATION)",
            source.name
        );
    }
    let (version, subscribe): (i32, bool) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int, \
                CASE WHEN rolsuper THEN true \
                     WHEN current_setting('server_version_num')::int >= 160000 \
                     THEN pg_has_role(current_user, 'pg_create_subscription', 'USAGE') \
                     ELSE false END \
           FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&target.admin)
    .await
    .context("read the target's settings")?;
    if !subscribe {
        bail!(
            "tenantd's role on the target cluster {} may not create subscriptions (PostgreSQL {}: {})",
            target.name,
            version / 10000,
            if version >= 160000 {
                "GRANT pg_create_subscription TO …"
            } else {
                "a superuser only, before PostgreSQL 16"
            }
        );
    }
    Ok(())
}

/// Why a move request was refused.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] crate::catalog::DbFailure),
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> MoveError {
    crate::catalog::DbFailure::of(context)
}

impl From<super::ClusterError> for MoveError {
    fn from(e: super::ClusterError) -> Self {
        match e {
            super::ClusterError::NotFound(_) => MoveError::NotFound("cluster"),
            super::ClusterError::Db(f) => MoveError::Db(f),
            other => MoveError::Unavailable(other.to_string()),
        }
    }
}

impl Clusters {
    /// Queues a move of `tenant` to `target` after checking it can be
    /// made: the tenant live and elsewhere, the target open, both clusters
    /// able to take part. One move per tenant at a time.
    pub async fn request_move(
        &self,
        tenant: crate::domain::TenantId,
        target: &crate::domain::ClusterName,
        actor: &str,
    ) -> Result<MoveRow, MoveError> {
        let mut conn = self
            .catalog()
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let t = tenants::get(&mut conn, tenant)
            .await
            .map_err(db("read the tenant"))?
            .ok_or(MoveError::NotFound("tenant"))?;
        if t.status == TenantStatus::Purged {
            return Err(MoveError::Precondition("the tenant is purged".into()));
        }
        if &t.placement == target {
            return Err(MoveError::Precondition(format!(
                "the tenant is already on cluster {target}"
            )));
        }
        let record = crate::catalog::clusters::get(&mut conn, target)
            .await
            .map_err(db("read the cluster"))?
            .ok_or(MoveError::NotFound("cluster"))?;
        if record.state != crate::domain::ClusterState::Open {
            return Err(MoveError::Precondition(format!(
                "cluster {target} is {}: it takes no tenants",
                record.state
            )));
        }
        drop(conn);
        let source = self.get(&t.placement).await?;
        let destination = self.get(target).await?;
        check_possible(&source, &destination)
            .await
            .map_err(|e| MoveError::Precondition(format!("{e:#}")))?;
        self.queue_move(tenant, &t.placement, target, actor).await
    }

    /// Queues a move already checked, audited, and wakes this replica's
    /// runner; Precondition when the tenant has a move under way.
    async fn queue_move(
        &self,
        tenant: crate::domain::TenantId,
        source: &crate::domain::ClusterName,
        target: &crate::domain::ClusterName,
        actor: &str,
    ) -> Result<MoveRow, MoveError> {
        let mut tx = Audited::begin(self.catalog())
            .await
            .map_err(db("begin move"))?;
        let id = Uuid::now_v7();
        let row = moves::insert(&mut tx, id, tenant, source, target, actor)
            .await
            .map_err(db("queue the move"))?
            .ok_or_else(|| {
                MoveError::Precondition("the tenant already has a move pending or running".into())
            })?;
        tx.commit(
            actor,
            "tenant.move_requested",
            &format!("tenant:{tenant}"),
            &json!({ "move_id": id, "from": source.as_str(), "to": target.as_str() }),
        )
        .await
        .map_err(db("commit move"))?;
        self.move_wake().notify_waiters();
        Ok(row)
    }

    pub async fn get_move(&self, id: Uuid) -> Result<MoveRow, MoveError> {
        moves::get(self.catalog(), id)
            .await
            .map_err(db("read the move"))?
            .ok_or(MoveError::NotFound("move"))
    }

    pub async fn list_moves(
        &self,
        tenant: Option<crate::domain::TenantId>,
        limit: i64,
    ) -> Result<Vec<MoveRow>, MoveError> {
        moves::list(self.catalog(), tenant, limit)
            .await
            .map_err(db("list moves"))
    }

    /// Asks the move to stop: a pending one ends at once; a running one
    /// before its switch is undone by its runner; after the switch it
    /// finishes.
    pub async fn cancel_move(&self, id: Uuid, actor: &str) -> Result<MoveRow, MoveError> {
        let row = moves::request_cancel(self.catalog(), id)
            .await
            .map_err(db("cancel the move"))?
            .ok_or(MoveError::NotFound("move"))?;
        let tx = Audited::begin(self.catalog())
            .await
            .map_err(db("begin cancel"))?;
        tx.commit(
            actor,
            "tenant.move_cancel_requested",
            &format!("tenant:{}", row.tenant_id),
            &json!({ "move_id": id }),
        )
        .await
        .map_err(db("commit cancel"))?;
        Ok(row)
    }

    /// Sets `name` draining and queues a move of each of its tenants (those
    /// without a move under way) to the open clusters, each to the one
    /// with the fewest tenants per unit of weight counting the moves
    /// queued before it, never past a cap. Refused, changing nothing, when
    /// no open cluster can take a move from it.
    pub async fn drain(
        &self,
        name: &crate::domain::ClusterName,
        actor: &str,
    ) -> Result<(crate::catalog::clusters::ClusterRecord, Vec<MoveRow>), MoveError> {
        let source = self.get(name).await?;
        let mut conn = self
            .catalog()
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let mut targets = Vec::new();
        let mut refusals = Vec::new();
        for c in crate::catalog::clusters::candidates(&mut conn)
            .await
            .map_err(db("read the open clusters"))?
        {
            if &c.name == name {
                continue;
            }
            let tenants = crate::catalog::clusters::tenants_on(&mut conn, &c.name)
                .await
                .map_err(db("count a cluster's tenants"))?;
            let target = self.get(&c.name).await?;
            match check_possible(&source, &target).await {
                Ok(()) => targets.push((c, tenants)),
                Err(e) => refusals.push(format!("{}: {e:#}", c.name)),
            }
        }
        if targets.is_empty() {
            return Err(MoveError::Precondition(format!(
                "no open cluster can take the tenants of {name}{}",
                if refusals.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", refusals.join("; "))
                }
            )));
        }
        let on_it: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT t.id FROM tenantd.tenants t WHERE t.placement = $1 AND t.status <> 'purged' \
               AND NOT EXISTS (SELECT FROM tenantd.tenant_moves m \
                                WHERE m.tenant_id = t.id AND m.status IN ('pending', 'running')) \
              ORDER BY t.id",
        )
        .bind(name.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("list the cluster's tenants"))?;
        drop(conn);
        let record = self
            .update(
                name,
                Some(crate::domain::ClusterState::Draining),
                super::LimitsPatch::default(),
                actor,
            )
            .await?;
        let mut queued = Vec::with_capacity(on_it.len());
        for id in on_it {
            let pick = targets
                .iter_mut()
                .filter(|(c, n)| c.limits.max_tenants.is_none_or(|cap| *n < cap))
                .min_by(|(a, n), (b, m)| {
                    let (x, y) = (
                        *n as f64 / f64::from(a.limits.weight),
                        *m as f64 / f64::from(b.limits.weight),
                    );
                    x.total_cmp(&y).then_with(|| a.name.cmp(&b.name))
                });
            let Some((target, count)) = pick else {
                break;
            };
            *count += 1;
            let target = target.name.clone();
            // Checked above once per target, not again per tenant.
            match self
                .queue_move(crate::domain::TenantId::from_uuid(id), name, &target, actor)
                .await
            {
                Ok(m) => queued.push(m),
                // Given a move meanwhile: nothing to queue.
                Err(MoveError::Precondition(_) | MoveError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((record, queued))
    }
}
