//! `tenantd-bench citus`: tenantd on a Citus coordinator with two workers,
//! next to tenantd on a plain database of the same coordinator server, in
//! one run:
//!
//! 1. CreateTenant p50/p95 (one client), Citus next to plain, the phases
//!    interleaved in rounds (ABBA…) so that drift of the machine hits both;
//! 2. a fleet of `--tenants` tenants made on each side (CreateTenant with
//!    `--connections` clients), then tenantd restarted with one more tenant
//!    migration (the one `upgrade` uses) and StartUpgrade of the fleet,
//!    watched to its end: tenants/s on Citus and on plain;
//! 3. Execute requests/s of a unique-key SELECT at each `--clients` count,
//!    Citus next to plain, interleaved as 1.;
//! 4. moves: a tenant with `--rows` customers, eight writers inserting one
//!    row per Execute throughout, and `--moves` MoveTenant jobs (alternating
//!    between the workers), each polled with GetClusterJob to its end. Per
//!    move: its time and the write pause — the longest gap between
//!    consecutive acknowledged writes (all writers merged) that touches the
//!    move's window. Every call must succeed and every acknowledged write be
//!    there at the end. Interleaved with them (ABBA), on the plain side,
//!    tenantd's own moves between clusters: worker-1's and worker-2's
//!    servers registered as clusters `east` and `west` (plain databases of
//!    their own), a tenant of as many rows with eight writers of its own,
//!    and as many TenantService MoveTenant jobs between them, each polled
//!    with GetMove — the same two servers Citus moves between, measured the
//!    same way. Next to it the offline move of the Citus tenant:
//!    `pg_dump -n <schema> -Fc` from the coordinator piped into
//!    `pg_restore` into a fresh plain database — the write pause an offline
//!    move imposes.
//!
//! The three nodes are private clusters under `--data-dir`, listening on
//! 127.0.0.1 at `--base-port` and the two ports after it (started if they
//! are not running, and stopped again at the end if this run started them),
//! as `tests/it/citus.rs` runs them: `shared_preload_libraries = 'citus'`,
//! `wal_level = logical`, the workers trusting 127.0.0.1; each run sets
//! `wal_receiver_status_interval` (`--wal-receiver-status-interval`, 1s as
//! docs/citus.md asks) on every node with ALTER SYSTEM. The run's
//! databases are dropped afterwards on every node, together with every
//! tenant role the run made.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use rand::{Rng as _, SeedableRng as _};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tenantd::config::Secret;
use tenantd::domain::TenantId;
use tenantd::local_pg::{LocalCluster, TcpExtras};
use tenantd::pb;
use tenantd::pb::cluster_service_client::ClusterServiceClient;
use tenantd::pb::migration_service_client::MigrationServiceClient;
use tenantd::pb::tenant_data_service_client::TenantDataServiceClient;
use tenantd::pb::tenant_service_client::TenantServiceClient;

use crate::flags;
use crate::measure::{CallStats, Window, Worker, measure, ms, percentile};
use crate::pg::{cluster_url, first_error, secret, tenant_roles};
use crate::server::{Authed, TenantdServer, status, tenantd_binary};
use crate::tenants;
use crate::upgrade::{MigrationDirs, upgrade_fleet};

#[derive(Debug, Args)]
pub struct CitusArgs {
    /// Tenants in the fleet that is upgraded (on each side).
    #[arg(long, default_value_t = 200)]
    tenants: usize,

    /// Moves of the loaded tenant, alternating between the two workers.
    #[arg(long, default_value_t = 10)]
    moves: usize,

    /// Customers rows in the moved tenant.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,

    /// Rounds of the interleaved phases (CreateTenant, Execute): each round
    /// runs one Citus and one plain phase per measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Measured seconds per interleaved phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// Unrecorded seconds before each interleaved phase.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,

    /// Execute clients, one pair of phases (Citus, plain) per value and round.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 32])]
    clients: Vec<usize>,

    /// HTTP/2 connections the Execute clients are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,

    /// Rows in the table the Execute SELECT reads.
    #[arg(long, default_value_t = 10_000)]
    select_rows: u32,

    /// CreateTenant clients that make each fleet; also tenantd's
    /// --upgrade-workers and the upgrade's concurrency.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Directory of the three private clusters.
    #[arg(long, default_value = "target/bench-citus")]
    data_dir: PathBuf,

    /// Port of the coordinator on 127.0.0.1; the workers take the next two.
    #[arg(long, default_value_t = 39_601)]
    base_port: u16,

    /// wal_receiver_status_interval of every node, set with ALTER SYSTEM
    /// and a reload: it bounds a move's write pause (docs/citus.md, "What a
    /// move costs"; PostgreSQL's default is 10s).
    #[arg(long, default_value = "1s")]
    wal_receiver_status_interval: String,

    /// The tenantd server binary [default: `tenantd` next to this binary].
    #[arg(long)]
    tenantd: Option<PathBuf>,

    /// Also print a markdown table for BENCHMARKS.md.
    #[arg(long)]
    markdown: bool,
}

/// Writers during the moves, as in `tests/it/citus_moves.rs`.
const WRITERS: usize = 8;
/// How often a move job is polled.
const JOB_POLL: Duration = Duration::from_millis(50);
/// How long one move may take.
const JOB_WAIT: Duration = Duration::from_secs(900);
/// Quiet time before the first move, between moves and after the last.
const SETTLE: Duration = Duration::from_secs(1);
/// The SELECT of the Execute phases: one row by a unique key.
const SELECT: &str = "SELECT name FROM customers WHERE code = $1";
const NODE_NAMES: [&str; 3] = ["coordinator", "worker-1", "worker-2"];

/// Runs the benchmark and prints its results.
pub async fn run(args: CitusArgs) -> anyhow::Result<()> {
    flags::at_least("--tenants", args.tenants, 1)?;
    flags::at_least("--moves", args.moves, 1)?;
    flags::at_least("--rows", args.rows, 1)?;
    flags::between("--rounds", args.rounds, 1, 100)?;
    flags::each_between("--clients", &args.clients, 1, 256)?;
    flags::between("--channels", args.channels, 1, 64)?;
    flags::at_least("--select-rows", args.select_rows, 1)?;
    flags::between("--connections", args.connections, 1, 64)?;
    flags::between("--base-port", args.base_port, 1024, 65_533)?;
    let window = Window::from_flags(args.seconds, args.warmup_seconds)?;
    let tenantd_bin = tenantd_binary(args.tenantd.as_deref())?;
    let bin_dir = citus_binaries()?;

    let interval = &args.wal_receiver_status_interval;
    ensure!(
        interval.len() <= 16
            && interval.starts_with(|c: char| c.is_ascii_digit())
            && interval.chars().all(|c| c.is_ascii_alphanumeric()),
        "--wal-receiver-status-interval must be a PostgreSQL interval such as 1s or 500ms"
    );

    let nodes = Nodes::start(&args.data_dir, args.base_port).await?;
    let outcome = async {
        nodes.configure(interval).await?;
        let dbs = Databases::create(&nodes).await?;
        let ran = tokio::select! {
            ran = run_phases(&args, window, &tenantd_bin, &bin_dir, &nodes, &dbs) => ran,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let ran = ran.map(|results| report(&args, window, &results));
        let dropped = dbs.remove(&nodes).await;
        first_error(ran, dropped, "cleaning up failed too: ")
    }
    .await;
    let stopped = nodes.close().await;
    first_error(outcome, stopped, "")
}

/// The server's own bin directory (where `postgres` really is, with
/// pg_dump and pg_restore of the same version beside it), once Citus is
/// known to be installed beside it (Debian's layout: the server's libraries
/// beside its bin directory).
fn citus_binaries() -> anyhow::Result<PathBuf> {
    let found = tenantd::local_pg::find_binaries()?;
    let bin = found
        .join("postgres")
        .canonicalize()
        .ok()
        .and_then(|postgres| Some(postgres.parent()?.to_path_buf()))
        .with_context(|| format!("resolve {}", found.join("postgres").display()))?;
    ensure!(
        bin.join("../lib/citus.so").exists(),
        "Citus is not installed in the PostgreSQL at {} (no citus.so in {}): \
         build and install it with ../shared/citus/build.sh (as root), then run this again",
        bin.display(),
        bin.join("../lib").display()
    );
    Ok(bin)
}

/// The coordinator and the two workers.
struct Nodes {
    nodes: Vec<LocalCluster>,
    ports: [u16; 3],
    /// Which of them this run started (and so stops).
    started: Vec<bool>,
}

impl Nodes {
    async fn start(dir: &Path, base_port: u16) -> anyhow::Result<Self> {
        let ports = [base_port, base_port + 1, base_port + 2];
        let mut nodes = Vec::new();
        let mut started = Vec::new();
        for (name, port) in NODE_NAMES.into_iter().zip(ports) {
            let extras = TcpExtras {
                conf: "shared_preload_libraries = 'citus'\nwal_level = logical\n\
                       max_prepared_transactions = 100\n"
                    .to_owned(),
                hba: "host all all 127.0.0.1/32 trust\n".to_owned(),
            };
            let node = LocalCluster::new(&dir.join(format!("{name}-{port}")))?
                .listening_on_tcp(port, extras);
            let n = node.clone();
            let result = tokio::task::spawn_blocking(move || {
                let was_running = n.is_running()?;
                n.ensure_running()?;
                anyhow::Ok(!was_running)
            })
            .await
            .context("start a Citus node");
            let ok = match result {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) | Err(e) => Err(e),
            };
            match ok {
                Ok(s) => {
                    eprintln!(
                        "tenantd-bench: {name} on 127.0.0.1:{port} ({})",
                        if s { "started" } else { "already running" }
                    );
                    nodes.push(node);
                    started.push(s);
                }
                Err(e) => {
                    let so_far = Self {
                        nodes,
                        ports,
                        started,
                    };
                    if let Err(stop) = so_far.close().await {
                        eprintln!("tenantd-bench: {stop:#}");
                    }
                    return Err(e.context(format!("start the Citus {name} on port {port}")));
                }
            }
        }
        Ok(Self {
            nodes,
            ports,
            started,
        })
    }

    fn options(&self, node: usize, database: &str) -> PgConnectOptions {
        self.nodes[node].connect_options(database)
    }

    /// A connection to `database` on `node` as the superuser; waits a
    /// little for a node that has only just started.
    async fn connect(&self, node: usize, database: &str) -> anyhow::Result<PgConnection> {
        let mut attempt = 0;
        loop {
            match PgConnection::connect_with(&self.options(node, database)).await {
                Ok(conn) => return Ok(conn),
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("connect to {database} on the {}", NODE_NAMES[node])
                    });
                }
            }
        }
    }

    /// Sets wal_receiver_status_interval on every node (kept in its
    /// postgresql.auto.conf) and reloads the configuration.
    async fn configure(&self, interval: &str) -> anyhow::Result<()> {
        for (node, node_name) in NODE_NAMES.into_iter().enumerate() {
            let mut admin = self.connect(node, "postgres").await?;
            // Checked by `run`: digits and letters only.
            for sql in [
                format!("ALTER SYSTEM SET wal_receiver_status_interval = '{interval}'"),
                "SELECT pg_reload_conf()".to_owned(),
            ] {
                sqlx::raw_sql(&sql)
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("{sql} on the {node_name}"))?;
            }
            let _ = admin.close().await;
        }
        Ok(())
    }

    fn name(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.ports[node])
    }

    async fn close(self) -> anyhow::Result<()> {
        let started_any = self.started.iter().any(|s| *s);
        let mut first = Ok(());
        for (node, started) in self.nodes.into_iter().zip(self.started).rev() {
            if !started {
                continue;
            }
            let stopped = tokio::task::spawn_blocking(move || node.stop())
                .await
                .context("stop a Citus node")
                .and_then(|r| r.context("stop a Citus node"));
            if let Err(e) = stopped {
                if first.is_ok() {
                    first = Err(e);
                } else {
                    eprintln!("tenantd-bench: {e:#}");
                }
            }
        }
        if started_any {
            eprintln!("tenantd-bench: stopped the Citus nodes this run started");
        }
        first
    }
}

/// The run's databases: `citus` on every node (Citus in it, the workers
/// added), `plain` on the coordinator (no Citus), `offline` on the
/// coordinator for the pg_restore of the offline move.
struct Databases {
    citus: String,
    plain: String,
    offline: String,
    /// Plain databases on worker-1 and worker-2, registered with the plain
    /// side's tenantd as clusters `east` and `west`.
    east: String,
    west: String,
}

impl Databases {
    async fn create(nodes: &Nodes) -> anyhow::Result<Self> {
        let base = format!("tenantd_bench_{:08x}", rand::random::<u32>());
        let dbs = Self {
            citus: format!("{base}_citus"),
            plain: format!("{base}_plain"),
            offline: format!("{base}_offline"),
            east: format!("{base}_east"),
            west: format!("{base}_west"),
        };
        let made = dbs.make(nodes).await;
        if let Err(e) = made {
            if let Err(drop) = dbs.remove(nodes).await {
                eprintln!("tenantd-bench: {drop:#}");
            }
            return Err(e);
        }
        Ok(dbs)
    }

    async fn make(&self, nodes: &Nodes) -> anyhow::Result<()> {
        for (node, node_name) in NODE_NAMES.into_iter().enumerate() {
            let mut admin = nodes.connect(node, "postgres").await?;
            // Names are made here from hex digits, not taken from input.
            sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", self.citus))
                .execute(&mut admin)
                .await
                .with_context(|| format!("create {} on the {}", self.citus, node_name))?;
            let own: &[&String] = match node {
                0 => &[&self.plain, &self.offline],
                1 => &[&self.east],
                _ => &[&self.west],
            };
            for name in own {
                sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("create {name}"))?;
            }
            let _ = admin.close().await;
            let mut db = nodes.connect(node, &self.citus).await?;
            sqlx::raw_sql("CREATE EXTENSION citus")
                .execute(&mut db)
                .await
                .with_context(|| format!("CREATE EXTENSION citus on the {}", node_name))?;
            let _ = db.close().await;
        }
        let mut coordinator = nodes.connect(0, &self.citus).await?;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(nodes.ports[0]))
            .execute(&mut coordinator)
            .await
            .context("citus_set_coordinator_host")?;
        for port in &nodes.ports[1..] {
            sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                .bind(i32::from(*port))
                .execute(&mut coordinator)
                .await
                .with_context(|| format!("citus_add_node 127.0.0.1:{port}"))?;
        }
        let _ = coordinator.close().await;
        eprintln!(
            "tenantd-bench: databases {} (Citus, 3 nodes), {} and {} (plain, coordinator), \
             {} and {} (plain, worker-1 and worker-2: clusters east and west)",
            self.citus, self.plain, self.offline, self.east, self.west
        );
        Ok(())
    }

    /// Drops the databases everywhere, then every tenant role of the run
    /// on every node (roles are cluster-wide).
    async fn remove(&self, nodes: &Nodes) -> anyhow::Result<()> {
        let mut roles = Vec::new();
        for name in [&self.citus, &self.plain] {
            // A database that was never made has no roles.
            if let Ok(found) = tenant_roles(&nodes.options(0, name)).await {
                roles.extend(found);
            }
        }
        for (node, node_name) in NODE_NAMES.into_iter().enumerate() {
            let mut admin = nodes.connect(node, "postgres").await?;
            for name in [
                &self.citus,
                &self.plain,
                &self.offline,
                &self.east,
                &self.west,
            ] {
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("drop {name} on the {}", node_name))?;
            }
            for chunk in roles.chunks(500) {
                let list: Vec<String> = chunk.iter().map(|r| format!("\"{r}\"")).collect();
                sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {}", list.join(", ")))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("drop the run's roles on the {}", node_name))?;
            }
            let _ = admin.close().await;
        }
        eprintln!(
            "tenantd-bench: dropped the run's databases and {} tenant roles",
            roles.len()
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Citus,
    Plain,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Citus => "citus",
            Side::Plain => "plain",
        }
    }

    /// Round `round`'s order: ABBA, so neither side always goes first.
    fn order(round: usize) -> [Side; 2] {
        if round.is_multiple_of(2) {
            [Side::Citus, Side::Plain]
        } else {
            [Side::Plain, Side::Citus]
        }
    }
}

/// What the run measured.
struct Results {
    version: String,
    citus_version: String,
    /// fsync and synchronous_commit on the coordinator.
    durability: String,
    create: Vec<(Side, CallStats)>,
    /// Fleet creation: tenants, clients, time per side.
    fleet: Vec<(Side, Duration)>,
    /// The fleet upgrade per side: from the run's creation to its end.
    upgrade: Vec<(Side, Duration)>,
    execute: Vec<(Side, usize, CallStats)>,
    /// Citus's moves between its workers (and the offline move).
    moves: Moves,
    /// tenantd's moves between two plain clusters on the same servers.
    cluster_moves: Moves,
}

/// The moves under write load and the offline move.
struct Moves {
    each: Vec<Move>,
    writes: usize,
    failed: usize,
    first_failure: Option<String>,
    /// Writes per second over the whole write load.
    write_rate: f64,
    /// The longest gap between acknowledged writes with no move running.
    quiet_gap: Duration,
    /// The tenant's rows at the end (bulk + written).
    rows: i64,
    /// The tenant's size before the moves (`--rows` customers).
    size: String,
    offline: Duration,
}

struct Move {
    from: String,
    to: String,
    /// From MoveTenant's call to the poll that saw the job end.
    wall: Duration,
    /// The move itself as the job recorded it (started_at to finished_at).
    moving: Duration,
    pause: Duration,
    /// Cluster moves: how long the switch held the writes, as the job
    /// recorded it.
    held: Option<Duration>,
}

async fn run_phases(
    args: &CitusArgs,
    window: Window,
    tenantd_bin: &Path,
    bin_dir: &Path,
    nodes: &Nodes,
    dbs: &Databases,
) -> anyhow::Result<Results> {
    let (version, citus_version, durability) = versions(nodes, dbs).await?;
    eprintln!("tenantd-bench: {version}; Citus {citus_version}");
    let citus_url = url(nodes, &dbs.citus);
    let plain_url = url(nodes, &dbs.plain);
    let dirs = MigrationDirs::write(&dbs.citus)?;
    let workers = args.connections.to_string();
    let v1 = [OsStr::new("--tenant-migrations"), dirs.v1.as_os_str()];
    let v2 = [
        OsStr::new("--tenant-migrations"),
        dirs.v2.as_os_str(),
        OsStr::new("--upgrade-workers"),
        OsStr::new(&workers),
    ];
    let tag_citus = format!("{}-v1", dbs.citus);
    let tag_plain = format!("{}-v1", dbs.plain);

    // Both tenantd processes at once, for the interleaved phases and the
    // fleets.
    let (create, execute, fleets) =
        TenantdServer::serve(tenantd_bin, &citus_url, &tag_citus, &v1, async |citus| {
            TenantdServer::serve(tenantd_bin, &plain_url, &tag_plain, &v1, async |plain| {
                let servers = [(Side::Citus, citus), (Side::Plain, plain)];
                let create = create_phases(args, window, &servers).await?;
                let execute = execute_phases(args, window, nodes, dbs, &servers).await?;
                let mut fleets = Vec::new();
                for (side, server) in servers {
                    eprintln!(
                        "tenantd-bench: {}: creating {} tenants with {} clients",
                        side.label(),
                        args.tenants,
                        args.connections
                    );
                    let (ids, took) =
                        tenants::create(server, "fleet", args.tenants, args.connections).await?;
                    println!(
                        "{:<6} fleet: {} tenants by CreateTenant, {} clients, {:.1} s, {:.1} tenants/s",
                        side.label(),
                        ids.len(),
                        args.connections,
                        took.as_secs_f64(),
                        ids.len() as f64 / took.as_secs_f64()
                    );
                    fleets.push((side, ids, took));
                }
                Ok((create, execute, fleets))
            })
            .await
        })
        .await?;

    // tenantd again with one more tenant migration: the fleet upgrade, then
    // (on Citus) the moves.
    let mut upgrade = Vec::new();
    for (side, fleet, _) in &fleets {
        let (url, tag) = match side {
            Side::Citus => (&citus_url, format!("{}-v2", dbs.citus)),
            Side::Plain => (&plain_url, format!("{}-v2", dbs.plain)),
        };
        let took = TenantdServer::serve(tenantd_bin, url, &tag, &v2, async |server| {
            let mut client = MigrationServiceClient::new(server.connect().await?);
            let run = upgrade_fleet(&mut client, fleet, args.connections).await?;
            println!(
                "{:<6} upgrade: {} tenants, concurrency {}, {:.2} s (run created to finished; {:.2} s wall), {:.1} tenants/s",
                side.label(),
                fleet.len(),
                args.connections,
                run.elapsed.as_secs_f64(),
                run.wall.as_secs_f64(),
                fleet.len() as f64 / run.elapsed.as_secs_f64()
            );
            Ok(run.elapsed)
        })
        .await?;
        upgrade.push((*side, took));
    }
    // The moves: Citus's between its workers, and tenantd's own between
    // two plain clusters on the same two servers, interleaved.
    let grace = [OsStr::new("--move-source-grace"), OsStr::new("0s")];
    let v2_moves: Vec<&OsStr> = v2.iter().chain(&grace).copied().collect();
    let (moves, cluster_moves) = TenantdServer::serve(
        tenantd_bin,
        &citus_url,
        &format!("{}-moves", dbs.citus),
        &v2,
        async |citus| {
            TenantdServer::serve(
                tenantd_bin,
                &plain_url,
                &format!("{}-moves", dbs.plain),
                &v2_moves,
                async |plain| move_phases(args, bin_dir, nodes, dbs, citus, plain).await,
            )
            .await
        },
    )
    .await?;
    Ok(Results {
        version,
        citus_version,
        durability,
        create,
        fleet: fleets.iter().map(|(s, _, took)| (*s, *took)).collect(),
        upgrade,
        execute,
        moves,
        cluster_moves,
    })
}

async fn versions(nodes: &Nodes, dbs: &Databases) -> anyhow::Result<(String, String, String)> {
    let mut conn = nodes.connect(0, &dbs.citus).await?;
    let versions = sqlx::query_as(
        "SELECT current_setting('server_version'), \
                (SELECT extversion FROM pg_extension WHERE extname = 'citus'), \
                'fsync=' || current_setting('fsync') \
                    || ', synchronous_commit=' || current_setting('synchronous_commit')",
    )
    .fetch_one(&mut conn)
    .await
    .context("read the PostgreSQL and Citus versions")?;
    let _ = conn.close().await;
    Ok(versions)
}

/// tenantd's URL of `database` on the coordinator (over its socket, as the
/// superuser).
fn url(nodes: &Nodes, database: &str) -> Secret {
    secret(&cluster_url(&nodes.nodes[0], database))
}

/// CreateTenant with one client, `--rounds` times a Citus and a plain phase.
async fn create_phases(
    args: &CitusArgs,
    window: Window,
    servers: &[(Side, &TenantdServer); 2],
) -> anyhow::Result<Vec<(Side, CallStats)>> {
    let mut latencies = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for side in Side::order(round) {
            let (i, server) = server_of(servers, side);
            eprintln!(
                "tenantd-bench: CreateTenant round {} {}: {window}",
                round + 1,
                side.label()
            );
            let authed = server.connect().await?;
            let worker = Creator {
                client: TenantServiceClient::new(authed),
                prefix: format!("create-r{round}"),
            };
            let got = measure(vec![worker], window)
                .await
                .with_context(|| format!("CreateTenant on {}", side.label()))?;
            latencies[i].extend(got);
        }
    }
    let over = window.measure * u32::try_from(args.rounds)?;
    let mut out = Vec::new();
    for (i, side) in [Side::Citus, Side::Plain].into_iter().enumerate() {
        let stats = CallStats::new(std::mem::take(&mut latencies[i]), over)
            .with_context(|| format!("no CreateTenant on {} was measured", side.label()))?;
        println!(
            "{:<6} CreateTenant 1 client: {} tenants, {:.1} tenants/s, p50 {:.1} ms, p95 {:.1} ms",
            side.label(),
            stats.calls,
            stats.per_second,
            ms(stats.p50),
            ms(stats.p95)
        );
        out.push((side, stats));
    }
    Ok(out)
}

fn server_of<'a>(
    servers: &[(Side, &'a TenantdServer); 2],
    side: Side,
) -> (usize, &'a TenantdServer) {
    let i = servers.iter().position(|(s, _)| *s == side).unwrap_or(0);
    (i, servers[i].1)
}

/// One CreateTenant client.
struct Creator {
    client: TenantServiceClient<Authed>,
    prefix: String,
}

impl Worker for Creator {
    type Request = pb::CreateTenantRequest;

    fn prepare(&mut self, seq: u64) -> Self::Request {
        tenants::request(format!("{}-{seq}", self.prefix))
    }

    async fn send(&mut self, request: Self::Request) -> anyhow::Result<()> {
        tenants::create_one(&mut self.client, request).await?;
        Ok(())
    }
}

/// A tenant on each side with `--select-rows` customers, then Execute of
/// the SELECT at each client count, Citus and plain interleaved.
async fn execute_phases(
    args: &CitusArgs,
    window: Window,
    nodes: &Nodes,
    dbs: &Databases,
    servers: &[(Side, &TenantdServer); 2],
) -> anyhow::Result<Vec<(Side, usize, CallStats)>> {
    let mut tenants_of = Vec::new();
    for (side, server) in servers {
        let (ids, _) = tenants::create(server, "select", 1, 1).await?;
        let id = ids[0];
        let db = match side {
            Side::Citus => &dbs.citus,
            Side::Plain => &dbs.plain,
        };
        fill(nodes, 0, db, id, u64::from(args.select_rows)).await?;
        tenants_of.push(id);
    }
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); 2 * args.clients.len()];
    for round in 0..args.rounds {
        for (c, &clients) in args.clients.iter().enumerate() {
            for side in Side::order(round) {
                let (i, server) = server_of(servers, side);
                eprintln!(
                    "tenantd-bench: Execute round {} {} clients={clients}: {window}",
                    round + 1,
                    side.label()
                );
                let workers = Select::open_all(
                    server,
                    clients,
                    args.channels,
                    tenants_of[i],
                    args.select_rows,
                )
                .await?;
                let got = measure(workers, window).await.with_context(|| {
                    format!("Execute on {} with {clients} clients", side.label())
                })?;
                latencies[2 * c + i].extend(got);
            }
        }
    }
    let over = window.measure * u32::try_from(args.rounds)?;
    let mut out = Vec::new();
    for (c, &clients) in args.clients.iter().enumerate() {
        for (i, side) in [Side::Citus, Side::Plain].into_iter().enumerate() {
            let stats = CallStats::new(std::mem::take(&mut latencies[2 * c + i]), over)
                .with_context(|| format!("no Execute on {} was measured", side.label()))?;
            println!(
                "{:<6} Execute clients={clients}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                side.label(),
                stats.per_second,
                ms(stats.p50),
                ms(stats.p99)
            );
            out.push((side, clients, stats));
        }
    }
    Ok(out)
}

/// `rows` customers `bulk-1`… written into the tenant's schema by the
/// superuser, then analyzed.
async fn fill(
    nodes: &Nodes,
    node: usize,
    db: &str,
    tenant: TenantId,
    rows: u64,
) -> anyhow::Result<()> {
    let s = tenant.schema_name().quoted();
    let mut conn = nodes.connect(node, db).await?;
    // The schema comes from the tenant id, the count is a number.
    sqlx::raw_sql(&format!(
        "INSERT INTO {s}.customers (code, name) \
         SELECT 'bulk-' || g, md5(g::text) FROM generate_series(1, {rows}) g"
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("write {rows} customers into {s}"))?;
    sqlx::raw_sql(&format!("VACUUM ANALYZE {s}.customers"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("vacuum {s}.customers"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Execute of the SELECT for a random `bulk-<n>`, read-only.
struct Select {
    client: TenantDataServiceClient<Authed>,
    tenant: Arc<str>,
    rows: u32,
    rng: rand::rngs::StdRng,
}

impl Select {
    async fn open_all(
        server: &TenantdServer,
        clients: usize,
        channels: usize,
        tenant: TenantId,
        rows: u32,
    ) -> anyhow::Result<Vec<Self>> {
        let tenant: Arc<str> = tenant.to_string().into();
        Ok(server
            .connect_spread(clients, channels.min(clients))
            .await?
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

impl Worker for Select {
    type Request = (String, pb::ExecuteRequest);

    fn prepare(&mut self, _seq: u64) -> Self::Request {
        let code = format!("bulk-{}", self.rng.gen_range(1..=self.rows));
        let request = pb::ExecuteRequest {
            tenant_id: self.tenant.to_string(),
            sql: SELECT.to_owned(),
            params: vec![text(&code)],
            read_only: true,
            ..Default::default()
        };
        (code, request)
    }

    async fn send(&mut self, (code, request): Self::Request) -> anyhow::Result<()> {
        let answer = self
            .client
            .execute(request)
            .await
            .map_err(status)
            .with_context(|| format!("Execute code={code}"))?
            .into_inner();
        ensure!(
            answer.rows.len() == 1,
            "Execute code={code} answered {} rows, not one",
            answer.rows.len()
        );
        Ok(())
    }
}

fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Text(s.to_owned())),
    }
}

/// The two clusters the plain side's tenant moves between: worker-1's and
/// worker-2's plain databases.
const CLUSTERS: [&str; 2] = ["east", "west"];

/// One kind of move, with its loaded tenant and writers.
struct MoveSide {
    label: &'static str,
    tenant: TenantId,
    tenants: TenantServiceClient<Authed>,
    /// Citus moves go through ClusterService (MoveTenant to a node).
    citus: Option<ClusterServiceClient<Authed>>,
    writers: Option<Writers>,
    size: String,
    windows: Vec<(Instant, Instant)>,
    moved: Vec<Done>,
}

/// One move done: from, to, MoveTenant to the end seen, the job's own
/// time, and (cluster moves) how long the job says the switch held writes.
struct Done {
    from: String,
    to: String,
    sent: Instant,
    ended: Instant,
    moving: Duration,
    held: Option<Duration>,
}

impl MoveSide {
    /// The next move: to the other worker (Citus) or the other cluster.
    async fn move_once(&mut self, nodes: &Nodes, dbs: &Databases) -> anyhow::Result<Done> {
        let placed = self
            .tenants
            .get_tenant(pb::GetTenantRequest {
                selector: Some(pb::get_tenant_request::Selector::Id(
                    self.tenant.to_string(),
                )),
            })
            .await
            .map_err(status)
            .context("GetTenant")?
            .into_inner();
        let Some(clusters) = self.citus.as_mut() else {
            let from = placed.cluster;
            let to = if from == CLUSTERS[0] {
                CLUSTERS[1]
            } else {
                CLUSTERS[0]
            };
            eprintln!("tenantd-bench: cluster move: {from} -> {to}");
            let sent = Instant::now();
            let job = self
                .tenants
                .move_tenant(pb::MoveTenantToClusterRequest {
                    tenant_id: self.tenant.to_string(),
                    cluster: to.to_owned(),
                })
                .await
                .map_err(status)
                .context("MoveTenant to a cluster")?
                .into_inner();
            let job = wait_move(&mut self.tenants, &job.id).await?;
            let ended = Instant::now();
            ensure!(
                job.status == pb::MoveJobStatus::Succeeded as i32,
                "move {} ended {:?}: {}",
                job.id,
                pb::MoveJobStatus::try_from(job.status),
                job.error
            );
            let moving = between(job.started_at.as_ref(), job.finished_at.as_ref());
            let held = Duration::from_millis(u64::try_from(job.pause_ms).unwrap_or(0));
            eprintln!(
                "tenantd-bench: moved in {:.2} s, writes held {} ms by the switch",
                moving.as_secs_f64(),
                job.pause_ms
            );
            return Ok(Done {
                from,
                to: to.to_owned(),
                sent,
                ended,
                moving,
                held: Some(held),
            });
        };
        let from = placed.node;
        let to = if from == nodes.name(1) {
            nodes.name(2)
        } else {
            nodes.name(1)
        };
        // What Citus's maintenance daemon does in its own time: the
        // placements earlier moves left behind, removed before the tenant
        // moves back onto their node.
        cleanup_orphans(nodes, dbs).await?;
        eprintln!("tenantd-bench: Citus move: {from} -> {to}");
        let sent = Instant::now();
        let job = clusters
            .move_tenant(pb::MoveTenantRequest {
                tenant_id: self.tenant.to_string(),
                node: to.clone(),
            })
            .await
            .map_err(status)
            .context("MoveTenant")?
            .into_inner();
        let job = wait_job(clusters, &job.id).await?;
        let ended = Instant::now();
        if job.status != pb::ClusterJobStatus::Succeeded as i32 {
            bail!(
                "move job {} ended {:?}: {} {:?}",
                job.id,
                pb::ClusterJobStatus::try_from(job.status),
                job.error,
                job.moves.first().map(|m| &m.error)
            );
        }
        let moving = job.moves.first().map_or(Duration::ZERO, |m| {
            between(m.started_at.as_ref(), m.finished_at.as_ref())
        });
        eprintln!("tenantd-bench: moved in {:.2} s", moving.as_secs_f64());
        Ok(Done {
            from,
            to,
            sent,
            ended,
            moving,
            held: None,
        })
    }

    /// Stops the writers, checks that every acknowledged write is in the
    /// tenant's table at `node`'s `db`, and sums the moves up.
    async fn finish(
        mut self,
        nodes: &Nodes,
        node: usize,
        db: &str,
        load: Duration,
    ) -> anyhow::Result<Moves> {
        let writers = self.writers.take().context("writers started")?;
        let (mut acked, failed) = writers.stop().await?;
        acked.sort_unstable_by_key(|(_, at)| *at);
        let times: Vec<Instant> = acked.iter().map(|(_, at)| *at).collect();
        let each: Vec<Move> = self
            .moved
            .iter()
            .map(|d| Move {
                from: d.from.clone(),
                to: d.to.clone(),
                wall: d.ended - d.sent,
                moving: d.moving,
                pause: longest_gap(&times, d.sent, d.ended),
                held: d.held,
            })
            .collect();
        let windows = &self.windows;
        let quiet_gap = times
            .windows(2)
            .filter(|w| {
                windows
                    .iter()
                    .all(|&(start, end)| w[1] < start || w[0] > end)
            })
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let codes: Vec<String> = acked.into_iter().map(|(code, _)| code).collect();
        let s = self.tenant.schema_name().quoted();
        let mut conn = nodes.connect(node, db).await?;
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {s}.customers WHERE code = ANY($1)"
        ))
        .bind(&codes)
        .fetch_one(&mut conn)
        .await
        .context("count the acknowledged writes")?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {s}.customers"))
            .fetch_one(&mut conn)
            .await
            .context("count the tenant's customers")?;
        let _ = conn.close().await;
        let lost = codes.len() as i64 - found;
        println!(
            "{} moves: {} writes acknowledged ({:.0}/s), {} failed calls, {} acknowledged writes missing",
            self.label,
            codes.len(),
            codes.len() as f64 / load.as_secs_f64(),
            failed.len(),
            lost
        );
        ensure!(
            lost == 0,
            "{}: {lost} of {} acknowledged writes are missing after the moves",
            self.label,
            codes.len()
        );
        Ok(Moves {
            each,
            writes: codes.len(),
            failed: failed.len(),
            first_failure: failed.into_iter().next(),
            write_rate: codes.len() as f64 / load.as_secs_f64(),
            quiet_gap,
            rows,
            size: self.size,
            offline: Duration::ZERO,
        })
    }
}

/// The moves under write load, Citus's and tenantd's own between clusters
/// interleaved (ABBA) with both tenants' writers running throughout, then
/// the offline move of the Citus tenant.
async fn move_phases(
    args: &CitusArgs,
    bin_dir: &Path,
    nodes: &Nodes,
    dbs: &Databases,
    citus: &TenantdServer,
    plain: &TenantdServer,
) -> anyhow::Result<(Moves, Moves)> {
    // The plain side's clusters: worker-1's and worker-2's servers, as
    // Citus moves between them.
    let mut registry = ClusterServiceClient::new(plain.connect().await?);
    for (cluster, (node, db)) in CLUSTERS.into_iter().zip([(1, &dbs.east), (2, &dbs.west)]) {
        registry
            .add_cluster(pb::AddClusterRequest {
                name: cluster.to_owned(),
                url: format!(
                    "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
                    nodes.ports[node]
                ),
                ..Default::default()
            })
            .await
            .map_err(status)
            .with_context(|| format!("AddCluster {cluster}"))?;
    }

    let (ids, _) = tenants::create(citus, "moved", 1, 1).await?;
    let on_citus = ids[0];
    let mut request = tenants::request("moved-cluster".to_owned());
    request.cluster = CLUSTERS[0].to_owned();
    let mut plain_tenants = TenantServiceClient::new(plain.connect().await?);
    let on_east = tenants::create_one(&mut plain_tenants, request).await?;
    let on_east = TenantId::parse("id", &on_east.id)
        .map_err(|e| anyhow::anyhow!("CreateTenant returned id: {e:?}"))?;
    for (tenant, node, db) in [(on_citus, 0, &dbs.citus), (on_east, 1, &dbs.east)] {
        eprintln!(
            "tenantd-bench: writing {} customers into the moved tenant {}",
            args.rows,
            tenant.schema_name().as_str()
        );
        let filled = Instant::now();
        fill(nodes, node, db, tenant, args.rows).await?;
        eprintln!(
            "tenantd-bench: written in {:.1} s",
            filled.elapsed().as_secs_f64()
        );
    }
    let citus_size = schema_size(nodes, dbs, on_citus.schema_name().as_str()).await?;
    let east_size = plain_schema_size(nodes, 1, &dbs.east, on_east).await?;
    eprintln!(
        "tenantd-bench: the tenants' tables take {citus_size} (Citus) and {east_size} (east)"
    );

    let mut sides = [
        MoveSide {
            label: "citus",
            tenant: on_citus,
            tenants: TenantServiceClient::new(citus.connect().await?),
            citus: Some(ClusterServiceClient::new(citus.connect().await?)),
            writers: Some(Writers::start(citus, on_citus).await?),
            size: citus_size,
            windows: Vec::new(),
            moved: Vec::new(),
        },
        MoveSide {
            label: "clusters",
            tenant: on_east,
            tenants: plain_tenants,
            citus: None,
            writers: Some(Writers::start(plain, on_east).await?),
            size: east_size,
            windows: Vec::new(),
            moved: Vec::new(),
        },
    ];
    let load_start = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let mut ran = Ok(());
    'moves: for i in 0..args.moves {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            eprintln!(
                "tenantd-bench: move {}/{} ({})",
                i + 1,
                args.moves,
                sides[s].label
            );
            match sides[s].move_once(nodes, dbs).await {
                Ok(done) => {
                    sides[s].windows.push((done.sent, done.ended));
                    sides[s].moved.push(done);
                }
                Err(e) => {
                    ran = Err(e);
                    break 'moves;
                }
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
    let load = load_start.elapsed();
    let [citus_side, cluster_side] = sides;
    let final_cluster = cluster_side.moved.last().map_or(CLUSTERS[0], |d| {
        if d.to == CLUSTERS[1] {
            CLUSTERS[1]
        } else {
            CLUSTERS[0]
        }
    });
    let (node, db) = if final_cluster == CLUSTERS[0] {
        (1, &dbs.east)
    } else {
        (2, &dbs.west)
    };
    let citus_moves = citus_side.finish(nodes, 0, &dbs.citus, load).await;
    let cluster_moves = cluster_side.finish(nodes, node, db, load).await;
    ran?;
    let mut citus_moves = citus_moves?;
    let cluster_moves = cluster_moves?;
    citus_moves.offline = offline_move(
        bin_dir,
        nodes,
        dbs,
        on_citus.schema_name().as_str(),
        citus_moves.rows,
    )
    .await?;
    Ok((citus_moves, cluster_moves))
}

/// From `start` to `end` of a job, zero when either is missing.
fn between(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Duration {
    match (start, end) {
        (Some(s), Some(e)) => Duration::from_secs_f64((seconds(e) - seconds(s)).max(0.0)),
        _ => Duration::ZERO,
    }
}

/// Polls a cluster move until it ends.
async fn wait_move(
    client: &mut TenantServiceClient<Authed>,
    id: &str,
) -> anyhow::Result<pb::TenantClusterMove> {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let job = client
            .get_move(pb::TenantMoveRequest { id: id.into() })
            .await
            .map_err(status)
            .context("GetMove")?
            .into_inner();
        if matches!(
            pb::MoveJobStatus::try_from(job.status),
            Ok(pb::MoveJobStatus::Succeeded
                | pb::MoveJobStatus::Failed
                | pb::MoveJobStatus::Cancelled)
        ) {
            return Ok(job);
        }
        ensure!(
            Instant::now() < deadline,
            "move {id} did not end within {JOB_WAIT:?}"
        );
        tokio::time::sleep(JOB_POLL).await;
    }
}

/// The size of a tenant's tables (with indexes) on a plain database.
async fn plain_schema_size(
    nodes: &Nodes,
    node: usize,
    db: &str,
    tenant: TenantId,
) -> anyhow::Result<String> {
    let mut conn = nodes.connect(node, db).await?;
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
    )
    .bind(tenant.schema_name().as_str())
    .fetch_one(&mut conn)
    .await
    .context("read the tenant's size")?;
    let _ = conn.close().await;
    Ok(size)
}

/// The longest gap between consecutive acknowledgements (sorted) that
/// touches `start..=end`: a pause that began before the window or ended
/// after it counts whole.
fn longest_gap(times: &[Instant], start: Instant, end: Instant) -> Duration {
    times
        .windows(2)
        .filter(|w| w[1] >= start && w[0] <= end)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(end - start)
}

/// Polls the job until it ends.
async fn wait_job(
    client: &mut ClusterServiceClient<Authed>,
    id: &str,
) -> anyhow::Result<pb::ClusterJob> {
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let job = client
            .get_cluster_job(pb::ClusterJobRequest { id: id.into() })
            .await
            .map_err(status)
            .context("GetClusterJob")?
            .into_inner();
        if matches!(
            pb::ClusterJobStatus::try_from(job.status),
            Ok(pb::ClusterJobStatus::Succeeded
                | pb::ClusterJobStatus::Failed
                | pb::ClusterJobStatus::Cancelled)
        ) {
            return Ok(job);
        }
        ensure!(
            Instant::now() < deadline,
            "move job {id} did not end within {JOB_WAIT:?}"
        );
        tokio::time::sleep(JOB_POLL).await;
    }
}

async fn cleanup_orphans(nodes: &Nodes, dbs: &Databases) -> anyhow::Result<()> {
    let mut conn = nodes.connect(0, &dbs.citus).await?;
    sqlx::raw_sql("CALL citus_cleanup_orphaned_resources()")
        .execute(&mut conn)
        .await
        .context("citus_cleanup_orphaned_resources")?;
    let _ = conn.close().await;
    Ok(())
}

/// The size of the tenant's shards (tables and indexes), as Citus reports it.
async fn schema_size(nodes: &Nodes, dbs: &Databases, schema: &str) -> anyhow::Result<String> {
    let mut conn = nodes.connect(0, &dbs.citus).await?;
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(sum(citus_total_relation_size(logicalrelid))) \
         FROM pg_dist_partition WHERE logicalrelid::text LIKE $1 || '.%'",
    )
    .bind(schema)
    .fetch_one(&mut conn)
    .await
    .context("read the tenant's size")?;
    let _ = conn.close().await;
    Ok(size)
}

fn seconds(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// What a writer ends with: each acknowledged code and when, and each
/// failed call.
type Written = (Vec<(String, Instant)>, Vec<String>);

/// [`WRITERS`] clients, each on a connection of its own, inserting one
/// customer per Execute until told to stop.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

impl Writers {
    async fn start(server: &TenantdServer, tenant: TenantId) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (w, authed) in server
            .connect_spread(WRITERS, WRITERS)
            .await?
            .into_iter()
            .enumerate()
        {
            let mut client = TenantDataServiceClient::new(authed);
            let stop = Arc::clone(&stop);
            let tenant = tenant.to_string();
            tasks.push(tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let code = format!("w{w}-{n}");
                    let request = pb::ExecuteRequest {
                        tenant_id: tenant.clone(),
                        sql: "INSERT INTO customers (code, name) VALUES ($1, 'load')".to_owned(),
                        params: vec![text(&code)],
                        ..Default::default()
                    };
                    match client.execute(request).await {
                        Ok(_) => acked.push((code, Instant::now())),
                        Err(e) => failed.push(format!("{code}: {:?} {}", e.code(), e.message())),
                    }
                }
                (acked, failed)
            }));
        }
        Ok(Self { stop, tasks })
    }

    async fn stop(self) -> anyhow::Result<Written> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        for t in self.tasks {
            let (a, f) = t.await.context("a writer panicked")?;
            acked.extend(a);
            failed.extend(f);
        }
        Ok((acked, failed))
    }
}

/// `pg_dump -n <schema> -Fc` of the coordinator's database piped into
/// `pg_restore` into the fresh plain database: the time both take, which an
/// offline move would stop the tenant's writes for. Checks the rows arrived.
async fn offline_move(
    bin_dir: &Path,
    nodes: &Nodes,
    dbs: &Databases,
    schema: &str,
    rows: i64,
) -> anyhow::Result<Duration> {
    eprintln!("tenantd-bench: offline move: pg_dump -n {schema} -Fc | pg_restore");
    let socket = nodes.nodes[0].socket_dir().to_path_buf();
    let port = nodes.ports[0].to_string();
    let bin_dir = bin_dir.to_path_buf();
    let (citus, offline) = (dbs.citus.clone(), dbs.offline.clone());
    let schema_arg = schema.to_owned();
    let took = tokio::task::spawn_blocking(move || {
        let common = |program: &str| {
            let mut cmd = std::process::Command::new(bin_dir.join(program));
            cmd.arg("-h")
                .arg(&socket)
                .arg("-p")
                .arg(&port)
                .arg("-U")
                .arg("postgres")
                .stderr(Stdio::piped());
            cmd
        };
        let started = Instant::now();
        let mut dump = common("pg_dump")
            .args(["-n", &schema_arg, "-Fc", "-d", &citus])
            .stdout(Stdio::piped())
            .spawn()
            .context("start pg_dump")?;
        let piped = dump.stdout.take().context("pg_dump's output")?;
        let restore = common("pg_restore")
            .args(["--exit-on-error", "-d", &offline])
            .stdin(piped)
            .stdout(Stdio::null())
            .spawn()
            .context("start pg_restore")?;
        let restored = restore.wait_with_output().context("wait for pg_restore")?;
        let dumped = dump.wait_with_output().context("wait for pg_dump")?;
        let took = started.elapsed();
        ensure!(
            dumped.status.success(),
            "pg_dump failed ({}): {}",
            dumped.status,
            String::from_utf8_lossy(&dumped.stderr).trim()
        );
        ensure!(
            restored.status.success(),
            "pg_restore failed ({}): {}",
            restored.status,
            String::from_utf8_lossy(&restored.stderr).trim()
        );
        anyhow::Ok(took)
    })
    .await
    .context("the offline move")??;
    let mut conn = nodes.connect(0, &dbs.offline).await?;
    let restored: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".customers"))
        .fetch_one(&mut conn)
        .await
        .context("count the restored customers")?;
    let _ = conn.close().await;
    ensure!(
        restored == rows,
        "the offline copy has {restored} customers, not {rows}"
    );
    println!(
        "offline move: pg_dump -Fc | pg_restore of {rows} customers: {:.1} s",
        took.as_secs_f64()
    );
    Ok(took)
}

/// A side's moves summed up.
struct Summary {
    pause_p50: Duration,
    pause_max: Duration,
    move_p50: Duration,
    wall_p50: Duration,
    /// All the moves' times together (the job's start to end).
    total: Duration,
}

fn moves_summary(m: &Moves) -> Summary {
    let mut pauses: Vec<Duration> = m.each.iter().map(|x| x.pause).collect();
    pauses.sort_unstable();
    let mut times: Vec<Duration> = m.each.iter().map(|x| x.moving).collect();
    times.sort_unstable();
    let mut walls: Vec<Duration> = m.each.iter().map(|x| x.wall).collect();
    walls.sort_unstable();
    Summary {
        pause_p50: percentile(&pauses, 0.5),
        pause_max: *pauses.last().unwrap_or(&Duration::ZERO),
        move_p50: percentile(&times, 0.5),
        wall_p50: percentile(&walls, 0.5),
        total: times.iter().sum(),
    }
}

fn report_moves(label: &str, m: &Moves) -> Summary {
    for (i, one) in m.each.iter().enumerate() {
        println!(
            "{label} move {}: {} -> {}: {:.2} s moving ({:.2} s MoveTenant to end seen), write pause {:.0} ms{}",
            i + 1,
            one.from,
            one.to,
            one.moving.as_secs_f64(),
            one.wall.as_secs_f64(),
            ms(one.pause),
            one.held.map_or(String::new(), |h| format!(
                " (switch held writes {:.0} ms)",
                ms(h)
            ))
        );
    }
    let sum = moves_summary(m);
    println!(
        "{label} moves: {} of a tenant with {} customers at the end ({} before): move p50 {:.2} s ({:.2} s wall), \
         all {:.1} s, write pause p50 {:.0} ms, max {:.0} ms (longest gap with no move running: {:.0} ms); \
         {} writes, {} failed calls{}",
        m.each.len(),
        m.rows,
        m.size,
        sum.move_p50.as_secs_f64(),
        sum.wall_p50.as_secs_f64(),
        sum.total.as_secs_f64(),
        ms(sum.pause_p50),
        ms(sum.pause_max),
        ms(m.quiet_gap),
        m.writes,
        m.failed,
        m.first_failure
            .as_ref()
            .map_or(String::new(), |f| format!(" (first: {f})"))
    );
    sum
}

/// Cluster moves next to Citus's: the pause p50, the pause max and all
/// moves' time, each as a ratio (cluster / Citus).
fn ratios(citus: &Summary, clusters: &Summary) -> (f64, f64, f64) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
    (
        ratio(clusters.pause_p50, citus.pause_p50),
        ratio(clusters.pause_max, citus.pause_max),
        ratio(clusters.total, citus.total),
    )
}

fn report(args: &CitusArgs, window: Window, r: &Results) {
    println!();
    let citus = report_moves("citus", &r.moves);
    let clusters = report_moves("clusters", &r.cluster_moves);
    let (p50, max, total) = ratios(&citus, &clusters);
    println!(
        "cluster moves / Citus moves: write pause p50 {p50:.2}x, max {max:.2}x, all moves' time {total:.2}x"
    );
    println!(
        "offline move (pg_dump | pg_restore of {} customers): {:.1} s of write pause, {:.0}x the Citus move's max",
        r.moves.rows,
        r.moves.offline.as_secs_f64(),
        r.moves.offline.as_secs_f64() / citus.pause_max.as_secs_f64().max(1e-3)
    );
    if args.markdown {
        println!();
        print!("{}", markdown(args, window, r));
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Citus => "Citus (coordinator + 2 workers)",
        Side::Plain => "plain database, same coordinator server",
    }
}

fn markdown(args: &CitusArgs, window: Window, r: &Results) -> String {
    let mut md = String::new();
    md.push_str("| CreateTenant, 1 client | tenants | tenants/s | p50 ms | p95 ms |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for (side, s) in &r.create {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            side_name(*side),
            s.calls,
            s.per_second,
            ms(s.p50),
            ms(s.p95)
        );
    }
    let _ = write!(
        md,
        "\n| fleet of {} tenants | CreateTenant, {} clients, tenants/s | upgrade (1 column, 1 index), tenants/s | upgrade s |\n",
        args.tenants, args.connections
    );
    md.push_str("|---|---:|---:|---:|\n");
    for (side, upgrade) in &r.upgrade {
        let fleet = r
            .fleet
            .iter()
            .find(|(s, _)| s == side)
            .map_or(0.0, |(_, d)| args.tenants as f64 / d.as_secs_f64());
        let _ = writeln!(
            md,
            "| {} | {fleet:.1} | {:.1} | {:.2} |",
            side_name(*side),
            args.tenants as f64 / upgrade.as_secs_f64(),
            upgrade.as_secs_f64()
        );
    }
    md.push_str("\n| Execute, unique-key SELECT | clients | req/s | p50 ms | p99 ms |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for (side, clients, s) in &r.execute {
        let _ = writeln!(
            md,
            "| {} | {clients} | {:.0} | {:.2} | {:.2} |",
            side_name(*side),
            s.per_second,
            ms(s.p50),
            ms(s.p99)
        );
    }
    let citus = moves_summary(&r.moves);
    let clusters = moves_summary(&r.cluster_moves);
    let _ = write!(
        md,
        "\n| move of a tenant with {} customers ({}), {WRITERS} writers on each side | moves | move p50 s | all moves s | write pause p50 ms | write pause max ms | failed calls | acknowledged writes lost |\n",
        args.rows, r.moves.size
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (what, m, sum) in [
        (
            "online, Citus: MoveTenant (citus_schema_move) between the workers",
            &r.moves,
            &citus,
        ),
        (
            "online, clusters: MoveTenant to the other cluster (logical replication), same two servers",
            &r.cluster_moves,
            &clusters,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} | {:.2} | {:.1} | {:.0} | {:.0} | {} | 0 of {} |",
            m.each.len(),
            sum.move_p50.as_secs_f64(),
            sum.total.as_secs_f64(),
            ms(sum.pause_p50),
            ms(sum.pause_max),
            m.failed,
            m.writes
        );
    }
    let _ = writeln!(
        md,
        "| offline: `pg_dump -n <schema> -Fc \\| pg_restore` into a fresh database | 1 | {:.2} | {:.2} | {:.0} | {:.0} | – | – |",
        r.moves.offline.as_secs_f64(),
        r.moves.offline.as_secs_f64(),
        ms(r.moves.offline),
        ms(r.moves.offline)
    );
    let (p50, max, total) = ratios(&citus, &clusters);
    let mut held: Vec<Duration> = r.cluster_moves.each.iter().filter_map(|m| m.held).collect();
    held.sort_unstable();
    let _ = writeln!(
        md,
        "\nCluster moves / Citus moves, same run: write pause p50 **{p50:.2}×**, max **{max:.2}×**, \
         all moves' time **{total:.2}×**. The switch itself held the writes p50 {:.0} ms, max {:.0} ms \
         (the job's pause_ms).",
        ms(percentile(&held, 0.5)),
        ms(*held.last().unwrap_or(&Duration::ZERO))
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug build (not for publishing)"
    } else {
        "release build"
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    let _ = write!(
        md,
        "\nPostgreSQL {}, Citus {}; coordinator and both workers private clusters on this machine \
         ({}, wal_receiver_status_interval={}); {cores} cores; {}; {profile}. Interleaved phases: \
         {} rounds, {window} each, sides alternating ABBA. Move time: the job's started_at to \
         finished_at (MoveTenant to the end seen by a {} ms poll: p50 {:.2} s); write pause: the \
         longest gap between consecutive acknowledged writes touching the move (with no move \
         running the longest gap was {:.0} ms; {:.0} writes/s). Reproduce: \
         `cargo build --release -p tenantd -p tenantd-bench && target/release/tenantd-bench {}`. \
         The offline move copies the tenant as it is after the online moves ({} customers).\n",
        r.version,
        r.citus_version,
        r.durability,
        args.wal_receiver_status_interval,
        chrono::Utc::now().format("%Y-%m-%d"),
        args.rounds,
        JOB_POLL.as_millis(),
        citus.wall_p50.as_secs_f64(),
        ms(r.moves.quiet_gap),
        r.moves.write_rate,
        command.join(" "),
        r.moves.rows
    );
    md
}
