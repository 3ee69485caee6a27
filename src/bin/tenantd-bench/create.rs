//! `tenantd-bench create`: CreateTenant through tenantd over gRPC next to
//! the raw-SQL limit of the same transaction — catalog row, role, schema,
//! every tenant migration, ledger and audit event sent as one simple-query
//! batch, the fewest round trips there can be. For each client count the raw
//! phase runs first and the tenantd phase right after it, to keep drift out
//! of the ratio.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Args;
use sqlx::{Connection, PgConnection};
use tenantd::domain::TenantId;
use tenantd::pb::tenant_service_client::TenantServiceClient;
use tenantd::tenant::TenantMigrations;

use crate::Target;
use crate::measure::{Check, Limit, PhaseResult, Side, Window, Worker, measure, ms};
use crate::pg::{BenchDatabase, PgServer, with_bench_database};
use crate::raw;
use crate::server::{Authed, TenantdServer, endpoint, tenantd_binary};

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

    #[command(flatten)]
    target: Target,
}

/// Targets, as ratios tenantd / raw measured in the same run.
const MAX_P50_RATIO_ONE_CLIENT: f64 = 1.2;
const MIN_THROUGHPUT_RATIO_FOUR_CLIENTS: f64 = 0.9;

/// Runs the benchmark and prints its results.
pub async fn run(args: CreateArgs) -> anyhow::Result<()> {
    ensure!(
        !args.clients.is_empty(),
        "--clients needs at least one value"
    );
    ensure!(
        args.clients.iter().all(|c| (1..=64).contains(c)),
        "--clients values must be between 1 and 64"
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

/// Every phase of `create`: one tenantd server for the run, then for each
/// client count the raw phase and right after it the tenantd phase.
async fn run_phases(
    args: &CreateArgs,
    window: Window,
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Vec<PhaseResult>> {
    let mut server = TenantdServer::start(tenantd_bin, &db.url, &db.name, &[]).await?;
    let run = async {
        eprintln!("tenantd-bench: tenantd serving on {}", server.addr);
        // tenantd has migrated the catalog; the raw side needs the very same
        // tenant migrations to send the same DDL.
        let migrations = Arc::new(TenantMigrations::embedded()?);
        db.check_same_migrations(&migrations).await?;
        let mut results = Vec::new();
        for (i, &clients) in args.clients.iter().enumerate() {
            let phase = 2 * i;
            let workers = RawCreate::open_all(db, &migrations, clients, phase).await?;
            results.push(run_phase(Side::Raw, clients, window, workers).await?);
            let workers = GrpcCreate::open_all(&server, clients, phase + 1).await?;
            results.push(run_phase(Side::Tenantd, clients, window, workers).await?);
        }
        anyhow::Ok(results)
    }
    .await;
    let stopped = server.stop().await;
    let results = run?;
    stopped?;
    server.remove_log();
    Ok(results)
}

async fn run_phase<W: Worker>(
    side: Side,
    clients: usize,
    window: Window,
    workers: Vec<W>,
) -> anyhow::Result<PhaseResult> {
    eprintln!(
        "tenantd-bench: {} clients={clients}: {:?} warm-up, {:?} measured",
        side.label(),
        window.warmup,
        window.measure
    );
    let latencies = measure(workers, window)
        .await
        .with_context(|| format!("run the {} phase with {clients} clients", side.label()))?;
    let result = PhaseResult::new(side, clients, window, latencies)?;
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
        let addr = server.addr;
        let endpoint = endpoint(addr)?;
        let mut workers = Vec::with_capacity(clients);
        for client in 0..clients {
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("connect a gRPC client to tenantd at {addr}"))?;
            workers.push(Self {
                client: TenantServiceClient::new(server.authed(channel)?),
                prefix: format!("grpc-p{phase}-c{client}"),
            });
        }
        Ok(workers)
    }
}

impl Worker for GrpcCreate {
    type Request = tenantd::pb::CreateTenantRequest;

    fn prepare(&mut self, seq: u64) -> Self::Request {
        let slug = format!("{}-{seq}", self.prefix);
        tenantd::pb::CreateTenantRequest {
            name: slug.clone(),
            slug,
            ..Default::default()
        }
    }

    async fn send(&mut self, request: Self::Request) -> anyhow::Result<()> {
        let slug = request.slug.clone();
        let tenant = self
            .client
            .create_tenant(request)
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
            .with_context(|| format!("CreateTenant {slug}"))?
            .into_inner();
        ensure!(
            tenant.slug == slug,
            "CreateTenant {slug} returned tenant {}",
            tenant.slug
        );
        Ok(())
    }
}

/// The same transaction as `Tenants::create` with no service in between:
/// catalog row, role, schema, every tenant migration, ledger and audit event
/// as one simple-query batch on a plain connection.
struct RawCreate {
    conn: PgConnection,
    migrations: Arc<TenantMigrations>,
    /// A SCRAM verifier made once per client before the phase, so the
    /// PBKDF2 it costs stays outside the measurement; PostgreSQL stores the
    /// verifier as given, so sharing one between roles changes nothing there.
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
    ];
    for check in &checks {
        println!("{}", check.line());
    }
    if args.target.markdown {
        println!();
        print!("{}", markdown(window, server, results, &checks));
    }
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
        };
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.clients,
            r.tenants,
            r.per_second,
            ms(r.p50),
            ms(r.p95)
        );
    }
    md.push_str("\n| target | ratio | result |\n|---|---:|---|\n");
    for c in checks {
        let (value, verdict) = match c.value {
            Some(v) => (format!("{v:.2}"), c.verdict(v).to_owned()),
            None => ("n/a".to_owned(), c.missing.to_owned()),
        };
        let _ = writeln!(md, "| {} {} | {value} | {verdict} |", c.markdown, c.limit);
    }
    let _ = writeln!(
        md,
        "\n{}; {:?} measured per phase after {:?} warm-up.",
        server.setting(),
        window.measure,
        window.warmup,
    );
    md
}
