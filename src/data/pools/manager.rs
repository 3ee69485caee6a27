//! Making a tenant's connections: a permit from the budget, then a login
//! as the tenant's role (setting its password again from the catalog secret
//! when a tenant changed it), its session settings checked, and recycling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics as ObjectMetrics, RecycleError, RecycleResult};
use sqlx::PgPool;

use crate::clusters::ConnectionBudget;
use crate::data::socket::{Control, Endpoint};
use crate::domain::{ClusterName, TenantId};
use crate::metrics::EvictionReason;
use crate::tenant::role_verifier;

use super::{
    CONNECT_TIMEOUT, MAX_MESSAGE_BYTES, PoolError, STATEMENT_CACHE_BYTES, STATEMENT_CACHE_LIMIT,
    Shared, cause_chain,
};

/// A tenant connection.
pub struct TenantConn {
    pub(super) client: deadpool_postgres::ClientWrapper,
    pub(super) endpoint: Arc<Endpoint>,
    /// What the socket's message guard dropped or refused, and the switch
    /// that closes it.
    pub(super) control: Arc<Control>,
    /// Bytes of SQL prepared into the statement cache since it was last
    /// cleared.
    pub(super) cached_sql: AtomicUsize,
}

impl TenantConn {
    pub fn client(&self) -> &deadpool_postgres::ClientWrapper {
        &self.client
    }
}

/// Makes a tenant's connections: a permit first, then a login as its role.
pub struct TenantManager {
    pub(super) tenant: TenantId,
    /// The cluster the tenant's role and schema are on, and its share of
    /// the replica's connections.
    pub(super) cluster: ClusterName,
    pub(super) budget: Arc<ConnectionBudget>,
    /// tenantd's role on the tenant's cluster: to set the role's password
    /// again when it was changed.
    pub(super) admin: PgPool,
    pub(super) role_secret: Arc<Vec<u8>>,
    pub(super) config: tokio_postgres::Config,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) shared: Arc<Shared>,
    pub(super) lifetime: Duration,
}

/// A failed connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Budget(PoolError),
    #[error(transparent)]
    Io(std::io::Error),
    #[error(transparent)]
    Pg(tokio_postgres::Error),
}

impl ConnectError {
    /// What the caller is told: a budget failure as it is, anything else
    /// as a refused login with its SQLSTATE and cause chain.
    pub(super) fn into_pool_error(self) -> PoolError {
        match self {
            ConnectError::Budget(e) => e,
            ConnectError::Pg(e) => {
                let sqlstate = e.code().map(|c| c.code().to_owned());
                PoolError::connect(&e, sqlstate.as_deref())
            }
            ConnectError::Io(e) => PoolError::connect(&e, None),
        }
    }
}

/// A tenant session just logged in: the client, the connection to drive,
/// and its socket's control.
pub(super) type Login = (
    tokio_postgres::Client,
    tokio_postgres::Connection<crate::data::socket::Socket, tokio_postgres::tls::NoTlsStream>,
    Arc<Control>,
);

impl TenantManager {
    /// Opens a socket and logs in as the tenant's role.
    pub(super) async fn login(&self) -> Result<Login, ConnectError> {
        let (socket, control) = self
            .endpoint
            .connect_guarded(CONNECT_TIMEOUT, MAX_MESSAGE_BYTES)
            .await
            .map_err(|e| {
                let place = match &*self.endpoint {
                    Endpoint::Unix { dir, port } => {
                        dir.join(format!(".s.PGSQL.{port}")).display().to_string()
                    }
                    Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
                };
                ConnectError::Io(std::io::Error::new(
                    e.kind(),
                    format!("connect to PostgreSQL at {place}: {e}"),
                ))
            })?;
        let (client, connection) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.config.connect_raw(socket, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| {
            ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "logging in to PostgreSQL timed out",
            ))
        })?
        .map_err(ConnectError::Pg)?;
        Ok((client, connection, control))
    }

    /// Logs in; when the role refuses its password (a tenant can change its
    /// own role's), sets it again from the catalog secret and logs in again.
    pub(super) async fn login_repairing_password(&self) -> Result<Login, ConnectError> {
        match self.login().await {
            Err(ConnectError::Pg(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) =>
            {
                tracing::warn!(tenant_id = %self.tenant, "tenant role refused its password; setting it again");
                let sql = format!(
                    "ALTER ROLE {} PASSWORD '{}'",
                    self.tenant.role_name().quoted(),
                    role_verifier(&self.role_secret, self.tenant)
                );
                match sqlx::raw_sql(&sql).execute(&self.admin).await {
                    Ok(_) => self.login().await,
                    // No such role on this cluster: the tenant moved away
                    // (its role here dropped), and the pool is stale. The
                    // refusal goes back as it came, for the checkout to
                    // look the tenant up again.
                    Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42704") => {
                        Err(ConnectError::Pg(e))
                    }
                    Err(e) => Err(ConnectError::Io(std::io::Error::other(format!(
                        "set the tenant role's password again: {}",
                        cause_chain(&e)
                    )))),
                }
            }
            other => other,
        }
    }

    /// Run by the tenant's own role (a role may reset its own settings):
    /// every setting dropped, in this database and everywhere, and the one
    /// tenantd gives it set again.
    pub(super) fn reset_role_settings_sql(&self) -> String {
        let database = self
            .config
            .get_dbname()
            .unwrap_or_default()
            .replace('"', "\"\"");
        format!(
            "ALTER ROLE CURRENT_USER RESET ALL; \
             ALTER ROLE CURRENT_USER IN DATABASE \"{database}\" RESET ALL; \
             ALTER ROLE CURRENT_USER SET search_path TO {}",
            self.tenant.schema_name().quoted()
        )
    }
}

/// Whether the session's role has settings of its own besides the
/// search_path tenantd gave it (its schema, named as the role is).
async fn role_settings_kept(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let messages = client
        .simple_query(
            "SELECT EXISTS (SELECT FROM pg_db_role_setting s, unnest(s.setconfig) c \
             WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
               AND c <> 'search_path=' || current_user)",
        )
        .await?;
    Ok(messages.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
    ))
}

impl managed::Manager for TenantManager {
    type Type = TenantConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<TenantConn, ConnectError> {
        // The cluster's share first: a caller waiting for it holds none of
        // the replica's budget, which other clusters' tenants may use.
        let slot = self
            .shared
            .cluster_slot(&self.cluster, &self.budget)
            .await
            .map_err(ConnectError::Budget)?;
        let permit = self.shared.permit().await.map_err(ConnectError::Budget)?;
        let mut repaired = false;
        let (client, connection, control) = loop {
            let (client, connection, control) = self.login_repairing_password().await?;
            let mut running = tokio::spawn(connection);
            // Role settings are the session's starting values, which RESET
            // ALL returns to: a role that set its own (ALTER ROLE … SET, from
            // a function of its schema) gets them reset before it is used.
            let kept = tokio::select! {
                kept = role_settings_kept(&client) => kept,
                ended = &mut running => {
                    let message = match ended {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the connection ended at once".to_owned(),
                    };
                    return Err(ConnectError::Io(std::io::Error::other(message)));
                }
            }
            .map_err(ConnectError::Pg)?;
            if !kept || repaired {
                break (client, running, control);
            }
            tracing::warn!(tenant_id = %self.tenant, "tenant role had settings of its own; resetting them");
            client
                .batch_execute(&self.reset_role_settings_sql())
                .await
                .map_err(ConnectError::Pg)?;
            drop(client);
            let _ = running.await;
            repaired = true;
        };
        // The connection's task owns the permit: it is given back when the
        // server has closed the socket, i.e. when the backend is gone.
        let metrics = self.shared.metrics.clone();
        metrics.pool().connections_open.inc();
        tokio::spawn(async move {
            if let Ok(Err(e)) = connection.await {
                tracing::debug!(error = %e, "tenant connection ended");
            }
            metrics.pool().connections_open.dec();
            drop(permit);
            drop(slot);
        });
        // The wrapper aborts this task when dropped; the real one must run on
        // to close the connection in order.
        let placeholder = tokio::spawn(std::future::ready(()));
        Ok(TenantConn {
            client: deadpool_postgres::ClientWrapper::new(client, placeholder),
            endpoint: self.endpoint.clone(),
            control,
            cached_sql: AtomicUsize::new(0),
        })
    }

    async fn recycle(
        &self,
        conn: &mut TenantConn,
        metrics: &ObjectMetrics,
    ) -> RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            self.shared.metrics.pool().evicted(EvictionReason::Broken);
            return Err(RecycleError::message("connection closed"));
        }
        if metrics.age() > self.lifetime {
            return Err(RecycleError::message("connection lifetime reached"));
        }
        if conn.client.statement_cache.size() > STATEMENT_CACHE_LIMIT
            || conn.cached_sql.load(Ordering::Relaxed) > STATEMENT_CACHE_BYTES
        {
            conn.client.statement_cache.clear();
            conn.cached_sql.store(0, Ordering::Relaxed);
        }
        Ok(())
    }
}
