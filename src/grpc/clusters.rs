//! `tenantd.v1.ClusterService`: the clusters tenants are placed on, Citus
//! nodes and placement jobs.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::{caller, require_scope};
use super::convert::timestamp;
use super::pb::{self, cluster_service_server::ClusterService};
use super::status;
use crate::catalog::clusters::ClusterRecord;
use crate::clusters::{Clusters, LimitsPatch};
use crate::domain::identity::Scope;
use crate::domain::{
    ClusterLimits, ClusterName, ClusterState, NewCluster, PasswordSource, TenantId,
    ValidationError, Violations,
};
use crate::placement::{
    Job, JobKind, JobStatus, MoveStatus, Node, NodeName, Placement, PlacementError,
};

/// How often a watch looks at its job.
const WATCH_PERIOD: Duration = Duration::from_millis(250);

pub struct ClusterApi {
    placement: Placement,
    clusters: Clusters,
    /// Ends watch streams when the server shuts down.
    shutdown: CancellationToken,
}

impl ClusterApi {
    pub fn new(placement: Placement, clusters: Clusters, shutdown: CancellationToken) -> Self {
        Self {
            placement,
            clusters,
            shutdown,
        }
    }
}

fn placement_status(err: PlacementError) -> Status {
    match err {
        PlacementError::Invalid(v) => status::invalid(v),
        PlacementError::Precondition(why) => Status::failed_precondition(why),
        PlacementError::NotFound(what) => Status::not_found(format!("{what} not found")),
        PlacementError::Db(failure) => status::db(failure),
    }
}

fn job_id(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(status::invalid(ValidationError::single(
            field,
            "is required",
        )));
    }
    value
        .parse()
        .map_err(|_| status::invalid(ValidationError::single(field, "must be a UUID")))
}

fn state_to_pb(s: ClusterState) -> pb::ClusterState {
    match s {
        ClusterState::Open => pb::ClusterState::Open,
        ClusterState::Draining => pb::ClusterState::Draining,
        ClusterState::Closed => pb::ClusterState::Closed,
    }
}

fn cluster_to_pb(c: ClusterRecord) -> pb::Cluster {
    let (password_file, password_env) = match c.password {
        PasswordSource::None => (String::new(), String::new()),
        PasswordSource::File(f) => (f, String::new()),
        PasswordSource::Env(e) => (String::new(), e),
    };
    pb::Cluster {
        name: c.name.to_string(),
        url: c
            .url
            .as_deref()
            .map(crate::clusters::redact)
            .unwrap_or_default(),
        state: state_to_pb(c.state).into(),
        weight: c.limits.weight,
        max_tenants: c.limits.max_tenants.unwrap_or(0),
        max_relations: c.limits.max_relations.unwrap_or(0),
        connection_budget: c.limits.connection_budget.unwrap_or(0),
        tenants: c.tenants,
        password_file,
        password_env,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
    }
}

/// A cap field: 0 is none; negative is refused.
fn cap(v: &mut Violations, field: &str, value: i64) -> Option<i64> {
    if value < 0 {
        v.add(field, "must be 0 (no cap) or positive");
    }
    (value > 0).then_some(value)
}

fn new_cluster(r: pb::AddClusterRequest) -> Result<NewCluster, ValidationError> {
    let mut v = Violations::new();
    let name = v.check(ClusterName::parse("name", &r.name));
    if name.as_ref().is_some_and(ClusterName::is_default) {
        v.add(
            "name",
            "`default` is the catalog's own database, always registered",
        );
    }
    let url = r.url.trim().to_owned();
    if url.is_empty() {
        v.add("url", "is required");
    } else if url.len() > 2000 {
        v.add("url", "must be at most 2000 characters");
    } else {
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {
                let query = |key: &str| {
                    u.query_pairs()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.into_owned())
                        .collect::<Vec<_>>()
                };
                if u.password().is_some() || !query("password").is_empty() {
                    v.add(
                        "url",
                        "must not carry a password (the catalog would keep it): use \
                         password_file or password_env",
                    );
                }
                // A Unix socket is a server on tenantd's own machine, where
                // `trust` and `peer` let anyone in without a password (the
                // private cluster's superuser, say).
                if u.host_str().is_some_and(|h| {
                    h.starts_with('/') || h.to_ascii_lowercase().starts_with("%2f")
                }) || query("host")
                    .iter()
                    .any(|h| h.starts_with('/') || h.starts_with('@'))
                {
                    v.add(
                        "url",
                        "must name a server by host name or address, not a Unix socket",
                    );
                }
                let database = query("dbname")
                    .pop()
                    .unwrap_or_else(|| u.path().trim_start_matches('/').to_owned());
                if matches!(database.as_str(), "template0" | "template1") {
                    v.add("url", "must not name a template database");
                }
            }
            _ => v.add("url", "must be a postgres:// URL"),
        }
    }
    let password = match (r.password_file.is_empty(), r.password_env.is_empty()) {
        (true, true) => PasswordSource::None,
        (false, true) => PasswordSource::File(r.password_file),
        (true, false) => PasswordSource::Env(r.password_env),
        (false, false) => {
            v.add(
                "password_env",
                "give password_file or password_env, not both",
            );
            PasswordSource::None
        }
    };
    let limits = ClusterLimits {
        weight: if r.weight == 0 { 100 } else { r.weight },
        max_tenants: cap(&mut v, "max_tenants", r.max_tenants),
        max_relations: cap(&mut v, "max_relations", r.max_relations),
        connection_budget: cap(&mut v, "connection_budget", r.connection_budget.into())
            .map(|n| n as i32),
    };
    limits.validate(&mut v);
    v.finish()?;
    Ok(NewCluster {
        name: name.ok_or_else(|| ValidationError::single("name", "invalid"))?,
        url,
        password,
        limits,
    })
}

fn node_to_pb(n: Node) -> pb::Node {
    pb::Node {
        id: n.id,
        name: n.name.to_string(),
        coordinator: n.coordinator,
        active: n.active,
        should_have_shards: n.should_have_shards,
        tenants: n.tenants,
    }
}

fn job_to_pb(job: Job) -> pb::ClusterJob {
    let kind = match job.kind {
        JobKind::Move => pb::ClusterJobKind::Move,
        JobKind::Rebalance => pb::ClusterJobKind::Rebalance,
        JobKind::Drain => pb::ClusterJobKind::Drain,
    };
    let status = match job.status {
        JobStatus::Pending => pb::ClusterJobStatus::Pending,
        JobStatus::Running => pb::ClusterJobStatus::Running,
        JobStatus::Succeeded => pb::ClusterJobStatus::Succeeded,
        JobStatus::Failed => pb::ClusterJobStatus::Failed,
        JobStatus::Cancelled => pb::ClusterJobStatus::Cancelled,
    };
    pb::ClusterJob {
        id: job.id.to_string(),
        kind: kind.into(),
        status: status.into(),
        node: job.node,
        requested_by: job.requested_by,
        created_at: Some(timestamp(job.created_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        cancel_requested: job.cancel_requested,
        error: job.error,
        moves: job
            .moves
            .into_iter()
            .map(|m| {
                let status = match m.status {
                    MoveStatus::Pending => pb::MoveStatus::Pending,
                    MoveStatus::Running => pb::MoveStatus::Running,
                    MoveStatus::Done => pb::MoveStatus::Done,
                    MoveStatus::Failed => pb::MoveStatus::Failed,
                    MoveStatus::Cancelled => pb::MoveStatus::Cancelled,
                    MoveStatus::Skipped => pb::MoveStatus::Skipped,
                };
                let progress = m
                    .progress
                    .unwrap_or_else(|| crate::placement::MoveProgress {
                        source_bytes: 0,
                        target_bytes: 0,
                        phase: String::new(),
                    });
                pb::TenantMove {
                    source_bytes: progress.source_bytes,
                    target_bytes: progress.target_bytes,
                    phase: progress.phase,
                    tenant_id: m.tenant.to_string(),
                    source: m.source,
                    target: m.target,
                    status: status.into(),
                    started_at: m.started_at.map(timestamp),
                    finished_at: m.finished_at.map(timestamp),
                    error: m.error,
                }
            })
            .collect(),
    }
}

type WatchStream = ReceiverStream<Result<pb::ClusterJob, Status>>;

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let clusters = self.clusters.list().await.map_err(status::cluster)?;
        Ok(Response::new(pb::ListClustersResponse {
            clusters: clusters.into_iter().map(cluster_to_pb).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let name =
            ClusterName::parse("name", &request.into_inner().name).map_err(status::invalid)?;
        let record = self.clusters.record(&name).await.map_err(status::cluster)?;
        Ok(Response::new(cluster_to_pb(record)))
    }

    async fn add_cluster(
        &self,
        request: Request<pb::AddClusterRequest>,
    ) -> Result<Response<pb::AddClusterResponse>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let new = new_cluster(request.into_inner()).map_err(status::invalid)?;
        let (record, found) = self
            .clusters
            .add(new, &who.actor())
            .await
            .map_err(status::cluster)?;
        Ok(Response::new(pb::AddClusterResponse {
            cluster: Some(cluster_to_pb(record)),
            server_version: found.server_version,
            superuser: found.superuser,
            wal_level: found.wal_level,
            max_connections: found.max_connections,
            citus: found.engine == crate::catalog::Engine::Citus,
            warnings: found.warnings,
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let name = v.check(ClusterName::parse("name", &r.name));
        let state = match pb::ClusterState::try_from(r.state) {
            Ok(pb::ClusterState::Unspecified) => None,
            Ok(pb::ClusterState::Open) => Some(ClusterState::Open),
            Ok(pb::ClusterState::Draining) => Some(ClusterState::Draining),
            Ok(pb::ClusterState::Closed) => Some(ClusterState::Closed),
            Err(_) => {
                v.add("state", "unknown state");
                None
            }
        };
        if r.weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            v.add("weight", "must be 1-10000");
        }
        let patch = LimitsPatch {
            weight: r.weight,
            max_tenants: r.max_tenants.map(|n| cap(&mut v, "max_tenants", n)),
            max_relations: r.max_relations.map(|n| cap(&mut v, "max_relations", n)),
            connection_budget: r
                .connection_budget
                .map(|n| cap(&mut v, "connection_budget", n.into()).map(|n| n as i32)),
        };
        v.finish().map_err(status::invalid)?;
        let name = name.ok_or_else(|| Status::invalid_argument("name"))?;
        let record = self
            .clusters
            .update(&name, state, patch, &who.actor())
            .await
            .map_err(status::cluster)?;
        Ok(Response::new(cluster_to_pb(record)))
    }

    async fn drain_cluster(
        &self,
        request: Request<pb::DrainClusterRequest>,
    ) -> Result<Response<pb::DrainClusterResponse>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let name =
            ClusterName::parse("name", &request.into_inner().name).map_err(status::invalid)?;
        let (record, moves) = self
            .clusters
            .drain(&name, &who.actor())
            .await
            .map_err(status::moving)?;
        Ok(Response::new(pb::DrainClusterResponse {
            cluster: Some(cluster_to_pb(record)),
            moves: moves.into_iter().map(super::tenants::move_to_pb).collect(),
        }))
    }

    async fn remove_cluster(
        &self,
        request: Request<pb::RemoveClusterRequest>,
    ) -> Result<Response<pb::RemoveClusterResponse>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let name =
            ClusterName::parse("name", &request.into_inner().name).map_err(status::invalid)?;
        self.clusters
            .remove(&name, &who.actor())
            .await
            .map_err(status::cluster)?;
        Ok(Response::new(pb::RemoveClusterResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let nodes = self
            .placement
            .list_nodes()
            .await
            .map_err(placement_status)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_to_pb).collect(),
        }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let node = NodeName::parse("node", &request.into_inner().node).map_err(status::invalid)?;
        let node = self
            .placement
            .add_node(&node, &who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(node_to_pb(node)))
    }

    async fn set_node_should_have_shards(
        &self,
        request: Request<pb::SetNodeShouldHaveShardsRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let r = request.into_inner();
        let node = NodeName::parse("node", &r.node).map_err(status::invalid)?;
        let node = self
            .placement
            .set_should_have_shards(&node, r.should_have_shards, &who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(node_to_pb(node)))
    }

    async fn move_tenant(
        &self,
        request: Request<pb::MoveTenantRequest>,
    ) -> Result<Response<pb::ClusterJob>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let r = request.into_inner();
        let mut violations = crate::domain::Violations::default();
        let tenant = violations.check(TenantId::parse("tenant_id", &r.tenant_id));
        let node = violations.check(NodeName::parse("node", &r.node));
        violations.finish().map_err(status::invalid)?;
        let (Some(tenant), Some(node)) = (tenant, node) else {
            return Err(Status::internal("validation lost a field"));
        };
        let job = self
            .placement
            .move_tenant(tenant, &node, &who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn rebalance_tenants(
        &self,
        request: Request<pb::RebalanceTenantsRequest>,
    ) -> Result<Response<pb::ClusterJob>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let job = self
            .placement
            .rebalance(&who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::ClusterJob>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let node = NodeName::parse("node", &request.into_inner().node).map_err(status::invalid)?;
        let job = self
            .placement
            .drain(&node, &who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn get_cluster_job(
        &self,
        request: Request<pb::ClusterJobRequest>,
    ) -> Result<Response<pb::ClusterJob>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let id = job_id("id", &request.into_inner().id)?;
        let job = self.placement.get(id).await.map_err(placement_status)?;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn list_cluster_jobs(
        &self,
        request: Request<pb::ListClusterJobsRequest>,
    ) -> Result<Response<pb::ListClusterJobsResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let limit = match request.into_inner().page_size {
            0 => 20,
            n @ 1..=100 => i64::from(n),
            _ => {
                return Err(status::invalid(ValidationError::single(
                    "page_size",
                    "must be between 1 and 100",
                )));
            }
        };
        let jobs = self.placement.list(limit).await.map_err(placement_status)?;
        Ok(Response::new(pb::ListClusterJobsResponse {
            jobs: jobs.into_iter().map(job_to_pb).collect(),
        }))
    }

    type WatchClusterJobStream = WatchStream;

    async fn watch_cluster_job(
        &self,
        request: Request<pb::ClusterJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let id = job_id("id", &request.into_inner().id)?;
        // Fails fast for an unknown job.
        let first = self.placement.get(id).await.map_err(placement_status)?;
        let (tx, rx) = mpsc::channel(16);
        let placement = self.placement.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut next = Ok(first);
            loop {
                match next {
                    Ok(job) => {
                        let ended = job.status.is_final();
                        if last.as_ref() != Some(&job) {
                            last = Some(job.clone());
                            if tx.send(Ok(job_to_pb(job))).await.is_err() || ended {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(placement_status(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_PERIOD) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; watch again on another replica"))).await;
                        return;
                    }
                }
                next = placement.get(id).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_cluster_job(
        &self,
        request: Request<pb::ClusterJobRequest>,
    ) -> Result<Response<pb::ClusterJob>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let id = job_id("id", &request.into_inner().id)?;
        let job = self
            .placement
            .cancel(id, &who.actor())
            .await
            .map_err(placement_status)?;
        Ok(Response::new(job_to_pb(job)))
    }
}
