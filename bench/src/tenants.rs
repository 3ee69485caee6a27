//! Tenants made through tenantd itself (CreateTenant over gRPC): one at a
//! time ([`create_one`], which `create` measures) or a fleet by a few clients
//! at once ([`create`], for the benchmarks of the data plane: a tenant's role
//! must log in with the password tenantd derives from its catalog secret, so
//! the raw create transaction, which sets a password of its own, cannot make
//! them).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::tenant_service_client::TenantServiceClient;

use crate::measure::{Progress, Turn, in_turn};
use crate::server::{Authed, TenantdServer, status};

/// Announce a fleet from this size on.
const ANNOUNCE_FROM: usize = 1000;

/// The CreateTenant request of a bench-made slug, which doubles as the name.
pub fn request(slug: String) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        name: slug.clone(),
        slug,
        ..Default::default()
    }
}

/// Sends `request`; fails unless the answer is the tenant asked for.
pub async fn create_one(
    client: &mut TenantServiceClient<Authed>,
    request: pb::CreateTenantRequest,
) -> anyhow::Result<pb::Tenant> {
    let slug = request.slug.clone();
    let tenant = client
        .create_tenant(request)
        .await
        .map_err(status)
        .with_context(|| format!("CreateTenant {slug}"))?
        .into_inner();
    ensure!(
        tenant.slug == slug,
        "CreateTenant {slug} returned tenant {}",
        tenant.slug
    );
    Ok(tenant)
}

/// `n` tenants `<prefix>-<i>`, made by `clients` CreateTenant callers, each
/// on a connection of its own, taking the next index as they go. Their ids
/// in index order, and the time it took.
pub async fn create(
    server: &TenantdServer,
    prefix: &str,
    n: usize,
    clients: usize,
) -> anyhow::Result<(Vec<TenantId>, Duration)> {
    let clients = clients.clamp(1, n.max(1));
    if n >= ANNOUNCE_FROM {
        eprintln!("tenantd-bench: creating {n} tenants through CreateTenant, {clients} clients");
    }
    let progress = Progress::new("created", " tenants", n);
    let prefix: Arc<str> = prefix.into();
    let creators = server
        .connect_spread(clients, clients)
        .await?
        .into_iter()
        .map(|authed| Creator {
            client: TenantServiceClient::new(authed),
            prefix: Arc::clone(&prefix),
        })
        .collect();
    let (ids, took) = in_turn("CreateTenant", creators, progress).await?;
    ensure!(ids.len() == n, "made {} tenants, not {n}", ids.len());
    Ok((ids, took))
}

/// One CreateTenant caller of [`create`].
struct Creator {
    client: TenantServiceClient<Authed>,
    prefix: Arc<str>,
}

impl Turn for Creator {
    type Output = TenantId;

    async fn take(&mut self, i: usize) -> anyhow::Result<TenantId> {
        let slug = format!("{}-{i}", self.prefix);
        let tenant = create_one(&mut self.client, request(slug.clone())).await?;
        TenantId::parse("id", &tenant.id)
            .map_err(|e| anyhow::anyhow!("CreateTenant {slug} returned id: {e:?}"))
    }
}
