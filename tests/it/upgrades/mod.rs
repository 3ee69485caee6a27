//! Fleet upgrades end to end: plan, run, failures and retries, canaries, the
//! failure budget, pause/resume/cancel, watching — and under faults.

mod failures;
mod faults;
mod runs;
mod steering;

use std::collections::HashSet;

use tenantd::pb;

use crate::common::fleet;

/// (done, failed, skipped, pending, running)
fn counts(run: &pb::UpgradeRun) -> (i64, i64, i64, i64, i64) {
    let t = fleet::totals(run);
    (t.done, t.failed, t.skipped, t.pending, t.running)
}

/// Tenants whose `locations` table has `column`.
async fn tenants_with_column(db: &mut sqlx::PgConnection, column: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns c JOIN tenantd.tenants t ON t.schema_name = c.table_schema \
         WHERE c.table_name = 'locations' AND c.column_name = $1",
    )
    .bind(column)
    .fetch_one(db)
    .await
    .unwrap()
}

fn ids<'a>(tenants: impl IntoIterator<Item = &'a pb::Tenant>) -> HashSet<String> {
    tenants.into_iter().map(|t| t.id.clone()).collect()
}
