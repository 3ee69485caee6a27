//! `tenantctl events …`: the catalog's event stream, paged or followed, and
//! `tenantctl tenants usage`: what tenants weigh.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tenantd::pb::{
    self, event_service_client::EventServiceClient, usage_service_client::UsageServiceClient,
};

use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events after a cursor, oldest first, one page.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// The cursor of the last event already seen (0: from the start).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// How many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Print events as they happen, until interrupted. Each line starts with
    /// the event's cursor: pass the last one as --after to resume.
    Watch {
        #[command(flatten)]
        filter: FilterArgs,
        /// Resume after this cursor (0: from the start).
        #[arg(long, default_value_t = 0, conflicts_with = "from_now")]
        after: i64,
        /// Only events from now on.
        #[arg(long)]
        from_now: bool,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// A kind (tenant.create) or category (tenant, member, session, user,
    /// upgrade, cluster); repeat for several.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only this tenant's events (its id).
    #[arg(long, value_parser = crate::cli::parse_uuid)]
    tenant: Option<String>,
}

impl FilterArgs {
    fn to_pb(&self) -> pb::EventFilter {
        pb::EventFilter {
            kinds: self.kinds.clone(),
            tenant_id: self.tenant.clone().unwrap_or_default(),
        }
    }
}

fn client(session: &Session) -> EventServiceClient<tonic::transport::Channel> {
    EventServiceClient::new(session.channel())
}

fn event_json(e: &pb::Event) -> serde_json::Value {
    json!({
        "cursor": e.cursor,
        "at": output::rfc3339(e.at.as_ref()),
        "kind": e.kind,
        "actor": e.actor,
        "target": e.target,
        "tenant_id": (!e.tenant_id.is_empty()).then_some(&e.tenant_id),
        "details": serde_json::from_str::<serde_json::Value>(&e.details_json).unwrap_or(json!({})),
    })
}

fn event_line(e: &pb::Event) -> String {
    format!(
        "{:>8}  {}  {:<26} {:<40} {}  {}",
        e.cursor,
        output::rfc3339_seconds(e.at.as_ref()),
        e.kind,
        e.target,
        e.actor,
        e.details_json
    )
}

pub async fn run(command: EventsCommand, session: &Session) -> Result<(), CliError> {
    let mut client = client(session);
    match command {
        EventsCommand::List {
            filter,
            after,
            limit,
        } => {
            let page = session
                .call(client.list_events(session.request(pb::ListEventsRequest {
                    after,
                    filter: Some(filter.to_pb()),
                    page_size: limit,
                })))
                .await?;
            match session.output {
                OutputFormat::Json => output::print_json(&json!({
                    "events": page.events.iter().map(event_json).collect::<Vec<_>>(),
                    "next_after": page.next_after,
                    "head": page.head,
                }))?,
                OutputFormat::Table => {
                    let mut table = output::table(Some(&[
                        "cursor", "at", "kind", "target", "actor", "details",
                    ]));
                    for e in &page.events {
                        table.add_row(vec![
                            e.cursor.to_string(),
                            output::rfc3339_seconds(e.at.as_ref()),
                            e.kind.clone(),
                            e.target.clone(),
                            e.actor.clone(),
                            e.details_json.clone(),
                        ]);
                    }
                    output::print_text(&table.to_string())?;
                    if page.next_after < page.head {
                        output::print_text(&format!(
                            "more: --after {} (newest is {})",
                            page.next_after, page.head
                        ))?;
                    }
                }
            }
            Ok(())
        }
        EventsCommand::Watch {
            filter,
            after,
            from_now,
        } => {
            let mut stream = session
                .call(
                    client.watch_events(session.stream_request(pb::WatchEventsRequest {
                        after,
                        filter: Some(filter.to_pb()),
                        from_now,
                    })),
                )
                .await?;
            // Events may be hours apart: no deadline between them.
            let forever = std::time::Duration::from_secs(u64::from(u32::MAX));
            while let Some(e) = session.next_message(&mut stream, forever).await? {
                match session.output {
                    OutputFormat::Json => output::print_json_line(&event_json(&e))?,
                    OutputFormat::Table => output::print_text(&event_line(&e))?,
                }
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UsageOrder {
    Size,
    Calls,
    Errors,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// One tenant (id or slug); without it, the heaviest.
    #[arg(value_name = "ID_OR_SLUG")]
    tenant: Option<String>,
    /// How many of the heaviest (1-1000).
    #[arg(long, default_value_t = 20)]
    top: i32,
    /// What "heaviest" means.
    #[arg(long, value_enum, default_value_t = UsageOrder::Size)]
    by: UsageOrder,
}

fn usage_json(u: &pb::TenantUsage) -> serde_json::Value {
    json!({
        "tenant_id": u.tenant_id,
        "slug": u.slug,
        "cluster": u.cluster,
        "schema_bytes": u.schema_bytes,
        "row_estimate": u.row_estimate,
        "relations": u.relations,
        "sampled_at": output::rfc3339(u.sampled_at.as_ref()),
        "calls": u.calls,
        "errors": u.errors,
        "latency_p50_ms": u.latency_p50_ms,
        "latency_p99_ms": u.latency_p99_ms,
        "since": output::rfc3339(u.since.as_ref()),
    })
}

pub async fn usage(args: UsageArgs, session: &Session) -> Result<(), CliError> {
    let mut client = UsageServiceClient::new(session.channel());
    if let Some(tenant) = args.tenant {
        let tenant_id = crate::tenants::resolve_id(session, &tenant).await?;
        let u = session
            .call(client.get_tenant_usage(session.request(pb::GetTenantUsageRequest { tenant_id })))
            .await?;
        return match session.output {
            OutputFormat::Json => output::print_json(&usage_json(&u)),
            OutputFormat::Table => output::print_text(
                &output::key_value_table(vec![
                    ("tenant", u.tenant_id.clone()),
                    ("slug", u.slug.clone()),
                    ("cluster", u.cluster.clone()),
                    ("schema size", tenantd::usage::human_bytes(u.schema_bytes)),
                    ("rows (estimate)", u.row_estimate.to_string()),
                    ("tables", u.relations.to_string()),
                    ("sampled at", output::rfc3339_seconds(u.sampled_at.as_ref())),
                    ("data calls", u.calls.to_string()),
                    ("failed calls", u.errors.to_string()),
                    (
                        "latency p50 / p99",
                        format!("{:.2} / {:.2} ms", u.latency_p50_ms, u.latency_p99_ms),
                    ),
                    ("counted since", output::rfc3339_seconds(u.since.as_ref())),
                ])
                .to_string(),
            ),
        };
    }
    let order = match args.by {
        UsageOrder::Size => pb::UsageOrder::Size,
        UsageOrder::Calls => pb::UsageOrder::Calls,
        UsageOrder::Errors => pb::UsageOrder::Errors,
    };
    let list = session
        .call(
            client.list_tenant_usage(session.request(pb::ListTenantUsageRequest {
                order_by: order as i32,
                limit: args.top,
            })),
        )
        .await?;
    match session.output {
        OutputFormat::Json => output::print_json(&json!({
            "tenants": list.tenants.iter().map(usage_json).collect::<Vec<_>>(),
            "sampled_tenants": list.sampled_tenants,
        })),
        OutputFormat::Table => {
            let mut table = output::table(Some(&[
                "tenant", "slug", "cluster", "size", "rows", "calls", "errors", "p99 ms",
            ]));
            for u in &list.tenants {
                table.add_row(vec![
                    u.tenant_id.clone(),
                    u.slug.clone(),
                    u.cluster.clone(),
                    tenantd::usage::human_bytes(u.schema_bytes),
                    u.row_estimate.to_string(),
                    u.calls.to_string(),
                    u.errors.to_string(),
                    format!("{:.2}", u.latency_p99_ms),
                ]);
            }
            output::print_text(&table.to_string())?;
            output::print_text(&format!("{} tenants sampled", list.sampled_tenants))
        }
    }
}
