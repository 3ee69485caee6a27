//! How soon a change binds every replica: removals, demotions,
//! deactivations, suspensions and archivals stop a token issued before them
//! from granting the old rights on another replica within the 5 s
//! revocation window — and from ever restoring them.

use std::time::{Duration, Instant};

use tenantd::pb::{self, MemberRole};
use tonic::Code;

use super::{catalog_role, change, name};
use crate::common::data::{exec, read};
use crate::common::fleet::Replica;
use crate::common::identity::{add_member, log_in, new_user, refresh, tenant_owned_by};
use crate::common::{Clients, TestServer, clients_at, clients_with, test_config};

use MemberRole::{Admin, Employee, Manager, Owner};

/// The revocation window (every replica reloads every 5 s) and slack for a
/// busy test machine.
const WINDOW: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);

/// What happens to the victim, an OWNER beside the tenant's founder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    RemoveMember,
    Demote,
    DeactivateUser,
    SuspendTenant,
    ArchiveTenant,
}

fn write_call(tenant: &str) -> pb::ExecuteRequest {
    exec(
        tenant,
        "INSERT INTO locations (name) VALUES (gen_random_uuid()::text)",
        vec![],
    )
}

async fn allowed(admin: &mut Clients, token: &str, tenant: &str, permission: &str) -> bool {
    match admin
        .sessions
        .check_permission(pb::CheckPermissionRequest {
            access_token: token.into(),
            tenant_id: tenant.into(),
            permission: permission.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().allowed,
        Err(e) if e.code() == Code::Unauthenticated => false,
        Err(e) => panic!("CheckPermission {permission}: {e:?}"),
    }
}

/// Refused for want of rights (or of a valid credential), not failed.
fn refused<T>(r: &Result<T, tonic::Status>) -> bool {
    match r {
        Ok(_) => false,
        Err(e) => matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
    }
}

/// The victim logs in on replica A; the change is made on A with the admin
/// key; on replica B the victim's token at once cannot restore anything,
/// and within the window no longer writes data, reads members or holds
/// members:manage, tenant:update or data:write.
async fn a_change_reaches_the_other_replica(change_kind: Change) {
    let server = TestServer::start().await;
    let b = Replica::start(test_config(&server.db)).await;
    let mut on_a = server.clients().await;
    let mut on_b = clients_at(&b.endpoint()).await;
    let mut db = server.db.connect().await;

    let (founder, _) = new_user(&mut on_a, "founder").await;
    let (victim, email) = new_user(&mut on_a, "victim").await;
    let (bystander, _) = new_user(&mut on_a, "bystander").await;
    let t = tenant_owned_by(&mut on_a, "reach", &founder).await;
    add_member(&mut on_a, &t.id, &victim, Owner).await;
    // Log in a second after joining, so that the token's role is trusted
    // (not older than the membership) and only the change can end that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let session = log_in(&mut on_a, &email, &t.id).await;
    let token = session.access_token.clone();
    let mut victim_b = clients_with(&b.endpoint(), &token).await;

    // Before: every right of an OWNER, on B too.
    victim_b
        .data
        .execute(write_call(&t.id))
        .await
        .expect("an OWNER writes");
    victim_b
        .users
        .list_members(pb::ListMembersRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .expect("an OWNER reads the members");
    for p in [
        "members:manage",
        "tenant:update",
        "tenant:delete",
        "data:write",
    ] {
        assert!(
            allowed(&mut on_b, &token, &t.id, p).await,
            "{p} before the change"
        );
    }

    let t0 = Instant::now();
    match change_kind {
        Change::RemoveMember => change(&mut on_a, &t.id, &victim, Some(Owner), None)
            .await
            .unwrap(),
        Change::Demote => change(&mut on_a, &t.id, &victim, Some(Owner), Some(Employee))
            .await
            .unwrap(),
        Change::DeactivateUser => {
            on_a.users
                .deactivate_user(pb::DeactivateUserRequest {
                    id: victim.clone(),
                    reason: "left".into(),
                })
                .await
                .unwrap();
        }
        Change::SuspendTenant => {
            on_a.tenants
                .suspend_tenant(pb::TenantLifecycleRequest {
                    id: t.id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        Change::ArchiveTenant => {
            on_a.tenants
                .archive_tenant(pb::TenantLifecycleRequest {
                    id: t.id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let role_after = catalog_role(&mut db, &t.id, &victim).await;

    // At once, on B: no way back with the old token, nor any member change.
    let attempts = [
        (
            "restore the membership",
            change(&mut victim_b, &t.id, &victim, None, Some(Owner)).await,
        ),
        (
            "restore the role",
            change(&mut victim_b, &t.id, &victim, role_after, Some(Owner)).await,
        ),
        (
            "demote the founder",
            change(&mut victim_b, &t.id, &founder, Some(Owner), Some(Employee)).await,
        ),
        (
            "add someone",
            change(&mut victim_b, &t.id, &bystander, None, Some(Admin)).await,
        ),
    ];
    for (what, outcome) in attempts {
        assert!(refused(&outcome), "{change_kind:?}: {what}: {outcome:?}");
    }
    let resume = victim_b
        .tenants
        .resume_tenant(pb::TenantLifecycleRequest {
            id: t.id.clone(),
            ..Default::default()
        })
        .await;
    assert!(refused(&resume), "{change_kind:?}: resume: {resume:?}");
    let purge = victim_b
        .tenants
        .purge_tenant(pb::PurgeTenantRequest {
            id: t.id.clone(),
            confirm_slug: t.slug.clone(),
            ..Default::default()
        })
        .await;
    assert!(refused(&purge), "{change_kind:?}: purge: {purge:?}");
    let rename = victim_b
        .tenants
        .update_tenant(pb::UpdateTenantRequest {
            id: t.id.clone(),
            name: Some("Mine".into()),
            ..Default::default()
        })
        .await;
    assert!(refused(&rename), "{change_kind:?}: rename: {rename:?}");
    assert_eq!(
        catalog_role(&mut db, &t.id, &victim).await,
        role_after,
        "{change_kind:?}: nothing restored"
    );
    assert_eq!(catalog_role(&mut db, &t.id, &founder).await, Some(Owner));
    assert_eq!(catalog_role(&mut db, &t.id, &bystander).await, None);

    // Within the window, on B: the old rights are gone.
    let deadline = t0 + WINDOW + SLACK;
    loop {
        let writes = !refused(&victim_b.data.execute(write_call(&t.id)).await);
        let mut held = Vec::new();
        for p in [
            "members:manage",
            "tenant:update",
            "tenant:delete",
            "data:write",
            "members:read",
        ] {
            if allowed(&mut on_b, &token, &t.id, p).await {
                held.push(p);
            }
        }
        if change_kind == Change::SuspendTenant || change_kind == Change::ArchiveTenant {
            // A member of a tenant that is not ACTIVE keeps reading the members.
            held.retain(|p| *p != "members:read");
        }
        if !writes && held.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{change_kind:?}: after {:?} the old token still writes data ({writes}) or holds {held:?} on B",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What is left is exactly what the catalog now says.
    let reads_tenant = victim_b
        .tenants
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(t.id.clone())),
        })
        .await;
    match change_kind {
        Change::RemoveMember | Change::DeactivateUser => {
            assert!(refused(&reads_tenant), "{change_kind:?}: no reads left");
            assert!(!allowed(&mut on_b, &token, &t.id, "tenant:read").await);
        }
        Change::Demote | Change::SuspendTenant | Change::ArchiveTenant => {
            reads_tenant.expect("still reads the tenant");
            assert!(allowed(&mut on_b, &token, &t.id, "tenant:read").await);
            assert!(allowed(&mut on_b, &token, &t.id, "data:read").await);
        }
    }
    if change_kind == Change::Demote {
        victim_b
            .data
            .execute(read(&t.id, "SELECT count(*) FROM locations"))
            .await
            .expect("an EMPLOYEE reads data");
    }
    // A token issued now for the same session carries what the catalog says.
    let refreshed = on_b.sessions.refresh(refresh(&session.refresh_token)).await;
    match change_kind {
        Change::RemoveMember | Change::DeactivateUser => {
            assert_eq!(
                refreshed.unwrap_err().code(),
                Code::Unauthenticated,
                "{change_kind:?}: no refresh"
            )
        }
        Change::Demote | Change::SuspendTenant | Change::ArchiveTenant => {
            let fresh = refreshed.unwrap().into_inner();
            let expected = if change_kind == Change::Demote {
                Employee
            } else {
                Owner
            };
            assert_eq!(fresh.principal.as_ref().unwrap().role, expected as i32);
            let p = on_b
                .sessions
                .validate_token(pb::ValidateTokenRequest {
                    access_token: fresh.access_token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                p.role, expected as i32,
                "{change_kind:?}: the refreshed token's role"
            );
            for p in [
                "data:write",
                "members:manage",
                "tenant:update",
                "tenant:delete",
            ] {
                assert!(
                    !allowed(&mut on_b, &fresh.access_token, &t.id, p).await,
                    "{change_kind:?}: refreshed token holds {p}"
                );
            }
            assert!(allowed(&mut on_b, &fresh.access_token, &t.id, "tenant:read").await);
        }
    }
    // ValidateToken on B names no role the user no longer holds.
    if let Ok(p) = on_b
        .sessions
        .validate_token(pb::ValidateTokenRequest {
            access_token: token.clone(),
        })
        .await
    {
        let p = p.into_inner();
        let now = role_after.map_or(MemberRole::Unspecified as i32, |r| r as i32);
        assert_eq!(p.role, now, "{change_kind:?}: ValidateToken's role");
    }
    b.stop().await;
}

#[tokio::test]
async fn a_removal_reaches_the_other_replica() {
    a_change_reaches_the_other_replica(Change::RemoveMember).await;
}

#[tokio::test]
async fn a_demotion_reaches_the_other_replica() {
    a_change_reaches_the_other_replica(Change::Demote).await;
}

#[tokio::test]
async fn a_deactivation_reaches_the_other_replica() {
    a_change_reaches_the_other_replica(Change::DeactivateUser).await;
}

#[tokio::test]
async fn a_suspension_reaches_the_other_replica() {
    a_change_reaches_the_other_replica(Change::SuspendTenant).await;
}

#[tokio::test]
async fn an_archival_reaches_the_other_replica() {
    a_change_reaches_the_other_replica(Change::ArchiveTenant).await;
}

#[tokio::test]
async fn refresh_reads_the_role_afresh() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let (founder, _) = new_user(&mut c, "founder").await;
    let t = tenant_owned_by(&mut c, "fresh", &founder).await;
    let (u, email) = new_user(&mut c, "member").await;
    add_member(&mut c, &t.id, &u, Admin).await;
    let mut refresh_token = log_in(&mut c, &email, &t.id).await.refresh_token;
    // Every role in turn, then out of the tenant: each refresh says the current one.
    for role in [Employee, Manager, Owner, Admin] {
        change(&mut c, &t.id, &u, Some(Admin), Some(role))
            .await
            .unwrap();
        let fresh = c
            .sessions
            .refresh(refresh(&refresh_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            fresh.principal.as_ref().unwrap().role,
            role as i32,
            "{}",
            name(role)
        );
        let p = c
            .sessions
            .validate_token(pb::ValidateTokenRequest {
                access_token: fresh.access_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.role, role as i32, "the token says {}", name(role));
        refresh_token = fresh.refresh_token;
    }
    change(&mut c, &t.id, &u, Some(Admin), None).await.unwrap();
    let err = c
        .sessions
        .refresh(refresh(&refresh_token))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "no longer a member: no token"
    );
}
