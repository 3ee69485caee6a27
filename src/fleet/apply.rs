//! Upgrading one tenant: under a per-tenant advisory lock, with lock and
//! statement time-outs, every migration between its ledger's version and the
//! target, its ledger rows, the catalog's copy of its version and the run
//! item's outcome — in one transaction, so a crash at any point leaves the
//! tenant either untouched or upgraded and recorded. The ledger decides what
//! is pending, so a tenant is never upgraded twice, even when two workers
//! race for it after a lease expired.

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::PgConnection;

use crate::catalog::upgrade_batches::{
    self as batch, LockedTenant, STALE, item_done, item_gone, lock_and_read, lock_expected,
    set_version,
};
use crate::catalog::{Engine, execute_batch};
use crate::clusters::Cluster;
use crate::domain::upgrade::{RunId, RunStatus};
use crate::domain::{TenantId, TenantStatus};
use crate::tenant::{TenantMigration, TenantMigrations, ledger_rows};

/// What happened to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Moved from `from` to `to`.
    Upgraded { from: i64, to: i64 },
    /// Already at or past the target (by its ledger); recorded as done.
    AlreadyCurrent { version: i64 },
    /// Purged or gone since the run was planned; recorded as skipped.
    Gone,
    /// The run is no longer running; nothing was done or recorded.
    RunStopped,
}

/// The advisory lock key of one tenant: any 64 bits of its id will do, a
/// collision only makes two tenants wait for each other.
pub(crate) fn lock_key(tenant: TenantId) -> i64 {
    let b = tenant.as_uuid().as_bytes();
    i64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

fn timeouts(lock_timeout: Duration, statement_timeout: Duration, scope: &str) -> String {
    format!(
        "SET {scope} lock_timeout = '{}ms'; SET {scope} statement_timeout = '{}ms';",
        lock_timeout.as_millis().max(1),
        statement_timeout.as_millis().max(1)
    )
}

/// Upgrades `tenant` to `target` for `run`. On error the transaction has been
/// rolled back and nothing changed; the caller records the failure.
///
/// `expected_from` is the version the run planned the tenant at. When it still
/// holds (almost always), the whole upgrade is one round trip whose first
/// statement checks it under the row lock; otherwise that batch rolls back and
/// the careful path reads the tenant first.
#[allow(clippy::too_many_arguments)]
pub async fn upgrade_tenant(
    engine: Engine,
    conn: &mut PgConnection,
    migrations: &TenantMigrations,
    run: RunId,
    tenant: TenantId,
    expected_from: i64,
    target: i64,
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> Result<Applied, sqlx::Error> {
    let pending = migrations.between(expected_from, target);
    let fast = expected_from < target
        && target <= migrations.latest()
        && pending.iter().all(|m| m.transactional);
    if fast {
        let sql = one_round_trip(
            run,
            tenant,
            expected_from,
            target,
            pending,
            lock_timeout,
            statement_timeout,
        );
        match engine.execute_ddl(&mut *conn, &sql).await {
            Ok(()) => {
                return Ok(Applied::Upgraded {
                    from: expected_from,
                    to: target,
                });
            }
            Err(e) => {
                let _ = engine.execute_ddl(&mut *conn, "ROLLBACK").await;
                let stale = e.as_database_error().and_then(|d| d.code()).as_deref() == Some(STALE);
                if !stale {
                    return Err(e);
                }
            }
        }
    }
    let result = upgrade_in_transaction(
        engine,
        conn,
        migrations,
        run,
        tenant,
        target,
        lock_timeout,
        statement_timeout,
    )
    .await;
    if result.is_err() {
        // The batch may have stopped anywhere inside the transaction.
        let _ = engine.execute_ddl(&mut *conn, "ROLLBACK").await;
    }
    result
}

/// The common case in one batch: lock, check the tenant is still at `from`
/// and the run still running (else `tenantd.stale_upgrade()` raises), apply,
/// record, commit.
fn one_round_trip(
    run: RunId,
    tenant: TenantId,
    from: i64,
    to: i64,
    pending: &[TenantMigration],
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> String {
    let schema = tenant.schema_name().quoted();
    let mut sql = String::with_capacity(4096);
    let _ = writeln!(
        sql,
        "BEGIN; SET LOCAL synchronous_commit = off; {} SELECT pg_advisory_xact_lock({});\n{}\n\
         SET LOCAL search_path TO {schema};",
        timeouts(lock_timeout, statement_timeout, "LOCAL"),
        lock_key(tenant),
        lock_expected(run, tenant, from),
    );
    for m in pending {
        let _ = writeln!(sql, "-- {}\n{}\n;", m.name, m.sql);
    }
    let _ = writeln!(sql, "SET LOCAL search_path TO DEFAULT;");
    // The ledger's primary key refuses a version twice: a ledger ahead of the
    // catalog fails here instead of being applied again.
    ledger_rows(&mut sql, &schema, pending);
    let _ = write!(
        sql,
        "{}\n{}\nCOMMIT",
        set_version(tenant, to),
        item_done(run, tenant, to)
    );
    sql
}

#[allow(clippy::too_many_arguments)]
async fn upgrade_in_transaction(
    engine: Engine,
    conn: &mut PgConnection,
    migrations: &TenantMigrations,
    run: RunId,
    tenant: TenantId,
    target: i64,
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> Result<Applied, sqlx::Error> {
    let schema = tenant.schema_name().quoted();
    // Round trip 1: open the transaction, lock the tenant, read catalog and ledger.
    let open = format!(
        "BEGIN; {} SELECT pg_advisory_xact_lock({}); {}",
        timeouts(lock_timeout, statement_timeout, "LOCAL"),
        lock_key(tenant),
        lock_and_read(run, tenant),
    );
    let rows = sqlx::Executor::fetch_all(&mut *conn, sqlx::raw_sql(&open)).await?;
    let state = LockedTenant::from_batch(&rows)?;
    // Paused, halted or cancelled since the claim: leave the tenant alone.
    if let Some(locked) = &state
        && locked.run_status != Some(RunStatus::Running)
    {
        engine.execute_ddl(&mut *conn, "ROLLBACK").await?;
        return Ok(Applied::RunStopped);
    }
    let (catalog_version, ledger) = match state {
        Some(LockedTenant {
            status,
            catalog_version,
            ledger_version: Some(ledger),
            ..
        }) if status != TenantStatus::Purged => (catalog_version, ledger),
        _ => {
            engine
                .execute_ddl(&mut *conn, &format!("{} COMMIT", item_gone(run, tenant)))
                .await?;
            return Ok(Applied::Gone);
        }
    };
    if target > migrations.latest() {
        // Claims already keep runs from replicas that do not know their
        // target; never record a tenant as done short of it.
        engine.execute_ddl(&mut *conn, "ROLLBACK").await?;
        return Ok(Applied::RunStopped);
    }
    let pending = migrations.between(ledger, target);
    if pending.iter().any(|m| !m.transactional) {
        engine.execute_ddl(&mut *conn, "COMMIT").await?;
        return upgrade_step_by_step(
            engine,
            conn,
            pending,
            run,
            tenant,
            ledger,
            lock_timeout,
            statement_timeout,
        )
        .await;
    }
    let to = ledger.max(pending.last().map_or(ledger, |m| m.version));
    // Round trip 2: everything else, ending in COMMIT.
    let mut sql = String::with_capacity(4096);
    if !pending.is_empty() {
        let _ = writeln!(sql, "SET LOCAL search_path TO {schema};");
        for m in pending {
            let _ = writeln!(sql, "-- {}\n{}\n;", m.name, m.sql);
        }
        let _ = writeln!(sql, "SET LOCAL search_path TO DEFAULT;");
        ledger_rows(&mut sql, &schema, pending);
    }
    if catalog_version != to || !pending.is_empty() {
        let _ = writeln!(sql, "{}", set_version(tenant, to));
    }
    let _ = write!(sql, "{}\nCOMMIT", item_done(run, tenant, to));
    engine.execute_ddl(&mut *conn, &sql).await?;
    Ok(if pending.is_empty() {
        Applied::AlreadyCurrent { version: ledger }
    } else {
        Applied::Upgraded { from: ledger, to }
    })
}

/// Upgrades `tenant`, whose role and schema live on `cluster` (not the
/// catalog's database), to `target` for `run`. The catalog transaction
/// opens first and holds the tenant's lock and row; the migrations and
/// their ledger rows commit on the cluster; then the catalog records the
/// version and the item's outcome. A crash between the two commits leaves
/// the ledger ahead of the catalog: the next attempt finds nothing pending
/// and records the ledger's version.
#[allow(clippy::too_many_arguments)]
pub async fn upgrade_remote_tenant(
    catalog: &mut PgConnection,
    cluster: &Cluster,
    migrations: &TenantMigrations,
    run: RunId,
    tenant: TenantId,
    target: i64,
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> Result<Applied, sqlx::Error> {
    let open = format!(
        "BEGIN; {} SELECT pg_advisory_xact_lock({}); {}",
        timeouts(lock_timeout, statement_timeout, "LOCAL"),
        lock_key(tenant),
        lock_and_read(run, tenant),
    );
    let result = async {
        let rows = sqlx::Executor::fetch_all(&mut *catalog, sqlx::raw_sql(&open)).await?;
        let state = LockedTenant::from_batch(&rows)?;
        if let Some(locked) = &state
            && locked.run_status != Some(RunStatus::Running)
        {
            execute_batch(&mut *catalog, "ROLLBACK").await?;
            return Ok(Applied::RunStopped);
        }
        let ledger = match state {
            Some(locked) if locked.status != TenantStatus::Purged => {
                remote_ledger(cluster, tenant).await?
            }
            _ => None,
        };
        let Some(ledger) = ledger else {
            execute_batch(&mut *catalog, &format!("{} COMMIT", item_gone(run, tenant))).await?;
            return Ok(Applied::Gone);
        };
        if target > migrations.latest() {
            execute_batch(&mut *catalog, "ROLLBACK").await?;
            return Ok(Applied::RunStopped);
        }
        let pending = migrations.between(ledger, target);
        let to = ledger.max(pending.last().map_or(ledger, |m| m.version));
        if !pending.is_empty() {
            apply_on_cluster(cluster, tenant, pending, lock_timeout, statement_timeout).await?;
        }
        crate::crash::point("upgrade.after_cluster_commit");
        execute_batch(
            &mut *catalog,
            &format!(
                "{}\n{}\nCOMMIT",
                set_version(tenant, to),
                item_done(run, tenant, to)
            ),
        )
        .await?;
        Ok(if pending.is_empty() {
            Applied::AlreadyCurrent { version: ledger }
        } else {
            Applied::Upgraded { from: ledger, to }
        })
    }
    .await;
    if result.is_err() {
        let _ = execute_batch(&mut *catalog, "ROLLBACK").await;
    }
    result
}

/// The newest version in the tenant's ledger on its cluster; `None` when
/// its schema or ledger is gone.
pub(crate) async fn remote_ledger(
    cluster: &Cluster,
    tenant: TenantId,
) -> Result<Option<i64>, sqlx::Error> {
    let sql = format!(
        "SELECT coalesce(max(version), 0) FROM {}.schema_migrations",
        tenant.schema_name().quoted()
    );
    match sqlx::query_scalar(&sql).fetch_one(&cluster.admin).await {
        Ok(v) => Ok(Some(v)),
        // invalid_schema_name, undefined_table
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("3F000" | "42P01")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs `pending` and their ledger rows on the tenant's cluster: one
/// transaction when every one is transactional; otherwise each on its own,
/// a non-transactional one followed by its ledger row.
/// A migration that cannot run in a transaction block (CREATE INDEX
/// CONCURRENTLY…): `set` first (the tenant's schema as search_path, and
/// whatever else the caller needs for the session), then the migration,
/// then `reset`, whatever the migration did.
async fn outside_transaction(
    engine: Engine,
    conn: &mut PgConnection,
    set: &str,
    sql: &str,
    reset: &str,
) -> Result<(), sqlx::Error> {
    engine.execute_ddl(&mut *conn, set).await?;
    let ran = engine.execute_ddl(&mut *conn, sql).await;
    engine.execute_ddl(&mut *conn, reset).await?;
    ran
}

async fn apply_on_cluster(
    cluster: &Cluster,
    tenant: TenantId,
    pending: &[TenantMigration],
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> Result<(), sqlx::Error> {
    let schema = tenant.schema_name().quoted();
    let mut conn = cluster.admin.acquire().await?;
    let engine = cluster.engine;
    let steps: Vec<&[TenantMigration]> = if pending.iter().all(|m| m.transactional) {
        vec![pending]
    } else {
        pending.chunks(1).collect()
    };
    for step in steps {
        let mut record = String::new();
        ledger_rows(&mut record, &schema, step);
        let sql = if step[0].transactional {
            let mut sql = format!(
                "BEGIN; {} SET LOCAL search_path TO {schema};\n",
                timeouts(lock_timeout, statement_timeout, "LOCAL")
            );
            for m in step {
                let _ = writeln!(sql, "-- {}\n{}\n;", m.name, m.sql);
            }
            let _ = write!(sql, "SET LOCAL search_path TO DEFAULT;\n{record}COMMIT");
            sql
        } else {
            // A connection of the cluster's pool: its time-outs go back too.
            outside_transaction(
                engine,
                &mut conn,
                &format!(
                    "{} SET search_path TO {schema}",
                    timeouts(lock_timeout, statement_timeout, "SESSION")
                ),
                &step[0].sql,
                "RESET search_path; RESET lock_timeout; RESET statement_timeout",
            )
            .await?;
            format!("BEGIN; {record} COMMIT")
        };
        if let Err(e) = engine.execute_ddl(&mut conn, &sql).await {
            let _ = engine.execute_ddl(&mut conn, "ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

/// The path for a pending set that holds a migration which cannot run in a
/// transaction: each migration on its own, under a session-level advisory
/// lock. A transactional one commits with its ledger row; a
/// non-transactional one runs alone, then its ledger row commits (a crash in
/// between runs it again, which is why such migrations must be idempotent).
#[allow(clippy::too_many_arguments)]
async fn upgrade_step_by_step(
    engine: Engine,
    conn: &mut PgConnection,
    pending: &[TenantMigration],
    run: RunId,
    tenant: TenantId,
    from: i64,
    lock_timeout: Duration,
    statement_timeout: Duration,
) -> Result<Applied, sqlx::Error> {
    let schema = tenant.schema_name().quoted();
    let key = lock_key(tenant);
    engine
        .execute_ddl(
            &mut *conn,
            &format!(
                "{} SELECT pg_advisory_lock({key})",
                timeouts(lock_timeout, statement_timeout, "SESSION")
            ),
        )
        .await?;
    let result = async {
        // Another worker may have moved the ledger since the first read.
        let ledger = batch::ledger_version(&mut *conn, tenant).await?.unwrap_or(from);
        let mut to = ledger;
        for m in pending.iter().filter(|m| m.version > ledger) {
            let mut record = String::new();
            ledger_rows(&mut record, &schema, std::slice::from_ref(m));
            record.push_str(&set_version(tenant, m.version));
            if m.transactional {
                let sql = format!(
                    "BEGIN; SET LOCAL search_path TO {schema};\n{}\n;\nSET LOCAL search_path TO DEFAULT;\n{record}\nCOMMIT",
                    m.sql
                );
                if let Err(e) = engine.execute_ddl(&mut *conn, &sql).await {
                    let _ = engine.execute_ddl(&mut *conn, "ROLLBACK").await;
                    return Err(e);
                }
            } else {
                outside_transaction(
                    engine,
                    &mut *conn,
                    &format!("SET search_path TO {schema}"),
                    &m.sql,
                    "RESET search_path",
                )
                .await?;
                engine.execute_ddl(&mut *conn, &format!("BEGIN; {record} COMMIT")).await?;
            }
            to = m.version;
        }
        engine.execute_ddl(&mut *conn, &item_done(run, tenant, to)).await?;
        Ok(if to == ledger { Applied::AlreadyCurrent { version: to } } else { Applied::Upgraded { from: ledger, to } })
    }
    .await;
    let _ = engine
        .execute_ddl(
            &mut *conn,
            &format!(
                "SELECT pg_advisory_unlock({key}); RESET lock_timeout; RESET statement_timeout"
            ),
        )
        .await;
    result
}

/// Whether trying again may help: lock and statement time-outs, deadlocks,
/// serialization failures and lost connections. Errors in the data or in the
/// SQL itself fail the same way every time.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) => {
                matches!(code, "40001" | "40P01" | "55P03" | "57014" | "53300")
                    || code.starts_with("08")
                    || code.starts_with("57P")
            }
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// SQLSTATE and a message for the record (never SQL text of ours).
pub fn describe(err: &sqlx::Error) -> (String, String) {
    match err {
        sqlx::Error::Database(db) => (
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.message().to_owned(),
        ),
        other => (String::new(), other.to_string()),
    }
}
