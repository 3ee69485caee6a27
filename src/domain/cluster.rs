//! The PostgreSQL clusters tenants are placed on: names, states and what
//! an operator gives to register one.

use std::fmt;
use std::str::FromStr;

use super::ValidationError;

/// A cluster's name: lower-case letters, digits and inner hyphens, 1-40
/// characters, starting with a letter. `default` is the catalog's own
/// database.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

impl ClusterName {
    pub const DEFAULT: &'static str = "default";

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=40).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::single(
                field,
                "must be 1-40 lower-case letters, digits and inner hyphens, starting with a letter",
            ))
        }
    }

    /// The catalog's own database.
    pub fn default_cluster() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// A name read back from the catalog, which only ever stores valid ones.
    pub fn from_catalog(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a cluster takes tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterState {
    /// New tenants may be placed here, and moved here.
    Open,
    /// No new tenants; a drain moves the tenants away.
    Draining,
    /// No new tenants, no moves here; the tenants on it stay and serve.
    Closed,
}

impl ClusterState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Draining => "draining",
            Self::Closed => "closed",
        }
    }
}

impl FromStr for ClusterState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "open" => Self::Open,
            "draining" => Self::Draining,
            "closed" => Self::Closed,
            other => return Err(format!("unknown cluster state {other:?}")),
        })
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a cluster's password comes from: read by each replica when it
/// connects, never stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password (certificate, peer or trust authentication).
    None,
    /// A file each replica reads (a mounted Kubernetes secret).
    File(String),
    /// An environment variable of each replica.
    Env(String),
}

/// Placement limits and weight of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLimits {
    /// Share of new tenants: placement picks the open cluster with the
    /// fewest tenants per unit of weight. 1-10000.
    pub weight: i32,
    /// No tenant is placed on the cluster once it holds this many.
    pub max_tenants: Option<i64>,
    /// No tenant is placed on the cluster once its database holds this
    /// many relations (pg_class rows: tables, indexes, sequences, views…),
    /// which bounds its catalog's bloat.
    pub max_relations: Option<i64>,
    /// Tenant connections each replica may hold to the cluster (its share
    /// of the replica's connection budget); `None`: no cap of its own.
    pub connection_budget: Option<i32>,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        Self {
            weight: 100,
            max_tenants: None,
            max_relations: None,
            connection_budget: None,
        }
    }
}

impl ClusterLimits {
    /// Checks the ranges, naming each bad field.
    pub fn validate(&self, v: &mut super::Violations) {
        if !(1..=10_000).contains(&self.weight) {
            v.add("weight", "must be 1-10000");
        }
        if self.max_tenants.is_some_and(|n| n <= 0) {
            v.add("max_tenants", "must be positive when given");
        }
        if self.max_relations.is_some_and(|n| n <= 0) {
            v.add("max_relations", "must be positive when given");
        }
        if self.connection_budget.is_some_and(|n| n <= 0) {
            v.add("connection_budget", "must be positive when given");
        }
    }
}

/// A cluster to register.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub name: ClusterName,
    /// A PostgreSQL URL without a password (TLS settings as libpq reads
    /// them: sslmode, sslrootcert, sslcert, sslkey).
    pub url: String,
    pub password: PasswordSource,
    pub limits: ClusterLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "eu-1", "a", "pg16-west-2"] {
            assert!(ClusterName::parse("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1eu",
            "-eu",
            "eu-",
            "EU",
            "eu_1",
            "eu 1",
            "eu.1",
            "é",
            &"a".repeat(41),
        ] {
            assert!(ClusterName::parse("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            ClusterState::Open,
            ClusterState::Draining,
            ClusterState::Closed,
        ] {
            assert_eq!(s.as_str().parse::<ClusterState>().unwrap(), s);
        }
        assert!("gone".parse::<ClusterState>().is_err());
    }
}
