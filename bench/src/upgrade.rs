//! `tenantd-bench upgrade`: a fleet upgrade of N tenants by a migration of
//! one column and one index, through tenantd (StartUpgrade, its own workers)
//! next to the raw-SQL limit of the same work in the same run: per tenant one
//! transaction — ALTER TABLE, CREATE INDEX, ledger row, catalog version — as
//! one simple-query batch, the connections splitting the fleet between them.
//! Also PlanUpgrade's latency at that fleet size, and tenantd's resident
//! memory over its part of the run.
//!
//! The phases, on one fresh database:
//! 1. fleets (not timed): tenantd with migration 1 only migrates the catalog
//!    and registers it; 2N tenants are then created with the raw
//!    create-tenant transaction that `create` measures, and split, alternating,
//!    into two equal fleets;
//! 2. raw (timed): the raw upgrade of the first fleet;
//! 3. tenantd (timed): tenantd with migrations 1 and 2; PlanUpgrade latency
//!    (2N tenants, N behind), then StartUpgrade of the second fleet (by a
//!    tenant-id selector), watched until the run ends.
//!
//! Two fleets rather than one upgraded, undone and upgraded again: every
//! upgrade-and-undo cycle ages the catalog, and the side that ran second
//! would pay for it.
//!
//! Before each timed phase the catalogs are vacuumed, autovacuum is waited
//! for and a checkpoint taken, so that neither side pays for the fleet's
//! creation, the other side's dead rows or dirty buffers.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use sqlx::Connection;
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::migration_service_client::MigrationServiceClient;
use tenantd::tenant::{TenantMigration, TenantMigrations};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Progress, ms};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::procstat::{cpu_time, mb, vm_rss_kb};
use crate::raw;
use crate::report::{Check, Limit, footnote, print_checks, print_markdown, targets_table};
use crate::sampler::{self, Series};
use crate::server::{Authed, TenantdServer, status};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Tenants in the fleet.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,

    /// Raw-SQL connections; also tenantd's --upgrade-workers and the run's
    /// concurrency, so that both sides upgrade as many tenants at once.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    #[command(flatten)]
    target: Target,
}

/// Targets.
const MIN_THROUGHPUT_RATIO: f64 = 0.8;
const MAX_PLAN_P50_MS: f64 = 20.0;
const MAX_RSS_GROWTH_MB: f64 = 50.0;
/// The fleet size the targets are stated for.
const GOAL_TENANTS: usize = 10_000;

/// PlanUpgrade calls: unrecorded first, then measured.
const PLAN_WARMUP_CALLS: usize = 5;
const PLAN_CALLS: usize = 50;
/// How often tenantd's VmRSS is read.
const RSS_EVERY: Duration = Duration::from_millis(500);
/// How long a timed phase waits for autovacuum to finish on the database.
const AUTOVACUUM_WAIT: Duration = Duration::from_secs(60);
/// A run whose watch stream is silent this long is given up.
const WATCH_SILENCE: Duration = Duration::from_secs(120);

/// The migration the fleet is upgraded by.
const V2_FILE: &str = "0002_add_timezone.sql";
const V2_SQL: &str = "ALTER TABLE locations ADD COLUMN timezone text;\n\
                      CREATE INDEX inventory_items_sku_idx ON inventory_items (sku);\n";
/// The first migration, under the name tenantd gives it.
const V1_FILE: &str = "0001_default_tables.sql";

/// Runs the benchmark and prints its results.
pub async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    flags::at_least("--tenants", args.tenants, 1)?;
    flags::between("--connections", args.connections, 1, 64)?;
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, tenantd, db).await,
        |server, results| report(&args, server, results),
    )
    .await
}

/// What the phases measured.
struct Results {
    tenants: usize,
    connections: usize,
    fleet: Duration,
    raw: Duration,
    tenantd: TenantdUpgrade,
    /// PlanUpgrade's calls.
    plan: CallStats,
    /// tenantd's VmRSS in MB, sampled every [`RSS_EVERY`] from the start
    /// of its phase to its end.
    rss: Series,
}

async fn run_phases(
    args: &UpgradeArgs,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Results> {
    let n = args.tenants;
    let connections = args.connections;
    let dirs = MigrationDirs::write(&db.name)?;

    // Two fleets of n tenants each, created together and interleaved, so
    // that the raw side and tenantd upgrade equal fleets on the same catalog:
    // upgrading one fleet and undoing it before the other would age the
    // catalog between the phases and favour whichever ran first.
    let fleet = create_fleet(tenantd_bin, db, &dirs, 2 * n, connections).await?;
    println!(
        "{}",
        rate_line(
            "fleet",
            connections,
            2 * n,
            fleet,
            "raw create of both fleets, not timed"
        )
    );
    let all = tenant_ids(db).await?;
    ensure!(
        all.len() == 2 * n,
        "the catalog holds {} tenants, not {}",
        all.len(),
        2 * n
    );
    expect_state(db, 2 * n, Version::One).await?;
    let (raw_fleet, tenantd_fleet): (Vec<_>, Vec<_>) =
        all.chunks(2).map(|pair| (pair[0], pair[1])).unzip();

    settle(db).await?;
    eprintln!("tenantd-bench: raw upgrade of {n} tenants over {connections} connections");
    let v2 = dirs.v2_set.all()[1].clone();
    let raw = per_tenant(db, raw_fleet, connections, "raw upgrade", move |id| {
        raw_upgrade_sql(*id, &v2)
    })
    .await?;
    println!("{}", rate_line("raw", connections, n, raw, ""));

    settle(db).await?;
    let (tenantd, plan, rss) =
        tenantd_phase(tenantd_bin, db, &dirs, n, &tenantd_fleet, connections).await?;
    println!(
        "{} first_claim_ms={:.0} cpu_s={:.2} wall_s={:.2} run={}",
        rate_line("tenantd", connections, n, tenantd.elapsed, ""),
        ms(tenantd.first_claim),
        tenantd.cpu.as_secs_f64(),
        tenantd.wall.as_secs_f64(),
        tenantd.run_id,
    );
    println!(
        "plan     tenants={} calls={} p50_ms={:.1} p95_ms={:.1}",
        2 * n,
        PLAN_CALLS,
        ms(plan.p50),
        ms(plan.p95)
    );
    println!("rss      {} samples={}", rss.fields("_mb"), rss.samples);
    expect_state(db, 2 * n, Version::Two).await?;

    Ok(Results {
        tenants: n,
        connections,
        fleet,
        raw,
        tenantd,
        plan,
        rss,
    })
}

fn rate_line(label: &str, connections: usize, n: usize, took: Duration, note: &str) -> String {
    let mut line = format!(
        "{label:<8} connections={connections} tenants={n} seconds={:.2} tenants_per_s={:.1}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    if !note.is_empty() {
        let _ = write!(line, " ({note})");
    }
    line
}

/// Two tenant migration directories in the temp dir, removed on drop: `v1`
/// with the embedded first migration, `v2` with it and [`V2_SQL`].
pub(crate) struct MigrationDirs {
    root: PathBuf,
    pub(crate) v1: PathBuf,
    pub(crate) v2: PathBuf,
    v1_set: TenantMigrations,
    v2_set: TenantMigrations,
}

impl MigrationDirs {
    pub(crate) fn write(tag: &str) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("{tag}-migrations"));
        let (v1, v2) = (root.join("v1"), root.join("v2"));
        // From here on, drop removes whatever was written.
        let mut dirs = Self {
            root,
            v1,
            v2,
            v1_set: TenantMigrations::embedded()?,
            v2_set: TenantMigrations::embedded()?,
        };
        let first = &dirs.v1_set.all()[0];
        ensure!(
            format!("{}.sql", first.name) == V1_FILE,
            "the first embedded tenant migration is {}, not {V1_FILE}",
            first.name
        );
        let first = first.sql.clone();
        for dir in [&dirs.v1, &dirs.v2] {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::write(dir.join(V1_FILE), &first)
                .with_context(|| format!("write {}", dir.display()))?;
        }
        std::fs::write(dirs.v2.join(V2_FILE), V2_SQL)
            .with_context(|| format!("write {}", dirs.v2.display()))?;
        dirs.v1_set = TenantMigrations::from_dir(&dirs.v1)?;
        dirs.v2_set = TenantMigrations::from_dir(&dirs.v2)?;
        ensure!(
            dirs.v2_set.latest() == 2,
            "the v2 directory is not versions 1 and 2"
        );
        Ok(dirs)
    }
}

impl Drop for MigrationDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts tenantd on the v1 directory (which migrates the catalog and
/// registers version 1), creates the fleet with the raw create-tenant
/// transaction, and stops tenantd. The time the creation took.
async fn create_fleet(
    tenantd_bin: &Path,
    db: &BenchDatabase,
    dirs: &MigrationDirs,
    n: usize,
    connections: usize,
) -> anyhow::Result<Duration> {
    let args = [OsStr::new("--tenant-migrations"), dirs.v1.as_os_str()];
    let tag = format!("{}-fleet", db.name);
    TenantdServer::serve(tenantd_bin, &db.url, &tag, &args, async |_| {
        db.check_same_migrations(&dirs.v1_set).await?;
        eprintln!(
            "tenantd-bench: creating {n} tenants at version 1 over {connections} connections"
        );
        let migrations = Arc::new(dirs.v1_set.clone());
        let verifier = raw::shared_verifier();
        let slugs: Vec<usize> = (0..n).collect();
        per_tenant(db, slugs, connections, "fleet", move |i| {
            raw::create_tenant_sql(
                TenantId::new(),
                &format!("fleet-{i}"),
                &verifier,
                &migrations,
            )
        })
        .await
    })
    .await
}

/// Every tenant id in the catalog, in id (creation) order.
async fn tenant_ids(db: &BenchDatabase) -> anyhow::Result<Vec<TenantId>> {
    let mut conn = db.connect().await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenantd.tenants ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .context("read the tenant ids")?;
    let _ = conn.close().await;
    Ok(ids.into_iter().map(TenantId::from_uuid).collect())
}

/// Runs one simple-query batch per item, `connections` connections each
/// taking a contiguous share of `items` (opened before the clock starts).
/// The time from the first batch to the last one's end.
async fn per_tenant<T, F>(
    db: &BenchDatabase,
    items: Vec<T>,
    connections: usize,
    what: &'static str,
    sql: F,
) -> anyhow::Result<Duration>
where
    T: std::fmt::Display + Send + Sync + 'static,
    F: Fn(&T) -> String + Send + Sync + 'static,
{
    let total = items.len();
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.min(total).max(1) {
        conns.push(db.connect().await?);
    }
    let share = total.div_ceil(conns.len());
    let items = Arc::new(items);
    let sql = Arc::new(sql);
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::new(format!("{what}:"), "", total));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (items, sql, done) = (Arc::clone(&items), Arc::clone(&sql), Arc::clone(&done));
        let progress = Arc::clone(&progress);
        tasks.spawn(async move {
            let range = (i * share).min(total)..((i + 1) * share).min(total);
            for item in &items[range] {
                let text = sql(item);
                tenantd::catalog::execute_batch(&mut conn, &text)
                    .await
                    .with_context(|| format!("{what}: the batch of {item}"))?;
                let n = done.fetch_add(1, Ordering::Relaxed);
                progress.advanced(n, n + 1);
            }
            let end = Instant::now();
            let _ = conn.close().await;
            anyhow::Ok(end)
        });
    }
    let mut end = start;
    // Returning early drops the set, which aborts the other connections.
    while let Some(joined) = tasks.join_next().await {
        end = end.max(joined.context("a raw-SQL client panicked")??);
    }
    Ok(end - start)
}

/// The raw fleet upgrade of one tenant: migration 2 with names qualified by
/// the schema, its ledger row and the catalog's copy of the version, in one
/// transaction and one round trip.
fn raw_upgrade_sql(id: TenantId, v2: &TenantMigration) -> String {
    let s = id.schema_name().quoted();
    format!(
        "BEGIN; \
         ALTER TABLE {s}.locations ADD COLUMN timezone text; \
         CREATE INDEX inventory_items_sku_idx ON {s}.inventory_items (sku); \
         INSERT INTO {s}.schema_migrations (version, name, checksum) \
         VALUES ({v}, '{name}', decode('{sum}','hex')); \
         UPDATE tenantd.tenants SET schema_version = {v} WHERE id = '{id}'; \
         COMMIT;",
        v = v2.version,
        name = v2.name,
        sum = hex::encode(v2.checksum),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    One,
    Two,
}

/// Fails unless all `n` tenants are wholly at `version`: catalog copy,
/// ledger, column and index.
async fn expect_state(db: &BenchDatabase, n: usize, version: Version) -> anyhow::Result<()> {
    let mut conn = db.connect().await?;
    // In slices: one statement over every tenant would lock two relations
    // per tenant at once and run out of lock-table space on a large fleet.
    const SLICE: i64 = 2000;
    let (mut total, mut at_one, mut at_two) = (0i64, 0i64, 0i64);
    let mut after: Option<uuid::Uuid> = None;
    loop {
        let (count, one, two, last): (i64, i64, i64, Option<uuid::Uuid>) = sqlx::query_as(
            "SELECT count(*), \
                    count(*) FILTER (WHERE schema_version = 1 AND ledger = 1 AND NOT has_index AND NOT has_column), \
                    count(*) FILTER (WHERE schema_version = 2 AND ledger = 2 AND has_index AND has_column), \
                    (max(id::text))::uuid \
             FROM ( \
                 SELECT t.id, t.schema_version, \
                        tenantd.ledger_version(t.schema_name) AS ledger, \
                        to_regclass(format('%I.inventory_items_sku_idx', t.schema_name)) IS NOT NULL AS has_index, \
                        EXISTS (SELECT FROM pg_catalog.pg_attribute a \
                                WHERE a.attrelid = to_regclass(format('%I.locations', t.schema_name)) \
                                  AND a.attname = 'timezone' AND NOT a.attisdropped) AS has_column \
                 FROM (SELECT * FROM tenantd.tenants WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2) t) s",
        )
        .bind(after)
        .bind(SLICE)
        .fetch_one(&mut conn)
        .await
        .context("read the fleet's schema versions")?;
        total += count;
        at_one += one;
        at_two += two;
        after = last;
        if count < SLICE {
            break;
        }
    }
    let _ = conn.close().await;
    let wanted = match version {
        Version::One => at_one,
        Version::Two => at_two,
    };
    ensure!(
        total == n as i64 && wanted == total,
        "expected all {n} tenants wholly at version {}: {total} tenants, {at_one} at 1, {at_two} at 2 \
         (catalog, ledger, column and index agreeing)",
        match version {
            Version::One => 1,
            Version::Two => 2,
        }
    );
    Ok(())
}

/// Makes a timed phase start on a quiet database: vacuums and analyzes every
/// table of the system catalogs and of tenantd's catalog (creating the fleet
/// and upgrading it leave a great many new and dead rows there, which
/// autovacuum would otherwise go after during the phase), waits for this
/// database's autovacuum workers to finish, and takes a checkpoint. Without
/// superuser rights some of it is skipped and the phase runs anyway.
///
/// The `upgrade_*` tables are left as a catalog that never ran an upgrade
/// has them, never analyzed: analyzed while empty, they once led the planner
/// to a claim plan that ignored the workers' batch size.
async fn settle(db: &BenchDatabase) -> anyhow::Result<()> {
    let mut conn = db.connect().await?;
    let tables: String = sqlx::query_scalar(
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname IN ('pg_catalog', 'tenantd') \
           AND NOT (n.nspname = 'tenantd' AND c.relname LIKE 'upgrade\\_%')",
    )
    .fetch_one(&mut conn)
    .await
    .context("list the catalog tables")?;
    let started = Instant::now();
    tenantd::catalog::execute_batch(&mut conn, &format!("VACUUM (ANALYZE) {tables}"))
        .await
        .context("vacuum the catalogs before a timed phase")?;
    let vacuumed = Instant::now();
    let deadline = vacuumed + AUTOVACUUM_WAIT;
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity \
             WHERE backend_type = 'autovacuum worker' AND datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await
        .context("look for autovacuum workers")?;
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "tenantd-bench: {busy} autovacuum workers still busy after {AUTOVACUUM_WAIT:?}; \
                 timing anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let quiet = Instant::now();
    if let Err(e) = tenantd::catalog::execute_batch(&mut conn, "CHECKPOINT").await {
        eprintln!("tenantd-bench: no checkpoint before the phase ({e})");
    }
    eprintln!(
        "tenantd-bench: settled: vacuum {:.1} s, waiting for autovacuum {:.1} s, checkpoint {:.1} s",
        (vacuumed - started).as_secs_f64(),
        (quiet - vacuumed).as_secs_f64(),
        quiet.elapsed().as_secs_f64()
    );
    let _ = conn.close().await;
    Ok(())
}

pub(crate) struct TenantdUpgrade {
    run_id: String,
    /// From the run's created_at to its finished_at (the database's clock).
    pub(crate) elapsed: Duration,
    /// From sending StartUpgrade to the watch stream's end.
    pub(crate) wall: Duration,
    /// From the run's created_at to the first tenant a worker claimed (idle
    /// workers look for work every 500 ms); part of `elapsed`.
    first_claim: Duration,
    /// CPU time the tenantd process used during the upgrade (user + system),
    /// to tell its own cost from the database's.
    cpu: Duration,
}

/// tenantd on the v2 directory with `connections` upgrade workers: PlanUpgrade
/// latency, then the fleet upgrade, with VmRSS sampled from start to end;
/// once tenantd has stopped, when the run's first claim was.
async fn tenantd_phase(
    tenantd_bin: &Path,
    db: &BenchDatabase,
    dirs: &MigrationDirs,
    n: usize,
    fleet: &[TenantId],
    connections: usize,
) -> anyhow::Result<(TenantdUpgrade, CallStats, Series)> {
    let workers = connections.to_string();
    let args = [
        OsStr::new("--tenant-migrations"),
        dirs.v2.as_os_str(),
        OsStr::new("--upgrade-workers"),
        OsStr::new(&workers),
    ];
    let tag = format!("{}-upgrade", db.name);
    let (mut upgrade, plan, rss) =
        TenantdServer::serve(tenantd_bin, &db.url, &tag, &args, async |server| {
            eprintln!("tenantd-bench: tenantd serving on {}", server.addr);
            let pid = server.pid()?;
            let sampling = CancellationToken::new();
            let run = async {
                // Ends the sampling however this ends.
                let _sampling = sampling.clone().drop_guard();
                db.check_same_migrations(&dirs.v2_set).await?;
                let mut client = MigrationServiceClient::new(server.connect().await?);
                let plan = plan_latency(&mut client, n).await?;
                let cpu_before = cpu_time(pid);
                let mut upgrade = upgrade_fleet(&mut client, fleet, connections).await?;
                if let (Some(before), Some(after)) = (cpu_before, cpu_time(pid)) {
                    upgrade.cpu = after.saturating_sub(before);
                }
                anyhow::Ok((upgrade, plan))
            };
            let mut rss = Series::default();
            let sample = sampler::every(RSS_EVERY, &sampling, async || {
                rss.record(vm_rss_kb(pid).map(mb));
            });
            let ((), ran) = tokio::join!(sample, run);
            let (upgrade, plan) = ran?;
            Ok((upgrade, plan, rss))
        })
        .await?;
    upgrade.first_claim = first_claim(db, &upgrade.run_id).await?;
    Ok((upgrade, plan, rss))
}

/// PlanUpgrade as an operator sends it (default target, selector and
/// sample), one call at a time.
async fn plan_latency(
    client: &mut MigrationServiceClient<Authed>,
    n: usize,
) -> anyhow::Result<CallStats> {
    eprintln!(
        "tenantd-bench: PlanUpgrade at {n} tenants: {PLAN_WARMUP_CALLS} unrecorded calls, {PLAN_CALLS} measured"
    );
    let mut latencies = Vec::with_capacity(PLAN_CALLS);
    for call in 0..PLAN_WARMUP_CALLS + PLAN_CALLS {
        let sent = Instant::now();
        let plan = client
            .plan_upgrade(pb::PlanUpgradeRequest::default())
            .await
            .map_err(status)
            .context("PlanUpgrade")?
            .into_inner();
        let took = sent.elapsed();
        ensure!(
            plan.target_version == 2
                && plan.total_tenants == 2 * n as i64
                && plan.behind == n as i64,
            "PlanUpgrade: target {}, {} tenants, {} behind; expected 2, {}, {n}",
            plan.target_version,
            plan.total_tenants,
            plan.behind,
            2 * n
        );
        if call >= PLAN_WARMUP_CALLS {
            latencies.push(took);
        }
    }
    let measured = latencies.iter().sum();
    CallStats::new(latencies, measured).context("PlanUpgrade: no call measured")
}

/// StartUpgrade with `concurrency`, then WatchUpgrade (every outcome, from
/// the start) until the run ends; fails unless it succeeded for all `n`.
pub(crate) async fn upgrade_fleet(
    client: &mut MigrationServiceClient<Authed>,
    fleet: &[TenantId],
    concurrency: usize,
) -> anyhow::Result<TenantdUpgrade> {
    let n = fleet.len();
    eprintln!("tenantd-bench: tenantd fleet upgrade of {n} tenants, concurrency {concurrency}");
    let progress = Progress::new("tenantd upgrade:", "", n);
    let sent = Instant::now();
    let run = client
        .start_upgrade(pb::StartUpgradeRequest {
            concurrency: i32::try_from(concurrency)?,
            selector: Some(pb::TenantSelector {
                tenant_ids: fleet.iter().map(ToString::to_string).collect(),
                slugs: Vec::new(),
            }),
            ..Default::default()
        })
        .await
        .map_err(status)
        .context("StartUpgrade")?
        .into_inner();
    let total = run.totals.as_ref().map_or(0, |t| t.total);
    ensure!(
        total == n as i64,
        "StartUpgrade created a run of {total} tenants, not {n}"
    );
    let mut events = client
        .watch_upgrade(pb::WatchUpgradeRequest {
            run_id: run.id.clone(),
            interval: None,
            from_start: true,
        })
        .await
        .map_err(status)
        .context("WatchUpgrade")?
        .into_inner();
    let (mut upgraded, mut failed) = (0usize, 0usize);
    let mut first_failure = None;
    let mut reported = 0;
    loop {
        let event = tokio::time::timeout(WATCH_SILENCE, events.message())
            .await
            .map_err(|_| anyhow::anyhow!("WatchUpgrade: nothing for {WATCH_SILENCE:?}"))?
            .map_err(status)
            .context("WatchUpgrade")?;
        let Some(event) = event else { break };
        match event.event {
            Some(pb::upgrade_event::Event::Tenant(o)) if o.ok && o.to_version == 2 => upgraded += 1,
            Some(pb::upgrade_event::Event::Tenant(o)) => {
                failed += 1;
                first_failure.get_or_insert(format!(
                    "tenant {} to {}: {} {}",
                    o.tenant_id, o.to_version, o.sqlstate, o.message
                ));
            }
            Some(pb::upgrade_event::Event::Progress(r)) => {
                let done = r.totals.as_ref().map_or(0, |t| t.done) as usize;
                progress.advanced(reported, done);
                reported = done;
            }
            None => {}
        }
    }
    let wall = sent.elapsed();
    let run = client
        .get_upgrade(pb::GetUpgradeRequest {
            run_id: run.id.clone(),
        })
        .await
        .map_err(status)
        .context("GetUpgrade")?
        .into_inner();
    let status = pb::UpgradeStatus::try_from(run.status)
        .map_or("UNKNOWN", |s| s.as_str_name())
        .to_owned();
    if run.status != pb::UpgradeStatus::Succeeded as i32 || failed > 0 {
        bail!(
            "upgrade run {} ended {status} ({}); {failed} tenants failed{}",
            run.id,
            run.status_reason,
            first_failure.map_or(String::new(), |f| format!(", first: {f}"))
        );
    }
    let done = run.totals.as_ref().map_or(0, |t| t.done);
    ensure!(
        done == n as i64 && upgraded == n,
        "upgrade run {} succeeded with {done} tenants done and {upgraded} watched to version 2, not {n}",
        run.id
    );
    let (Some(created), Some(finished)) = (&run.created_at, &run.finished_at) else {
        bail!("upgrade run {} has no created_at or finished_at", run.id);
    };
    let seconds = seconds(finished) - seconds(created);
    ensure!(
        seconds > 0.0,
        "upgrade run {} finished {seconds} s after it was created",
        run.id
    );
    Ok(TenantdUpgrade {
        run_id: run.id,
        elapsed: Duration::from_secs_f64(seconds),
        wall,
        first_claim: Duration::ZERO,
        cpu: Duration::ZERO,
    })
}

/// How long after its creation the run's first tenant was claimed: a claim
/// stamps the started_at of the tenants it takes for the first time with
/// its transaction's time, so the earliest started_at is the first claim.
///
/// Nothing in the catalog tells one claim from another once the run is over
/// (a tenant keeps the started_at of its first claim when it is released and
/// claimed again, two claims can start in the same microsecond, and the
/// lease's owner — one per process, not per worker — is cleared when the
/// tenant is done), so claims are not counted.
async fn first_claim(db: &BenchDatabase, run_id: &str) -> anyhow::Result<Duration> {
    let mut conn = db.connect().await?;
    let first: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(i.started_at) - r.created_at)::float8 \
         FROM tenantd.upgrade_runs r JOIN tenantd.upgrade_items i ON i.run_id = r.id \
         WHERE r.id = $1::uuid GROUP BY r.created_at",
    )
    .bind(run_id)
    .fetch_one(&mut conn)
    .await
    .context("read the run's first claim")?;
    let _ = conn.close().await;
    Ok(Duration::from_secs_f64(first.max(0.0)))
}

fn seconds(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) * 1e-9
}

fn report(args: &UpgradeArgs, server: &PgServer, r: &Results) {
    let checks = checks(r);
    print_checks(&checks);
    if r.tenants != GOAL_TENANTS {
        println!(
            "note: the targets are stated for {GOAL_TENANTS} tenants; this run had {}",
            r.tenants
        );
    }
    print_markdown(&args.target, || markdown(server, r, &checks));
}

fn checks(r: &Results) -> [Check; 3] {
    let raw_rate = r.tenants as f64 / r.raw.as_secs_f64();
    let tenantd_rate = r.tenants as f64 / r.tenantd.elapsed.as_secs_f64();
    [
        Check {
            label: "throughput ratio tenantd/raw",
            markdown: "fleet upgrade tenants/s, tenantd / raw",
            value: Some(tenantd_rate / raw_rate),
            limit: Limit::AtLeast(MIN_THROUGHPUT_RATIO),
            missing: "",
        },
        Check {
            label: "PlanUpgrade p50 ms",
            markdown: "PlanUpgrade p50, ms",
            value: Some(ms(r.plan.p50)),
            limit: Limit::AtMost(MAX_PLAN_P50_MS),
            missing: "",
        },
        Check {
            label: "tenantd RSS peak - start, MB",
            markdown: "tenantd RSS peak − start, MB",
            value: r
                .rss
                .peak
                .zip(r.rss.start)
                .map(|(peak, start)| peak - start),
            limit: Limit::AtMost(MAX_RSS_GROWTH_MB),
            missing: "no VmRSS sample of the tenantd process",
        },
    ]
}

fn markdown(server: &PgServer, r: &Results, checks: &[Check]) -> String {
    let n = r.tenants;
    let c = r.connections;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| Fleet upgrade, {n} tenants, 1 column + 1 index | connections | seconds | tenants/s |"
    );
    md.push_str("|---|---:|---:|---:|\n");
    for (path, took) in [
        ("raw SQL, one batch per tenant", r.raw),
        (
            "tenantd StartUpgrade (run created → finished)",
            r.tenantd.elapsed,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {path} | {c} | {:.1} | {:.1} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    let _ = writeln!(
        md,
        "\n| PlanUpgrade, {} tenants ({n} behind) | calls | p50 ms | p95 ms |\n|---|---:|---:|---:|\n\
         | tenantd gRPC | {PLAN_CALLS} | {:.1} | {:.1} |",
        2 * n,
        ms(r.plan.p50),
        ms(r.plan.p95)
    );
    let _ = writeln!(
        md,
        "\n| tenantd VmRSS during PlanUpgrade and the run | start MB | peak MB | end MB |\n\
         |---|---:|---:|---:|\n| {} samples, every {RSS_EVERY:?} | {} |",
        r.rss.samples,
        r.rss.cells(1)
    );
    targets_table(&mut md, "value", checks, 2);
    footnote(
        &mut md,
        server,
        format_args!(
            "two fleets of {n} tenants each, created together at version 1 in {:.0} s (raw, not \
             timed), one upgraded by raw SQL and one by tenantd; {c} connections, {c} upgrade \
             workers, run concurrency {c}; tenantd's time includes {:.0} ms from the run's \
             creation to its first claim.",
            r.fleet.as_secs_f64(),
            ms(r.tenantd.first_claim),
        ),
    );
    md
}
