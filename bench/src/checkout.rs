//! `tenantd-bench checkout`: the data plane's per-call overhead before any
//! SQL — finding a tenant's pool in the cache and taking one of its idle
//! connections, then handing it back — measured in this process on
//! `tenantd::data::TenantPools` itself, with no gRPC in between.
//!
//! The phases, on one fresh database:
//! 1. setup (not timed): tenantd makes `--tenants` tenants (CreateTenant)
//!    and stops; this process builds a `TenantPools` on the same database
//!    with the catalog's role secret and opens every pool's connections;
//! 2. for each task count, that many tasks in a loop of `checkout(id)` and
//!    drop, each task going round the tenants from an offset of its own,
//!    `--warmup-seconds` unrecorded then `--seconds` measured; every
//!    checkout + drop is timed.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use tenantd::data::{PoolSettings, TenantPools};
use tenantd::domain::TenantId;
use tenantd::metrics::Metrics;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Window, Worker, measure, us};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::report::{Check, Limit, footnote, print_markdown, targets_table};
use crate::server::TenantdServer;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// Concurrent tasks, one phase per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    tasks: Vec<usize>,

    /// Tenants (pools) the tasks go round.
    #[arg(long, default_value_t = 8)]
    tenants: usize,

    /// Connections each tenant's pool may hold (tenantd's
    /// --tenant-pool-size).
    #[arg(long, default_value_t = 4)]
    pool_size: usize,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// Unrecorded seconds before each phase's measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,

    #[command(flatten)]
    target: Target,
}

/// Target of the issue: a cache hit and a checkout, p99.
const MAX_P99_US: f64 = 50.0;

/// Runs the benchmark and prints its results.
pub async fn run(args: CheckoutArgs) -> anyhow::Result<()> {
    flags::each_between("--tasks", &args.tasks, 1, 256)?;
    flags::between("--tenants", args.tenants, 1, 1000)?;
    flags::between("--pool-size", args.pool_size, 1, 64)?;
    ensure!(
        args.tenants * args.pool_size <= PoolSettings::default().budget,
        "--tenants × --pool-size must fit in the connection budget of {}",
        PoolSettings::default().budget
    );
    let window = Window::from_flags(args.seconds, args.warmup_seconds)?;
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, window, tenantd, db).await,
        |server, results| report(&args, window, server, results),
    )
    .await
}

/// One phase's checkouts.
struct Phase {
    tasks: usize,
    stats: CallStats,
}

impl Phase {
    fn line(&self) -> String {
        let s = &self.stats;
        format!(
            "checkout tasks={} calls={} per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
            self.tasks,
            s.calls,
            s.per_second,
            us(s.p50),
            us(s.p99),
            us(s.p999),
            us(s.max)
        )
    }
}

struct Results {
    tenants: usize,
    pool_size: usize,
    phases: Vec<Phase>,
    /// Checkouts that missed the cache during the measured phases (each
    /// builds a pool; there should be none).
    misses: u64,
}

async fn run_phases(
    args: &CheckoutArgs,
    window: Window,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Results> {
    // tenantd migrates the catalog and makes the tenants, then stops, so
    // that the machine is quiet for the loop.
    let (ids, _) = TenantdServer::serve(tenantd_bin, &db.url, &db.name, &[], async |server| {
        crate::tenants::create(server, "checkout", args.tenants, 4).await
    })
    .await?;

    let catalog = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone())
        .await
        .context("open a catalog pool on the bench database")?;
    let secret = tenantd::catalog::settings::role_secret(&catalog).await?;
    let metrics = Metrics::new();
    let clusters = tenantd::clusters::Clusters::new(
        catalog.clone(),
        db.options.clone(),
        // The bench's own cluster, on a Unix socket.
        None,
        tenantd::catalog::Engine::Postgres,
        tenantd::catalog::PoolSettings {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(10),
        },
        None,
        None,
    );
    let pools = TenantPools::new(
        clusters,
        secret,
        PoolSettings {
            pool_size: args.pool_size,
            ..PoolSettings::default()
        },
        metrics.clone(),
    );
    let run = async {
        // Every pool built and holding its connections before the clock.
        let want = args
            .pool_size
            .min(args.tasks.iter().copied().max().unwrap_or(1));
        for &id in &ids {
            let mut held = Vec::with_capacity(want);
            for _ in 0..want {
                held.push(
                    pools
                        .checkout(id)
                        .await
                        .with_context(|| format!("open a connection of tenant {id}"))?,
                );
            }
        }
        // The cache counts its entries in its housekeeping.
        pools.maintain().await;
        let (open, budget) = pools.connections();
        eprintln!(
            "tenantd-bench: {} pools, {open} connections open (budget {budget})",
            pools.pools_open()
        );
        let ids = Arc::new(ids);
        let misses_before = metrics.pool().cache_misses.get();
        let mut phases = Vec::new();
        for &tasks in &args.tasks {
            let workers: Vec<_> = (0..tasks)
                .map(|t| CheckoutWorker {
                    pools: pools.clone(),
                    ids: Arc::clone(&ids),
                    offset: t,
                })
                .collect();
            eprintln!("tenantd-bench: checkout tasks={tasks}: {window}");
            let latencies = measure(workers, window)
                .await
                .with_context(|| format!("run the checkout phase with {tasks} tasks"))?;
            let stats = CallStats::new(latencies, window.measure).with_context(|| {
                format!("tasks={tasks}: no checkout inside the measured window")
            })?;
            let phase = Phase { tasks, stats };
            println!("{}", phase.line());
            phases.push(phase);
        }
        anyhow::Ok(Results {
            tenants: ids.len(),
            pool_size: args.pool_size,
            phases,
            misses: metrics.pool().cache_misses.get() - misses_before,
        })
    }
    .await;
    pools.close().await;
    catalog.close().await;
    run
}

/// `checkout(id)` and drop, going round the tenants.
struct CheckoutWorker {
    pools: TenantPools,
    ids: Arc<Vec<TenantId>>,
    offset: usize,
}

impl Worker for CheckoutWorker {
    type Request = TenantId;

    fn prepare(&mut self, seq: u64) -> TenantId {
        let n = self.ids.len();
        self.ids[(self.offset + (seq % n as u64) as usize) % n]
    }

    async fn send(&mut self, id: TenantId) -> anyhow::Result<()> {
        let conn = self
            .pools
            .checkout(id)
            .await
            .with_context(|| format!("check out a connection of tenant {id}"))?;
        drop(conn);
        Ok(())
    }
}

fn report(args: &CheckoutArgs, window: Window, server: &PgServer, r: &Results) {
    let check = check(r);
    println!("{}", check.line());
    if r.misses > 0 {
        println!(
            "warning: {} checkouts missed the cache during the phases",
            r.misses
        );
    }
    print_markdown(&args.target, || markdown(window, server, r, &check));
}

fn check(r: &Results) -> Check {
    Check {
        label: "checkout + drop p99 µs (worst phase)",
        markdown: "checkout + drop p99, µs, worst phase",
        value: r
            .phases
            .iter()
            .map(|p| us(p.stats.p99))
            .max_by(f64::total_cmp),
        limit: Limit::AtMost(MAX_P99_US),
        missing: "no phase",
    }
}

fn markdown(window: Window, server: &PgServer, r: &Results, check: &Check) -> String {
    let mut md = String::new();
    md.push_str(
        "| TenantPools checkout + drop, cache hit, idle connection | tasks | checkouts | checkouts/s | p50 µs | p99 µs | p999 µs | max µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &r.phases {
        let s = &p.stats;
        let _ = writeln!(
            md,
            "| in-process, {} tenants round-robin | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.tenants,
            p.tasks,
            s.calls,
            s.per_second,
            us(s.p50),
            us(s.p99),
            us(s.p999),
            us(s.max)
        );
    }
    targets_table(&mut md, "value", std::slice::from_ref(check), 1);
    footnote(
        &mut md,
        server,
        format_args!(
            "{}; pool size {}, every pool's connections open before the clock ({} cache misses \
             during the phases); the tasks on this process's Tokio runtime ({} worker threads), \
             nothing else running in it but the connections' own tasks.",
            window.per_phase(),
            r.pool_size,
            r.misses,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ),
    );
    md
}
