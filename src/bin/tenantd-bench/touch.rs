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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use sqlx::{Connection, PgConnection};
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::tenant_data_service_client::TenantDataServiceClient;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Target;
use crate::measure::{Check, Limit, ms, percentile};
use crate::pg::{BenchDatabase, PgServer, with_bench_database};
use crate::procstat::{mb, vm_rss_kb};
use crate::server::{TenantdServer, endpoint, tenantd_binary};

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
/// Progress lines every so many calls.
const PROGRESS_EVERY: usize = 1000;

/// Runs the benchmark and prints its results.
pub async fn run(args: TouchArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=1_000_000).contains(&args.tenants),
        "--tenants must be between 1 and 1000000"
    );
    ensure!(args.cache >= 1, "--cache must be at least 1");
    ensure!(
        (4..=10_000).contains(&args.budget),
        "--budget must be between 4 (tenantd's pool size) and 10000"
    );
    ensure!(
        (1..=256).contains(&args.clients),
        "--clients must be between 1 and 256"
    );
    ensure!(
        (1..=64).contains(&args.create_clients),
        "--create-clients must be between 1 and 64"
    );
    ensure!(args.passes >= 1, "--passes must be at least 1");
    ensure!(
        args.sample_every >= Duration::from_millis(10),
        "--sample-every must be at least 10ms"
    );
    let tenantd_bin = &tenantd_binary(args.target.tenantd.as_deref())?;
    let args = &args;
    with_bench_database(&args.target, |server, db| async move {
        let results = run_phases(args, tenantd_bin, &db).await?;
        report(args, &server, &results);
        Ok(())
    })
    .await
}

/// What the sampler saw: per series the first, highest and last value.
#[derive(Debug, Default, Clone, Copy)]
struct Series {
    start: Option<f64>,
    peak: Option<f64>,
    end: Option<f64>,
}

impl Series {
    fn record(&mut self, v: Option<f64>) {
        let Some(v) = v else { return };
        self.start.get_or_insert(v);
        self.peak = Some(self.peak.map_or(v, |p| p.max(v)));
        self.end = Some(v);
    }
}

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
    calls: usize,
    failed: BTreeMap<String, usize>,
    first_failure: Option<String>,
    took: Duration,
    p50: Duration,
    p99: Duration,
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
    let mut server = TenantdServer::start(tenantd_bin, &db.url, &db.name, &extra).await?;
    let run = async {
        eprintln!(
            "tenantd-bench: tenantd serving on {} (--tenant-pool-cache {} --tenant-connection-budget {})",
            server.addr, args.cache, args.budget
        );
        let pid = server.pid().context("tenantd has no process id")?;
        let rss_before_fleet = vm_rss_kb(pid);
        let (ids, fleet) =
            crate::tenants::create(&server, "touch", args.tenants, args.create_clients).await?;
        println!(
            "fleet    tenants={} clients={} seconds={:.1} tenants_per_s={:.1} (CreateTenant, not a target)",
            ids.len(),
            args.create_clients,
            fleet.as_secs_f64(),
            ids.len() as f64 / fleet.as_secs_f64()
        );
        let rss_before_touch = vm_rss_kb(pid);
        let before = server.scrape().await?;

        let mut watcher = PgConnection::connect_with(&db.options)
            .await
            .context("connect to the bench database")?;
        let stop = CancellationToken::new();
        let touching = async {
            let _stop = stop.clone().drop_guard();
            touch_all(&server, &ids, args).await
        };
        let (touch, samples) = tokio::join!(
            touching,
            sample(&server, pid, &mut watcher, args.sample_every, stop.clone())
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
        anyhow::Ok(Results {
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
    }
    .await;
    let stopped = server.stop().await;
    let results = run?;
    stopped?;
    server.remove_log();
    Ok(results)
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
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let channel = endpoint(server.addr)?
            .connect()
            .await
            .with_context(|| format!("connect a gRPC client to tenantd at {}", server.addr))?;
        clients.push(TenantDataServiceClient::new(server.authed(channel)?));
    }
    let start = Instant::now();
    for mut client in clients {
        let (ids, next) = (Arc::clone(&ids), Arc::clone(&next));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failed: Vec<(String, String)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (latencies, failed);
                }
                let tenant = &ids[i % ids.len()];
                let sent = Instant::now();
                let answer = client
                    .execute(pb::ExecuteRequest {
                        tenant_id: tenant.clone(),
                        sql: TOUCH_SQL.to_owned(),
                        read_only: true,
                        ..Default::default()
                    })
                    .await;
                match answer {
                    Ok(r) if r.get_ref().rows.len() == 1 => latencies.push(sent.elapsed()),
                    Ok(r) => failed.push((
                        "WRONG_ANSWER".to_owned(),
                        format!("tenant {tenant}: {:?}", r.get_ref().rows),
                    )),
                    Err(s) => failed.push((
                        format!("{:?}", s.code()),
                        format!("tenant {tenant}: {}", s.message()),
                    )),
                }
                if (i + 1) % PROGRESS_EVERY == 0 {
                    eprintln!(
                        "tenantd-bench: touched {}/{total} after {:.1} s",
                        i + 1,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = BTreeMap::new();
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (l, f) = joined.context("a touch client panicked")?;
        latencies.extend(l);
        for (code, message) in f {
            *failed.entry(code.clone()).or_insert(0) += 1;
            first_failure.get_or_insert(format!("{code}: {message}"));
        }
    }
    let took = start.elapsed();
    ensure!(!latencies.is_empty(), "no touch succeeded");
    latencies.sort_unstable();
    Ok(Touch {
        clients: args.clients,
        calls: latencies.len() + failed.values().sum::<usize>(),
        failed,
        first_failure,
        took,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// Samples until `stop`, and once more then.
async fn sample(
    server: &TenantdServer,
    pid: u32,
    conn: &mut PgConnection,
    every: Duration,
    stop: CancellationToken,
) -> Samples {
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            biased;
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
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
                samples
                    .pools_open
                    .record(m.get("tenantd_tenant_pools_open").copied());
                samples
                    .connections_open
                    .record(m.get("tenantd_tenant_connections_open").copied());
                samples
                    .connections_in_use
                    .record(m.get("tenantd_tenant_connections_in_use").copied());
            }
            Err(_) => samples.failed += 1,
        }
        if last {
            return samples;
        }
    }
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
        ms(t.p50),
        ms(t.p99)
    );
    for (code, count) in &t.failed {
        println!("failed   code={code} calls={count}");
    }
    if let Some(first) = &t.first_failure {
        println!("first failure: {first}");
    }
    let s = &r.samples;
    let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    for (name, series) in [
        ("rss_mb", s.rss_mb),
        ("tenant_backends", s.backends),
        ("pools_open", s.pools_open),
        ("connections_open", s.connections_open),
        ("connections_in_use", s.connections_in_use),
    ] {
        println!(
            "sampled  {name} start={} peak={} end={} samples={}",
            show(series.start),
            show(series.peak),
            show(series.end),
            s.count
        );
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
    for check in &checks {
        println!("{}", check.line());
    }
    if r.tenants != GOAL_TENANTS || r.cache != GOAL_CACHE {
        println!(
            "note: the targets are stated for {GOAL_TENANTS} tenants and a cache of {GOAL_CACHE}; \
             this run had {} and {}",
            r.tenants, r.cache
        );
    }
    if args.target.markdown {
        println!();
        print!("{}", markdown(server, r, &checks));
    }
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
        ms(t.p50),
        ms(t.p99)
    );
    let show =
        |v: Option<f64>, digits: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"));
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
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            show(series.start, digits),
            show(series.peak, digits),
            show(series.end, digits)
        );
    }
    md.push_str("\n| target | value | result |\n|---|---:|---|\n");
    for check in checks {
        let (value, verdict) = match check.value {
            Some(v) => (format!("{v:.1}"), check.verdict(v).to_owned()),
            None => ("n/a".to_owned(), check.missing.to_owned()),
        };
        let _ = writeln!(
            md,
            "| {} {} | {value} | {verdict} |",
            check.markdown, check.limit
        );
    }
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
    let _ = writeln!(
        md,
        "\n{}; {} tenants made through CreateTenant by {} clients in {:.0} s (not timed); \
         passes: {}, each tenant in creation order, the clients each on an HTTP/2 connection of \
         its own in the bench process on the same cores.",
        server.setting(),
        r.tenants,
        r.create_clients,
        r.fleet.as_secs_f64(),
        r.passes,
    );
    md
}
