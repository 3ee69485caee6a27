//! `tenantd-bench create`: CreateTenant through tenantd over gRPC next to
//! the raw-SQL limit of the same transaction — catalog row, role, schema,
//! every tenant migration, ledger and audit event sent as one simple-query
//! batch, the fewest round trips there can be. For each client count the raw
//! phase runs first and the tenantd phase right after it, to keep drift out
//! of the ratio.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use sqlx::{Connection, PgConnection};
use tenantd::domain::TenantId;
use tenantd::pb::tenant_service_client::TenantServiceClient;
use tenantd::tenant::TenantMigrations;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Window, Worker, measure, ms};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::raw;
use crate::report::{Check, Limit, footnote, print_checks, print_markdown, targets_table};
use crate::server::{Authed, TenantdServer};
use crate::tenants;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Concurrent clients, one phase pair (raw, then tenantd) per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    clients: Vec<usize>,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Unrecorded seconds before each phase's measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,

    /// Also measures TLS to PostgreSQL: a second tenantd over the same
    /// database with the database URL's sslmode set to this (require,
    /// verify-full…), its phase right after the plain one (which then runs
    /// with sslmode=disable). Needs --database-url naming a server that
    /// offers TLS over TCP.
    #[arg(long, requires = "database_url")]
    tls_sslmode: Option<String>,

    #[command(flatten)]
    target: Target,
}

/// Targets, as ratios tenantd / raw measured in the same run.
const MAX_P50_RATIO_ONE_CLIENT: f64 = 1.2;
const MIN_THROUGHPUT_RATIO_FOUR_CLIENTS: f64 = 0.9;
/// What TLS to PostgreSQL may add to CreateTenant's p50: the bound the
/// data plane's Execute has, its connections pooled as the catalog's are.
const MAX_TLS_P50_RATIO: f64 = 1.10;

/// Runs the benchmark and prints its results.
pub async fn run(args: CreateArgs) -> anyhow::Result<()> {
    flags::each_between("--clients", &args.clients, 1, 64)?;
    let window = Window::from_flags(args.seconds, args.warmup_seconds)?;
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, window, tenantd, db).await,
        |server, results| report(&args, window, server, results),
    )
    .await
}

/// Every phase of `create`: one tenantd server for the run, then for each
/// client count the raw phase and right after it the tenantd phase.
async fn run_phases(
    args: &CreateArgs,
    window: Window,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Vec<PhaseResult>> {
    let Some(mode) = &args.tls_sslmode else {
        return phases_on(args, window, tenantd_bin, &db.url, db, None).await;
    };
    let plain = crate::execute::with_sslmode(&db.url, "disable");
    let tls = crate::execute::with_sslmode(&db.url, mode);
    let tag = format!("{}-tls", db.name);
    TenantdServer::serve(tenantd_bin, &tls, &tag, &[], async |with_tls| {
        phases_on(args, window, tenantd_bin, &plain, db, Some(with_tls)).await
    })
    .await
}

/// The phases on a tenantd over `url`; with a second tenantd (TLS to
/// PostgreSQL), its phase follows each plain one.
async fn phases_on(
    args: &CreateArgs,
    window: Window,
    tenantd_bin: &Path,
    url: &tenantd::config::Secret,
    db: &BenchDatabase,
    tls: Option<&TenantdServer>,
) -> anyhow::Result<Vec<PhaseResult>> {
    TenantdServer::serve(tenantd_bin, url, &db.name, &[], async |server| {
        eprintln!("tenantd-bench: tenantd serving on {}", server.addr);
        // tenantd has migrated the catalog; the raw side needs the very same
        // tenant migrations to send the same DDL.
        let migrations = Arc::new(TenantMigrations::embedded()?);
        db.check_same_migrations(&migrations).await?;
        let mut results = Vec::new();
        for (i, &clients) in args.clients.iter().enumerate() {
            // Each phase names its tenants apart: raw, tenantd, TLS.
            let phase = 3 * i;
            let workers = RawCreate::open_all(db, &migrations, clients, phase).await?;
            results.push(run_phase(Side::Raw, clients, window, workers).await?);
            let workers = GrpcCreate::open_all(server, clients, phase + 1).await?;
            results.push(run_phase(Side::Tenantd, clients, window, workers).await?);
            if let Some(with_tls) = tls {
                let workers = GrpcCreate::open_all(with_tls, clients, phase + 2).await?;
                results.push(run_phase(Side::Tls, clients, window, workers).await?);
            }
        }
        Ok(results)
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Tenantd,
    /// tenantd with TLS to PostgreSQL (`--tls-sslmode`).
    Tls,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Tenantd => "tenantd",
            Side::Tls => "tls",
        }
    }
}

/// One phase: the tenants created inside its measured window.
#[derive(Debug)]
struct PhaseResult {
    side: Side,
    clients: usize,
    stats: CallStats,
}

impl PhaseResult {
    fn line(&self) -> String {
        format!(
            "{:<8} clients={} tenants={} tenants_per_s={:.1} p50_ms={:.1} p95_ms={:.1}",
            self.side.label(),
            self.clients,
            self.stats.calls,
            self.stats.per_second,
            ms(self.stats.p50),
            ms(self.stats.p95)
        )
    }
}

async fn run_phase<W: Worker>(
    side: Side,
    clients: usize,
    window: Window,
    workers: Vec<W>,
) -> anyhow::Result<PhaseResult> {
    eprintln!(
        "tenantd-bench: {} clients={clients}: {window}",
        side.label()
    );
    let latencies = measure(workers, window)
        .await
        .with_context(|| format!("run the {} phase with {clients} clients", side.label()))?;
    let stats = CallStats::new(latencies, window.measure).with_context(|| {
        format!(
            "{} clients={clients}: no tenant was created inside the measured window; raise --seconds",
            side.label()
        )
    })?;
    let result = PhaseResult {
        side,
        clients,
        stats,
    };
    println!("{}", result.line());
    Ok(result)
}

/// A CreateTenant over gRPC to the tenantd process, each client on its own
/// channel (its own HTTP/2 connection).
struct GrpcCreate {
    client: TenantServiceClient<Authed>,
    prefix: String,
}

impl GrpcCreate {
    async fn open_all(
        server: &TenantdServer,
        clients: usize,
        phase: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let connected = server.connect_spread(clients, clients).await?;
        Ok(connected
            .into_iter()
            .enumerate()
            .map(|(client, authed)| Self {
                client: TenantServiceClient::new(authed),
                prefix: format!("grpc-p{phase}-c{client}"),
            })
            .collect())
    }
}

impl Worker for GrpcCreate {
    type Request = tenantd::pb::CreateTenantRequest;

    fn prepare(&mut self, seq: u64) -> Self::Request {
        tenants::request(format!("{}-{seq}", self.prefix))
    }

    async fn send(&mut self, request: Self::Request) -> anyhow::Result<()> {
        tenants::create_one(&mut self.client, request).await?;
        Ok(())
    }
}

/// The same transaction as `Tenants::create` with no service in between:
/// catalog row, role, schema, every tenant migration, ledger and audit event
/// as one simple-query batch on a plain connection.
struct RawCreate {
    conn: PgConnection,
    migrations: Arc<TenantMigrations>,
    /// [`raw::shared_verifier`], made before the phase.
    verifier: String,
    prefix: String,
}

impl RawCreate {
    async fn open_all(
        db: &BenchDatabase,
        migrations: &Arc<TenantMigrations>,
        clients: usize,
        phase: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let mut workers = Vec::with_capacity(clients);
        for client in 0..clients {
            let conn = PgConnection::connect_with(&db.options)
                .await
                .context("open a raw-SQL connection to the bench database")?;
            workers.push(Self {
                conn,
                migrations: Arc::clone(migrations),
                verifier: raw::shared_verifier(),
                prefix: format!("raw-p{phase}-c{client}"),
            });
        }
        Ok(workers)
    }
}

impl Worker for RawCreate {
    type Request = String;

    fn prepare(&mut self, seq: u64) -> String {
        raw::create_tenant_sql(
            TenantId::new(),
            &format!("{}-{seq}", self.prefix),
            &self.verifier,
            &self.migrations,
        )
    }

    async fn send(&mut self, sql: String) -> anyhow::Result<()> {
        // The function tenantd sends its DDL batch with.
        tenantd::catalog::execute_batch(&mut self.conn, &sql)
            .await
            .context("run the raw create-tenant batch")
    }
}

fn report(args: &CreateArgs, window: Window, server: &PgServer, results: &[PhaseResult]) {
    let find = |side, clients| {
        results
            .iter()
            .find(|r| r.side == side && r.clients == clients)
            .map(|r| r.stats)
    };
    let pair = |clients| Some((find(Side::Raw, clients)?, find(Side::Tenantd, clients)?));
    let checks = [
        Check {
            label: "p50 ratio tenantd/raw at 1 client",
            markdown: "p50 latency, tenantd / raw, 1 client",
            value: pair(1).map(|(raw, t)| t.p50.as_secs_f64() / raw.p50.as_secs_f64()),
            limit: Limit::AtMost(MAX_P50_RATIO_ONE_CLIENT),
            missing: "no 1-client phase",
        },
        Check {
            label: "throughput ratio tenantd/raw at 4 clients",
            markdown: "tenants/s, tenantd / raw, 4 clients",
            value: pair(4).map(|(raw, t)| t.per_second / raw.per_second),
            limit: Limit::AtLeast(MIN_THROUGHPUT_RATIO_FOUR_CLIENTS),
            missing: "no 4-client phase",
        },
        Check {
            label: "p50 ratio tenantd with TLS to PostgreSQL / without, 1 client",
            markdown: "p50 latency, TLS to PostgreSQL / without, 1 client",
            value: find(Side::Tls, 1)
                .zip(find(Side::Tenantd, 1))
                .map(|(tls, plain)| tls.p50.as_secs_f64() / plain.p50.as_secs_f64()),
            limit: Limit::AtMost(MAX_TLS_P50_RATIO),
            missing: "no TLS phase (--tls-sslmode)",
        },
    ];
    print_checks(&checks);
    print_markdown(&args.target, || markdown(window, server, results, &checks));
}

fn markdown(
    window: Window,
    server: &PgServer,
    results: &[PhaseResult],
    checks: &[Check],
) -> String {
    let mut md = String::new();
    md.push_str("| CreateTenant | clients | tenants | tenants/s | p50 ms | p95 ms |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|\n");
    for r in results {
        let path = match r.side {
            Side::Raw => "raw SQL, one batch",
            Side::Tenantd => "tenantd gRPC",
            Side::Tls => "tenantd gRPC, TLS to PostgreSQL",
        };
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.clients,
            r.stats.calls,
            r.stats.per_second,
            ms(r.stats.p50),
            ms(r.stats.p95)
        );
    }
    targets_table(&mut md, "ratio", checks, 2);
    footnote(&mut md, server, format_args!("{}.", window.per_phase()));
    md
}
