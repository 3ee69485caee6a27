//! `tenantctl members …`: who belongs to a tenant and in which role, through
//! UserService's membership calls. Tenants are named by id or slug, as in
//! `tenants get`. How memberships and roles print is here too; `users
//! tenants` and `sessions` print through it.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tenantd::pb;

use crate::cli::parse_uuid;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::pages::{self, PageArgs};
use crate::session::Session;
use crate::tenants;

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// A tenant's members with their roles.
    List {
        /// The tenant's id or slug.
        #[arg(value_name = "TENANT")]
        tenant: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Give a user a role in a tenant.
    Add(RoleArgs),
    /// Change the role a member holds; the last OWNER cannot be demoted.
    SetRole(RoleArgs),
    /// Take a user out of a tenant; the last OWNER cannot be removed.
    Remove(MemberArgs),
}

/// One user in one tenant.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// The tenant's id or slug.
    #[arg(value_name = "TENANT")]
    tenant: String,
    /// The user's id.
    #[arg(value_name = "USER_ID", value_parser = parse_uuid)]
    user_id: String,
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    member: MemberArgs,
    /// The role: what it permits is in the permission matrix (README).
    #[arg(long, value_enum)]
    role: Role,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Owner,
    Admin,
    Manager,
    Employee,
}

impl From<Role> for pb::MemberRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => pb::MemberRole::Owner,
            Role::Admin => pb::MemberRole::Admin,
            Role::Manager => pb::MemberRole::Manager,
            Role::Employee => pb::MemberRole::Employee,
        }
    }
}

pub async fn run(command: MembersCommand, session: &Session) -> Result<(), CliError> {
    let mut client = session.users();
    let membership = match command {
        MembersCommand::List { tenant, page } => return list(&tenant, page, session).await,
        MembersCommand::Add(a) => {
            let request = pb::AddMemberRequest {
                tenant_id: tenants::resolve_id(session, &a.member.tenant).await?,
                user_id: a.member.user_id,
                role: pb::MemberRole::from(a.role) as i32,
            };
            session
                .call(client.add_member(session.request(request)))
                .await?
        }
        MembersCommand::SetRole(a) => {
            let request = pb::ChangeRoleRequest {
                tenant_id: tenants::resolve_id(session, &a.member.tenant).await?,
                user_id: a.member.user_id,
                role: pb::MemberRole::from(a.role) as i32,
            };
            session
                .call(client.change_role(session.request(request)))
                .await?
        }
        MembersCommand::Remove(a) => {
            let tenant_id = tenants::resolve_id(session, &a.tenant).await?;
            let request = pb::RemoveMemberRequest {
                tenant_id: tenant_id.clone(),
                user_id: a.user_id.clone(),
            };
            session
                .call(client.remove_member(session.request(request)))
                .await?;
            return match session.output {
                OutputFormat::Json => output::print_json(&json!({
                    "tenant_id": tenant_id,
                    "user_id": a.user_id,
                    "removed": true,
                })),
                OutputFormat::Table => output::print_text(&format!(
                    "user {} is no longer a member of tenant {tenant_id}",
                    a.user_id
                )),
            };
        }
    };
    print_membership(session.output, &membership)
}

async fn list(tenant: &str, page: PageArgs, session: &Session) -> Result<(), CliError> {
    let tenant_id = tenants::resolve_id(session, tenant).await?;
    let client = session.users();
    let (members, next_page_token) = pages::collect(page, |page_size, page_token| {
        let mut client = client.clone();
        let request = session.request(pb::ListMembersRequest {
            tenant_id: tenant_id.clone(),
            page_size,
            page_token,
        });
        async move {
            let page = session.call(client.list_members(request)).await?;
            Ok((page.members, page.next_page_token))
        }
    })
    .await?;
    print_memberships(session.output, "members", &members, Some(&next_page_token))
}

/// The lower-case role word ("manager"); "" for none (a token not bound to
/// a tenant); unknown numbers stay visible.
pub fn role_word(role: i32) -> String {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Unspecified) => String::new(),
        known => output::enum_word(known.ok().map(|r| r.as_str_name()), "MEMBER_ROLE_", role),
    }
}

/// A membership as JSON with the proto's field names.
fn membership_json(m: &pb::Membership) -> Value {
    json!({
        "tenant_id": m.tenant_id,
        "user_id": m.user_id,
        "role": role_word(m.role),
        "created_at": output::rfc3339(m.created_at.as_ref()),
        "updated_at": output::rfc3339(m.updated_at.as_ref()),
    })
}

fn print_membership(format: OutputFormat, m: &pb::Membership) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&membership_json(m)),
        OutputFormat::Table => output::print_text(
            &output::key_value_table(vec![
                ("tenant_id", m.tenant_id.clone()),
                ("user_id", m.user_id.clone()),
                ("role", role_word(m.role)),
                ("created_at", output::rfc3339_seconds(m.created_at.as_ref())),
                ("updated_at", output::rfc3339_seconds(m.updated_at.as_ref())),
            ])
            .to_string(),
        ),
    }
}

/// Memberships as a table, or as JSON under `key` ("members" of a tenant,
/// "memberships" of a user) with the next page token when the list is paged.
pub fn print_memberships(
    format: OutputFormat,
    key: &str,
    memberships: &[pb::Membership],
    next_page_token: Option<&str>,
) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        let mut doc = serde_json::Map::new();
        let rows = memberships.iter().map(membership_json).collect();
        doc.insert(key.to_owned(), Value::Array(rows));
        if let Some(token) = next_page_token {
            doc.insert("next_page_token".to_owned(), json!(token));
        }
        return output::print_json(&Value::Object(doc));
    }
    if memberships.is_empty() {
        output::print_text(&format!("no {key}"))?;
    } else {
        let mut table = output::table(Some(&["TENANT", "USER", "ROLE", "SINCE", "UPDATED"]));
        for m in memberships {
            table.add_row(vec![
                m.tenant_id.clone(),
                m.user_id.clone(),
                role_word(m.role),
                output::rfc3339_seconds(m.created_at.as_ref()),
                output::rfc3339_seconds(m.updated_at.as_ref()),
            ]);
        }
        output::print_text(&table.to_string())?;
    }
    output::print_next_page(next_page_token.unwrap_or_default(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_words_and_none_is_empty() {
        assert_eq!(role_word(pb::MemberRole::Manager as i32), "manager");
        assert_eq!(role_word(pb::MemberRole::Unspecified as i32), "");
        assert_eq!(role_word(9), "unknown(9)");
        assert_eq!(
            pb::MemberRole::from(Role::Owner).as_str_name(),
            "MEMBER_ROLE_OWNER"
        );
    }
}
