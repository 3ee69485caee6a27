//! The top of the command line: the global options every command shares and
//! the command groups. Each group's own subcommands and arguments are defined
//! in the group's module.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::audit::AuditCommand;
use crate::clusters::ClustersCommand;
use crate::identity::{MembersCommand, SessionsCommand, UsersCommand};
use crate::output::OutputFormat;
use crate::session::parse_endpoint;
use crate::tenants::TenantsCommand;
use crate::upgrade::UpgradeCommand;

/// Operator CLI for tenantd, the schema-per-tenant PostgreSQL control plane.
#[derive(Debug, Parser)]
#[command(name = "tenantctl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// gRPC address of tenantd: http://host:port, https://host:port for
    /// TLS, or just host:port (plaintext).
    #[arg(
        long,
        global = true,
        env = "TENANTD_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_parser = parse_endpoint
    )]
    pub endpoint: String,

    /// Output format: human-readable tables or one JSON document.
    #[arg(
        long,
        global = true,
        env = "TENANTCTL_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// Service key (tdk_…) or access token sent as `authorization: Bearer`.
    #[arg(long, global = true, env = "TENANTD_KEY", hide_env_values = true)]
    pub key: Option<String>,

    /// File holding the service key; without --key and --key-file, tenantctl
    /// reads tenantd-data/admin.key (written by `tenantd serve` in dev mode)
    /// when it exists.
    #[arg(long, global = true, env = "TENANTD_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to trust for an https:// endpoint instead of the
    /// system's roots.
    #[arg(long, global = true, env = "TENANTD_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for a server that requires mutual TLS; with
    /// --cert-key. (--key is the service key sent with each call.)
    #[arg(
        long,
        global = true,
        env = "TENANTD_CLIENT_CERT",
        requires = "cert_key"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "TENANTD_CLIENT_KEY", requires = "cert")]
    pub cert_key: Option<std::path::PathBuf>,

    /// How long to wait for the connection and for each call, e.g. 30s, 2m.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, change and retire tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Plan, run, watch and steer fleet-wide tenant schema upgrades.
    Upgrade {
        #[command(subcommand)]
        command: UpgradeCommand,
    },
    /// Citus nodes, and moving tenants between them.
    Clusters {
        #[command(subcommand)]
        command: ClustersCommand,
    },
    /// The server's gRPC health, as a whole and per service.
    Health,
    /// The catalog's changes, as events: list a page or watch them live.
    Events {
        #[command(subcommand)]
        command: crate::events::EventsCommand,
    },
    /// Check the tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Create, inspect and change users; set passwords; deactivate.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Who belongs to a tenant and in which role.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Log users in, check and refresh their tokens, list and end sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

/// An id (a UUID) in canonical form: tenants, users, runs.
pub fn parse_uuid(raw: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(raw.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| format!("{raw:?} is not an id (a UUID)"))
}

/// A humantime duration that is not zero.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ids_are_canonical_uuids() {
        assert_eq!(
            parse_uuid("0190A6F27D4B7CC39F007D0F6B1D2E3A").as_deref(),
            Ok("0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a")
        );
        assert!(parse_uuid("run-1").is_err());
    }

    #[test]
    fn timeout_is_human_and_positive() {
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
