//! `tenantd.v1.TenantService`: each handler validates, calls the tenant
//! lifecycle, and maps the outcome.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::auth::{Caller, caller, require_in_tenant, require_scope};
use super::convert::{self, UpdateTenant, timestamp};
use super::pb::{self, tenant_service_server::TenantService};
use super::status;
use crate::clusters::Clusters;
use crate::data::TenantPools;
use crate::domain::identity::{Permission, Scope};
use crate::domain::{
    ClusterName, LifecycleAction, NewTenant, Slug, TenantId, TenantStatus, ValidationError,
    Violations,
};
use crate::identity::Identity;
use crate::metrics::{Metrics, create_failure};
use crate::tenant::{TenantError, Tenants};

pub struct TenantApi {
    tenants: Tenants,
    /// For callers' roles in tenants.
    identity: Identity,
    /// Work that must not be torn in half runs here, outside the request
    /// future, and shutdown waits for it.
    tasks: TaskTracker,
    metrics: Metrics,
    /// A tenant leaving ACTIVE has its pool closed here at once.
    pools: TenantPools,
    /// Moves between clusters.
    clusters: Clusters,
    /// Ends watch streams when the server shuts down.
    shutdown: CancellationToken,
}

impl TenantApi {
    pub fn new(
        tenants: Tenants,
        identity: Identity,
        tasks: TaskTracker,
        metrics: Metrics,
        pools: TenantPools,
        clusters: Clusters,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pools,
            clusters,
            shutdown,
            tenants,
            identity,
            tasks,
            metrics,
        }
    }

    /// A service key with `scope`, or a user whose role in tenant `id`
    /// grants `permission`.
    async fn allow(
        &self,
        who: &Caller,
        scope: Scope,
        id: TenantId,
        permission: Permission,
    ) -> Result<(), Status> {
        require_in_tenant(&self.identity, who, scope, *id.as_uuid(), permission).await
    }

    async fn lifecycle(
        &self,
        request: Request<pb::TenantLifecycleRequest>,
        action: LifecycleAction,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = caller(&request)?;
        let actor = who.actor();
        let request = request.into_inner();
        let id = TenantId::parse("id", &request.id).map_err(status::invalid)?;
        let expected = convert::expected_version("expected_version", request.expected_version)
            .map_err(status::invalid)?;
        match action {
            // The platform's decision (billing, abuse): a member could
            // otherwise suspend a tenant its OWNER cannot resume, since a
            // tenant that is not ACTIVE grants its members only reads.
            LifecycleAction::Suspend | LifecycleAction::Resume => {
                require_scope(&who, Scope::TenantsWrite)?
            }
            LifecycleAction::Archive | LifecycleAction::Purge => {
                self.allow(&who, Scope::TenantsWrite, id, Permission::TenantDelete)
                    .await?
            }
        }
        let tenants = self.tenants.clone();
        let pools = self.pools.clone();
        let identity = self.identity.clone();
        let tenant = self
            .spawn(async move {
                let changed = tenants
                    .change_status(id, action, expected, &request.reason, &actor)
                    .await?;
                identity.tenant_status_changed(id).await;
                if changed.status != TenantStatus::Active {
                    pools.invalidate(id).await;
                }
                Ok(changed)
            })
            .await?;
        Ok(Response::new(tenant.into()))
    }

    /// Runs a change to completion even if the caller goes away: a cancelled
    /// request must not roll back half of it, or leave its outcome unknown.
    async fn spawn<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, crate::tenant::TenantError>> + Send + 'static,
    {
        match self.tasks.spawn(work).await {
            Ok(result) => result.map_err(status::tenant),
            Err(join) => Err(status::internal("finish the tenant change", &join.into())),
        }
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::TenantsWrite)?;
        let actor = who.actor();
        let new = NewTenant::try_from(request.into_inner()).map_err(|e| {
            self.metrics
                .tenants()
                .create_failed(create_failure::INVALID);
            status::invalid(e)
        })?;
        let slug = new.slug.clone();
        let tenants = self.tenants.clone();
        let metrics = self.metrics.clone();
        let (tenant, created) = self
            .spawn(async move {
                let created = tenants.create(new, &actor).await;
                if let Err(e) = &created {
                    metrics.tenants().create_failed(create_failure_reason(e));
                }
                created
            })
            .await?;
        if created {
            self.metrics.tenants().created.inc();
            tracing::info!(tenant_id = %tenant.id, %slug, "tenant created");
        } else {
            self.metrics.tenants().replayed.inc();
        }
        Ok(Response::new(tenant.into()))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        use pb::get_tenant_request::Selector;
        let who = caller(&request)?;
        let tenant = match request.into_inner().selector {
            Some(Selector::Id(id)) => {
                let id = TenantId::parse("id", &id).map_err(status::invalid)?;
                self.tenants.get(id).await
            }
            Some(Selector::Slug(slug)) => {
                let slug = Slug::parse("slug", &slug).map_err(status::invalid)?;
                self.tenants.get_by_slug(slug.as_str()).await
            }
            None => {
                return Err(status::invalid(crate::domain::ValidationError::single(
                    "selector",
                    "set either id or slug",
                )));
            }
        };
        let tenant = match (tenant, &who) {
            // A user learns nothing of tenants they are not a member of, not
            // even whether an id or slug exists.
            (Err(crate::tenant::TenantError::NotFound), Caller::User(_)) => {
                return Err(Status::permission_denied("not a member of this tenant"));
            }
            (result, _) => result.map_err(status::tenant)?,
        };
        self.allow(&who, Scope::TenantsRead, tenant.id, Permission::TenantRead)
            .await?;
        let node = self
            .tenants
            .node_of(&tenant)
            .await
            .map_err(status::tenant)?;
        Ok(Response::new(pb::Tenant {
            node: node.unwrap_or_default(),
            ..tenant.into()
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let r = request.into_inner();
        let mut v = crate::domain::Violations::new();
        let size = v.check(convert::page_size(r.page_size));
        let after = v.check(convert::decode_page_token(&r.page_token));
        let filter = v.check(convert::status_filter("status", r.status));
        v.finish().map_err(status::invalid)?;
        let (Some(size), Some(after), Some(filter)) = (size, after, filter) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        let page = self
            .tenants
            .list(filter, after, size)
            .await
            .map_err(status::tenant)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.tenants.into_iter().map(Into::into).collect(),
            next_page_token: page
                .next_after
                .map(convert::encode_page_token)
                .unwrap_or_default(),
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = caller(&request)?;
        let actor = who.actor();
        let UpdateTenant { id, patch } =
            request.into_inner().try_into().map_err(status::invalid)?;
        self.allow(&who, Scope::TenantsWrite, id, Permission::TenantUpdate)
            .await?;
        let tenants = self.tenants.clone();
        let tenant = self
            .spawn(async move { tenants.update(id, patch, &actor).await })
            .await?;
        Ok(Response::new(tenant.into()))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.lifecycle(request, LifecycleAction::Suspend).await
    }

    async fn resume_tenant(
        &self,
        request: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.lifecycle(request, LifecycleAction::Resume).await
    }

    async fn archive_tenant(
        &self,
        request: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.lifecycle(request, LifecycleAction::Archive).await
    }

    async fn purge_tenant(
        &self,
        request: Request<pb::PurgeTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let who = caller(&request)?;
        let actor = who.actor();
        let r = request.into_inner();
        let mut v = crate::domain::Violations::new();
        let id = v.check(TenantId::parse("id", &r.id));
        if r.confirm_slug.is_empty() {
            v.add("confirm_slug", "is required: repeat the tenant's slug");
        }
        let expected = v.check(convert::expected_version(
            "expected_version",
            r.expected_version,
        ));
        v.finish().map_err(status::invalid)?;
        let (Some(id), Some(expected)) = (id, expected) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        self.allow(&who, Scope::TenantsWrite, id, Permission::TenantDelete)
            .await?;
        let tenants = self.tenants.clone();
        let pools = self.pools.clone();
        let identity = self.identity.clone();
        let tenant = self
            .spawn(async move {
                let purged = tenants
                    .purge(id, &r.confirm_slug, expected, &r.reason, &actor)
                    .await?;
                identity.tenant_status_changed(id).await;
                pools.invalidate(id).await;
                Ok(purged)
            })
            .await?;
        tracing::info!(tenant_id = %tenant.id, "tenant purged");
        Ok(Response::new(tenant.into()))
    }

    async fn move_tenant(
        &self,
        request: Request<pb::MoveTenantToClusterRequest>,
    ) -> Result<Response<pb::TenantClusterMove>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let tenant = v.check(TenantId::parse("tenant_id", &r.tenant_id));
        let cluster = v.check(ClusterName::parse("cluster", &r.cluster));
        v.finish().map_err(status::invalid)?;
        let (Some(tenant), Some(cluster)) = (tenant, cluster) else {
            return Err(Status::invalid_argument("tenant_id, cluster"));
        };
        let m = self
            .clusters
            .request_move(tenant, &cluster, &who.actor())
            .await
            .map_err(status::moving)?;
        Ok(Response::new(move_to_pb(m)))
    }

    async fn get_move(
        &self,
        request: Request<pb::TenantMoveRequest>,
    ) -> Result<Response<pb::TenantClusterMove>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let id = move_id(&request.into_inner().id)?;
        let m = self.clusters.get_move(id).await.map_err(status::moving)?;
        Ok(Response::new(move_to_pb(m)))
    }

    async fn list_moves(
        &self,
        request: Request<pb::ListMovesRequest>,
    ) -> Result<Response<pb::ListMovesResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let r = request.into_inner();
        let tenant = if r.tenant_id.is_empty() {
            None
        } else {
            Some(TenantId::parse("tenant_id", &r.tenant_id).map_err(status::invalid)?)
        };
        let limit = match r.page_size {
            0 => 20,
            n @ 1..=100 => i64::from(n),
            _ => {
                return Err(status::invalid(ValidationError::single(
                    "page_size",
                    "must be 1-100 (0 means 20)",
                )));
            }
        };
        let moves = self
            .clusters
            .list_moves(tenant, limit)
            .await
            .map_err(status::moving)?;
        Ok(Response::new(pb::ListMovesResponse {
            moves: moves.into_iter().map(move_to_pb).collect(),
        }))
    }

    type WatchMoveStream = ReceiverStream<Result<pb::TenantClusterMove, Status>>;

    async fn watch_move(
        &self,
        request: Request<pb::TenantMoveRequest>,
    ) -> Result<Response<Self::WatchMoveStream>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let id = move_id(&request.into_inner().id)?;
        let first = self.clusters.get_move(id).await.map_err(status::moving)?;
        let (tx, rx) = mpsc::channel(16);
        let clusters = self.clusters.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(move_to_pb(last.clone()))).await.is_err() {
                return;
            }
            while matches!(last.status.as_str(), "pending" | "running") {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let next = match clusters.get_move(id).await {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.send(Err(status::moving(e))).await;
                        return;
                    }
                };
                let changed = (
                    &next.status,
                    &next.phase,
                    next.tables_copied,
                    next.cancel_requested,
                ) != (
                    &last.status,
                    &last.phase,
                    last.tables_copied,
                    last.cancel_requested,
                );
                last = next;
                if changed && tx.send(Ok(move_to_pb(last.clone()))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_move(
        &self,
        request: Request<pb::TenantMoveRequest>,
    ) -> Result<Response<pb::TenantClusterMove>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::ClustersAdmin)?;
        let id = move_id(&request.into_inner().id)?;
        let m = self
            .clusters
            .cancel_move(id, &who.actor())
            .await
            .map_err(status::moving)?;
        Ok(Response::new(move_to_pb(m)))
    }
}

fn move_id(value: &str) -> Result<uuid::Uuid, Status> {
    if value.is_empty() {
        return Err(status::invalid(ValidationError::single(
            "id",
            "is required",
        )));
    }
    value
        .parse()
        .map_err(|_| status::invalid(ValidationError::single("id", "must be a UUID")))
}

pub(super) fn move_to_pb(m: crate::catalog::moves::MoveRow) -> pb::TenantClusterMove {
    let status = match m.status.as_str() {
        "pending" => pb::MoveJobStatus::Pending,
        "running" => pb::MoveJobStatus::Running,
        "succeeded" => pb::MoveJobStatus::Succeeded,
        "failed" => pb::MoveJobStatus::Failed,
        "cancelled" => pb::MoveJobStatus::Cancelled,
        _ => pb::MoveJobStatus::Unspecified,
    };
    pb::TenantClusterMove {
        id: m.id.to_string(),
        tenant_id: m.tenant_id.to_string(),
        source: m.source,
        target: m.target,
        status: status.into(),
        phase: m.phase,
        cancel_requested: m.cancel_requested,
        attempts: m.attempts,
        requested_by: m.requested_by,
        error: m.error.unwrap_or_default(),
        tables_total: m.tables_total,
        tables_copied: m.tables_copied,
        pause_ms: m.pause_ms.unwrap_or(0),
        created_at: Some(timestamp(m.created_at)),
        started_at: m.started_at.map(timestamp),
        switched_at: m.switched_at.map(timestamp),
        finished_at: m.finished_at.map(timestamp),
    }
}

/// The metrics label of a failed CreateTenant.
fn create_failure_reason(e: &TenantError) -> &'static str {
    match e {
        TenantError::SlugTaken(_) => create_failure::SLUG_TAKEN,
        TenantError::IdempotencyKeyReused { .. } => create_failure::IDEMPOTENCY_KEY_REUSED,
        TenantError::OwnerNotFound(_) => create_failure::OWNER_NOT_FOUND,
        TenantError::UnknownCluster(_)
        | TenantError::ClusterRefused { .. }
        | TenantError::NoClusterRoom => create_failure::NO_CLUSTER,
        TenantError::Db(_) | TenantError::Cluster(_) => create_failure::DATABASE,
        TenantError::NotFound
        | TenantError::VersionConflict { .. }
        | TenantError::InvalidTransition { .. }
        | TenantError::ConfirmationMismatch
        | TenantError::Moving(_) => create_failure::OTHER,
    }
}
