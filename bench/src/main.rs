//! `tenantd-bench`: measures tenantd against the physical limit of the same
//! work done with raw SQL, both in the same run, so that only their ratio has
//! to be trusted on a noisy machine.
//!
//! Each run gets a database of its own (`tenantd_bench_<random>`) on a server
//! given by URL or on a private cluster (`tenantd::local_pg`), and drops it
//! afterwards together with every tenant role the run created. The tenantd
//! side is the real server binary in a process of its own, driven over gRPC;
//! the raw side sends the same transaction with no service in between.
//!
//! One module per operation (`create`: CreateTenant latency and throughput;
//! `upgrade`: a fleet upgrade's tenants/s, PlanUpgrade latency and tenantd's
//! memory; `validate`: ValidateToken throughput and p99 against absolute
//! targets — it has no SQL to compare with — and Login throughput against
//! its argon2id bound; `execute`: the data plane's Execute throughput next to
//! pgbench; `checkout`: the pool cache's hit and checkout, in process;
//! `touch`: a fleet far larger than the pool cache, touched in turn, with
//! memory and connections watched; `citus`: create, upgrade, Execute and
//! tenant moves on a Citus coordinator with two workers); the harness they share is
//! operation-neutral: `pg` (a run: the server and the run's database),
//! `server` (the tenantd process, its clients and its metrics), `measure`
//! (client loops and statistics), `flags` (checks of the flags),
//! `report` (targets, markdown pieces), `sampler` (figures watched over a
//! phase), `procstat` (memory and CPU from /proc), `raw` (the raw
//! create-tenant transaction), `tenants` (tenants made through CreateTenant).

mod checkout;
mod citus;
mod create;
mod events;
mod execute;
mod flags;
mod measure;
mod pg;
mod procstat;
mod raw;
mod report;
mod sampler;
mod server;
mod tenants;
mod touch;
mod upgrade;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tenantd::config::Secret;

/// Benchmarks of tenantd against the raw-SQL limit on the same database.
#[derive(Parser)]
#[command(name = "tenantd-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// CreateTenant p50/p95 latency and tenants/s through gRPC, next to the
    /// same transaction sent as raw SQL.
    Create(create::CreateArgs),
    /// A fleet upgrade of N tenants (one column, one index) through tenantd,
    /// next to the raw-SQL fleet upgrade; PlanUpgrade latency at that size;
    /// tenantd's memory over the run.
    Upgrade(upgrade::UpgradeArgs),
    /// ValidateToken requests/s and p50/p99 with many clients over a few
    /// HTTP/2 connections; Login logins/s next to the bound argon2id puts
    /// on it.
    Validate(validate::ValidateArgs),
    /// Execute requests/s and p50/p99 of a primary-key SELECT at several
    /// client counts, next to pgbench running the same SELECT.
    Execute(execute::ExecuteArgs),
    /// A pool cache hit plus checkout and drop of an idle connection,
    /// in process on `TenantPools`: p50/p99/p999.
    Checkout(checkout::CheckoutArgs),
    /// A fleet far larger than the pool cache, each tenant touched in turn
    /// by Execute; tenantd's memory, the tenant backends and its pool gauges
    /// watched throughout.
    Touch(touch::TouchArgs),
    /// tenantd on a Citus coordinator with two workers next to a plain
    /// database on the same server: CreateTenant, a fleet upgrade, Execute,
    /// and tenant moves under write load next to an offline pg_dump move.
    Citus(citus::CitusArgs),
    /// The event stream at a steady rate of tenant changes with many
    /// watchers: delivery lag, writers with and without watchers, tenantd's
    /// memory, and a watcher that never reads.
    Events(events::EventsArgs),
    /// What sampling tenant sizes costs PostgreSQL at a fleet's size.
    Usage(events::UsageArgs),
}

/// Where the benchmark runs; shared by every subcommand.
#[derive(Debug, Args)]
pub struct Target {
    /// Server-level PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/postgres.
    /// The run creates and drops a database of its own there. Without it a
    /// private cluster runs under --data-dir for the length of the run.
    #[arg(long)]
    pub database_url: Option<Secret>,

    /// Directory of the private cluster used without --database-url.
    #[arg(long, default_value = "target/bench-pg")]
    pub data_dir: PathBuf,

    /// The tenantd server binary [default: `tenantd` next to this binary].
    #[arg(long)]
    pub tenantd: Option<PathBuf>,

    /// Also print a markdown table for BENCHMARKS.md.
    #[arg(long)]
    pub markdown: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Create(args) => runtime.block_on(create::run(args)),
        Command::Upgrade(args) => runtime.block_on(upgrade::run(args)),
        Command::Validate(args) => runtime.block_on(validate::run(args)),
        Command::Execute(args) => runtime.block_on(execute::run(args)),
        Command::Checkout(args) => runtime.block_on(checkout::run(args)),
        Command::Touch(args) => runtime.block_on(touch::run(args)),
        Command::Citus(args) => runtime.block_on(citus::run(args)),
        Command::Events(args) => runtime.block_on(events::run(args)),
        Command::Usage(args) => runtime.block_on(events::run_usage(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
