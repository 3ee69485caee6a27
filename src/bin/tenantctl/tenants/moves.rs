//! `tenantctl tenants move|moves|move-status|cancel-move`: moves of a
//! tenant between clusters, printed and followed.

use std::time::Duration;

use serde_json::{Value, json};
use tenantd::pb;

use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

fn status_word(raw: i32) -> String {
    output::enum_word(
        pb::MoveJobStatus::try_from(raw)
            .ok()
            .map(|s| s.as_str_name()),
        "MOVE_JOB_STATUS_",
        raw,
    )
}

fn move_json(m: &pb::TenantClusterMove) -> Value {
    json!({
        "id": m.id,
        "tenant_id": m.tenant_id,
        "source": m.source,
        "target": m.target,
        "status": status_word(m.status),
        "phase": m.phase,
        "cancel_requested": m.cancel_requested,
        "attempts": m.attempts,
        "requested_by": m.requested_by,
        "error": m.error,
        "tables_total": m.tables_total,
        "tables_copied": m.tables_copied,
        "pause_ms": m.pause_ms,
        "created_at": output::rfc3339(m.created_at.as_ref()),
        "switched_at": output::rfc3339(m.switched_at.as_ref()),
        "finished_at": output::rfc3339(m.finished_at.as_ref()),
    })
}

/// One line per state a watch sees.
fn line(m: &pb::TenantClusterMove) -> String {
    let mut text = format!(
        "{}  {} -> {}  {} {}",
        m.tenant_id,
        m.source,
        m.target,
        status_word(m.status),
        m.phase
    );
    if m.phase == "copying" {
        text.push_str(&format!(
            " ({} of {} tables)",
            m.tables_copied, m.tables_total
        ));
    }
    if m.pause_ms > 0 {
        text.push_str(&format!(", writes held {} ms", m.pause_ms));
    }
    if !m.error.is_empty() {
        text.push_str(&format!(": {}", m.error));
    }
    text
}

fn print_one(format: OutputFormat, m: &pb::TenantClusterMove) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&move_json(m)),
        OutputFormat::Table => {
            let table = output::key_value_table(vec![
                ("id", m.id.clone()),
                ("tenant_id", m.tenant_id.clone()),
                ("source", m.source.clone()),
                ("target", m.target.clone()),
                ("status", status_word(m.status)),
                ("phase", m.phase.clone()),
                ("attempts", m.attempts.to_string()),
                (
                    "tables",
                    format!("{} of {}", m.tables_copied, m.tables_total),
                ),
                ("pause_ms", m.pause_ms.to_string()),
                ("error", m.error.clone()),
                ("created_at", output::rfc3339_seconds(m.created_at.as_ref())),
                (
                    "finished_at",
                    output::rfc3339_seconds(m.finished_at.as_ref()),
                ),
            ]);
            output::print_text(&table.to_string())
        }
    }
}

pub fn print_list(format: OutputFormat, moves: &[pb::TenantClusterMove]) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => {
            output::print_json(&json!(moves.iter().map(move_json).collect::<Vec<_>>()))
        }
        OutputFormat::Table => {
            let mut table = output::table(Some(&[
                "ID", "TENANT", "FROM", "TO", "STATUS", "PHASE", "PAUSE MS", "CREATED",
            ]));
            for m in moves {
                table.add_row(vec![
                    m.id.clone(),
                    m.tenant_id.clone(),
                    m.source.clone(),
                    m.target.clone(),
                    status_word(m.status),
                    m.phase.clone(),
                    m.pause_ms.to_string(),
                    output::rfc3339_seconds(m.created_at.as_ref()),
                ]);
            }
            output::print_text(&table.to_string())
        }
    }
}

/// Prints the move; with `watch`, follows it until it ends, a line per
/// change, and fails unless it succeeded.
pub async fn show(
    session: &Session,
    m: pb::TenantClusterMove,
    watch: bool,
) -> Result<(), CliError> {
    if !watch {
        return print_one(session.output, &m);
    }
    let mut client = session.tenants();
    let request = session.stream_request(pb::TenantMoveRequest { id: m.id.clone() });
    let mut stream = session.call(client.watch_move(request)).await?;
    let mut last = m;
    while let Some(next) = session
        .next_message(&mut stream, Duration::from_secs(24 * 3600))
        .await?
    {
        if session.output == OutputFormat::Table {
            output::print_text(&line(&next))?;
        }
        last = next;
    }
    print_one(session.output, &last)?;
    if last.status == pb::MoveJobStatus::Succeeded as i32 {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "the move ended {}",
        status_word(last.status)
    )))
}
