//! `tenantctl upgrade …`: fleet-wide tenant schema upgrades through the
//! MigrationService — plan them, start a run, watch it live, and read, pause,
//! resume, cancel or retry runs. The subcommands and their arguments live
//! here; how plans and runs print is in `upgrade/print.rs` (tables and
//! lines) and `upgrade/json.rs`, the live watch in `upgrade/watch.rs`.

mod json;
mod print;
mod watch;

use std::time::Duration;

use clap::{Args, Subcommand};
use tenantd::pb::{self, migration_service_client::MigrationServiceClient};
use tonic::transport::Channel;

use crate::cli::parse_uuid;
use crate::error::CliError;
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Tenants per schema version, who is behind, who failed before, who drifted.
    Plan(PlanArgs),
    /// Start a run that upgrades every selected tenant behind the target.
    Start(StartArgs),
    /// Follow a run live until it ends; exits 0 only when it succeeded.
    Watch(WatchArgs),
    /// Show one run with its totals.
    Get(RunArg),
    /// List runs, newest first.
    List(ListArgs),
    /// Stop claiming tenants; those being upgraded finish.
    Pause(ActionArgs),
    /// Continue a paused or halted run.
    Resume(ActionArgs),
    /// End a run: pending tenants are skipped, those being upgraded finish.
    Cancel(ActionArgs),
    /// Put the run's failed tenants back to pending and run it again.
    Retry(ActionArgs),
}

/// Which tenants a plan or run covers; none given: every tenant with a schema.
#[derive(Debug, Args)]
pub struct SelectorArgs {
    /// Only this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID", value_parser = parse_uuid)]
    tenant_ids: Vec<String>,
    /// Only the tenant with this slug (repeatable).
    #[arg(long = "slug", value_name = "SLUG")]
    slugs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Version to plan for (default: the latest tenant migration the server knows).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    target_version: Option<i64>,
    #[command(flatten)]
    selector: SelectorArgs,
    /// How many behind, failed and drifted tenants to list, 1-1000 (server default 20).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    sample: Option<i32>,
    /// Also compare every selected tenant's ledger with the catalog (one query per tenant).
    #[arg(long)]
    check_drift: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Version to upgrade to (default: the latest tenant migration the server knows).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    target_version: Option<i64>,
    /// Tenants upgraded at once on each cluster, across all replicas, 1-64
    /// (server default 4).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=64))]
    concurrency: Option<i32>,
    /// Tenants upgraded first; any canary failure pauses the run (default 0).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    canary_count: Option<i32>,
    /// More failed tenants than this halt the run (default 0: the first failure halts).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    max_failures: Option<i32>,
    /// Attempts per tenant for transient errors, 1-10 (server default 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10))]
    max_attempts: Option<i32>,
    /// Lock wait per tenant transaction, e.g. 5s (server default 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_pb_duration)]
    lock_timeout: Option<prost_types::Duration>,
    /// Statement time-out per tenant transaction, e.g. 5m (server default 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_pb_duration)]
    statement_timeout: Option<prost_types::Duration>,
    #[command(flatten)]
    selector: SelectorArgs,
    /// Say what the run would hold without creating it.
    #[arg(long, conflicts_with = "watch")]
    dry_run: bool,
    /// Then follow the run as `upgrade watch` does (and exit as it does).
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The run's id.
    #[arg(value_name = "RUN_ID", value_parser = parse_uuid)]
    run_id: String,
    /// Time between progress updates, 100ms-60s.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Also show the tenants that finished before the watch began.
    #[arg(long)]
    from_start: bool,
}

#[derive(Debug, Args)]
pub struct RunArg {
    /// The run's id.
    #[arg(value_name = "RUN_ID", value_parser = parse_uuid)]
    run_id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Runs per page, 1-100 (server default 20).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=100))]
    page_size: Option<i32>,
    /// Start at this page: the token a previous page printed.
    #[arg(long, default_value = "")]
    page_token: String,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The run's id.
    #[arg(value_name = "RUN_ID", value_parser = parse_uuid)]
    run_id: String,
    /// Why; kept with the run and in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
}

impl From<ActionArgs> for pb::UpgradeRunRequest {
    fn from(a: ActionArgs) -> Self {
        pb::UpgradeRunRequest {
            run_id: a.run_id,
            reason: a.reason,
        }
    }
}

impl From<SelectorArgs> for pb::TenantSelector {
    fn from(a: SelectorArgs) -> Self {
        pb::TenantSelector {
            tenant_ids: a.tenant_ids,
            slugs: a.slugs,
        }
    }
}

/// The interval `upgrade start --watch` follows the run at.
const START_WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(command: UpgradeCommand, session: &Session) -> Result<(), CliError> {
    let mut client = session.migrations();
    let run = match command {
        UpgradeCommand::Plan(a) => return plan(a, session, &mut client).await,
        UpgradeCommand::Start(a) => return start(a, session, &mut client).await,
        UpgradeCommand::Watch(a) => {
            let options = watch::Options {
                interval: a.interval,
                from_start: a.from_start,
            };
            return watch::watch(session, &mut client, &a.run_id, options).await;
        }
        UpgradeCommand::List(a) => {
            let request = pb::ListUpgradesRequest {
                page_size: a.page_size.unwrap_or(0),
                page_token: a.page_token,
            };
            let page = session
                .call(client.list_upgrades(session.request(request)))
                .await?;
            return print::print_list(session.output, &page.runs, &page.next_page_token);
        }
        UpgradeCommand::Get(a) => {
            let request = pb::GetUpgradeRequest { run_id: a.run_id };
            session
                .call(client.get_upgrade(session.request(request)))
                .await?
        }
        UpgradeCommand::Pause(a) => {
            let request = session.request(a.into());
            session.call(client.pause_upgrade(request)).await?
        }
        UpgradeCommand::Resume(a) => {
            let request = session.request(a.into());
            session.call(client.resume_upgrade(request)).await?
        }
        UpgradeCommand::Cancel(a) => {
            let request = session.request(a.into());
            session.call(client.cancel_upgrade(request)).await?
        }
        UpgradeCommand::Retry(a) => {
            let request = session.request(a.into());
            session.call(client.retry_failed(request)).await?
        }
    };
    print::print_run(session.output, &run)
}

async fn plan(
    a: PlanArgs,
    session: &Session,
    client: &mut MigrationServiceClient<Channel>,
) -> Result<(), CliError> {
    let request = pb::PlanUpgradeRequest {
        target_version: a.target_version,
        selector: Some(a.selector.into()),
        sample_size: a.sample.unwrap_or(0),
        check_drift: a.check_drift,
    };
    let plan = session
        .call(client.plan_upgrade(session.request(request)))
        .await?;
    print::print_plan(session.output, &plan)
}

/// Starts the run and prints it; with `--watch`, follows it from its first
/// tenant on, so that no outcome between the start and the watch is lost.
async fn start(
    a: StartArgs,
    session: &Session,
    client: &mut MigrationServiceClient<Channel>,
) -> Result<(), CliError> {
    let request = pb::StartUpgradeRequest {
        target_version: a.target_version,
        concurrency: a.concurrency.unwrap_or(0),
        canary_count: a.canary_count.unwrap_or(0),
        max_failures: a.max_failures.unwrap_or(0),
        lock_timeout: a.lock_timeout,
        statement_timeout: a.statement_timeout,
        selector: Some(a.selector.into()),
        dry_run: a.dry_run,
        max_attempts: a.max_attempts.unwrap_or(0),
    };
    let run = session
        .call(client.start_upgrade(session.request(request)))
        .await?;
    if !a.watch {
        return print::print_run(session.output, &run);
    }
    print::print_started(session.output, &run)?;
    let options = watch::Options {
        interval: START_WATCH_INTERVAL,
        from_start: true,
    };
    watch::watch(session, client, &run.id, options).await
}

/// A humantime duration greater than zero, as protobuf sends it.
fn parse_pb_duration(raw: &str) -> Result<prost_types::Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    prost_types::Duration::try_from(d).map_err(|_| "is too long".to_owned())
}

/// A humantime duration the server accepts as a watch interval.
fn parse_interval(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err("must be between 100ms and 60s".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<UpgradeCommand, clap::Error> {
        let cli = Cli::try_parse_from(["tenantctl", "upgrade"].iter().chain(args))?;
        match cli.command {
            Command::Upgrade { command } => Ok(command),
            other => panic!("not an upgrade command: {other:?}"),
        }
    }

    #[test]
    fn durations_are_human_and_positive() {
        assert_eq!(
            parse_pb_duration("1m30s"),
            Ok(prost_types::Duration {
                seconds: 90,
                nanos: 0
            })
        );
        assert_eq!(
            parse_pb_duration("250ms"),
            Ok(prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        assert!(parse_pb_duration("0s").is_err());
        assert!(parse_pb_duration("soon").is_err());
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("2m").is_err());
    }

    #[test]
    fn start_takes_every_setting_and_a_selector() {
        let command = parse(&[
            "start",
            "--concurrency",
            "8",
            "--max-failures",
            "5",
            "--lock-timeout",
            "2s",
            "--tenant",
            "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a",
            "--slug",
            "acme",
            "--slug",
            "globex",
            "--watch",
        ])
        .expect("a valid command line");
        let UpgradeCommand::Start(a) = command else {
            panic!("not start: {command:?}");
        };
        assert_eq!(a.concurrency, Some(8));
        assert_eq!(a.max_failures, Some(5));
        assert_eq!(a.lock_timeout.map(|d| d.seconds), Some(2));
        assert_eq!(a.statement_timeout, None);
        assert_eq!(a.selector.slugs, ["acme", "globex"]);
        assert_eq!(a.selector.tenant_ids.len(), 1);
        assert!(a.watch && !a.dry_run);
    }

    #[test]
    fn nonsense_is_refused_before_any_call() {
        for args in [
            &["start", "--concurrency", "0"][..],
            &["start", "--concurrency", "65"],
            &["start", "--dry-run", "--watch"],
            &["start", "--lock-timeout", "soon"],
            &["watch", "not-a-run"],
            &[
                "watch",
                "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a",
                "--interval",
                "0s",
            ],
            &["plan", "--sample", "0"],
            &["list", "--page-size", "101"],
            &["pause"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }
}
