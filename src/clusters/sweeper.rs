//! Creates that died half-way on a cluster other than `default`: the
//! intent a create commits before it makes the tenant's role and schema
//! there, still present when no create holds the tenant's lock and no
//! catalog row exists, names a role and schema to drop.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::Clusters;
use crate::catalog::audit::Audited;
use crate::catalog::clusters as registry;
use crate::domain::{ClusterName, TenantId};

/// Intents younger than this are left alone by the periodic sweep (their
/// create is most likely still running; the lock would say so anyway).
pub const MIN_INTENT_AGE: Duration = Duration::from_secs(5);

/// Sweeps every intent older than `min_age` whose create has ended;
/// answers how many tenants' leftovers it removed.
pub async fn sweep_intents(clusters: Clusters, min_age: Duration) -> anyhow::Result<usize> {
    let age_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
    let intents = registry::intents(clusters.catalog(), age_ms)
        .await
        .context("read the cluster intents")?;
    let mut swept = 0;
    for (id, cluster, _) in intents {
        match sweep_one(&clusters, id, &cluster).await {
            Ok(true) => swept += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %id, %cluster, error = %format!("{e:#}"),
                    "cannot remove what a failed create left on the cluster");
            }
        }
    }
    Ok(swept)
}

/// Removes what the create of tenant `id` left on `cluster`, unless that
/// create still runs (it holds the tenant's lock) or committed (its row
/// exists). True when it dropped anything or cleared the intent of a
/// failed create.
pub(crate) async fn sweep_one(
    clusters: &Clusters,
    id: TenantId,
    cluster: &ClusterName,
) -> anyhow::Result<bool> {
    let mut tx = Audited::begin(clusters.catalog())
        .await
        .context("begin sweep")?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(crate::fleet::apply::lock_key(id))
        .fetch_one(&mut *tx)
        .await
        .context("try the tenant's lock")?;
    if !free
        || !registry::has_intent(&mut *tx, id)
            .await
            .context("read the intent")?
    {
        return Ok(false);
    }
    let exists = crate::catalog::tenants::status_of(&mut *tx, id)
        .await
        .context("look the tenant up")?
        .is_some();
    if !exists {
        let c = clusters.get(cluster).await?;
        let ddl = crate::tenant::purge_tenant_ddl_if_exists(id);
        c.engine
            .execute_ddl(
                &mut *c.admin.acquire().await.context("connect to the cluster")?,
                &ddl,
            )
            .await
            .context("drop the half-made tenant's schema and role")?;
    }
    registry::remove_intent(&mut *tx, id)
        .await
        .context("clear the intent")?;
    if exists {
        tx.commit_unaudited("the create committed; only its intent was left")
            .await
            .context("commit sweep")?;
        return Ok(false);
    }
    tx.commit(
        "tenantd",
        "tenant.create_undone",
        &format!("tenant:{id}"),
        &json!({ "cluster": cluster.as_str() }),
    )
    .await
    .context("commit sweep")?;
    tracing::info!(tenant_id = %id, %cluster, "removed what a failed create left on the cluster");
    Ok(true)
}
