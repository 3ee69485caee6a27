//! Who may change whose membership, and how soon a change binds every
//! replica: the role ceiling (a user adds, changes or removes only
//! memberships below their own role; only an OWNER touches OWNERs; service
//! keys are exempt; the last OWNER stays), and removals, demotions,
//! deactivations, suspensions and archivals that stop a token issued before
//! them from granting the old rights on another replica within the 5 s
//! revocation window — and from ever restoring them.

mod ceiling;
mod replicas;

use tenantd::pb::{self, MemberRole};

use crate::common::Clients;
use crate::common::identity::member;

use MemberRole::{Admin, Employee, Manager, Owner};

fn name(role: MemberRole) -> &'static str {
    match role {
        Owner => "OWNER",
        Admin => "ADMIN",
        Manager => "MANAGER",
        Employee => "EMPLOYEE",
        MemberRole::Unspecified => "UNSPECIFIED",
    }
}

fn show(role: Option<MemberRole>) -> &'static str {
    role.map_or("none", name)
}

async fn catalog_role(db: &mut sqlx::PgConnection, tenant: &str, user: &str) -> Option<MemberRole> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM tenantd.user_tenants WHERE tenant_id = $1::uuid AND user_id = $2::uuid",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(db)
    .await
    .unwrap();
    role.map(|r| match r.as_str() {
        "OWNER" => Owner,
        "ADMIN" => Admin,
        "MANAGER" => Manager,
        "EMPLOYEE" => Employee,
        other => panic!("unknown role {other}"),
    })
}

/// Moves `user`'s membership from `old` to `new` (`None`: not a member):
/// AddMember, ChangeRole or RemoveMember.
async fn change(
    c: &mut Clients,
    tenant: &str,
    user: &str,
    old: Option<MemberRole>,
    new: Option<MemberRole>,
) -> Result<(), tonic::Status> {
    match (old, new) {
        (None, Some(role)) => c
            .users
            .add_member(member(tenant, user, role))
            .await
            .map(drop),
        (Some(_), Some(role)) => c
            .users
            .change_role(pb::ChangeRoleRequest {
                tenant_id: tenant.into(),
                user_id: user.into(),
                role: role as i32,
            })
            .await
            .map(drop),
        (Some(_), None) => c
            .users
            .remove_member(pb::RemoveMemberRequest {
                tenant_id: tenant.into(),
                user_id: user.into(),
            })
            .await
            .map(drop),
        (None, None) => unreachable!("no change"),
    }
}
