//! Where tenants live on a Citus coordinator, and moving them: the nodes
//! (read from Citus's metadata), and placement jobs — a move of one tenant,
//! a rebalance, a drain — kept in the catalog and run by [`runner`].
//!
//! A job is planned when it is asked for (which tenant goes where), so the
//! caller sees the plan at once; each move looks again at where its tenant
//! is before it starts, so a plan that went stale moves nothing twice.

pub mod runner;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::catalog::audit::Audited;
use crate::catalog::{DbFailure, Engine};
use crate::domain::{TenantId, ValidationError};

/// A Citus node as requests and answers name it: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub host: String,
    pub port: u16,
}

impl NodeName {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| ValidationError::single(field, why);
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("must be host:port, as ListNodes names the node"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        if host.is_empty()
            || host.len() > 253
            || !host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
            })
        {
            return Err(bad("the host must be a host name or an IP address"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub name: NodeName,
    pub coordinator: bool,
    pub active: bool,
    pub should_have_shards: bool,
    pub tenants: i64,
}

macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// What a placement job does.
    JobKind { Move = "move", Rebalance = "rebalance", Drain = "drain" }
);
word_enum!(
    JobStatus {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);
word_enum!(
    MoveStatus {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
        Skipped = "skipped",
    }
);

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMove {
    pub position: i32,
    pub tenant: TenantId,
    pub source: String,
    pub target: String,
    pub status: MoveStatus,
    pub backend_pid: Option<i32>,
    pub error: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While the move runs, what Citus reports of it.
    pub progress: Option<MoveProgress>,
}

/// A running move as Citus reports it (`get_rebalance_progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveProgress {
    pub source_bytes: i64,
    pub target_bytes: i64,
    pub phase: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub node: String,
    pub requested_by: String,
    pub cancel_requested: bool,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub moves: Vec<TenantMove>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("{0}")]
    Invalid(ValidationError),
    /// Not a Citus coordinator, a node tenantd may not change, nothing to
    /// move to, a job that already ended.
    #[error("{0}")]
    Precondition(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Db(#[from] DbFailure),
}

type Result<T, E = PlacementError> = std::result::Result<T, E>;

/// Placement on a Citus coordinator: the nodes and the jobs.
#[derive(Clone)]
pub struct Placement {
    pool: PgPool,
    engine: Engine,
    /// Tells this replica's runner a job was queued or cancelled.
    wake: Arc<Notify>,
}

/// The tenant schemas Citus has placed, with the node of each (the node of
/// the first shard of its colocation group: a distributed schema's tables
/// are all on one node). Read from Citus's metadata tables, which are open
/// to every role and cost nothing like `citus_shards`, which sizes every
/// shard on every worker.
const PLACED_SCHEMAS: &str = "\
    SELECT ds.schemaid::regnamespace::text AS schema, n.nodename || ':' || n.nodeport AS node \
      FROM pg_dist_schema ds \
      JOIN LATERAL (SELECT s.shardid FROM pg_dist_partition p \
                      JOIN pg_dist_shard s ON s.logicalrelid = p.logicalrelid \
                     WHERE p.colocationid = ds.colocationid ORDER BY s.shardid LIMIT 1) sh ON true \
      JOIN pg_dist_placement pl ON pl.shardid = sh.shardid \
      JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary'";

/// `host:port` of the node that holds distributed schema `schema`; `None`
/// when it is not a distributed schema or has no table.
pub async fn node_of(conn: &mut PgConnection, schema: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT node FROM ({PLACED_SCHEMAS}) placed WHERE schema = $1"
    ))
    .bind(schema)
    .fetch_optional(conn)
    .await
}

impl Placement {
    pub fn new(pool: PgPool, engine: Engine, wake: Arc<Notify>) -> Self {
        Self { pool, engine, wake }
    }

    fn require_citus(&self) -> Result<()> {
        match self.engine {
            Engine::Citus => Ok(()),
            Engine::Postgres => Err(PlacementError::Precondition(
                "tenantd's database is not a Citus coordinator: every tenant lives in it".into(),
            )),
        }
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.require_citus()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(DbFailure::of::<PlacementError>("read the Citus nodes"))?;
        nodes(&mut conn)
            .await
            .map_err(DbFailure::of("read the Citus nodes"))
    }

    /// `citus_add_node`, audited.
    pub async fn add_node(&self, node: &NodeName, actor: &str) -> Result<Node> {
        self.require_citus()?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("add a node"))?;
        sqlx::query("SELECT citus_add_node($1, $2)")
            .bind(&node.host)
            .bind(i32::from(node.port))
            .execute(&mut *tx)
            .await
            .map_err(|e| node_admin_error(e, "add a node"))?;
        let added = find_node(&mut tx, node).await?;
        tx.commit(
            actor,
            "citus.node_added",
            &node.to_string(),
            &serde_json::json!({ "node_id": added.id }),
        )
        .await
        .map_err(DbFailure::of::<PlacementError>("add a node"))?;
        Ok(added)
    }

    /// `citus_set_node_property(…, 'shouldhaveshards', …)`, audited.
    pub async fn set_should_have_shards(
        &self,
        node: &NodeName,
        value: bool,
        actor: &str,
    ) -> Result<Node> {
        self.require_citus()?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("change a node"))?;
        find_node(&mut tx, node).await?;
        set_should_have_shards(&mut tx, node, value).await?;
        let changed = find_node(&mut tx, node).await?;
        tx.commit(
            actor,
            "citus.node_changed",
            &node.to_string(),
            &serde_json::json!({ "should_have_shards": value }),
        )
        .await
        .map_err(DbFailure::of::<PlacementError>("change a node"))?;
        Ok(changed)
    }

    /// A job moving `tenant` to `target`.
    pub async fn move_tenant(
        &self,
        tenant: TenantId,
        target: &NodeName,
        actor: &str,
    ) -> Result<Job> {
        self.require_citus()?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a move"))?;
        let target_node = find_node(&mut tx, target).await?;
        if !target_node.active {
            return Err(PlacementError::Precondition(format!(
                "node {target} is not active"
            )));
        }
        let schema: Option<(String, String)> =
            sqlx::query_as("SELECT schema_name, status FROM tenantd.tenants WHERE id = $1")
                .bind(tenant.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(DbFailure::of::<PlacementError>("plan a move"))?;
        let schema = match schema {
            None => return Err(PlacementError::NotFound("tenant")),
            Some((_, status)) if status == "purged" => {
                return Err(PlacementError::Precondition(
                    "the tenant was purged: it has no schema to move".into(),
                ));
            }
            Some((schema, _)) => schema,
        };
        let source = node_of(&mut tx, &schema)
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a move"))?
            .ok_or_else(|| {
                PlacementError::Precondition(format!(
                    "schema {schema} is not a distributed schema with tables: Citus does not place it"
                ))
            })?;
        if source == target.to_string() {
            return Err(PlacementError::Precondition(format!(
                "the tenant is already on {target}"
            )));
        }
        let moves = vec![(tenant, source, target.to_string())];
        self.enqueue(tx, JobKind::Move, &target.to_string(), &moves, actor)
            .await
    }

    /// A job moving tenants as Citus's rebalancer plans it.
    pub async fn rebalance(&self, actor: &str) -> Result<Job> {
        self.require_citus()?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a rebalance"))?;
        let moves = rebalancer_plan(&mut tx, false).await?;
        self.enqueue(tx, JobKind::Rebalance, "", &moves, actor)
            .await
    }

    /// A job moving every tenant off `node`, after new tenants stop landing
    /// there (when tenantd may say so).
    pub async fn drain(&self, node: &NodeName, actor: &str) -> Result<Job> {
        self.require_citus()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a drain"))?;
        let drained = find_node(&mut conn, node).await?;
        if drained.should_have_shards {
            // Its own transaction: a drain whose plan fails later still
            // keeps new tenants away, as the operator asked.
            match set_should_have_shards(&mut conn, node, false).await {
                Ok(()) => {}
                Err(PlacementError::Precondition(why)) => {
                    tracing::warn!(%node, "draining without shouldhaveshards = false: {why}");
                }
                Err(e) => return Err(e),
            }
        }
        drop(conn);
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a drain"))?;
        let all = nodes(&mut tx)
            .await
            .map_err(DbFailure::of::<PlacementError>("plan a drain"))?;
        let mut targets: Vec<(String, i64)> = all
            .iter()
            .filter(|n| n.active && n.should_have_shards && n.name != *node)
            .map(|n| (n.name.to_string(), n.tenants))
            .collect();
        let here: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            "SELECT t.id, placed.node FROM ({PLACED_SCHEMAS}) placed \
               JOIN tenantd.tenants t ON t.schema_name = placed.schema \
              WHERE placed.node = $1 AND t.status <> 'purged' ORDER BY t.id"
        ))
        .bind(node.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(DbFailure::of::<PlacementError>("plan a drain"))?;
        if !here.is_empty() && targets.is_empty() {
            return Err(PlacementError::Precondition(format!(
                "no other active node may hold tenants: add a node or set should_have_shards \
                 on one before draining {node}"
            )));
        }
        let mut moves = Vec::with_capacity(here.len());
        for (tenant, source) in here {
            // The node with the fewest tenants, counting those planned.
            let Some(least) = targets.iter_mut().min_by_key(|(_, n)| *n) else {
                break;
            };
            least.1 += 1;
            moves.push((TenantId::from_uuid(tenant), source, least.0.clone()));
        }
        self.enqueue(tx, JobKind::Drain, &node.to_string(), &moves, actor)
            .await
    }

    async fn enqueue(
        &self,
        mut tx: Audited,
        kind: JobKind,
        node: &str,
        moves: &[(TenantId, String, String)],
        actor: &str,
    ) -> Result<Job> {
        let id = Uuid::now_v7();
        let insert = async {
            sqlx::query(
                "INSERT INTO tenantd.cluster_jobs (id, kind, status, node, requested_by) \
                 VALUES ($1, $2, 'pending', $3, $4)",
            )
            .bind(id)
            .bind(kind.as_str())
            .bind(node)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let tenants: Vec<Uuid> = moves.iter().map(|m| *m.0.as_uuid()).collect();
            let sources: Vec<&str> = moves.iter().map(|m| m.1.as_str()).collect();
            let targets: Vec<&str> = moves.iter().map(|m| m.2.as_str()).collect();
            sqlx::query(
                "INSERT INTO tenantd.cluster_job_moves (job_id, position, tenant_id, source, target) \
                 SELECT $1, m.ord::int, m.tenant, m.source, m.target \
                   FROM unnest($2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY \
                        AS m(tenant, source, target, ord)",
            )
            .bind(id)
            .bind(&tenants)
            .bind(&sources)
            .bind(&targets)
            .execute(&mut *tx)
            .await?;
            if moves.is_empty() {
                // Nothing to do is done.
                sqlx::query(
                    "UPDATE tenantd.cluster_jobs SET status = 'succeeded', started_at = now(), \
                     finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        insert
            .await
            .map_err(DbFailure::of::<PlacementError>("queue a placement job"))?;
        tx.commit(
            actor,
            "cluster_job.created",
            &id.to_string(),
            &serde_json::json!({
                "kind": kind.as_str(),
                "node": node,
                "moves": moves.iter().map(|(t, s, d)| serde_json::json!({
                    "tenant": t.to_string(), "source": s, "target": d,
                })).collect::<Vec<_>>(),
            }),
        )
        .await
        .map_err(DbFailure::of::<PlacementError>("queue a placement job"))?;
        self.wake.notify_waiters();
        self.get(id).await
    }

    /// The job, with Citus's progress of its running move.
    pub async fn get(&self, id: Uuid) -> Result<Job> {
        self.require_citus()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(DbFailure::of::<PlacementError>("read a placement job"))?;
        let mut job = load_job(&mut conn, id)
            .await
            .map_err(DbFailure::of::<PlacementError>("read a placement job"))?
            .ok_or(PlacementError::NotFound("placement job"))?;
        for m in &mut job.moves {
            if m.status != MoveStatus::Running {
                continue;
            }
            // Progress is a nicety: a failure to read it hides it.
            match progress(&mut conn, m.tenant).await {
                Ok(p) => m.progress = p,
                Err(e) => tracing::debug!(error = %e, "could not read a move's progress"),
            }
        }
        Ok(job)
    }

    /// Newest first.
    pub async fn list(&self, limit: i64) -> Result<Vec<Job>> {
        self.require_citus()?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(DbFailure::of::<PlacementError>("list placement jobs"))?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tenantd.cluster_jobs ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(DbFailure::of::<PlacementError>("list placement jobs"))?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) =
                load_job(&mut conn, id)
                    .await
                    .map_err(DbFailure::of::<PlacementError>("list placement jobs"))?
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// A pending job ends at once; a running one is flagged, and the
    /// replica running it cancels its move.
    pub async fn cancel(&self, id: Uuid, actor: &str) -> Result<Job> {
        self.require_citus()?;
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(DbFailure::of::<PlacementError>("cancel a placement job"))?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM tenantd.cluster_jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(DbFailure::of::<PlacementError>("cancel a placement job"))?;
        let status: JobStatus = match status {
            None => return Err(PlacementError::NotFound("placement job")),
            Some(s) => crate::catalog::error::decode(&s)
                .map_err(DbFailure::of::<PlacementError>("cancel a placement job"))?,
        };
        if status.is_final() {
            return Err(PlacementError::Precondition(format!(
                "the job already ended: {status}"
            )));
        }
        let change = async {
            if status == JobStatus::Pending {
                sqlx::query(
                    "UPDATE tenantd.cluster_job_moves SET status = 'cancelled', finished_at = now() \
                     WHERE job_id = $1 AND status = 'pending'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE tenantd.cluster_jobs SET status = 'cancelled', cancel_requested = true, \
                     finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE tenantd.cluster_jobs SET cancel_requested = true WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        change
            .await
            .map_err(DbFailure::of::<PlacementError>("cancel a placement job"))?;
        tx.commit(
            actor,
            "cluster_job.cancel_requested",
            &id.to_string(),
            &serde_json::json!({ "was": status.as_str() }),
        )
        .await
        .map_err(DbFailure::of::<PlacementError>("cancel a placement job"))?;
        self.wake.notify_waiters();
        self.get(id).await
    }
}

/// Citus's report of the move of `tenant`'s schema, while one runs.
async fn progress(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<MoveProgress>, sqlx::Error> {
    let row: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT sum(p.source_shard_size)::bigint, sum(p.target_shard_size)::bigint, \
                max(p.status)::text \
           FROM get_rebalance_progress() p JOIN pg_class c ON c.oid = p.table_name \
          WHERE c.relnamespace::regnamespace::text = $1 HAVING count(*) > 0",
    )
    .bind(tenant.schema_name().as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(source_bytes, target_bytes, phase)| MoveProgress {
        source_bytes,
        target_bytes,
        phase,
    }))
}

async fn nodes(conn: &mut PgConnection) -> Result<Vec<Node>, sqlx::Error> {
    let rows: Vec<(i32, String, i32, bool, bool, bool, i64)> = sqlx::query_as(&format!(
        "WITH counts AS (SELECT placed.node, count(*) AS tenants FROM ({PLACED_SCHEMAS}) placed \
                           JOIN tenantd.tenants t ON t.schema_name = placed.schema \
                          WHERE t.status <> 'purged' GROUP BY placed.node) \
         SELECT n.nodeid, n.nodename::text, n.nodeport, n.groupid = 0, n.isactive, \
                n.shouldhaveshards, coalesce(counts.tenants, 0) \
           FROM pg_dist_node n \
           LEFT JOIN counts ON counts.node = n.nodename || ':' || n.nodeport \
          WHERE n.noderole = 'primary' ORDER BY n.groupid, n.nodeid"
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, host, port, coordinator, active, should_have_shards, tenants)| Node {
                id,
                name: NodeName {
                    host,
                    port: u16::try_from(port).unwrap_or(0),
                },
                coordinator,
                active,
                should_have_shards,
                tenants,
            },
        )
        .collect())
}

async fn find_node(conn: &mut PgConnection, name: &NodeName) -> Result<Node> {
    nodes(conn)
        .await
        .map_err(DbFailure::of::<PlacementError>("read the Citus nodes"))?
        .into_iter()
        .find(|n| n.name == *name)
        .ok_or(PlacementError::NotFound("node"))
}

async fn set_should_have_shards(
    conn: &mut PgConnection,
    node: &NodeName,
    value: bool,
) -> Result<()> {
    sqlx::query("SELECT citus_set_node_property($1, $2, 'shouldhaveshards', $3)")
        .bind(&node.host)
        .bind(i32::from(node.port))
        .bind(value)
        .execute(conn)
        .await
        .map_err(|e| node_admin_error(e, "change a node"))?;
    Ok(())
}

/// Citus lets only a superuser add nodes or change their properties: that
/// is a precondition the operator can meet, not an internal error.
fn node_admin_error(e: sqlx::Error, context: &'static str) -> PlacementError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("42501")
    {
        return PlacementError::Precondition(format!(
            "Citus lets only a superuser {context}: {} (on a managed service, use its console; \
             otherwise run tenantd's database role as a superuser or do it by hand)",
            db.message()
        ));
    }
    DbFailure::of::<PlacementError>(context)(e)
}

/// Citus's rebalancer plan, one move per tenant schema.
async fn rebalancer_plan(
    conn: &mut PgConnection,
    drain_only: bool,
) -> Result<Vec<(TenantId, String, String)>> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (t.id) t.id, p.sourcename || ':' || p.sourceport, \
                p.targetname || ':' || p.targetport \
           FROM get_rebalance_table_shards_plan(drain_only := $1) p \
           JOIN pg_class c ON c.oid = p.table_name \
           JOIN tenantd.tenants t ON t.schema_name = c.relnamespace::regnamespace::text \
          WHERE t.status <> 'purged' ORDER BY t.id",
    )
    .bind(drain_only)
    .fetch_all(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            PlacementError::Precondition(format!("Citus refused to plan: {}", db.message()))
        }
        _ => DbFailure::of::<PlacementError>("ask Citus for a rebalance plan")(e),
    })?;
    Ok(rows
        .into_iter()
        .map(|(t, s, d)| (TenantId::from_uuid(t), s, d))
        .collect())
}

pub(crate) async fn load_job(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Job>, sqlx::Error> {
    use crate::catalog::error::decode;
    type JobRow = (
        Uuid,
        String,
        String,
        String,
        String,
        bool,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT id, kind, status, node, requested_by, cancel_requested, error, created_at, \
                started_at, finished_at FROM tenantd.cluster_jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    type MoveRow = (
        i32,
        Uuid,
        String,
        String,
        String,
        Option<i32>,
        String,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let moves: Vec<MoveRow> = sqlx::query_as(
        "SELECT position, tenant_id, source, target, status, backend_pid, error, started_at, \
                finished_at FROM tenantd.cluster_job_moves WHERE job_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let moves = moves
        .into_iter()
        .map(|m| {
            Ok(TenantMove {
                position: m.0,
                tenant: TenantId::from_uuid(m.1),
                source: m.2,
                target: m.3,
                status: decode(&m.4)?,
                backend_pid: m.5,
                error: m.6,
                started_at: m.7,
                finished_at: m.8,
                progress: None,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Job {
        id: r.0,
        kind: decode(&r.1)?,
        status: decode(&r.2)?,
        node: r.3,
        requested_by: r.4,
        cancel_requested: r.5,
        error: r.6,
        created_at: r.7,
        started_at: r.8,
        finished_at: r.9,
        moves,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        let n = NodeName::parse("node", "10.0.0.5:5432").unwrap();
        assert_eq!((n.host.as_str(), n.port), ("10.0.0.5", 5432));
        assert_eq!(n.to_string(), "10.0.0.5:5432");
        assert_eq!(NodeName::parse("node", "[::1]:6432").unwrap().port, 6432);
        for bad in [
            "",
            "host",
            ":5432",
            "host:",
            "host:0",
            "host:65536",
            "host:-1",
            "ho st:5432",
            "host';--:5432",
            "host:5432x",
        ] {
            let err = NodeName::parse("node", bad).unwrap_err();
            assert_eq!(err.violations[0].field, "node", "{bad:?}");
        }
    }

    #[test]
    fn words_round_trip() {
        for s in [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
        }
        assert!("nope".parse::<MoveStatus>().is_err());
        assert!(JobStatus::Cancelled.is_final() && !JobStatus::Running.is_final());
    }
}
