//! `tenantd.v1.ClusterService`: Citus nodes and placement jobs.

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
use crate::domain::identity::Scope;
use crate::domain::{TenantId, ValidationError};
use crate::placement::{
    Job, JobKind, JobStatus, MoveStatus, Node, NodeName, Placement, PlacementError,
};

/// How often a watch looks at its job.
const WATCH_PERIOD: Duration = Duration::from_millis(250);

pub struct ClusterApi {
    placement: Placement,
    /// Ends watch streams when the server shuts down.
    shutdown: CancellationToken,
}

impl ClusterApi {
    pub fn new(placement: Placement, shutdown: CancellationToken) -> Self {
        Self {
            placement,
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
