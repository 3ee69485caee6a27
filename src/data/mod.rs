//! The tenant data plane: SQL from internal services, run as the tenant's
//! own PostgreSQL role through a cached per-tenant pool, so that the
//! database itself keeps every call inside its tenant's schema.

pub mod execute;
pub(crate) mod pools;
pub(crate) mod screen;
pub(crate) mod socket;
pub(crate) mod values;

use std::time::Duration;

pub use execute::{CallLimits, ExecError, Lost, Outcome, Statement};
pub use pools::{PoolError, PoolSettings, TenantPools};
pub use values::Value;

use crate::domain::TenantId;

/// Rows of a response, roughly, in bytes: under gRPC's default 4 MiB
/// message limit of clients, with room for the framing.
pub const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;
/// Bytes the decoded rows of one call may hold in memory.
pub const MAX_DECODED_BYTES: usize = 2 * MAX_RESPONSE_BYTES;

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

    /// Runs `statements` in one transaction of tenant `id`, all within
    /// `timeout` of wall time (waiting for a connection included). Every
    /// statement passes the screen first. A call that finds its connection
    /// broken before anything could have committed (or any read-only call)
    /// runs once more on a fresh connection.
    pub async fn run(
        &self,
        id: TenantId,
        statements: &[Statement],
        read_only: bool,
        timeout: Duration,
    ) -> Result<Vec<Outcome>, DataError> {
        for (i, s) in statements.iter().enumerate() {
            screen::screen(&s.sql).map_err(|refusal| match refusal.sqlstate {
                // Text PostgreSQL would refuse too: answered as it would.
                Some(code) => ExecError::Sql {
                    statement: Some(i),
                    code: code.to_owned(),
                    message: refusal.why,
                    detail: None,
                    hint: None,
                    position: None,
                },
                None => ExecError::Invalid {
                    statement: i,
                    field: "sql".to_owned(),
                    message: refusal.to_string(),
                },
            })?;
        }
        let limits = CallLimits {
            read_only,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            budget: values::Budget {
                response: MAX_RESPONSE_BYTES,
                memory: MAX_DECODED_BYTES,
            },
        };
        // Runs again on a fresh connection once; twice when the server
        // ended the session both times (a move's switch may end a session
        // that logged in to the cluster the tenant just left).
        let mut reruns = 0;
        loop {
            let mut conn = tokio::time::timeout_at(limits.deadline, self.pools.checkout(id))
                .await
                .map_err(|_| ExecError::TimedOut(timeout))??;
            match execute::run(&mut conn, statements, limits).await {
                Err(e)
                    if (reruns == 0
                        && (e.retry_on_fresh_connection()
                            || (read_only && matches!(e, ExecError::ConnectionLost { .. }))))
                        || (reruns == 1
                            && matches!(
                                e,
                                ExecError::ConnectionLost {
                                    stage: Lost::Terminated,
                                    ..
                                }
                            )) =>
                {
                    tracing::info!(tenant_id = %id, error = %e, "running the call again on a fresh connection");
                    reruns += 1;
                }
                // A read-only call commits nothing: whatever the stage, its
                // outcome is known.
                Err(ExecError::ConnectionLost { message, .. }) if read_only => {
                    return Err(ExecError::ConnectionLost {
                        message,
                        stage: Lost::NotCommitted,
                    }
                    .into());
                }
                result => return Ok(result?),
            }
        }
    }
}
