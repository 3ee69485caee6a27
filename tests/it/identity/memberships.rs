//! Memberships: roles, the last OWNER, what members and outsiders may see,
//! removal and keyed pages of members.

use tenantd::pb;
use tonic::Code;

use super::create_user;
use crate::common::TestServer;
use crate::common::identity::{add_member, log_in, member, tenant_owned_by};

fn by_id(id: &str) -> pb::GetTenantRequest {
    pb::GetTenantRequest {
        selector: Some(pb::get_tenant_request::Selector::Id(id.to_owned())),
    }
}

#[tokio::test]
async fn memberships_roles_and_the_last_owner() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let owner = create_user(&mut c, "Olive", "olive@example.com").await;
    let staff = create_user(&mut c, "Sam", "sam@example.com").await;
    let t = tenant_owned_by(&mut c, "members", &owner.id).await;
    let role_of = |user: &pb::User, role: pb::MemberRole| pb::ChangeRoleRequest {
        tenant_id: t.id.clone(),
        user_id: user.id.clone(),
        role: role as i32,
    };

    let members = c
        .users
        .list_members(pb::ListMembersRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 1);
    assert_eq!(
        members.members[0].role,
        pb::MemberRole::Owner as i32,
        "CreateTenant made the owner"
    );

    add_member(&mut c, &t.id, &staff.id, pb::MemberRole::Employee).await;
    let err = c
        .users
        .change_role(role_of(&owner, pb::MemberRole::Admin))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "the last owner cannot be demoted"
    );
    let err = c
        .users
        .remove_member(pb::RemoveMemberRequest {
            tenant_id: t.id.clone(),
            user_id: owner.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "nor removed");

    // An employee's token reads the tenant but may not change it or its members.
    let emp = log_in(&mut c, "sam@example.com", &t.id).await;
    assert_eq!(
        emp.principal.as_ref().unwrap().role,
        pb::MemberRole::Employee as i32
    );
    let mut as_emp = server.clients_as(&emp.access_token).await;
    as_emp.tenants.get_tenant(by_id(&t.id)).await.unwrap();
    let err = as_emp
        .tenants
        .update_tenant(pb::UpdateTenantRequest {
            id: t.id.clone(),
            name: Some("Mine".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let check = c
        .sessions
        .check_permission(pb::CheckPermissionRequest {
            access_token: emp.access_token.clone(),
            tenant_id: t.id.clone(),
            permission: "data:write".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert!(check.reason.contains("EMPLOYEE"), "{}", check.reason);

    // The owner promotes them; a fresh token carries the new role.
    let own = log_in(&mut c, "olive@example.com", &t.id).await;
    let mut as_owner = server.clients_as(&own.access_token).await;
    as_owner
        .users
        .change_role(role_of(&staff, pb::MemberRole::Owner))
        .await
        .unwrap();
    c.users
        .change_role(role_of(&owner, pb::MemberRole::Admin))
        .await
        .expect("with two owners one may step down");
    let tenants = c
        .users
        .list_user_tenants(pb::ListUserTenantsRequest {
            user_id: staff.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenants.memberships[0].role, pb::MemberRole::Owner as i32);
    // Users outside the tenant see nothing of it.
    create_user(&mut c, "Otto", "otto@example.com").await;
    let out = log_in(&mut c, "otto@example.com", "").await;
    let mut as_out = server.clients_as(&out.access_token).await;
    let err = as_out.tenants.get_tenant(by_id(&t.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nor whether a tenant exists at all.
    let err = as_out
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Slug(
                "no-such-tenant".into(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn members_can_be_removed_and_members_pages_are_keyed() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("paging").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = create_user(&mut c, &format!("M{i}"), &format!("m{i}@example.com")).await;
        add_member(&mut c, &t.id, &u.id, pb::MemberRole::Manager).await;
        ids.push(u.id);
    }
    let err = c
        .users
        .add_member(member(&t.id, &ids[0], pb::MemberRole::Admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .users
            .list_members(pb::ListMembersRequest {
                tenant_id: t.id.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.members.into_iter().map(|m| m.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    c.users
        .remove_member(pb::RemoveMemberRequest {
            tenant_id: t.id.clone(),
            user_id: ids[2].clone(),
        })
        .await
        .unwrap();
    let left = c
        .users
        .list_user_tenants(pb::ListUserTenantsRequest {
            user_id: ids[2].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.memberships.is_empty());
}
