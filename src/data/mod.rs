//! The tenant data plane: SQL from internal services, run as the tenant's
//! own PostgreSQL role through a cached per-tenant pool, so that the
//! database itself keeps every call inside its tenant's schema.

pub mod execute;
pub mod pools;
mod socket;
pub mod values;

use std::time::Duration;

pub use execute::{CallLimits, ExecError, Outcome, Statement};
pub use pools::{PoolError, PoolSettings, TenantPools};
pub use values::Value;

use crate::domain::TenantId;

/// Rows of a response, roughly, in bytes: under gRPC's default 4 MiB
/// message limit of clients, with room for the framing.
pub const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Limits of calls; see `tenantd serve --help`.
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub default_max_rows: u32,
    pub max_rows: u32,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            default_max_rows: 1000,
            max_rows: 10_000,
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
        }
    }
}

impl CallSettings {
    /// A request's row limit: 0 means the default; never above the maximum.
    pub fn rows(&self, requested: u32) -> usize {
        let rows = if requested == 0 {
            self.default_max_rows
        } else {
            requested.min(self.max_rows)
        };
        rows as usize
    }

    /// A request's statement timeout: 0 means the default; never above the
    /// maximum.
    pub fn timeout(&self, requested_ms: u32) -> Duration {
        if requested_ms == 0 {
            self.default_timeout
        } else {
            Duration::from_millis(requested_ms.into()).min(self.max_timeout)
        }
    }
}

/// Why a data call failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Runs tenants' statements. Cheap to clone.
#[derive(Clone)]
pub struct TenantData {
    pools: TenantPools,
    calls: CallSettings,
}

impl TenantData {
    pub fn new(pools: TenantPools, calls: CallSettings) -> Self {
        Self { pools, calls }
    }

    pub fn pools(&self) -> &TenantPools {
        &self.pools
    }

    pub fn calls(&self) -> &CallSettings {
        &self.calls
    }

    /// Runs `statements` in one transaction of tenant `id`. A call that
    /// finds its connection broken before anything could have committed (or
    /// any read-only call) runs once more on a fresh connection.
    pub async fn run(
        &self,
        id: TenantId,
        statements: &[Statement],
        read_only: bool,
        timeout: Duration,
    ) -> Result<Vec<Outcome>, DataError> {
        let limits = CallLimits {
            read_only,
            timeout,
            max_response_bytes: MAX_RESPONSE_BYTES,
        };
        let mut retried = false;
        loop {
            let mut conn = self.pools.checkout(id).await?;
            match execute::run(&mut conn, statements, limits).await {
                Err(e)
                    if !retried
                        && (e.retry_on_fresh_connection()
                            || (read_only && matches!(e, ExecError::ConnectionLost { .. }))) =>
                {
                    tracing::info!(tenant_id = %id, error = %e, "running the call again on a fresh connection");
                    retried = true;
                }
                result => return Ok(result?),
            }
        }
    }
}
