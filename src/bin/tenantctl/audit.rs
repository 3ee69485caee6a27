//! `tenantctl audit verify`: has anyone edited the audit log? The server
//! recomputes the hash chain; a broken chain is a non-zero exit naming the
//! first event whose hashes no longer match.

use clap::Subcommand;
use serde_json::json;

use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit log's hash chain and report the first broken link.
    Verify,
}

pub async fn run(command: AuditCommand, session: &Session) -> Result<(), CliError> {
    let AuditCommand::Verify = command;
    let mut client = session.users();
    let answer = session
        .call(client.verify_audit(session.request(tenantd::pb::VerifyAuditRequest {})))
        .await?;
    match session.output {
        OutputFormat::Json => output::print_json(&json!({
            "ok": answer.ok,
            "events_checked": answer.events_checked,
            "first_broken_seq": (!answer.ok).then_some(answer.first_broken_seq),
        }))?,
        OutputFormat::Table => {
            let text = if answer.ok {
                format!(
                    "audit chain intact: {} events verified",
                    answer.events_checked
                )
            } else {
                format!(
                    "audit chain BROKEN at event {} ({} events before it verified)",
                    answer.first_broken_seq, answer.events_checked
                )
            };
            output::print_text(&text)?;
        }
    }
    if answer.ok {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "the audit log was altered: event {} does not match the chain",
            answer.first_broken_seq
        )))
    }
}
