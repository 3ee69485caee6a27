//! `tenantd-bench execute`: TenantDataService.Execute throughput and latency
//! for a primary-key SELECT, next to pgbench running the same SELECT in the
//! same run — the raw limit of the query on this machine.
//!
//! The phases, on one fresh database and one tenantd process:
//! 1. setup (not timed): one tenant through CreateTenant; a table
//!    `bench_accounts (id bigint PRIMARY KEY, balance bigint, filler text)`
//!    in its schema with `--rows` rows, made, granted to the tenant's role
//!    and analyzed by the superuser;
//! 2. for each client count, two raw phases and right after them the
//!    tenantd phase, each `--warmup-seconds` unrecorded then `--seconds`
//!    measured:
//!    - raw SELECT: pgbench, `-M prepared`, a script of
//!      `\set id random(1, N)` and the SELECT, one connection per client,
//!      logged in as the tenant's role with the tenant's schema as
//!      search_path (what tenantd's connections are) — the `pgbench -S`
//!      limit;
//!    - raw transaction (unless `--no-transaction`): the same, but the
//!      SELECT inside the very statements tenantd wraps a read-only call in
//!      (`BEGIN READ ONLY`, `SET LOCAL statement_timeout`, `SELECT 1`, the
//!      SELECT, `COMMIT`, and the session reset: `RESET ALL`, `CLOSE ALL`,
//!      `UNLISTEN *`, `pg_advisory_unlock_all()`, `DISCARD TEMP`), pipelined
//!      in one round trip — the
//!      limit of the SQL work tenantd asks of PostgreSQL per call;
//!    - tenantd: as many gRPC clients in this process, spread round-robin
//!      over `--channels` HTTP/2 connections, each calling Execute with the
//!      SELECT, a random id and read_only, and checking the row it gets.
//!
//! Besides the rate and latency, each phase reports where the CPU went
//! during its measured window: the machine's busy share, and per call the
//! client's CPU (pgbench, or this process), tenantd's, and the rest
//! (PostgreSQL's backends, the kernel, anything else running).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Args;
use rand::{Rng as _, SeedableRng as _};
use sqlx::Connection;
use tenantd::data::CallSettings;
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::tenant_data_service_client::TenantDataServiceClient;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Window, Worker, measure, ms};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::procstat::{MachineCpu, children_cpu_time, cpu_time, machine_cpu, own_cpu_time};
use crate::report::{Check, Limit, footnote, or_na, print_markdown, targets_table};
use crate::server::{Authed, TenantdServer, status};

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    /// Concurrent clients, one phase pair (pgbench, then tenantd) per value.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 32, 64])]
    clients: Vec<usize>,

    /// HTTP/2 connections the tenantd clients are spread over (round-robin;
    /// never more than the clients).
    #[arg(long, default_value_t = 4)]
    channels: usize,

    /// Rows in the table; the SELECT picks one of them at random.
    #[arg(long, default_value_t = 10_000)]
    rows: u32,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Unrecorded seconds before each phase's measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,

    /// tenantd's --tenant-pool-size for the run: the PostgreSQL connections
    /// the one tenant's calls share.
    #[arg(long, default_value_t = 4)]
    pool_size: usize,

    /// pgbench's threads (-j), never more than the clients [default: the
    /// machine's cores].
    #[arg(long)]
    pgbench_threads: Option<usize>,

    /// The pgbench binary [default: the one next to the PostgreSQL server
    /// binaries, else `pgbench` on PATH].
    #[arg(long)]
    pgbench: Option<PathBuf>,

    /// Skip the raw phase of tenantd's whole transaction (its script needs
    /// pgbench 14 or later for `\startpipeline`).
    #[arg(long)]
    no_transaction: bool,

    /// Another tenantd build (e.g. the last release) measured over the same
    /// database and tenant: at each client count the two builds run ABBA
    /// (tenantd, baseline, baseline, tenantd) and their mean rates are
    /// compared. It starts first, so that it finds the catalog at the
    /// version it knows.
    #[arg(long)]
    baseline_tenantd: Option<PathBuf>,

    /// Measures TLS to PostgreSQL instead: the same tenantd twice over the
    /// same database, ABBA, with the database URL's sslmode=disable and
    /// with this sslmode (require, verify-full…), and the p50 of the two
    /// compared. Needs --database-url naming a server that offers TLS over
    /// TCP (with verify-*, its sslrootcert in that URL).
    #[arg(long, conflicts_with = "baseline_tenantd", requires = "database_url")]
    tls_sslmode: Option<String>,

    /// With --baseline-tenantd or --tls-sslmode: how many times the ABBA
    /// block runs at each client count. The two sides' means are taken over
    /// all their phases; more rounds of shorter phases average out more of
    /// the machine's drift.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,

    #[command(flatten)]
    target: Target,
}

/// What the build under test must keep of the baseline build's rate, at
/// every client count.
const MIN_SHARE_OF_BASELINE: f64 = 0.95;

/// What TLS to PostgreSQL may add to Execute's p50, at every client count.
const MAX_TLS_P50_RATIO: f64 = 1.10;

/// Target of the issue, absolute: requests/s at the best client count.
const MIN_EXECUTE_PER_SECOND: f64 = 10_000.0;
/// tenantd's connection budget (its default); the pool size must fit in it.
const BUDGET: usize = 64;

/// The statement both sides run; `balance` is set to `id`, which tenantd's
/// clients check.
const SELECT: &str = "SELECT balance FROM bench_accounts WHERE id = $1";

/// What a phase ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// pgbench, the SELECT alone.
    RawSelect,
    /// pgbench, the SELECT in tenantd's transaction, pipelined.
    RawTransaction,
    /// tenantd's Execute over gRPC.
    Tenantd,
    /// The same, served by the baseline build.
    Baseline,
    /// The same tenantd, with TLS to PostgreSQL (`--tls-sslmode`; the
    /// `Tenantd` phases then run with sslmode=disable).
    Tls,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::RawSelect => "raw-sel",
            Route::RawTransaction => "raw-tx",
            Route::Tenantd => "tenantd",
            Route::Baseline => "baseline",
            Route::Tls => "tls",
        }
    }

    fn markdown(self) -> &'static str {
        match self {
            Route::RawSelect => "pgbench, the SELECT alone, -M prepared",
            Route::RawTransaction => "pgbench, tenantd's transaction around it, pipelined",
            Route::Tenantd => "tenantd Execute, gRPC",
            Route::Baseline => "baseline build's Execute, gRPC",
            Route::Tls => "tenantd Execute, gRPC, TLS to PostgreSQL",
        }
    }
}

/// Runs the benchmark and prints its results.
pub async fn run(args: ExecuteArgs) -> anyhow::Result<()> {
    flags::each_between("--clients", &args.clients, 1, 256)?;
    flags::between("--channels", args.channels, 1, 64)?;
    flags::at_least("--rows", args.rows, 1)?;
    ensure!(
        (1..=BUDGET).contains(&args.pool_size),
        "--pool-size must be between 1 and {BUDGET} (tenantd's connection budget)"
    );
    let window = Window::from_flags(args.seconds, args.warmup_seconds)?;
    let pgbench = &pgbench_binary(args.pgbench.as_deref())?;
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, window, tenantd, pgbench, db).await,
        |server, results| report(&args, window, server, results),
    )
    .await
}

/// The pgbench given, the one next to the PostgreSQL binaries, or the one
/// on PATH.
fn pgbench_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        ensure!(path.is_file(), "no pgbench at {}", path.display());
        return Ok(path.to_path_buf());
    }
    if let Ok(dir) = tenantd::local_pg::find_binaries() {
        let path = dir.join("pgbench");
        if path.is_file() {
            return Ok(path);
        }
    }
    Ok(PathBuf::from("pgbench"))
}

/// One phase: calls inside the measured window, their rate and latency,
/// and where the CPU went.
#[derive(Debug)]
struct Phase {
    route: Route,
    clients: usize,
    stats: CallStats,
    cpu: Option<CpuShare>,
}

impl Phase {
    fn new(
        route: Route,
        clients: usize,
        window: Window,
        latencies: Vec<Duration>,
        cpu: Option<CpuShare>,
    ) -> anyhow::Result<Self> {
        let stats = CallStats::new(latencies, window.measure).with_context(|| {
            format!(
                "{} clients={clients}: no call completed inside the measured window; raise --seconds",
                route.label()
            )
        })?;
        Ok(Self {
            route,
            clients,
            stats,
            cpu,
        })
    }

    fn line(&self) -> String {
        let mut line = format!(
            "{:<8} clients={} calls={} per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
            self.route.label(),
            self.clients,
            self.stats.calls,
            self.stats.per_second,
            ms(self.stats.p50),
            ms(self.stats.p99)
        );
        if let Some(cpu) = &self.cpu {
            let _ = write!(
                line,
                " busy_pct={:.0} client_us={:.1} tenantd_us={} rest_us={:.1}",
                100.0 * cpu.busy_share,
                cpu.client_us,
                cpu.tenantd_us.map_or("-".to_owned(), |t| format!("{t:.1}")),
                cpu.rest_us
            );
        }
        line
    }
}

/// CPU over a phase's measured window, per call in microseconds.
#[derive(Debug, Clone, Copy)]
struct CpuShare {
    /// Busy CPU time / all CPU time of the machine (every core).
    busy_share: f64,
    /// The client: pgbench, or this process.
    client_us: f64,
    /// The tenantd process (tenantd phases).
    tenantd_us: Option<f64>,
    /// The machine's busy time minus the client and tenantd: PostgreSQL's
    /// backends, the kernel's work for them, anything else running.
    rest_us: f64,
}

/// The CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    machine: MachineCpu,
    own: Duration,
    tenantd: Option<Duration>,
}

fn snapshot(tenantd: Option<u32>) -> Option<CpuSnapshot> {
    Some(CpuSnapshot {
        machine: machine_cpu()?,
        own: own_cpu_time()?,
        tenantd: match tenantd {
            Some(pid) => Some(cpu_time(pid)?),
            None => None,
        },
    })
}

/// The counters at the start and at the end of the measured window of a
/// phase that started at `start`.
async fn cpu_over(
    start: Instant,
    window: Window,
    tenantd: Option<u32>,
) -> Option<(CpuSnapshot, CpuSnapshot)> {
    tokio::time::sleep_until((start + window.warmup).into()).await;
    let before = snapshot(tenantd);
    tokio::time::sleep_until((start + window.warmup + window.measure).into()).await;
    Some((before?, snapshot(tenantd)?))
}

/// Everything the raw side needs to run pgbench against the tenant's table.
struct RawTarget {
    pgbench: PathBuf,
    /// The socket directory or host name, the port, the database.
    host: String,
    port: u16,
    database: String,
    role: String,
    password: String,
    schema: String,
    /// A directory of the run's own: the scripts, then each phase's logs.
    dir: TempDir,
    /// The SELECT alone, and the SELECT in tenantd's transaction.
    select_script: PathBuf,
    transaction_script: PathBuf,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Results {
    rows: u32,
    /// How many times the ABBA block ran at each client count (0: none).
    rounds: u32,
    pool_size: usize,
    channels: usize,
    pgbench_threads: usize,
    phases: Vec<Phase>,
    /// tenantd's tenant connections at the end, and how often a checkout
    /// waited for the budget.
    connections_open: Option<f64>,
    budget_waits: Option<f64>,
}

async fn run_phases(
    args: &ExecuteArgs,
    window: Window,
    tenantd_bin: &Path,
    pgbench: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Results> {
    let pool_size = args.pool_size.to_string();
    let extra = [OsStr::new("--tenant-pool-size"), OsStr::new(&pool_size)];
    if let Some(mode) = &args.tls_sslmode {
        let plain = with_sslmode(&db.url, "disable");
        let tls = with_sslmode(&db.url, mode);
        let tag = format!("{}-tls", db.name);
        return TenantdServer::serve(tenantd_bin, &tls, &tag, &extra, async |with_tls| {
            TenantdServer::serve(tenantd_bin, &plain, &db.name, &extra, async |server| {
                let b = Some((with_tls, Route::Tls));
                phases_with(args, window, pgbench, db, server, b).await
            })
            .await
        })
        .await;
    }
    let Some(baseline) = &args.baseline_tenantd else {
        return TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
            phases_with(args, window, pgbench, db, server, None).await
        })
        .await;
    };
    ensure!(
        baseline.is_file(),
        "no tenantd binary at {}",
        baseline.display()
    );
    let tag = format!("{}-baseline", db.name);
    TenantdServer::serve(baseline, &db.url, &tag, &extra, async |base| {
        TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
            phases_with(
                args,
                window,
                pgbench,
                db,
                server,
                Some((base, Route::Baseline)),
            )
            .await
        })
        .await
    })
    .await
}

/// The phases at every client count: pgbench's, then tenantd's; with a
/// baseline build, tenantd, baseline, baseline, tenantd (ABBA), so that
/// what drifts during a client count (PostgreSQL's own work after the
/// pgbench phases, the machine) weighs on both builds alike.
async fn phases_with(
    args: &ExecuteArgs,
    window: Window,
    pgbench: &Path,
    db: &BenchDatabase,
    server: &TenantdServer,
    baseline: Option<(&TenantdServer, Route)>,
) -> anyhow::Result<Results> {
    eprintln!(
        "tenantd-bench: tenantd serving on {} (--tenant-pool-size {})",
        server.addr, args.pool_size
    );
    let (ids, _) = crate::tenants::create(server, "execute", 1, 1).await?;
    let tenant = ids[0];
    let raw = setup_table(db, tenant, args.rows, pgbench).await?;
    let threads_max = args
        .pgbench_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    ensure!(threads_max >= 1, "--pgbench-threads must be at least 1");

    // The tenant's pool answers before anything is timed, on each build.
    for s in std::iter::once(server).chain(baseline.map(|(b, _)| b)) {
        let mut check = ExecuteWorker::open_all(s, 1, 1, tenant, args.rows).await?;
        let request = check[0].prepare(0);
        check[0].send(request).await.context("a first Execute")?;
    }

    let mut phases = Vec::new();
    for &clients in &args.clients {
        let threads = threads_max.min(clients);
        phases.push(pgbench_phase(&raw, Route::RawSelect, clients, threads, window).await?);
        if !args.no_transaction {
            phases
                .push(pgbench_phase(&raw, Route::RawTransaction, clients, threads, window).await?);
        }
        let Some((base, route)) = baseline else {
            phases.push(grpc_phase(args, window, server, Route::Tenantd, clients, tenant).await?);
            continue;
        };
        for _ in 0..args.rounds {
            phases.push(grpc_phase(args, window, server, Route::Tenantd, clients, tenant).await?);
            for _ in 0..2 {
                phases.push(grpc_phase(args, window, base, route, clients, tenant).await?);
            }
            phases.push(grpc_phase(args, window, server, Route::Tenantd, clients, tenant).await?);
        }
    }
    let metrics = server.scrape().await?;
    Ok(Results {
        rows: args.rows,
        pool_size: args.pool_size,
        channels: args.channels,
        pgbench_threads: threads_max,
        rounds: if baseline.is_some() { args.rounds } else { 0 },
        phases,
        connections_open: metrics.get("tenantd_tenant_connections_open").copied(),
        budget_waits: metrics
            .get("tenantd_tenant_connection_budget_waits_total")
            .copied(),
    })
}

/// One phase of `clients` calling Execute on `server`.
async fn grpc_phase(
    args: &ExecuteArgs,
    window: Window,
    server: &TenantdServer,
    route: Route,
    clients: usize,
    tenant: TenantId,
) -> anyhow::Result<Phase> {
    let channels = args.channels.min(clients);
    let workers = ExecuteWorker::open_all(server, clients, channels, tenant, args.rows).await?;
    eprintln!(
        "tenantd-bench: {} clients={clients} channels={channels}: {window}",
        route.label()
    );
    let start = Instant::now();
    let (latencies, cpu) = tokio::join!(
        measure(workers, window),
        cpu_over(start, window, Some(server.pid()?))
    );
    let latencies = latencies
        .with_context(|| format!("run the {} phase with {clients} clients", route.label()))?;
    let calls = latencies.len().max(1) as f64;
    let cpu = cpu.map(|(a, b)| {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / calls;
        let busy = b.machine.busy.saturating_sub(a.machine.busy);
        let own = b.own.saturating_sub(a.own);
        let tenantd = b
            .tenantd
            .unwrap_or_default()
            .saturating_sub(a.tenantd.unwrap_or_default());
        CpuShare {
            busy_share: share(a.machine, b.machine),
            client_us: us(own),
            tenantd_us: Some(us(tenantd)),
            rest_us: us(busy.saturating_sub(own + tenantd)),
        }
    });
    let phase = Phase::new(route, clients, window, latencies, cpu)?;
    println!("{}", phase.line());
    Ok(phase)
}

fn share(a: MachineCpu, b: MachineCpu) -> f64 {
    let total = b.total.saturating_sub(a.total).as_secs_f64();
    if total > 0.0 {
        b.busy.saturating_sub(a.busy).as_secs_f64() / total
    } else {
        0.0
    }
}

/// Makes the table in the tenant's schema as the superuser, fills and
/// analyzes it, and writes the pgbench script; what pgbench needs to log in
/// as the tenant's role.
async fn setup_table(
    db: &BenchDatabase,
    tenant: TenantId,
    rows: u32,
    pgbench: &Path,
) -> anyhow::Result<RawTarget> {
    let schema = tenant.schema_name();
    let role = tenant.role_name();
    let s = schema.quoted();
    let mut conn = db.connect().await?;
    // Names come from the tenant id, the row count is a number.
    tenantd::catalog::execute_batch(
        &mut conn,
        &format!(
            "CREATE TABLE {s}.bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, \
                                              filler text NOT NULL); \
             INSERT INTO {s}.bench_accounts SELECT g, g, repeat('x', 84) \
                 FROM generate_series(1, {rows}) g; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.bench_accounts TO {};",
            role.quoted()
        ),
    )
    .await
    .context("make and fill the bench table")?;
    tenantd::catalog::execute_batch(&mut conn, &format!("VACUUM ANALYZE {s}.bench_accounts"))
        .await
        .context("vacuum the bench table")?;
    let secret: Vec<u8> =
        sqlx::query_scalar("SELECT value FROM tenantd.settings WHERE key = 'tenant_role_secret'")
            .fetch_one(&mut conn)
            .await
            .context("read the tenant role secret")?;
    let _ = conn.close().await;

    let dir = TempDir(std::env::temp_dir().join(format!("{}-pgbench", db.name)));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("create {}", dir.0.display()))?;
    let select = SELECT.replace("$1", ":id");
    let select_script = dir.0.join("select.sql");
    std::fs::write(
        &select_script,
        format!("\\set id random(1, {rows})\n{select};\n"),
    )
    .with_context(|| format!("write {}", select_script.display()))?;
    // What `tenantd::data::execute` sends for a read-only call with the
    // default timeout, one statement per pgbench command, in one round trip.
    let timeout_ms = CallSettings::default().default_timeout.as_millis();
    let transaction_script = dir.0.join("transaction.sql");
    let reset: String = tenantd::data::execute::SESSION_RESET
        .split("; ")
        .map(|statement| format!("{statement};\n"))
        .collect();
    std::fs::write(
        &transaction_script,
        format!(
            "\\set id random(1, {rows})\n\\startpipeline\nBEGIN READ ONLY;\n\
             SELECT set_config('statement_timeout', '{timeout_ms}', true);\n{select};\nCOMMIT;\n\
             {reset}\\endpipeline\n"
        ),
    )
    .with_context(|| format!("write {}", transaction_script.display()))?;
    let host = match db.options.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => db.options.get_host().to_owned(),
    };
    Ok(RawTarget {
        pgbench: pgbench.to_path_buf(),
        host,
        port: db.options.get_port(),
        database: db.name.clone(),
        role: role.as_str().to_owned(),
        password: tenantd::tenant::role_password(&secret, tenant),
        schema: schema.as_str().to_owned(),
        dir,
        select_script,
        transaction_script,
    })
}

/// pgbench for the warm-up plus the measured window, logging every
/// transaction; the ones that completed inside the window are the phase.
async fn pgbench_phase(
    raw: &RawTarget,
    route: Route,
    clients: usize,
    threads: usize,
    window: Window,
) -> anyhow::Result<Phase> {
    let script = match route {
        Route::RawTransaction => &raw.transaction_script,
        _ => &raw.select_script,
    };
    eprintln!(
        "tenantd-bench: {} (pgbench) clients={clients} threads={threads}: {window}",
        route.label()
    );
    let logs = raw.dir.0.join(format!("{}-c{clients}", route.label()));
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let seconds = (window.warmup + window.measure).as_secs_f64().ceil() as u64;
    let children_before = children_cpu_time();
    let started_wall = SystemTime::now();
    let start = Instant::now();
    let child = tokio::process::Command::new(&raw.pgbench)
        .arg("-n")
        .args(["-M", "prepared"])
        .arg("-f")
        .arg(script)
        .args(["-c", &clients.to_string()])
        .args(["-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .arg("-l")
        .arg("--log-prefix")
        .arg(logs.join("tx"))
        .args(["-h", &raw.host])
        .args(["-p", &raw.port.to_string()])
        .args(["-U", &raw.role])
        .arg(&raw.database)
        // Through the environment, not the process list.
        .env("PGPASSWORD", &raw.password)
        .env("PGOPTIONS", format!("-c search_path={}", raw.schema))
        .env("PGAPPNAME", "tenantd-bench")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", raw.pgbench.display()))?;
    let (output, cpu) = tokio::join!(child.wait_with_output(), cpu_over(start, window, None));
    let output = output.context("wait for pgbench")?;
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    let pgbench_cpu = match (children_before, children_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let since_epoch = started_wall
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let from = since_epoch + window.warmup;
    let until = from + window.measure;
    let (latencies, all) = read_pgbench_logs(&logs, from, until)?;
    let _ = std::fs::remove_dir_all(&logs);
    let calls = latencies.len().max(1) as f64;
    let cpu = match (cpu, pgbench_cpu) {
        (Some((a, b)), Some(pgbench_cpu)) => {
            // pgbench's CPU is known for its whole run only: its share of
            // the window is the window's share of its transactions.
            let client_us = pgbench_cpu.as_secs_f64() * 1e6 / all.max(1) as f64;
            let busy_us = b.machine.busy.saturating_sub(a.machine.busy).as_secs_f64() * 1e6;
            let own_us = b.own.saturating_sub(a.own).as_secs_f64() * 1e6;
            Some(CpuShare {
                busy_share: share(a.machine, b.machine),
                client_us,
                tenantd_us: None,
                rest_us: ((busy_us - own_us) / calls - client_us).max(0.0),
            })
        }
        _ => None,
    };
    let phase = Phase::new(route, clients, window, latencies, cpu)?;
    println!("{}", phase.line());
    Ok(phase)
}

/// The latencies of the transactions in pgbench's logs under `dir` that
/// completed between `from` and `until` (since the epoch), and how many
/// transactions the logs hold in all. A line is `client transaction
/// latency_us script epoch_s epoch_us`.
fn read_pgbench_logs(
    dir: &Path,
    from: Duration,
    until: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::new();
    let mut all = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read pgbench's log {}", path.display()))?;
        for line in text.lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(u64::MAX))
                .collect();
            let [_, _, latency, _, secs, micros, ..] = f[..] else {
                bail!("pgbench's log {}: odd line {line:?}", path.display());
            };
            ensure!(
                latency != u64::MAX && secs != u64::MAX && micros != u64::MAX,
                "pgbench's log {}: odd line {line:?} (a failed or skipped transaction?)",
                path.display()
            );
            all += 1;
            let done = Duration::from_secs(secs) + Duration::from_micros(micros);
            if (from..=until).contains(&done) {
                latencies.push(Duration::from_micros(latency));
            }
        }
    }
    Ok((latencies, all))
}

/// Execute of the SELECT with a random id, read-only; the workers share
/// `channels` HTTP/2 connections.
struct ExecuteWorker {
    client: TenantDataServiceClient<Authed>,
    tenant: Arc<str>,
    rows: u32,
    rng: rand::rngs::StdRng,
}

impl ExecuteWorker {
    async fn open_all(
        server: &TenantdServer,
        clients: usize,
        channels: usize,
        tenant: TenantId,
        rows: u32,
    ) -> anyhow::Result<Vec<Self>> {
        let tenant: Arc<str> = tenant.to_string().into();
        let connected = server.connect_spread(clients, channels).await?;
        Ok(connected
            .into_iter()
            .map(|authed| Self {
                client: TenantDataServiceClient::new(authed),
                tenant: Arc::clone(&tenant),
                rows,
                rng: rand::rngs::StdRng::from_entropy(),
            })
            .collect())
    }
}

impl Worker for ExecuteWorker {
    /// The id asked for, and the request.
    type Request = (i64, pb::ExecuteRequest);

    fn prepare(&mut self, _seq: u64) -> Self::Request {
        let id = i64::from(self.rng.gen_range(1..=self.rows));
        let request = pb::ExecuteRequest {
            tenant_id: self.tenant.to_string(),
            sql: SELECT.to_owned(),
            params: vec![pb::Value {
                kind: Some(pb::value::Kind::Int64(id)),
            }],
            read_only: true,
            ..Default::default()
        };
        (id, request)
    }

    async fn send(&mut self, (id, request): Self::Request) -> anyhow::Result<()> {
        let answer = self
            .client
            .execute(request)
            .await
            .map_err(status)
            .with_context(|| format!("Execute id={id}"))?
            .into_inner();
        let got = match answer.rows.as_slice() {
            [row] => match row.values.as_slice() {
                [
                    pb::Value {
                        kind: Some(pb::value::Kind::Int64(v)),
                    },
                ] => Some(*v),
                _ => None,
            },
            _ => None,
        };
        ensure!(
            got == Some(id),
            "Execute id={id} answered {:?}, not one row with balance {id}",
            answer.rows
        );
        Ok(())
    }
}

fn report(args: &ExecuteArgs, window: Window, server: &PgServer, r: &Results) {
    let check = check(r);
    println!("{}", check.line());
    if let Some(tls) = tls_check(r) {
        println!("{}", tls.line());
    }
    if let Some(baseline) = baseline_check(r) {
        println!("{}", baseline.line());
    }
    if let Some(best) = best_sentence(r) {
        println!("best tenantd phase: {best}");
    }
    print_markdown(&args.target, || markdown(window, server, r, &check));
}

/// The tenantd phase with the highest rate.
fn best(r: &Results) -> Option<&Phase> {
    r.phases
        .iter()
        .filter(|p| p.route == Route::Tenantd)
        .max_by(|a, b| a.stats.per_second.total_cmp(&b.stats.per_second))
}

fn phase(r: &Results, route: Route, clients: usize) -> Option<&Phase> {
    r.phases
        .iter()
        .find(|p| p.route == route && p.clients == clients)
}

/// "N requests/s at C clients, X% of the SELECT alone (Y/s), Z% of tenantd's
/// transaction (W/s)", for the best tenantd phase.
fn best_sentence(r: &Results) -> Option<String> {
    let best = best(r)?;
    let mut text = format!(
        "{:.0} requests/s at {} clients",
        best.stats.per_second, best.clients
    );
    for (route, what) in [
        (Route::RawSelect, "pgbench's SELECT alone"),
        (
            Route::RawTransaction,
            "pgbench's run of tenantd's transaction",
        ),
    ] {
        if let Some(raw) = phase(r, route, best.clients) {
            let _ = write!(
                text,
                ", {:.0}% of {what} ({:.0}/s)",
                100.0 * best.stats.per_second / raw.stats.per_second,
                raw.stats.per_second
            );
        }
    }
    Some(text)
}

fn check(r: &Results) -> Check {
    Check {
        label: "Execute requests/s (best client count)",
        markdown: "Execute requests/s, best client count",
        value: best(r).map(|p| p.stats.per_second),
        limit: Limit::AtLeast(MIN_EXECUTE_PER_SECOND),
        missing: "no tenantd phase",
    }
}

/// The mean rate of `route`'s phases at `clients`.
/// The database URL with its sslmode set to `mode`.
pub(crate) fn with_sslmode(url: &tenantd::config::Secret, mode: &str) -> tenantd::config::Secret {
    let url = url.expose();
    let joined = if url.contains('?') {
        format!("{url}&sslmode={mode}")
    } else {
        format!("{url}?sslmode={mode}")
    };
    let Ok(secret) = joined.parse();
    secret
}

/// The mean over `route`'s phases at `clients` of a figure of each.
fn mean_of(
    r: &Results,
    route: Route,
    clients: usize,
    figure: impl Fn(&CallStats) -> f64,
) -> Option<f64> {
    let values: Vec<f64> = r
        .phases
        .iter()
        .filter(|p| p.route == route && p.clients == clients)
        .map(|p| figure(&p.stats))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn mean_rate(r: &Results, route: Route, clients: usize) -> Option<f64> {
    mean_of(r, route, clients, |s| s.per_second)
}

fn mean_p50_ms(r: &Results, route: Route, clients: usize) -> Option<f64> {
    mean_of(r, route, clients, |s| s.p50.as_secs_f64() * 1e3)
}

/// `ratio` at each client count that has `route`'s phases (ABBA against
/// the build under test), reduced over the client counts by `pick`.
fn across_client_counts(
    r: &Results,
    route: Route,
    ratio: impl Fn(usize) -> Option<f64>,
    pick: fn(f64, f64) -> f64,
) -> Option<f64> {
    let mut counts: Vec<usize> = r
        .phases
        .iter()
        .filter(|p| p.route == route)
        .map(|p| p.clients)
        .collect();
    counts.dedup();
    counts.into_iter().filter_map(ratio).reduce(pick)
}

/// TLS to PostgreSQL against none: the highest ratio of their mean p50s
/// over the client counts.
fn tls_check(r: &Results) -> Option<Check> {
    let value = across_client_counts(
        r,
        Route::Tls,
        |clients| {
            Some(mean_p50_ms(r, Route::Tls, clients)? / mean_p50_ms(r, Route::Tenantd, clients)?)
        },
        f64::max,
    )?;
    Some(Check {
        label: "Execute p50 with TLS to PostgreSQL / without (highest over client counts)",
        markdown: "Execute p50 with TLS to PostgreSQL ÷ without, highest over client counts",
        value: Some(value),
        limit: Limit::AtMost(MAX_TLS_P50_RATIO),
        missing: "no TLS phase",
    })
}

/// The build under test against the baseline build: the lowest ratio of
/// their mean rates (over their ABBA phases) over the client counts.
fn baseline_check(r: &Results) -> Option<Check> {
    let value = across_client_counts(
        r,
        Route::Baseline,
        |clients| {
            Some(mean_rate(r, Route::Tenantd, clients)? / mean_rate(r, Route::Baseline, clients)?)
        },
        f64::min,
    )?;
    Some(Check {
        label: "Execute requests/s / the baseline build's (lowest over client counts)",
        markdown: "Execute requests/s ÷ the baseline build's, lowest over client counts",
        value: Some(value),
        limit: Limit::AtLeast(MIN_SHARE_OF_BASELINE),
        missing: "no baseline phase",
    })
}

fn markdown(window: Window, server: &PgServer, r: &Results, check: &Check) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| Execute, SELECT by primary key, {} rows | clients | calls | requests/s | p50 ms | p99 ms | \
         CPU busy | client µs/call | tenantd µs/call | PostgreSQL + rest µs/call |",
        r.rows
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.phases {
        let path = p.route.markdown();
        let (busy, client, tenantd, rest) = match &p.cpu {
            Some(c) => (
                format!("{:.0}%", 100.0 * c.busy_share),
                format!("{:.0}", c.client_us),
                c.tenantd_us.map_or(String::new(), |t| format!("{t:.0}")),
                format!("{:.0}", c.rest_us),
            ),
            None => ("n/a".into(), "n/a".into(), String::new(), "n/a".into()),
        };
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {:.0} | {:.2} | {:.2} | {busy} | {client} | {tenantd} | {rest} |",
            p.clients,
            p.stats.calls,
            p.stats.per_second,
            ms(p.stats.p50),
            ms(p.stats.p99)
        );
    }
    let checks: Vec<Check> = std::iter::once(check.clone())
        .chain(baseline_check(r))
        .chain(tls_check(r))
        .collect();
    targets_table(&mut md, "value", &checks, 2);
    if let Some(best) = best_sentence(r) {
        let _ = writeln!(md, "\nBest tenantd phase: {best}.");
    }
    footnote(
        &mut md,
        server,
        format_args!(
            "{}, at each client count the pgbench phases first and tenantd right after (with a \
             baseline build: tenantd, baseline, baseline, tenantd{}); \
             tenantd --tenant-pool-size {} (connection budget {BUDGET}; {} tenant connections \
             open at the end, {} budget waits), its clients on {} HTTP/2 connections (fewer when \
             fewer clients); pgbench with {} threads at most, logged in as the tenant's role \
             with its schema as search_path; the clients in processes of their own on the same \
             cores.",
            window.per_phase(),
            match r.rounds {
                0 | 1 => String::new(),
                n => format!(", {n} times over"),
            },
            r.pool_size,
            or_na(r.connections_open, 0),
            or_na(r.budget_waits, 0),
            r.channels,
            r.pgbench_threads,
        ),
    );
    md
}
