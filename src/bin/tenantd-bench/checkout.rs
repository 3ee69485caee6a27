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
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use tenantd::data::{PoolSettings, TenantPools};
use tenantd::domain::TenantId;
use tenantd::metrics::Metrics;

use crate::Target;
use crate::measure::{Check, Limit, Window, Worker, measure, percentile};
use crate::pg::{BenchDatabase, PgServer, with_bench_database};
use crate::server::{TenantdServer, tenantd_binary};

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
    ensure!(!args.tasks.is_empty(), "--tasks needs at least one value");
    ensure!(
        args.tasks.iter().all(|t| (1..=256).contains(t)),
        "--tasks values must be between 1 and 256"
    );
    ensure!(
        (1..=1000).contains(&args.tenants),
        "--tenants must be between 1 and 1000"
    );
    ensure!(
        (1..=64).contains(&args.pool_size),
        "--pool-size must be between 1 and 64"
    );
    ensure!(
        args.tenants * args.pool_size <= PoolSettings::default().budget,
        "--tenants × --pool-size must fit in the connection budget of {}",
        PoolSettings::default().budget
    );
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be more than zero"
    );
    ensure!(
        args.warmup_seconds.is_finite() && args.warmup_seconds >= 0.0,
        "--warmup-seconds must not be negative"
    );
    let window = Window {
        warmup: Duration::from_secs_f64(args.warmup_seconds),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let tenantd_bin = &tenantd_binary(args.target.tenantd.as_deref())?;
    let args = &args;
    with_bench_database(&args.target, |server, db| async move {
        let results = run_phases(args, window, tenantd_bin, &db).await?;
        report(args, window, &server, &results);
        Ok(())
    })
    .await
}

/// One phase's checkouts.
struct Phase {
    tasks: usize,
    calls: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

impl Phase {
    fn line(&self) -> String {
        format!(
            "checkout tasks={} calls={} per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
            self.tasks,
            self.calls,
            self.per_second,
            us(self.p50),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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
    let mut server = TenantdServer::start(tenantd_bin, &db.url, &db.name, &[]).await?;
    let made = crate::tenants::create(&server, "checkout", args.tenants, 4).await;
    let stopped = server.stop().await;
    let (ids, _) = made?;
    stopped?;
    server.remove_log();

    let catalog = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone())
        .await
        .context("open a catalog pool on the bench database")?;
    let secret = tenantd::catalog::settings::role_secret(&catalog).await?;
    let metrics = Metrics::new();
    let pools = TenantPools::new(
        catalog.clone(),
        db.options.clone(),
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
            eprintln!(
                "tenantd-bench: checkout tasks={tasks}: {:?} warm-up, {:?} measured",
                window.warmup, window.measure
            );
            let mut latencies = measure(workers, window)
                .await
                .with_context(|| format!("run the checkout phase with {tasks} tasks"))?;
            ensure!(
                !latencies.is_empty(),
                "tasks={tasks}: no checkout inside the measured window"
            );
            latencies.sort_unstable();
            let phase = Phase {
                tasks,
                calls: latencies.len(),
                per_second: latencies.len() as f64 / window.measure.as_secs_f64(),
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
                p999: percentile(&latencies, 0.999),
                max: *latencies.last().unwrap_or(&Duration::ZERO),
            };
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
    if args.target.markdown {
        println!();
        print!("{}", markdown(window, server, r, &check));
    }
}

fn check(r: &Results) -> Check {
    Check {
        label: "checkout + drop p99 µs (worst phase)",
        markdown: "checkout + drop p99, µs, worst phase",
        value: r.phases.iter().map(|p| us(p.p99)).max_by(f64::total_cmp),
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
        let _ = writeln!(
            md,
            "| in-process, {} tenants round-robin | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.tenants,
            p.tasks,
            p.calls,
            p.per_second,
            us(p.p50),
            us(p.p99),
            us(p.p999),
            us(p.max)
        );
    }
    md.push_str("\n| target | value | result |\n|---|---:|---|\n");
    let (value, verdict) = match check.value {
        Some(v) => (format!("{v:.1}"), check.verdict(v).to_owned()),
        None => ("n/a".to_owned(), check.missing.to_owned()),
    };
    let _ = writeln!(
        md,
        "| {} {} | {value} | {verdict} |",
        check.markdown, check.limit
    );
    let _ = writeln!(
        md,
        "\n{}; {:?} measured per phase after {:?} warm-up; pool size {}, every pool's \
         connections open before the clock ({} cache misses during the phases); the tasks on \
         this process's Tokio runtime ({} worker threads), nothing else running in it but the \
         connections' own tasks.",
        server.setting(),
        window.measure,
        window.warmup,
        r.pool_size,
        r.misses,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    md
}
