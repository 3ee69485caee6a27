//! `tenantd-bench touch`: a fleet much larger than the pool cache, each
//! tenant touched in turn by one Execute, so that nearly every call opens a
//! pool, logs in as another role and pushes the least recently used pool
//! out — the worst case for the cache and the connection budget. Watched
//! throughout: tenantd's resident memory, the tenant-role backends
//! PostgreSQL has, and tenantd's own gauges of open pools and connections.
//!
//! The phases, on one fresh database and one tenantd process (started with
//! `--tenant-pool-cache` and `--tenant-connection-budget` as given):
//! 1. fleet (timed, not a target): `--tenants` tenants through CreateTenant,
//!    `--create-clients` at a time;
//! 2. touch: `--clients` clients, each on an HTTP/2 connection of its own,
//!    take the next tenant in creation order and call Execute
//!    (`SELECT count(*) FROM locations`, read-only) until every tenant was
//!    touched `--passes` times; a sampler reads VmRSS, pg_stat_activity and
//!    /metrics every `--sample-every` from the start of the pass to its end.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use sqlx::{Connection, PgConnection};
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::tenant_data_service_client::TenantDataServiceClient;
use tokio_util::sync::CancellationToken;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Progress, Turn, in_turn, ms};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::procstat::{mb, vm_rss_kb};
use crate::report::{Check, Limit, footnote, print_checks, print_markdown, targets_table};
use crate::sampler::{self, Series};
use crate::server::{Authed, TenantdServer};

#[derive(Debug, Args)]
pub struct TouchArgs {
    /// Tenants in the fleet.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,

    /// tenantd's --tenant-pool-cache: tenant pools kept at most.
    #[arg(long, default_value_t = 1000)]
    cache: u64,

    /// tenantd's --tenant-connection-budget: tenant connections at most.
    #[arg(long, default_value_t = 64)]
    budget: usize,

    /// Concurrent Execute clients of the touch pass, each on an HTTP/2
    /// connection of its own.
    #[arg(long, default_value_t = 8)]
    clients: usize,

    /// Concurrent CreateTenant clients making the fleet.
    #[arg(long, default_value_t = 4)]
    create_clients: usize,

    /// Times every tenant is touched, in turn.
    #[arg(long, default_value_t = 1)]
    passes: usize,

    /// How often the sampler looks, e.g. 250ms.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,

    #[command(flatten)]
    target: Target,
}

/// Targets of the issue.
const MAX_RSS_MB: f64 = 300.0;
/// The fleet size and cache the targets are stated for.
const GOAL_TENANTS: usize = 10_000;
const GOAL_CACHE: u64 = 1000;

/// What each touch runs: a read of one of the tenant's own tables.
const TOUCH_SQL: &str = "SELECT count(*) FROM locations";

/// Runs the benchmark and prints its results.
pub async fn run(args: TouchArgs) -> anyhow::Result<()> {
    flags::between("--tenants", args.tenants, 1, 1_000_000)?;
    flags::at_least("--cache", args.cache, 1)?;
    ensure!(
        (4..=10_000).contains(&args.budget),
        "--budget must be between 4 (tenantd's pool size) and 10000"
    );
    flags::between("--clients", args.clients, 1, 256)?;
    flags::between("--create-clients", args.create_clients, 1, 64)?;
    flags::at_least("--passes", args.passes, 1)?;
    ensure!(
        args.sample_every >= Duration::from_millis(10),
        "--sample-every must be at least 10ms"
    );
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, tenantd, db).await,
        |server, results| report(&args, server, results),
    )
    .await
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    count: usize,
    rss_mb: Series,
    backends: Series,
    pools_open: Series,
    connections_open: Series,
    connections_in_use: Series,
    /// Samples whose scrape or query failed.
    failed: usize,
}

/// The touch pass's calls.
struct Touch {
    clients: usize,
    /// Every call, failed or not.
    calls: usize,
    failed: BTreeMap<String, usize>,
    first_failure: Option<String>,
    took: Duration,
    /// The calls that succeeded.
    succeeded: CallStats,
}

struct Results {
    tenants: usize,
    cache: u64,
    budget: usize,
    passes: usize,
    sample_every: Duration,
    fleet: Duration,
    create_clients: usize,
    rss_before_fleet: Option<u64>,
    rss_before_touch: Option<u64>,
    touch: Touch,
    samples: Samples,
    /// Counters of /metrics at the end, less those at the start of the pass.
    counters: HashMap<&'static str, f64>,
}

/// The counters reported, by series.
const COUNTERS: [&str; 10] = [
    "tenantd_tenant_pool_cache_hits_total",
    "tenantd_tenant_pool_cache_misses_total",
    "tenantd_tenant_pool_evictions_total{reason=\"capacity\"}",
    "tenantd_tenant_pool_evictions_total{reason=\"idle\"}",
    "tenantd_tenant_pool_evictions_total{reason=\"budget\"}",
    "tenantd_tenant_pool_evictions_total{reason=\"broken\"}",
    "tenantd_tenant_connection_budget_waits_total",
    "tenantd_tenant_connection_budget_timeouts_total",
    "tenantd_tenant_connection_checkout_seconds_sum",
    "tenantd_tenant_connection_checkout_seconds_count",
];

async fn run_phases(
    args: &TouchArgs,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Results> {
    let (cache, budget) = (args.cache.to_string(), args.budget.to_string());
    let extra = [
        "--tenant-pool-cache",
        &cache,
        "--tenant-connection-budget",
        &budget,
    ]
    .map(OsStr::new);
    TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
        eprintln!(
            "tenantd-bench: tenantd serving on {} (--tenant-pool-cache {} --tenant-connection-budget {})",
            server.addr, args.cache, args.budget
        );
        let pid = server.pid()?;
        let rss_before_fleet = vm_rss_kb(pid);
        let (ids, fleet) =
            crate::tenants::create(server, "touch", args.tenants, args.create_clients).await?;
        println!(
            "fleet    tenants={} clients={} seconds={:.1} tenants_per_s={:.1} (CreateTenant, not a target)",
            ids.len(),
            args.create_clients,
            fleet.as_secs_f64(),
            ids.len() as f64 / fleet.as_secs_f64()
        );
        let rss_before_touch = vm_rss_kb(pid);
        let before = server.scrape().await?;

        let mut watcher = db.connect().await?;
        let stop = CancellationToken::new();
        let touching = async {
            let _stop = stop.clone().drop_guard();
            touch_all(server, &ids, args).await
        };
        let (touch, samples) = tokio::join!(
            touching,
            sample(server, pid, &mut watcher, args.sample_every, &stop)
        );
        let _ = watcher.close().await;
        let touch = touch?;
        let after = server.scrape().await?;
        let counters = COUNTERS
            .iter()
            .map(|&k| {
                let at = |m: &HashMap<String, f64>| m.get(k).copied().unwrap_or(0.0);
                (k, at(&after) - at(&before))
            })
            .collect();
        Ok(Results {
            tenants: ids.len(),
            cache: args.cache,
            budget: args.budget,
            passes: args.passes,
            sample_every: args.sample_every,
            fleet,
            create_clients: args.create_clients,
            rss_before_fleet,
            rss_before_touch,
            touch,
            samples,
            counters,
        })
    })
    .await
}

/// Every tenant `--passes` times in creation order, by `--clients`
/// clients taking the next one as they go. A failed call is counted by its
/// code and the pass goes on.
async fn touch_all(
    server: &TenantdServer,
    ids: &[TenantId],
    args: &TouchArgs,
) -> anyhow::Result<Touch> {
    let n = ids.len();
    let total = n * args.passes;
    eprintln!(
        "tenantd-bench: touching {n} tenants {} time(s) in turn, {} clients",
        args.passes, args.clients
    );
    let ids: Arc<Vec<String>> = Arc::new(ids.iter().map(ToString::to_string).collect());
    let touchers = server
        .connect_spread(args.clients, args.clients)
        .await?
        .into_iter()
        .map(|authed| Toucher {
            client: TenantDataServiceClient::new(authed),
            ids: Arc::clone(&ids),
        })
        .collect();
    let (outcomes, took) = in_turn("touch", touchers, Progress::new("touched", "", total)).await?;
    let mut latencies = Vec::with_capacity(total);
    let mut failed = BTreeMap::new();
    let mut first_failure = None;
    for outcome in outcomes {
        match outcome {
            Ok(latency) => latencies.push(latency),
            Err((code, message)) => {
                *failed.entry(code.clone()).or_insert(0) += 1;
                first_failure.get_or_insert(format!("{code}: {message}"));
            }
        }
    }
    Ok(Touch {
        clients: args.clients,
        calls: total,
        failed,
        first_failure,
        took,
        succeeded: CallStats::new(latencies, took).context("no touch succeeded")?,
    })
}

/// One client of the touch pass: Execute of [`TOUCH_SQL`] on tenant `i`
/// (modulo the fleet).
struct Toucher {
    client: TenantDataServiceClient<Authed>,
    ids: Arc<Vec<String>>,
}

impl Turn for Toucher {
    /// The call's latency, or the code and message it failed with.
    type Output = Result<Duration, (String, String)>;

    async fn take(&mut self, i: usize) -> anyhow::Result<Self::Output> {
        let tenant = &self.ids[i % self.ids.len()];
        let sent = Instant::now();
        let answer = self
            .client
            .execute(pb::ExecuteRequest {
                tenant_id: tenant.clone(),
                sql: TOUCH_SQL.to_owned(),
                read_only: true,
                ..Default::default()
            })
            .await;
        Ok(match answer {
            Ok(r) if r.get_ref().rows.len() == 1 => Ok(sent.elapsed()),
            Ok(r) => Err((
                "WRONG_ANSWER".to_owned(),
                format!("tenant {tenant}: {:?}", r.get_ref().rows),
            )),
            Err(s) => Err((
                format!("{:?}", s.code()),
                format!("tenant {tenant}: {}", s.message()),
            )),
        })
    }
}

/// Samples until `stop`, and once more then.
async fn sample(
    server: &TenantdServer,
    pid: u32,
    conn: &mut PgConnection,
    every: Duration,
    stop: &CancellationToken,
) -> Samples {
    let mut samples = Samples::default();
    sampler::every(every, stop, async || {
        samples.count += 1;
        samples.rss_mb.record(vm_rss_kb(pid).map(mb));
        let backends: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity \
             WHERE datname = current_database() AND usename ~ '^tenant_[0-9a-f]{32}$'",
        )
        .fetch_one(&mut *conn)
        .await;
        match backends {
            Ok(b) => samples.backends.record(Some(b as f64)),
            Err(_) => samples.failed += 1,
        }
        match server.scrape().await {
            Ok(m) => {
                let gauge = |name: &str| m.get(name).copied();
                samples
                    .pools_open
                    .record(gauge("tenantd_tenant_pools_open"));
                samples
                    .connections_open
                    .record(gauge("tenantd_tenant_connections_open"));
                samples
                    .connections_in_use
                    .record(gauge("tenantd_tenant_connections_in_use"));
            }
            Err(_) => samples.failed += 1,
        }
    })
    .await;
    samples
}

fn report(args: &TouchArgs, server: &PgServer, r: &Results) {
    let t = &r.touch;
    println!(
        "touch    tenants={} passes={} clients={} calls={} failed={} seconds={:.1} calls_per_s={:.1} p50_ms={:.1} p99_ms={:.1}",
        r.tenants,
        r.passes,
        t.clients,
        t.calls,
        t.failed.values().sum::<usize>(),
        t.took.as_secs_f64(),
        t.calls as f64 / t.took.as_secs_f64(),
        ms(t.succeeded.p50),
        ms(t.succeeded.p99)
    );
    for (code, count) in &t.failed {
        println!("failed   code={code} calls={count}");
    }
    if let Some(first) = &t.first_failure {
        println!("first failure: {first}");
    }
    let s = &r.samples;
    for (name, series) in [
        ("rss_mb", s.rss_mb),
        ("tenant_backends", s.backends),
        ("pools_open", s.pools_open),
        ("connections_open", s.connections_open),
        ("connections_in_use", s.connections_in_use),
    ] {
        println!("sampled  {name} {} samples={}", series.fields(""), s.count);
    }
    if s.failed > 0 {
        println!("warning: {} sample reads failed", s.failed);
    }
    for (k, v) in &r.counters {
        if !k.ends_with("_sum") && !k.ends_with("_count") {
            println!("counter  {k} {v:.0}");
        }
    }
    let checks = checks(r);
    print_checks(&checks);
    if r.tenants != GOAL_TENANTS || r.cache != GOAL_CACHE {
        println!(
            "note: the targets are stated for {GOAL_TENANTS} tenants and a cache of {GOAL_CACHE}; \
             this run had {} and {}",
            r.tenants, r.cache
        );
    }
    print_markdown(&args.target, || markdown(server, r, &checks));
}

fn checks(r: &Results) -> [Check; 5] {
    let s = &r.samples;
    [
        Check {
            label: "tenantd VmRSS peak, MB",
            markdown: "tenantd VmRSS peak, MB",
            value: s.rss_mb.peak,
            limit: Limit::AtMost(MAX_RSS_MB),
            missing: "no VmRSS sample",
        },
        Check {
            label: "tenant-role backends, peak",
            markdown: "tenant-role backends in pg_stat_activity, peak",
            value: s.backends.peak,
            limit: Limit::AtMost(r.budget as f64),
            missing: "no pg_stat_activity sample",
        },
        Check {
            label: "tenantd_tenant_connections_open, peak",
            markdown: "`tenantd_tenant_connections_open`, peak",
            value: s.connections_open.peak,
            limit: Limit::AtMost(r.budget as f64),
            missing: "no /metrics sample",
        },
        // The cache holds at most its capacity; a pool being built for a
        // call in flight may exist beside them until the cache's next
        // maintenance evicts the least recently used one.
        Check {
            label: "tenantd_tenant_pools_open, peak (cache + calls in flight)",
            markdown: "`tenantd_tenant_pools_open`, peak (cache + calls in flight)",
            value: s.pools_open.peak,
            limit: Limit::AtMost(r.cache as f64 + r.touch.clients as f64),
            missing: "no /metrics sample",
        },
        Check {
            label: "failed Execute calls",
            markdown: "failed Execute calls",
            value: Some(r.touch.failed.values().sum::<usize>() as f64),
            limit: Limit::AtMost(0.0),
            missing: "",
        },
    ]
}

fn markdown(server: &PgServer, r: &Results, checks: &[Check]) -> String {
    let t = &r.touch;
    let s = &r.samples;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| {} tenants touched in turn, cache {}, budget {} | clients | calls | failed | seconds | calls/s | p50 ms | p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n\
         | tenantd Execute, `{TOUCH_SQL}` | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        r.tenants,
        r.cache,
        r.budget,
        t.clients,
        t.calls,
        t.failed.values().sum::<usize>(),
        t.took.as_secs_f64(),
        t.calls as f64 / t.took.as_secs_f64(),
        ms(t.succeeded.p50),
        ms(t.succeeded.p99)
    );
    let _ = writeln!(
        md,
        "\n| sampled every {:?} during the pass ({} samples) | start | peak | end |\n|---|---:|---:|---:|",
        r.sample_every, s.count
    );
    for (name, series, digits) in [
        ("tenantd VmRSS, MB", s.rss_mb, 1),
        ("tenant-role backends (pg_stat_activity)", s.backends, 0),
        ("`tenantd_tenant_pools_open`", s.pools_open, 0),
        ("`tenantd_tenant_connections_open`", s.connections_open, 0),
        (
            "`tenantd_tenant_connections_in_use`",
            s.connections_in_use,
            0,
        ),
    ] {
        let _ = writeln!(md, "| {name} | {} |", series.cells(digits));
    }
    targets_table(&mut md, "value", checks, 1);
    let c = |k: &str| r.counters.get(k).copied().unwrap_or(0.0);
    let checkouts = c("tenantd_tenant_connection_checkout_seconds_count");
    let mean_checkout = if checkouts > 0.0 {
        format!(
            "{:.1} ms",
            1000.0 * c("tenantd_tenant_connection_checkout_seconds_sum") / checkouts
        )
    } else {
        "n/a".to_owned()
    };
    let rss = |kb: Option<u64>| kb.map_or("n/a".to_owned(), |kb| format!("{:.1} MB", mb(kb)));
    let _ = writeln!(
        md,
        "\nDuring the pass: {:.0} pool cache hits, {:.0} misses; pools evicted for capacity {:.0}, \
         idle {:.0}; idle connections closed for the budget {:.0}, broken {:.0}; {:.0} checkouts \
         waited for the budget, {:.0} gave up; mean checkout (pool opening and login included) \
         {mean_checkout}. tenantd VmRSS {} before the fleet was made, {} after.",
        c("tenantd_tenant_pool_cache_hits_total"),
        c("tenantd_tenant_pool_cache_misses_total"),
        c("tenantd_tenant_pool_evictions_total{reason=\"capacity\"}"),
        c("tenantd_tenant_pool_evictions_total{reason=\"idle\"}"),
        c("tenantd_tenant_pool_evictions_total{reason=\"budget\"}"),
        c("tenantd_tenant_pool_evictions_total{reason=\"broken\"}"),
        c("tenantd_tenant_connection_budget_waits_total"),
        c("tenantd_tenant_connection_budget_timeouts_total"),
        rss(r.rss_before_fleet),
        rss(r.rss_before_touch),
    );
    if let Some(first) = &t.first_failure {
        let _ = writeln!(md, "\nFirst failed call: {first}.");
    }
    footnote(
        &mut md,
        server,
        format_args!(
            "{} tenants made through CreateTenant by {} clients in {:.0} s (not timed); passes: \
             {}, each tenant in creation order, the clients each on an HTTP/2 connection of its \
             own in the bench process on the same cores.",
            r.tenants,
            r.create_clients,
            r.fleet.as_secs_f64(),
            r.passes,
        ),
    );
    md
}
