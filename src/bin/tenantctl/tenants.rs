//! `tenantctl tenants …`: the subcommands and arguments of the tenant group,
//! the TenantService calls they make, and how tenants print as tables and
//! as JSON. Other groups name tenants the same way (id or slug) through
//! [`resolve_id`].

pub mod moves;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tenantd::pb::{self, get_tenant_request::Selector};
use tonic::Code;

use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::pages::{self, PageArgs};
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant: catalog row, PostgreSQL role and schema, migrations.
    Create(CreateArgs),
    /// Show one tenant, by id (a UUID) or by slug (anything else).
    Get {
        /// The tenant's id or slug.
        #[arg(value_name = "ID_OR_SLUG")]
        tenant: String,
    },
    /// List tenants in creation order, one page or (--all) every page.
    List(ListArgs),
    /// Change a tenant's name, industry, description or country.
    Update(UpdateArgs),
    /// ACTIVE -> SUSPENDED: keep the data but make the tenant unusable.
    Suspend(LifecycleArgs),
    /// SUSPENDED -> ACTIVE.
    Resume(LifecycleArgs),
    /// ACTIVE or SUSPENDED -> ARCHIVED: keep the schema, retire the tenant.
    Archive(LifecycleArgs),
    /// ARCHIVED -> PURGED: drop the schema and roles for good.
    Purge(PurgeArgs),
    /// Move a tenant to another cluster while it serves.
    Move {
        #[arg(value_name = "ID_OR_SLUG")]
        tenant: String,
        /// The cluster to move to (`tenantctl clusters list`).
        cluster: String,
        /// Follow the move until it ends; exit 1 unless it succeeded.
        #[arg(long)]
        watch: bool,
    },
    /// Moves between clusters, newest first.
    Moves {
        /// Only this tenant's (id or slug).
        #[arg(long)]
        tenant: Option<String>,
        /// How many (1-100).
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// One move; with --watch, followed until it ends.
    MoveStatus {
        #[arg(value_parser = crate::cli::parse_uuid)]
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// What tenants weigh: schema size and rows (sampled), data calls,
    /// failures and latency (on the replica answering). One tenant, or the
    /// heaviest.
    Usage(crate::events::UsageArgs),
    /// Cancel a move: before its switch everything it made is undone and
    /// the tenant stays where it was; after it, it finishes.
    CancelMove {
        #[arg(value_parser = crate::cli::parse_uuid)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name, 1-200 characters.
    #[arg(long)]
    name: String,
    /// Unique handle: lower-case letters, digits and inner hyphens, 3-63 characters.
    #[arg(long)]
    slug: String,
    #[arg(long, default_value = "")]
    industry: String,
    #[arg(long, default_value = "")]
    description: String,
    /// ISO 3166-1 alpha-2 country code, e.g. DE.
    #[arg(long, default_value = "")]
    country: String,
    /// Id of the user who becomes the tenant's owner.
    #[arg(long, default_value = "")]
    owner_user_id: String,
    /// Makes a retried create return the tenant the first attempt created.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// The cluster to place it on (`tenantctl clusters list`); without it,
    /// the open cluster with the fewest tenants per unit of weight.
    #[arg(long)]
    cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFilter {
    Active,
    Suspended,
    Archived,
    Purged,
    Provisioning,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tenants in this status (default: every status but purged).
    #[arg(long, value_enum)]
    status: Option<StatusFilter>,
    #[command(flatten)]
    page: PageArgs,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .args(["name", "industry", "description", "country"])
        .required(true)
        .multiple(true)
))]
pub struct UpdateArgs {
    /// The tenant's id.
    id: String,
    #[arg(long)]
    name: Option<String>,
    /// New industry; an empty value clears it.
    #[arg(long)]
    industry: Option<String>,
    /// New description; an empty value clears it.
    #[arg(long)]
    description: Option<String>,
    /// New ISO 3166-1 alpha-2 country; an empty value clears it.
    #[arg(long)]
    country: Option<String>,
    /// Apply only if the tenant's version is still this one.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    expected_version: Option<i64>,
}

#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// The tenant's id.
    id: String,
    /// Apply only if the tenant's version is still this one.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    expected_version: Option<i64>,
    /// Why; kept in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    lifecycle: LifecycleArgs,
    /// The tenant's slug, repeated as a guard against purging the wrong one.
    #[arg(long)]
    confirm_slug: String,
}

pub async fn run(command: TenantsCommand, session: &Session) -> Result<(), CliError> {
    let mut client = session.tenants();
    let tenant = match command {
        TenantsCommand::Move {
            tenant,
            cluster,
            watch,
        } => {
            let tenant_id = resolve_id(session, &tenant).await?;
            let request = pb::MoveTenantToClusterRequest { tenant_id, cluster };
            let m = session
                .call(client.move_tenant(session.request(request)))
                .await?;
            return moves::show(session, m, watch).await;
        }
        TenantsCommand::Usage(args) => return crate::events::usage(args, session).await,
        TenantsCommand::Moves { tenant, limit } => {
            let tenant_id = match tenant {
                Some(t) => resolve_id(session, &t).await?,
                None => String::new(),
            };
            let request = pb::ListMovesRequest {
                tenant_id,
                page_size: limit,
            };
            let list = session
                .call(client.list_moves(session.request(request)))
                .await?;
            return moves::print_list(session.output, &list.moves);
        }
        TenantsCommand::MoveStatus { id, watch } => {
            let request = pb::TenantMoveRequest { id };
            let m = session
                .call(client.get_move(session.request(request)))
                .await?;
            return moves::show(session, m, watch).await;
        }
        TenantsCommand::CancelMove { id } => {
            let request = pb::TenantMoveRequest { id };
            let m = session
                .call(client.cancel_move(session.request(request)))
                .await?;
            return moves::show(session, m, false).await;
        }
        TenantsCommand::Create(a) => {
            let request = pb::CreateTenantRequest {
                name: a.name,
                slug: a.slug,
                industry: a.industry,
                description: a.description,
                country: a.country,
                owner_user_id: a.owner_user_id,
                idempotency_key: a.idempotency_key,
                cluster: a.cluster.unwrap_or_default(),
            };
            session
                .call(client.create_tenant(session.request(request)))
                .await?
        }
        TenantsCommand::Get { tenant } => {
            let request = pb::GetTenantRequest {
                selector: Some(selector(&tenant)),
            };
            session
                .call(client.get_tenant(session.request(request)))
                .await?
        }
        TenantsCommand::List(a) => return list(a, session).await,
        TenantsCommand::Update(a) => {
            let request = pb::UpdateTenantRequest {
                id: a.id,
                name: a.name,
                industry: a.industry,
                description: a.description,
                country: a.country,
                expected_version: a.expected_version,
            };
            session
                .call(client.update_tenant(session.request(request)))
                .await?
        }
        TenantsCommand::Suspend(a) => {
            let request = session.request(lifecycle_request(a));
            session.call(client.suspend_tenant(request)).await?
        }
        TenantsCommand::Resume(a) => {
            let request = session.request(lifecycle_request(a));
            session.call(client.resume_tenant(request)).await?
        }
        TenantsCommand::Archive(a) => {
            let request = session.request(lifecycle_request(a));
            session.call(client.archive_tenant(request)).await?
        }
        TenantsCommand::Purge(a) => {
            let request = pb::PurgeTenantRequest {
                id: a.lifecycle.id,
                confirm_slug: a.confirm_slug,
                expected_version: a.lifecycle.expected_version,
                reason: a.lifecycle.reason,
            };
            session
                .call(client.purge_tenant(session.request(request)))
                .await?
        }
    };
    print_tenant(session.output, &tenant)
}

/// A UUID selects by id (sent in canonical form), anything else by slug.
fn selector(tenant: &str) -> Selector {
    match uuid::Uuid::parse_str(tenant.trim()) {
        Ok(id) => Selector::Id(id.hyphenated().to_string()),
        Err(_) => Selector::Slug(tenant.to_owned()),
    }
}

/// The id of a tenant named by id or slug, for calls that take only ids: an
/// id is used as it is (no call), a slug is looked up.
pub async fn resolve_id(session: &Session, tenant: &str) -> Result<String, CliError> {
    let slug = match selector(tenant) {
        Selector::Id(id) => return Ok(id),
        Selector::Slug(slug) => slug,
    };
    let request = pb::GetTenantRequest {
        selector: Some(Selector::Slug(slug.clone())),
    };
    match session
        .call(session.tenants().get_tenant(session.request(request)))
        .await
    {
        Ok(t) => Ok(t.id),
        Err(CliError::Rpc(status)) if status.code() == Code::NotFound => Err(CliError::Failed(
            format!("NOT_FOUND: no tenant has the slug {slug:?} (nor is it a tenant id)"),
        )),
        Err(e) => Err(e),
    }
}

fn lifecycle_request(a: LifecycleArgs) -> pb::TenantLifecycleRequest {
    pb::TenantLifecycleRequest {
        id: a.id,
        expected_version: a.expected_version,
        reason: a.reason,
    }
}

/// One page, or with `--all` every page from `--page-token` on.
async fn list(a: ListArgs, session: &Session) -> Result<(), CliError> {
    let status = a.status.map_or(pb::TenantStatus::Unspecified, status_to_pb) as i32;
    let client = session.tenants();
    let (tenants, next_page_token) = pages::collect(a.page, |page_size, page_token| {
        let mut client = client.clone();
        let request = session.request(pb::ListTenantsRequest {
            page_size,
            page_token,
            status,
        });
        async move {
            let page = session.call(client.list_tenants(request)).await?;
            Ok((page.tenants, page.next_page_token))
        }
    })
    .await?;
    print_list(session.output, &tenants, &next_page_token)
}

fn status_to_pb(s: StatusFilter) -> pb::TenantStatus {
    match s {
        StatusFilter::Active => pb::TenantStatus::Active,
        StatusFilter::Suspended => pb::TenantStatus::Suspended,
        StatusFilter::Archived => pb::TenantStatus::Archived,
        StatusFilter::Purged => pb::TenantStatus::Purged,
        StatusFilter::Provisioning => pb::TenantStatus::Provisioning,
    }
}

/// The lower-case status word ("active"); unknown numbers stay visible.
fn status_word(status: i32) -> String {
    let name = pb::TenantStatus::try_from(status).ok();
    output::enum_word(name.map(|s| s.as_str_name()), "TENANT_STATUS_", status)
}

/// A tenant as JSON with the proto's field names.
fn tenant_json(t: &pb::Tenant) -> Value {
    json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "industry": t.industry,
        "description": t.description,
        "country": t.country,
        "status": status_word(t.status),
        "schema_name": t.schema_name,
        "schema_version": t.schema_version,
        "version": t.version,
        "created_at": output::rfc3339(t.created_at.as_ref()),
        "updated_at": output::rfc3339(t.updated_at.as_ref()),
        "node": t.node,
        "cluster": t.cluster,
    })
}

fn print_tenant(format: OutputFormat, t: &pb::Tenant) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&tenant_json(t)),
        OutputFormat::Table => {
            let table = output::key_value_table(
                vec![
                    ("id", t.id.clone()),
                    ("slug", t.slug.clone()),
                    ("name", t.name.clone()),
                    ("industry", t.industry.clone()),
                    ("description", t.description.clone()),
                    ("country", t.country.clone()),
                    ("status", status_word(t.status)),
                    ("schema_name", t.schema_name.clone()),
                    ("schema_version", t.schema_version.to_string()),
                    ("cluster", t.cluster.clone()),
                    ("version", t.version.to_string()),
                    ("created_at", output::rfc3339_seconds(t.created_at.as_ref())),
                    ("updated_at", output::rfc3339_seconds(t.updated_at.as_ref())),
                ]
                .into_iter()
                // Only on Citus: the node that holds the tenant's schema.
                .chain((!t.node.is_empty()).then(|| ("node", t.node.clone())))
                .collect(),
            );
            output::print_text(&table.to_string())
        }
    }
}

fn print_list(
    format: OutputFormat,
    tenants: &[pb::Tenant],
    next_page_token: &str,
) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "tenants": tenants.iter().map(tenant_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        })),
        OutputFormat::Table => {
            if tenants.is_empty() {
                output::print_text("no tenants")?;
            } else {
                let mut table = output::table(Some(&[
                    "ID",
                    "SLUG",
                    "NAME",
                    "STATUS",
                    "SCHEMA VERSION",
                    "VERSION",
                    "CREATED",
                ]));
                for t in tenants {
                    table.add_row(vec![
                        t.id.clone(),
                        t.slug.clone(),
                        t.name.clone(),
                        status_word(t.status),
                        t.schema_version.to_string(),
                        t.version.to_string(),
                        output::rfc3339_seconds(t.created_at.as_ref()),
                    ]);
                }
                output::print_text(&table.to_string())?;
            }
            output::print_next_page(next_page_token, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_select_by_id_and_the_rest_by_slug() {
        let id = "0190a6f2-7d4b-7cc3-9f00-7d0f6b1d2e3a";
        assert!(matches!(selector(id), Selector::Id(s) if s == id));
        assert!(matches!(
            selector("0190A6F27D4B7CC39F007D0F6B1D2E3A"),
            Selector::Id(s) if s == id
        ));
        assert!(matches!(selector("acme-gmbh"), Selector::Slug(s) if s == "acme-gmbh"));
    }

    #[test]
    fn json_uses_proto_names_and_status_words() {
        let t = pb::Tenant {
            id: "id-1".into(),
            slug: "acme".into(),
            status: pb::TenantStatus::Suspended as i32,
            version: 3,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = tenant_json(&t);
        assert_eq!(v["status"], "suspended");
        assert_eq!(v["version"], 3);
        assert_eq!(v["schema_version"], 0);
        assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["updated_at"], Value::Null);
        assert_eq!(status_word(99), "unknown(99)");
    }
}
