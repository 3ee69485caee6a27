//! `tenantd.v1.UsageService`: what tenants weigh.

use tonic::{Request, Response, Status};

use super::auth::{caller, require_in_tenant, require_scope};
use super::convert::timestamp;
use super::pb::{self, usage_service_server::UsageService};
use super::status;
use crate::catalog::DbFailure;
use crate::domain::identity::{Permission, Scope};
use crate::domain::{TenantId, ValidationError};
use crate::identity::Identity;
use crate::usage::{Order, TenantUsage, Usage};

pub struct UsageApi {
    usage: Usage,
    identity: Identity,
}

impl UsageApi {
    pub fn new(usage: Usage, identity: Identity) -> Self {
        Self { usage, identity }
    }
}

pub fn usage_to_pb(u: TenantUsage) -> pb::TenantUsage {
    let (slug, cluster, schema) = match u.sampled {
        Some(s) => (s.slug, s.cluster, s.schema),
        None => Default::default(),
    };
    pb::TenantUsage {
        tenant_id: u.tenant.to_string(),
        slug,
        cluster,
        schema_bytes: schema.bytes,
        row_estimate: schema.rows,
        relations: schema.relations,
        sampled_at: u.sampled_at.map(timestamp),
        calls: i64::try_from(u.calls.calls).unwrap_or(i64::MAX),
        errors: i64::try_from(u.calls.errors).unwrap_or(i64::MAX),
        latency_p50_ms: u.calls.p50_ms,
        latency_p99_ms: u.calls.p99_ms,
        since: Some(timestamp(u.since)),
    }
}

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Result<Response<pb::TenantUsage>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let tenant = TenantId::parse("tenant_id", &r.tenant_id).map_err(status::invalid)?;
        require_in_tenant(
            &self.identity,
            &who,
            Scope::TenantsRead,
            *tenant.as_uuid(),
            Permission::TenantRead,
        )
        .await?;
        let usage = self
            .usage
            .current(tenant)
            .await
            .map_err(|e| status::db(DbFailure::of::<DbFailure>("read the tenant")(e)))?
            .ok_or_else(|| Status::not_found("tenant not found"))?;
        Ok(Response::new(usage_to_pb(usage)))
    }

    async fn list_tenant_usage(
        &self,
        request: Request<pb::ListTenantUsageRequest>,
    ) -> Result<Response<pb::ListTenantUsageResponse>, Status> {
        require_scope(&caller(&request)?, Scope::TenantsRead)?;
        let r = request.into_inner();
        let order = match pb::UsageOrder::try_from(r.order_by) {
            Ok(pb::UsageOrder::Unspecified | pb::UsageOrder::Size) => Order::Size,
            Ok(pb::UsageOrder::Calls) => Order::Calls,
            Ok(pb::UsageOrder::Errors) => Order::Errors,
            Err(_) => {
                return Err(status::invalid(ValidationError::single(
                    "order_by",
                    "must be SIZE, CALLS or ERRORS",
                )));
            }
        };
        let limit = match r.limit {
            0 => 20,
            n @ 1..=1000 => n as usize,
            _ => {
                return Err(status::invalid(ValidationError::single(
                    "limit",
                    "must be between 1 and 1000 (0: 20)",
                )));
            }
        };
        let (tenants, sampled) = self.usage.heaviest(order, limit);
        Ok(Response::new(pb::ListTenantUsageResponse {
            tenants: tenants.into_iter().map(usage_to_pb).collect(),
            sampled_tenants: sampled as i64,
        }))
    }
}
