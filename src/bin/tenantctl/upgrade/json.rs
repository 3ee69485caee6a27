//! Plans, runs and tenant outcomes as JSON with the proto's field names,
//! statuses as lower-case words and durations in the protobuf JSON form
//! ("5s", "1.500s"): one pretty document per command, or JSON Lines while
//! watching.

use serde_json::{Value, json};
use tenantd::pb;

use super::print::{status_word, totals};
use crate::error::CliError;
use crate::output;

/// A duration in the protobuf JSON form ("300s", "1.500s"), or null.
fn duration_json(d: Option<&prost_types::Duration>) -> Value {
    d.map_or(Value::Null, |d| Value::String(d.to_string()))
}

/// A run as JSON with the proto's field names.
pub fn run_json(r: &pb::UpgradeRun) -> Value {
    let t = totals(r);
    json!({
        "id": r.id,
        "target_version": r.target_version,
        "status": status_word(r.status),
        "status_reason": r.status_reason,
        "concurrency": r.concurrency,
        "canary_count": r.canary_count,
        "max_failures": r.max_failures,
        "max_attempts": r.max_attempts,
        "lock_timeout": duration_json(r.lock_timeout.as_ref()),
        "statement_timeout": duration_json(r.statement_timeout.as_ref()),
        "totals": {
            "total": t.total,
            "pending": t.pending,
            "running": t.running,
            "done": t.done,
            "failed": t.failed,
            "skipped": t.skipped,
            "rate": t.rate,
            "eta": duration_json(t.eta.as_ref()),
        },
        "created_at": output::rfc3339(r.created_at.as_ref()),
        "updated_at": output::rfc3339(r.updated_at.as_ref()),
        "finished_at": output::rfc3339(r.finished_at.as_ref()),
    })
}

pub fn outcome_json(o: &pb::TenantOutcome) -> Value {
    json!({
        "tenant_id": o.tenant_id,
        "ok": o.ok,
        "from_version": o.from_version,
        "to_version": o.to_version,
        "attempts": o.attempts,
        "sqlstate": o.sqlstate,
        "message": o.message,
        "finished_at": output::rfc3339(o.finished_at.as_ref()),
    })
}

pub fn plan_json(p: &pb::UpgradePlan) -> Value {
    json!({
        "target_version": p.target_version,
        "latest_version": p.latest_version,
        "versions": p.versions.iter()
            .map(|v| json!({ "version": v.version, "tenants": v.tenants }))
            .collect::<Vec<_>>(),
        "total_tenants": p.total_tenants,
        "behind": p.behind,
        "failed_before": p.failed_before,
        "behind_sample": p.behind_sample,
        "failed_sample": p.failed_sample.iter()
            .map(|f| json!({
                "tenant_id": f.tenant_id,
                "run_id": f.run_id,
                "sqlstate": f.sqlstate,
                "message": f.message,
                "version": f.version,
            }))
            .collect::<Vec<_>>(),
        "drifted": p.drifted.iter()
            .map(|d| json!({
                "tenant_id": d.tenant_id,
                "catalog_version": d.catalog_version,
                "ledger_version": d.ledger_version,
            }))
            .collect::<Vec<_>>(),
        "drift_checked": p.drift_checked,
        "clusters": p.clusters.iter()
            .map(|c| json!({ "cluster": c.cluster, "tenants": c.tenants, "behind": c.behind }))
            .collect::<Vec<_>>(),
    })
}

/// One compact JSON document on one line (a JSON Lines record).
pub fn print_json_line(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CliError::Failed(format!("cannot encode the output as JSON: {e}")))?;
    output::print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_proto_names_and_protobuf_durations() {
        let r = pb::UpgradeRun {
            id: "r1".into(),
            status: pb::UpgradeStatus::Succeeded as i32,
            totals: Some(pb::UpgradeTotals::default()),
            lock_timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = run_json(&r);
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["lock_timeout"], "5s");
        assert_eq!(v["statement_timeout"], Value::Null);
        assert_eq!(v["totals"]["eta"], Value::Null);
    }
}
