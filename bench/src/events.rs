//! `tenantd-bench events`: the event stream under a steady rate of tenant
//! changes with many watchers, and `tenantd-bench usage`: what sampling
//! tenant sizes costs the database at a fleet's size.
//!
//! events, on one fresh database and one tenantd process:
//! 1. setup (not timed): `--tenants` tenants, one member per writer;
//! 2. quiet: `--writers` clients change their member's role (one event
//!    each) at `--rate` changes a second in all, nobody watching;
//! 3. watched: the same with `--watchers` WatchEvents streams open (each
//!    on a connection of its own) and one more stream that is never read;
//!    every delivery's lag (arrival minus the event's commit-time stamp,
//!    one clock) is recorded, every stream's cursors are checked to follow
//!    each other without gap or repeat, and tenantd's resident memory is
//!    sampled every second;
//! 4. quiet again. Quiet and watched alternate, so the machine's drift
//!    hits both.
//!
//! usage: `--tenants` tenants made through CreateTenant (their schemas
//! hold the default tables), then tenantd's sampling queries — the
//! catalog's list of tenants and the clusters' pg_class sums — run
//! `--samples` times, each timed by the client and by PostgreSQL
//! (EXPLAIN ANALYZE's execution time).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use clap::Args;
use tenantd::pb;
use tenantd::pb::event_service_client::EventServiceClient;
use tenantd::pb::user_service_client::UserServiceClient;
use tokio::task::JoinSet;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, ms, percentile};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::procstat::{mb, vm_rss_kb};
use crate::report::{Check, Limit, footnote, print_checks, print_markdown, targets_table};
use crate::server::{Authed, TenantdServer, status};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Tenant changes a second, all writers together.
    #[arg(long, default_value_t = 1000)]
    rate: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Watchers connected during the watched phase.
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Tenants the writers' members are spread over.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Seconds of the watched phase.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds of each quiet phase (one before, one after).
    #[arg(long, default_value_t = 10.0)]
    quiet_seconds: f64,
    #[command(flatten)]
    target: Target,
}

const MAX_LAG_P99_MS: f64 = 100.0;
/// The writers keep the rate asked for.
const MIN_RATE_SHARE: f64 = 0.98;
/// Resident memory may grow this much over the watched phase (its last
/// third's peak over its first third's).
const MAX_RSS_GROWTH_MB: f64 = 16.0;

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    flags::between("--rate", args.rate, 1, 100_000)?;
    flags::between("--writers", args.writers, 1, 1024)?;
    flags::between("--watchers", args.watchers, 1, 1000)?;
    flags::between("--tenants", args.tenants, 1, 10_000)?;
    let watched = flags::measured("--seconds", args.seconds)?;
    let quiet = flags::measured("--quiet-seconds", args.quiet_seconds)?;
    run_bench(
        &args.target,
        async |tenantd, db| run_events(&args, watched, quiet, tenantd, db).await,
        |server, results| report_events(&args, server, results),
    )
    .await
}

struct EventResults {
    /// Writes of the two quiet phases, and of the watched one.
    quiet_writes: CallStats,
    watched_writes: CallStats,
    /// Every delivery's lag in the watched phase.
    lags: Vec<Duration>,
    deliveries: usize,
    /// Cursors out of order or repeated, over every watcher.
    breaks: usize,
    rss_mb: Vec<f64>,
    /// How the stream that was never read ended.
    stuck: String,
}

/// One writer: a member whose role it flips.
struct Writer {
    client: UserServiceClient<Authed>,
    tenant: String,
    user: String,
}

impl Writer {
    async fn flip(&mut self, i: u64) -> anyhow::Result<()> {
        let role = if i.is_multiple_of(2) {
            pb::MemberRole::Manager
        } else {
            pb::MemberRole::Employee
        };
        self.client
            .change_role(pb::ChangeRoleRequest {
                tenant_id: self.tenant.clone(),
                user_id: self.user.clone(),
                role: role as i32,
            })
            .await
            .map_err(status)?;
        Ok(())
    }
}

/// Runs the writers at `rate` in all for `seconds`; their latencies.
async fn write_phase(
    writers: Vec<Writer>,
    rate: usize,
    seconds: Duration,
) -> anyhow::Result<(Vec<Writer>, Vec<Duration>)> {
    let n = writers.len();
    let period = Duration::from_secs_f64(n as f64 / rate as f64);
    let start = tokio::time::Instant::now();
    let until = start + seconds;
    let mut tasks = JoinSet::new();
    for (w, mut writer) in writers.into_iter().enumerate() {
        tasks.spawn(async move {
            // Writers start spread over one period.
            let mut next = start + period.mul_f64(w as f64 / n as f64);
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while next < until {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                writer.flip(i).await?;
                latencies.push(sent.elapsed());
                i += 1;
                next += period;
            }
            anyhow::Ok((writer, latencies))
        });
    }
    let mut writers = Vec::with_capacity(n);
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (writer, latencies) = joined.context("a writer panicked")??;
        writers.push(writer);
        all.extend(latencies);
    }
    Ok((writers, all))
}

/// What one watcher saw.
#[derive(Default)]
struct Watched {
    lags: Vec<Duration>,
    deliveries: usize,
    breaks: usize,
}

fn lag(at: Option<&prost_types::Timestamp>) -> Option<Duration> {
    let at = at?;
    let stamped = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(at.seconds).ok()?,
            u32::try_from(at.nanos).ok()?,
        );
    Some(
        SystemTime::now()
            .duration_since(stamped)
            .unwrap_or_default(),
    )
}

/// A WatchEvents stream of every event from now on, on `authed`.
async fn watch_from_now(authed: Authed) -> anyhow::Result<tonic::Streaming<pb::Event>> {
    Ok(EventServiceClient::new(authed)
        .watch_events(pb::WatchEventsRequest {
            after: 0,
            filter: None,
            from_now: true,
        })
        .await
        .map_err(status)?
        .into_inner())
}

async fn run_events(
    args: &EventsArgs,
    watched_for: Duration,
    quiet_for: Duration,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<EventResults> {
    // Every watcher here is the bench's one key.
    let per_caller = (args.watchers + 1).to_string();
    let extra = ["--events-max-watchers-per-caller", &per_caller].map(OsStr::new);
    TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
        let pid = server.pid()?;
        let (tenants, _) = crate::tenants::create(server, "ev", args.tenants, 4).await?;
        let mut writers = Vec::with_capacity(args.writers);
        for (w, authed) in server
            .connect_spread(args.writers, args.writers.min(8))
            .await?
            .into_iter()
            .enumerate()
        {
            let mut client = UserServiceClient::new(authed);
            let user = client
                .create_user(pb::CreateUserRequest {
                    first_name: format!("Writer{w}"),
                    last_name: "Bench".into(),
                    email: format!("writer{w}-{:08x}@example.com", rand::random::<u32>()),
                    phone: String::new(),
                    password: "correct horse battery staple".into(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let tenant = tenants[w % tenants.len()].to_string();
            client
                .add_member(pb::AddMemberRequest {
                    tenant_id: tenant.clone(),
                    user_id: user.id.clone(),
                    role: pb::MemberRole::Employee as i32,
                })
                .await
                .map_err(status)?;
            writers.push(Writer {
                client,
                tenant,
                user: user.id,
            });
        }
        eprintln!("tenantd-bench: quiet phase, {} changes/s", args.rate);
        let (writers, mut quiet) = write_phase(writers, args.rate, quiet_for).await?;

        // The watchers, from the newest event on.
        let recording = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut watchers = JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers);
        for _ in 0..args.watchers {
            let authed = server.connect().await?;
            let recording = Arc::clone(&recording);
            let ready = ready_tx.clone();
            let mut stop = stop_rx.clone();
            watchers.spawn(async move {
                let mut stream = watch_from_now(authed).await?;
                let _ = ready.send(()).await;
                let mut seen = Watched::default();
                let mut last: Option<i64> = None;
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.changed() => break,
                    };
                    match message {
                        Ok(Some(e)) => {
                            if last.is_some_and(|l| e.cursor != l + 1) {
                                seen.breaks += 1;
                            }
                            last = Some(e.cursor);
                            seen.deliveries += 1;
                            if recording.load(Ordering::Relaxed)
                                && let Some(l) = lag(e.at.as_ref())
                            {
                                seen.lags.push(l);
                            }
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == tonic::Code::Cancelled => break,
                        Err(s) => return Err(status(s)),
                    }
                }
                anyhow::Ok(seen)
            });
        }
        drop(ready_tx);
        for _ in 0..args.watchers {
            ready_rx.recv().await.context("a watcher did not start")?;
        }
        // One more that is opened and never read.
        let mut stuck = watch_from_now(server.connect().await?).await?;

        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = Arc::clone(&sampling);
            tokio::spawn(async move {
                let mut rss = Vec::new();
                while sampling.load(Ordering::Relaxed) {
                    if let Some(kb) = vm_rss_kb(pid) {
                        rss.push(mb(kb));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                rss
            })
        };
        eprintln!(
            "tenantd-bench: watched phase, {} watchers (and one that never reads)",
            args.watchers
        );
        recording.store(true, Ordering::Relaxed);
        let (writers, watched) = write_phase(writers, args.rate, watched_for).await?;
        // Deliveries of the last changes still count.
        tokio::time::sleep(Duration::from_secs(1)).await;
        recording.store(false, Ordering::Relaxed);
        sampling.store(false, Ordering::Relaxed);
        let rss_mb = sampler.await.context("the memory sampler")?;

        eprintln!("tenantd-bench: quiet phase again");
        // The watchers leave before it: a quiet phase has none.
        let _ = stop_tx.send(true);
        let mut lags = Vec::new();
        let (mut deliveries, mut breaks) = (0, 0);
        while let Some(joined) = watchers.join_next().await {
            let seen = joined.context("a watcher panicked")??;
            lags.extend(seen.lags);
            deliveries += seen.deliveries;
            breaks += seen.breaks;
        }
        let (_, after) = write_phase(writers, args.rate, quiet_for).await?;
        quiet.extend(after);

        let stuck = loop {
            match tokio::time::timeout(Duration::from_secs(10), stuck.message()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => break "ended without a status".to_owned(),
                Ok(Err(s)) => break format!("{:?}: {}", s.code(), s.message()),
                Err(_) => break "still open".to_owned(),
            }
        };
        Ok(EventResults {
            quiet_writes: CallStats::new(quiet, quiet_for * 2)
                .context("no write in the quiet phases")?,
            watched_writes: CallStats::new(watched, watched_for)
                .context("no write in the watched phase")?,
            lags,
            deliveries,
            breaks,
            rss_mb,
            stuck,
        })
    })
    .await
}

fn rss_growth(rss: &[f64]) -> Option<f64> {
    let third = rss.len() / 3;
    if third == 0 {
        return None;
    }
    let first = rss[..third].iter().cloned().fold(f64::MIN, f64::max);
    let last = rss[rss.len() - third..]
        .iter()
        .cloned()
        .fold(f64::MIN, f64::max);
    Some(last - first)
}

fn report_events(args: &EventsArgs, server: &PgServer, r: &EventResults) {
    let mut lags = r.lags.clone();
    lags.sort_unstable();
    let (p50, p99, max) = if lags.is_empty() {
        (None, None, None)
    } else {
        (
            Some(ms(percentile(&lags, 0.50))),
            Some(ms(percentile(&lags, 0.99))),
            Some(ms(*lags.last().unwrap_or(&Duration::ZERO))),
        )
    };
    let rate_share = r.watched_writes.per_second / args.rate as f64;
    let growth = rss_growth(&r.rss_mb);
    let checks = [
        Check {
            label: "delivery lag p99 ms",
            markdown: "delivery lag p99, ms,",
            value: p99,
            limit: Limit::AtMost(MAX_LAG_P99_MS),
            missing: "no delivery recorded",
        },
        Check {
            label: "changes/s kept, share of the rate asked",
            markdown: "changes/s kept with the watchers, share of the rate asked,",
            value: Some(rate_share),
            limit: Limit::AtLeast(MIN_RATE_SHARE),
            missing: "",
        },
        Check {
            label: "tenantd RSS growth over the watched phase MB",
            markdown: "tenantd RSS growth over the watched phase, MB,",
            value: growth,
            limit: Limit::AtMost(MAX_RSS_GROWTH_MB),
            missing: "phase too short to sample",
        },
        Check {
            label: "cursor gaps or repeats",
            markdown: "cursor gaps or repeats over all watchers",
            value: Some(r.breaks as f64),
            limit: Limit::AtMost(0.0),
            missing: "",
        },
    ];
    let w = |c: &CallStats| {
        format!(
            "calls={} per_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.1}",
            c.calls,
            c.per_second,
            ms(c.p50),
            ms(c.p99),
            ms(c.max)
        )
    };
    println!("writes quiet   {}", w(&r.quiet_writes));
    println!("writes watched {}", w(&r.watched_writes));
    println!(
        "deliveries={} recorded={} lag_p50_ms={} lag_p99_ms={} lag_max_ms={}",
        r.deliveries,
        lags.len(),
        crate::report::or_na(p50, 1),
        crate::report::or_na(p99, 1),
        crate::report::or_na(max, 1)
    );
    println!(
        "tenantd rss_mb first={:.1} max={:.1} last={:.1}",
        r.rss_mb.first().copied().unwrap_or(0.0),
        r.rss_mb.iter().cloned().fold(0.0, f64::max),
        r.rss_mb.last().copied().unwrap_or(0.0)
    );
    println!("the stream never read: {}", r.stuck);
    print_checks(&checks);
    print_markdown(&args.target, || {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| phase | changes/s | write p50 ms | write p99 ms | deliveries | lag p50 ms | lag p99 ms | lag max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let q = &r.quiet_writes;
        let _ = writeln!(
            md,
            "| quiet (before and after), no watchers | {:.0} | {:.2} | {:.2} | – | – | – | – |",
            q.per_second,
            ms(q.p50),
            ms(q.p99)
        );
        let v = &r.watched_writes;
        let _ = writeln!(
            md,
            "| watched, {} watchers + 1 never reading | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} |",
            args.watchers,
            v.per_second,
            ms(v.p50),
            ms(v.p99),
            r.deliveries,
            crate::report::or_na(p50, 1),
            crate::report::or_na(p99, 1),
            crate::report::or_na(max, 1)
        );
        targets_table(&mut md, "measured", &checks, 2);
        footnote(
            &mut md,
            server,
            format_args!(
                "{} writers changing roles at {}/s over {} tenants; tenantd RSS {:.1} → {:.1} MB (max {:.1}) over the watched phase; the stream never read ended: {}.",
                args.writers,
                args.rate,
                args.tenants,
                r.rss_mb.first().copied().unwrap_or(0.0),
                r.rss_mb.last().copied().unwrap_or(0.0),
                r.rss_mb.iter().cloned().fold(0.0, f64::max),
                r.stuck
            ),
        );
        md
    })
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Tenants made before sampling.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// CreateTenant clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Samplings timed.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    #[command(flatten)]
    target: Target,
}

/// The bound: database time per minute of sampling at the default
/// interval (one sampling a minute).
const MAX_DB_SECONDS_PER_MINUTE: f64 = 1.0;

struct UsageResults {
    tenants: usize,
    relations: i64,
    /// Per sampling: client wall time, server execution time (both
    /// queries).
    wall: Vec<Duration>,
    server: Vec<Duration>,
}

pub async fn run_usage(args: UsageArgs) -> anyhow::Result<()> {
    flags::between("--tenants", args.tenants, 1, 100_000)?;
    flags::between("--clients", args.clients, 1, 64)?;
    flags::between("--samples", args.samples, 1, 1000)?;
    run_bench(
        &args.target,
        async |tenantd, db| run_usage_phases(&args, tenantd, db).await,
        |server, results| report_usage(&args, server, results),
    )
    .await
}

/// The catalog's half of a sampling, as tenantd sends it.
const PLACED: &str = "SELECT id, slug, schema_name, placement FROM tenantd.tenants \
                      WHERE status IN ('active', 'suspended', 'archived')";

fn execution_time(plan: &serde_json::Value) -> Option<Duration> {
    let ms = plan.get(0)?.get("Execution Time")?.as_f64()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

async fn run_usage_phases(
    args: &UsageArgs,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<UsageResults> {
    let extra: [&OsStr; 0] = [];
    TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
        crate::tenants::create(server, "us", args.tenants, args.clients).await?;
        anyhow::Ok(())
    })
    .await?;
    let mut conn = db.connect().await?;
    let relations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname LIKE 'tenant\\_%'",
    )
    .fetch_one(&mut conn)
    .await?;
    let (mut wall, mut server) = (Vec::new(), Vec::new());
    // One untimed sampling first: the catalog's pages come into memory
    // as they would after the first minute.
    for i in 0..=args.samples {
        let started = Instant::now();
        let tenants: Vec<(uuid::Uuid, String, String, String)> =
            sqlx::query_as(PLACED).fetch_all(&mut conn).await?;
        let sizes: Vec<(String, i64, i64, i64)> = sqlx::query_as(tenantd::usage::SCHEMA_SIZES)
            .fetch_all(&mut conn)
            .await?;
        let took = started.elapsed();
        ensure!(
            tenants.len() == args.tenants && sizes.len() >= args.tenants,
            "sampled {} tenants and {} schemas, not {}",
            tenants.len(),
            sizes.len(),
            args.tenants
        );
        let mut on_server = Duration::ZERO;
        for sql in [PLACED, tenantd::usage::SCHEMA_SIZES] {
            let (plan,): (serde_json::Value,) =
                sqlx::query_as(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))
                    .fetch_one(&mut conn)
                    .await?;
            on_server += execution_time(&plan).context("no execution time in the plan")?;
        }
        if i > 0 {
            wall.push(took);
            server.push(on_server);
        }
    }
    Ok(UsageResults {
        tenants: args.tenants,
        relations,
        wall,
        server,
    })
}

fn report_usage(args: &UsageArgs, pg: &PgServer, r: &UsageResults) {
    let mut wall = r.wall.clone();
    wall.sort_unstable();
    let mut server = r.server.clone();
    server.sort_unstable();
    let (w50, w_max) = (
        ms(percentile(&wall, 0.5)),
        ms(*wall.last().unwrap_or(&Duration::ZERO)),
    );
    let (s50, s_max) = (
        ms(percentile(&server, 0.5)),
        ms(*server.last().unwrap_or(&Duration::ZERO)),
    );
    // One sampling a minute at the default interval: the worst sampling's
    // time is the database time per minute.
    let checks = [Check {
        label: "database seconds per minute of sampling (worst sampling, client-timed)",
        markdown: "database time per minute at one sampling a minute (worst of the samplings, timed by the client), s,",
        value: Some(w_max / 1000.0),
        limit: Limit::AtMost(MAX_DB_SECONDS_PER_MINUTE),
        missing: "",
    }];
    println!(
        "tenants={} relations={} samplings={} wall_p50_ms={w50:.1} wall_max_ms={w_max:.1} \
         server_p50_ms={s50:.1} server_max_ms={s_max:.1}",
        r.tenants,
        r.relations,
        wall.len()
    );
    print_checks(&checks);
    print_markdown(&args.target, || {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| tenants | relations in their schemas | samplings | client p50 ms | client max ms | PostgreSQL p50 ms | PostgreSQL max ms |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {w50:.1} | {w_max:.1} | {s50:.1} | {s_max:.1} |",
            r.tenants,
            r.relations,
            wall.len()
        );
        targets_table(&mut md, "measured", &checks, 3);
        footnote(
            &mut md,
            pg,
            format_args!(
                "a sampling is tenantd's two queries: the catalog's tenants and one pg_class sum for the cluster (EXPLAIN ANALYZE's execution time for the PostgreSQL columns)."
            ),
        );
        md
    })
}
