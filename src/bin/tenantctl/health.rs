//! `tenantctl health`: the standard gRPC health check of the server as a
//! whole and of each tenantd service; non-zero exit unless all are SERVING.

use serde_json::json;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

const SERVICES: [&str; 5] = [
    "",
    "tenantd.v1.TenantService",
    "tenantd.v1.MigrationService",
    "tenantd.v1.UserService",
    "tenantd.v1.SessionService",
];

pub async fn run(session: &Session) -> Result<(), CliError> {
    let mut client = HealthClient::new(session.channel());
    let mut rows = Vec::new();
    for service in SERVICES {
        let request = session.anonymous_request(HealthCheckRequest {
            service: service.to_owned(),
        });
        let status = session.call(client.check(request)).await?;
        let status = ServingStatus::try_from(status.status).unwrap_or(ServingStatus::Unknown);
        rows.push((
            if service.is_empty() {
                "(server)"
            } else {
                service
            },
            status,
        ));
    }
    match session.output {
        OutputFormat::Json => {
            let services: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(name, status)| ((*name).to_owned(), json!(status.as_str_name())))
                .collect();
            output::print_json(&json!({ "services": services }))?;
        }
        OutputFormat::Table => {
            let mut table = output::table(Some(&["SERVICE", "STATUS"]));
            for (name, status) in &rows {
                table.add_row(vec![(*name).to_owned(), status.as_str_name().to_owned()]);
            }
            output::print_text(&table.to_string())?;
        }
    }
    match rows.iter().find(|(_, s)| *s != ServingStatus::Serving) {
        None => Ok(()),
        Some((name, status)) => Err(CliError::Failed(format!(
            "{name} is {}",
            status.as_str_name()
        ))),
    }
}
