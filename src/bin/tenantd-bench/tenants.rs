//! Tenants made through tenantd itself (CreateTenant over gRPC), for the
//! benchmarks of the data plane: a tenant's role must log in with the
//! password tenantd derives from its catalog secret, so the raw create
//! transaction (which sets a password of its own) cannot make them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tenantd::domain::TenantId;
use tenantd::pb;
use tenantd::pb::tenant_service_client::TenantServiceClient;
use tokio::task::JoinSet;

use crate::server::{TenantdServer, endpoint};

/// Progress lines every so many tenants.
const PROGRESS_EVERY: usize = 1000;

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
    if n >= PROGRESS_EVERY {
        eprintln!("tenantd-bench: creating {n} tenants through CreateTenant, {clients} clients");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let prefix: Arc<str> = prefix.into();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for _ in 0..clients {
        let channel = endpoint(server.addr)?
            .connect()
            .await
            .with_context(|| format!("connect a gRPC client to tenantd at {}", server.addr))?;
        let mut client = TenantServiceClient::new(server.authed(channel)?);
        let (next, prefix) = (Arc::clone(&next), Arc::clone(&prefix));
        tasks.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(made);
                }
                let slug = format!("{prefix}-{i}");
                let tenant = client
                    .create_tenant(pb::CreateTenantRequest {
                        name: slug.clone(),
                        slug: slug.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                    .with_context(|| format!("CreateTenant {slug}"))?
                    .into_inner();
                ensure!(
                    tenant.slug == slug,
                    "CreateTenant {slug} returned tenant {}",
                    tenant.slug
                );
                let id = TenantId::parse("id", &tenant.id)
                    .map_err(|e| anyhow::anyhow!("CreateTenant {slug} returned id: {e:?}"))?;
                made.push((i, id));
                if (i + 1) % PROGRESS_EVERY == 0 {
                    eprintln!(
                        "tenantd-bench: created {}/{n} tenants after {:.1} s",
                        i + 1,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    // Returning early drops the set, which aborts the other clients.
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a CreateTenant client panicked")??);
    }
    let took = start.elapsed();
    all.sort_unstable_by_key(|&(i, _)| i);
    ensure!(all.len() == n, "made {} tenants, not {n}", all.len());
    Ok((all.into_iter().map(|(_, id)| id).collect(), took))
}
