//! Fleet upgrade runs as the rest of the service sees them: settings checked
//! once at the edge, statuses and their transitions, totals.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{TenantId, ValidationError, Violations};

/// A run's id (UUIDv7: sorts by creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub Uuid);

impl RunId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        TenantId::parse(field, value).map(|t| Self(*t.as_uuid()))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Paused,
    /// More tenants failed than the run allows.
    Halted,
    Cancelled,
    /// Every tenant upgraded.
    Succeeded,
    /// Every tenant finished, some (within the failure budget) failed.
    Failed,
    /// A dry run's answer: nothing was created. Never stored.
    Planned,
}

impl RunStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Cancelled => "cancelled",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Planned => "planned",
        }
    }

    /// A run in this status will not change again by itself.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::Cancelled | Self::Succeeded | Self::Failed | Self::Planned
        )
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "halted" => Self::Halted,
            "cancelled" => Self::Cancelled,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            other => return Err(format!("unknown run status {other:?}")),
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tenants a plan or run covers; empty means every tenant with a schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantSelector {
    pub tenant_ids: Vec<Uuid>,
    pub slugs: Vec<String>,
}

impl TenantSelector {
    pub fn is_all(&self) -> bool {
        self.tenant_ids.is_empty() && self.slugs.is_empty()
    }
}

/// How a run executes; validated ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub target_version: i64,
    pub concurrency: i32,
    pub canary_count: i32,
    pub max_failures: i32,
    pub max_attempts: i32,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

pub const DEFAULT_CONCURRENCY: i32 = 4;
pub const MAX_CONCURRENCY: i32 = 64;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Raw StartUpgrade numbers, before validation (0 / `None` = default).
#[derive(Debug, Clone, Default)]
pub struct RunSettingsInput {
    pub target_version: Option<i64>,
    pub concurrency: i32,
    pub canary_count: i32,
    pub max_failures: i32,
    pub max_attempts: i32,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
}

impl RunSettingsInput {
    /// Checks every field against `latest`, the newest tenant migration known.
    pub fn validate(self, latest: i64) -> Result<RunSettings, ValidationError> {
        let mut v = Violations::new();
        let target_version = self.target_version.unwrap_or(latest);
        if target_version < 1 || target_version > latest {
            v.add(
                "target_version",
                format!("must be between 1 and the latest tenant migration, {latest}"),
            );
        }
        let concurrency = match self.concurrency {
            0 => DEFAULT_CONCURRENCY,
            c if (1..=MAX_CONCURRENCY).contains(&c) => c,
            _ => {
                v.add(
                    "concurrency",
                    format!("must be between 1 and {MAX_CONCURRENCY}"),
                );
                0
            }
        };
        if self.canary_count < 0 {
            v.add("canary_count", "must not be negative");
        }
        if self.max_failures < 0 {
            v.add("max_failures", "must not be negative");
        }
        let max_attempts = match self.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            a if (1..=10).contains(&a) => a,
            _ => {
                v.add("max_attempts", "must be between 1 and 10");
                0
            }
        };
        let ms = |field: &str, d: Option<Duration>, default: Duration, v: &mut Violations| {
            let d = d.unwrap_or(default);
            if d < Duration::from_millis(1) || d > Duration::from_secs(24 * 3600) {
                v.add(field, "must be between 1ms and 24h");
            }
            d
        };
        let lock_timeout = ms(
            "lock_timeout",
            self.lock_timeout,
            DEFAULT_LOCK_TIMEOUT,
            &mut v,
        );
        let statement_timeout = ms(
            "statement_timeout",
            self.statement_timeout,
            DEFAULT_STATEMENT_TIMEOUT,
            &mut v,
        );
        v.finish()?;
        Ok(RunSettings {
            target_version,
            concurrency,
            canary_count: self.canary_count,
            max_failures: self.max_failures,
            max_attempts,
            lock_timeout,
            statement_timeout,
        })
    }
}

/// Counts of a run's items by state, with the recent finishing rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Tenants finished per second recently.
    pub rate: f64,
}

impl Totals {
    /// Time to finish the pending and running tenants at the recent rate.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.pending + self.running;
        if left == 0 {
            return Some(Duration::ZERO);
        }
        (self.rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / self.rate))
    }
}

/// A run as recorded in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub settings: RunSettings,
    pub status: RunStatus,
    pub status_reason: String,
    pub totals: Totals,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One tenant's result within a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub tenant_id: TenantId,
    pub ok: bool,
    pub from_version: i64,
    pub to_version: i64,
    pub attempts: i32,
    pub sqlstate: String,
    pub message: String,
    pub finished_at: DateTime<Utc>,
}

/// PlanUpgrade's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub target_version: i64,
    pub latest_version: i64,
    pub versions: Vec<(i64, i64)>,
    pub total_tenants: i64,
    pub behind: i64,
    pub failed_before: i64,
    pub behind_sample: Vec<TenantId>,
    pub failed_sample: Vec<PlanFailure>,
    pub drifted: Vec<Drift>,
    pub drift_checked: bool,
    /// (cluster, selected tenants, behind the target), by cluster name.
    pub clusters: Vec<(String, i64, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanFailure {
    pub tenant_id: TenantId,
    pub run_id: RunId,
    pub sqlstate: String,
    pub message: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub tenant_id: TenantId,
    pub catalog_version: i64,
    pub ledger_version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_ranges() {
        let s = RunSettingsInput::default().validate(3).unwrap();
        assert_eq!(s.target_version, 3);
        assert_eq!(s.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(s.max_attempts, DEFAULT_MAX_ATTEMPTS);
        let err = RunSettingsInput {
            target_version: Some(4),
            concurrency: 65,
            canary_count: -1,
            max_failures: -1,
            max_attempts: 11,
            lock_timeout: Some(Duration::ZERO),
            statement_timeout: None,
        }
        .validate(3)
        .unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "target_version",
                "concurrency",
                "canary_count",
                "max_failures",
                "max_attempts",
                "lock_timeout"
            ]
        );
    }

    #[test]
    fn eta() {
        let t = Totals {
            pending: 90,
            running: 10,
            rate: 50.0,
            ..Totals::default()
        };
        assert_eq!(t.eta(), Some(Duration::from_secs(2)));
        assert_eq!(
            Totals {
                pending: 1,
                ..Totals::default()
            }
            .eta(),
            None
        );
        assert_eq!(Totals::default().eta(), Some(Duration::ZERO));
    }
}
