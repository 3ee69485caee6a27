//! Who may change whose membership, and how soon a change binds every
//! replica: the role ceiling (a user adds, changes or removes only
//! memberships below their own role; only an OWNER touches OWNERs; service
//! keys are exempt; the last OWNER stays), and removals, demotions,
//! deactivations, suspensions and archivals that stop a token issued before
//! them from granting the old rights on another replica within the 5 s
//! revocation window — and from ever restoring them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::Replica;
use common::{Clients, TestServer, admin_key, authed_channel, new_tenant, test_config};
use tenantd::pb::{self, MemberRole, login_request::Identifier};
use tonic::Code;

use MemberRole::{Admin, Employee, Manager, Owner};

const PASSWORD: &str = "correct horse battery staple";

/// The revocation window (every replica reloads every 5 s) and slack for a
/// busy test machine.
const WINDOW: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);

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

/// Clients of every service at `endpoint` with `credential`.
async fn clients_at(endpoint: &str, credential: &str) -> Clients {
    let ch = authed_channel(endpoint, credential).await;
    Clients {
        tenants: pb::tenant_service_client::TenantServiceClient::new(ch.clone()),
        migrations: pb::migration_service_client::MigrationServiceClient::new(ch.clone()),
        users: pb::user_service_client::UserServiceClient::new(ch.clone()),
        sessions: pb::session_service_client::SessionServiceClient::new(ch.clone()),
        data: pb::tenant_data_service_client::TenantDataServiceClient::new(ch),
    }
}

/// A new user with a unique e-mail address; returns (id, email).
async fn new_user(c: &mut Clients, first: &str) -> (String, String) {
    let email = format!(
        "{first}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let u = c
        .users
        .create_user(pb::CreateUserRequest {
            first_name: first.into(),
            last_name: "Tester".into(),
            email: email.clone(),
            phone: String::new(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (u.id, email)
}

async fn new_tenant_owned_by(c: &mut Clients, prefix: &str, owner: &str) -> pb::Tenant {
    let mut request = new_tenant(prefix);
    request.owner_user_id = owner.to_owned();
    c.tenants.create_tenant(request).await.unwrap().into_inner()
}

async fn add(c: &mut Clients, tenant: &str, user: &str, role: MemberRole) {
    c.users
        .add_member(pb::AddMemberRequest {
            tenant_id: tenant.into(),
            user_id: user.into(),
            role: role as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("add {user} as {}: {e:?}", name(role)));
}

async fn login(c: &mut Clients, email: &str, tenant: &str) -> pb::LoginResponse {
    c.sessions
        .login(pb::LoginRequest {
            identifier: Some(Identifier::Email(email.into())),
            password: PASSWORD.into(),
            tenant_id: tenant.into(),
            device: "test".into(),
            client_ip: "192.0.2.20".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The user's role in the tenant as the catalog has it.
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
            .add_member(pb::AddMemberRequest {
                tenant_id: tenant.into(),
                user_id: user.into(),
                role: role as i32,
            })
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

/// One membership change by a user of role `caller` on another member.
#[derive(Debug, Clone, Copy)]
struct Case {
    caller: MemberRole,
    /// The target's role before; `None`: not a member (AddMember).
    old: Option<MemberRole>,
    /// The target's role asked for; `None`: RemoveMember.
    new: Option<MemberRole>,
    allowed: bool,
}

/// Every (caller role × target's old role × target's new role), written out:
/// an OWNER may do anything; an ADMIN only below ADMIN (MANAGER, EMPLOYEE)
/// on both sides; MANAGERs and EMPLOYEEs lack members:manage.
#[rustfmt::skip]
const CASES: [Case; 96] = [
    Case { caller: Owner, old: None, new: Some(Owner), allowed: true },
    Case { caller: Owner, old: None, new: Some(Admin), allowed: true },
    Case { caller: Owner, old: None, new: Some(Manager), allowed: true },
    Case { caller: Owner, old: None, new: Some(Employee), allowed: true },
    Case { caller: Owner, old: Some(Owner), new: Some(Owner), allowed: true },
    Case { caller: Owner, old: Some(Owner), new: Some(Admin), allowed: true },
    Case { caller: Owner, old: Some(Owner), new: Some(Manager), allowed: true },
    Case { caller: Owner, old: Some(Owner), new: Some(Employee), allowed: true },
    Case { caller: Owner, old: Some(Owner), new: None, allowed: true },
    Case { caller: Owner, old: Some(Admin), new: Some(Owner), allowed: true },
    Case { caller: Owner, old: Some(Admin), new: Some(Admin), allowed: true },
    Case { caller: Owner, old: Some(Admin), new: Some(Manager), allowed: true },
    Case { caller: Owner, old: Some(Admin), new: Some(Employee), allowed: true },
    Case { caller: Owner, old: Some(Admin), new: None, allowed: true },
    Case { caller: Owner, old: Some(Manager), new: Some(Owner), allowed: true },
    Case { caller: Owner, old: Some(Manager), new: Some(Admin), allowed: true },
    Case { caller: Owner, old: Some(Manager), new: Some(Manager), allowed: true },
    Case { caller: Owner, old: Some(Manager), new: Some(Employee), allowed: true },
    Case { caller: Owner, old: Some(Manager), new: None, allowed: true },
    Case { caller: Owner, old: Some(Employee), new: Some(Owner), allowed: true },
    Case { caller: Owner, old: Some(Employee), new: Some(Admin), allowed: true },
    Case { caller: Owner, old: Some(Employee), new: Some(Manager), allowed: true },
    Case { caller: Owner, old: Some(Employee), new: Some(Employee), allowed: true },
    Case { caller: Owner, old: Some(Employee), new: None, allowed: true },

    Case { caller: Admin, old: None, new: Some(Owner), allowed: false },
    Case { caller: Admin, old: None, new: Some(Admin), allowed: false },
    Case { caller: Admin, old: None, new: Some(Manager), allowed: true },
    Case { caller: Admin, old: None, new: Some(Employee), allowed: true },
    Case { caller: Admin, old: Some(Owner), new: Some(Owner), allowed: false },
    Case { caller: Admin, old: Some(Owner), new: Some(Admin), allowed: false },
    Case { caller: Admin, old: Some(Owner), new: Some(Manager), allowed: false },
    Case { caller: Admin, old: Some(Owner), new: Some(Employee), allowed: false },
    Case { caller: Admin, old: Some(Owner), new: None, allowed: false },
    Case { caller: Admin, old: Some(Admin), new: Some(Owner), allowed: false },
    Case { caller: Admin, old: Some(Admin), new: Some(Admin), allowed: false },
    Case { caller: Admin, old: Some(Admin), new: Some(Manager), allowed: false },
    Case { caller: Admin, old: Some(Admin), new: Some(Employee), allowed: false },
    Case { caller: Admin, old: Some(Admin), new: None, allowed: false },
    Case { caller: Admin, old: Some(Manager), new: Some(Owner), allowed: false },
    Case { caller: Admin, old: Some(Manager), new: Some(Admin), allowed: false },
    Case { caller: Admin, old: Some(Manager), new: Some(Manager), allowed: true },
    Case { caller: Admin, old: Some(Manager), new: Some(Employee), allowed: true },
    Case { caller: Admin, old: Some(Manager), new: None, allowed: true },
    Case { caller: Admin, old: Some(Employee), new: Some(Owner), allowed: false },
    Case { caller: Admin, old: Some(Employee), new: Some(Admin), allowed: false },
    Case { caller: Admin, old: Some(Employee), new: Some(Manager), allowed: true },
    Case { caller: Admin, old: Some(Employee), new: Some(Employee), allowed: true },
    Case { caller: Admin, old: Some(Employee), new: None, allowed: true },

    Case { caller: Manager, old: None, new: Some(Owner), allowed: false },
    Case { caller: Manager, old: None, new: Some(Admin), allowed: false },
    Case { caller: Manager, old: None, new: Some(Manager), allowed: false },
    Case { caller: Manager, old: None, new: Some(Employee), allowed: false },
    Case { caller: Manager, old: Some(Owner), new: Some(Owner), allowed: false },
    Case { caller: Manager, old: Some(Owner), new: Some(Admin), allowed: false },
    Case { caller: Manager, old: Some(Owner), new: Some(Manager), allowed: false },
    Case { caller: Manager, old: Some(Owner), new: Some(Employee), allowed: false },
    Case { caller: Manager, old: Some(Owner), new: None, allowed: false },
    Case { caller: Manager, old: Some(Admin), new: Some(Owner), allowed: false },
    Case { caller: Manager, old: Some(Admin), new: Some(Admin), allowed: false },
    Case { caller: Manager, old: Some(Admin), new: Some(Manager), allowed: false },
    Case { caller: Manager, old: Some(Admin), new: Some(Employee), allowed: false },
    Case { caller: Manager, old: Some(Admin), new: None, allowed: false },
    Case { caller: Manager, old: Some(Manager), new: Some(Owner), allowed: false },
    Case { caller: Manager, old: Some(Manager), new: Some(Admin), allowed: false },
    Case { caller: Manager, old: Some(Manager), new: Some(Manager), allowed: false },
    Case { caller: Manager, old: Some(Manager), new: Some(Employee), allowed: false },
    Case { caller: Manager, old: Some(Manager), new: None, allowed: false },
    Case { caller: Manager, old: Some(Employee), new: Some(Owner), allowed: false },
    Case { caller: Manager, old: Some(Employee), new: Some(Admin), allowed: false },
    Case { caller: Manager, old: Some(Employee), new: Some(Manager), allowed: false },
    Case { caller: Manager, old: Some(Employee), new: Some(Employee), allowed: false },
    Case { caller: Manager, old: Some(Employee), new: None, allowed: false },

    Case { caller: Employee, old: None, new: Some(Owner), allowed: false },
    Case { caller: Employee, old: None, new: Some(Admin), allowed: false },
    Case { caller: Employee, old: None, new: Some(Manager), allowed: false },
    Case { caller: Employee, old: None, new: Some(Employee), allowed: false },
    Case { caller: Employee, old: Some(Owner), new: Some(Owner), allowed: false },
    Case { caller: Employee, old: Some(Owner), new: Some(Admin), allowed: false },
    Case { caller: Employee, old: Some(Owner), new: Some(Manager), allowed: false },
    Case { caller: Employee, old: Some(Owner), new: Some(Employee), allowed: false },
    Case { caller: Employee, old: Some(Owner), new: None, allowed: false },
    Case { caller: Employee, old: Some(Admin), new: Some(Owner), allowed: false },
    Case { caller: Employee, old: Some(Admin), new: Some(Admin), allowed: false },
    Case { caller: Employee, old: Some(Admin), new: Some(Manager), allowed: false },
    Case { caller: Employee, old: Some(Admin), new: Some(Employee), allowed: false },
    Case { caller: Employee, old: Some(Admin), new: None, allowed: false },
    Case { caller: Employee, old: Some(Manager), new: Some(Owner), allowed: false },
    Case { caller: Employee, old: Some(Manager), new: Some(Admin), allowed: false },
    Case { caller: Employee, old: Some(Manager), new: Some(Manager), allowed: false },
    Case { caller: Employee, old: Some(Manager), new: Some(Employee), allowed: false },
    Case { caller: Employee, old: Some(Manager), new: None, allowed: false },
    Case { caller: Employee, old: Some(Employee), new: Some(Owner), allowed: false },
    Case { caller: Employee, old: Some(Employee), new: Some(Admin), allowed: false },
    Case { caller: Employee, old: Some(Employee), new: Some(Manager), allowed: false },
    Case { caller: Employee, old: Some(Employee), new: Some(Employee), allowed: false },
    Case { caller: Employee, old: Some(Employee), new: None, allowed: false },
];

const ROLES: [MemberRole; 4] = [Owner, Admin, Manager, Employee];

/// Runs `case` by the caller in `tenant` against `target`, whose membership
/// the admin key sets up first; returns what went wrong, if anything.
async fn run_case(
    admin: &mut Clients,
    caller: &mut Clients,
    db: &mut sqlx::PgConnection,
    tenant: &str,
    target: &str,
    case: Case,
) -> Option<String> {
    if let Some(old) = case.old {
        add(admin, tenant, target, old).await;
    }
    let outcome = change(caller, tenant, target, case.old, case.new).await;
    let now = catalog_role(db, tenant, target).await;
    let expected = if case.allowed { case.new } else { case.old };
    let mut wrong = Vec::new();
    match (&outcome, case.allowed) {
        (Ok(()), true) => {}
        (Err(e), false) if e.code() == Code::PermissionDenied => {
            if !e.message().contains(name(case.caller)) {
                wrong.push(format!("the refusal does not say why: {:?}", e.message()));
            }
        }
        (r, _) => wrong.push(format!(
            "got {:?}",
            r.as_ref().map_err(|e| (e.code(), e.message()))
        )),
    }
    if now != expected {
        wrong.push(format!(
            "the catalog says {}, not {}",
            show(now),
            show(expected)
        ));
    }
    if wrong.is_empty() {
        return None;
    }
    Some(format!(
        "{} moving a member from {} to {} (should be {}): {}",
        name(case.caller),
        show(case.old),
        show(case.new),
        if case.allowed { "allowed" } else { "denied" },
        wrong.join("; ")
    ))
}

#[tokio::test]
async fn the_role_ceiling_holds_for_every_caller_and_target_role() {
    let server = TestServer::start().await;
    let mut admin = server.clients().await;
    let mut db = server.db.connect().await;
    let (founder, _) = new_user(&mut admin, "founder").await;

    // One tenant per caller role, founded by another OWNER, with the caller
    // logged in to it.
    let mut callers = HashMap::new();
    for role in ROLES {
        let t = new_tenant_owned_by(&mut admin, "ceiling", &founder).await;
        let (caller, email) = new_user(&mut admin, name(role)).await;
        add(&mut admin, &t.id, &caller, role).await;
        let token = login(&mut admin, &email, &t.id).await.access_token;
        callers.insert(role, (t.id, server.clients_as(&token).await));
    }
    // One target per (old, new) pair, a member of each caller's tenant in turn.
    let mut targets = HashMap::new();
    for case in CASES.iter().filter(|c| c.caller == Owner) {
        let (id, _) = new_user(&mut admin, "target").await;
        targets.insert((case.old, case.new), id);
    }
    assert_eq!(targets.len(), 24, "every (old, new) pair but (none, none)");

    let mut failures = Vec::new();
    for case in CASES {
        let (tenant, caller) = callers.get_mut(&case.caller).unwrap();
        let target = &targets[&(case.old, case.new)];
        if let Some(f) = run_case(&mut admin, caller, &mut db, tenant, target, case).await {
            failures.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 96 cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A change a user asks for their own membership.
#[derive(Debug, Clone, Copy)]
struct SelfCase {
    caller: MemberRole,
    /// `None`: leave the tenant.
    new: Option<MemberRole>,
    allowed: bool,
}

/// An OWNER (with another OWNER beside them) may step down or leave; nobody
/// else touches their own membership, least of all upward.
#[rustfmt::skip]
const SELF_CASES: [SelfCase; 20] = [
    SelfCase { caller: Owner, new: Some(Owner), allowed: true },
    SelfCase { caller: Owner, new: Some(Admin), allowed: true },
    SelfCase { caller: Owner, new: Some(Manager), allowed: true },
    SelfCase { caller: Owner, new: Some(Employee), allowed: true },
    SelfCase { caller: Owner, new: None, allowed: true },
    SelfCase { caller: Admin, new: Some(Owner), allowed: false },
    SelfCase { caller: Admin, new: Some(Admin), allowed: false },
    SelfCase { caller: Admin, new: Some(Manager), allowed: false },
    SelfCase { caller: Admin, new: Some(Employee), allowed: false },
    SelfCase { caller: Admin, new: None, allowed: false },
    SelfCase { caller: Manager, new: Some(Owner), allowed: false },
    SelfCase { caller: Manager, new: Some(Admin), allowed: false },
    SelfCase { caller: Manager, new: Some(Manager), allowed: false },
    SelfCase { caller: Manager, new: Some(Employee), allowed: false },
    SelfCase { caller: Manager, new: None, allowed: false },
    SelfCase { caller: Employee, new: Some(Owner), allowed: false },
    SelfCase { caller: Employee, new: Some(Admin), allowed: false },
    SelfCase { caller: Employee, new: Some(Manager), allowed: false },
    SelfCase { caller: Employee, new: Some(Employee), allowed: false },
    SelfCase { caller: Employee, new: None, allowed: false },
];

#[tokio::test]
async fn nobody_but_an_owner_changes_their_own_membership() {
    let server = TestServer::start().await;
    let mut admin = server.clients().await;
    let mut db = server.db.connect().await;
    let (founder, _) = new_user(&mut admin, "founder").await;
    let mut failures = Vec::new();
    for role in ROLES {
        let t = new_tenant_owned_by(&mut admin, "self", &founder).await;
        let (me, email) = new_user(&mut admin, name(role)).await;
        add(&mut admin, &t.id, &me, role).await;
        let token = login(&mut admin, &email, &t.id).await.access_token;
        let mut as_me = server.clients_as(&token).await;
        for case in SELF_CASES.iter().filter(|c| c.caller == role) {
            // Back to the caller's role before each case (the admin key may).
            match catalog_role(&mut db, &t.id, &me).await {
                None => add(&mut admin, &t.id, &me, role).await,
                Some(r) if r != role => change(&mut admin, &t.id, &me, Some(r), Some(role))
                    .await
                    .unwrap(),
                Some(_) => {}
            }
            let outcome = change(&mut as_me, &t.id, &me, Some(role), case.new).await;
            let now = catalog_role(&mut db, &t.id, &me).await;
            let expected = if case.allowed { case.new } else { Some(role) };
            let code_ok = match &outcome {
                Ok(()) => case.allowed,
                Err(e) => !case.allowed && e.code() == Code::PermissionDenied,
            };
            if !code_ok || now != expected {
                failures.push(format!(
                    "{} moving themself to {}: {:?}, catalog {}",
                    name(role),
                    show(case.new),
                    outcome.map_err(|e| (e.code(), e.message().to_owned())),
                    show(now)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn the_last_owner_stays_and_service_keys_are_above_the_ceiling() {
    let server = TestServer::start().await;
    let mut admin = server.clients().await;
    let mut db = server.db.connect().await;
    let (owner, email) = new_user(&mut admin, "owner").await;
    let (other, _) = new_user(&mut admin, "other").await;
    let t = new_tenant_owned_by(&mut admin, "last", &owner).await;
    let token = login(&mut admin, &email, &t.id).await.access_token;
    let mut as_owner = server.clients_as(&token).await;

    // The only OWNER can neither step down nor leave, whoever asks.
    for who in [&mut as_owner, &mut admin] {
        for new in [Some(Admin), Some(Manager), Some(Employee), None] {
            let err = change(who, &t.id, &owner, Some(Owner), new)
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Code::FailedPrecondition,
                "{}: {err:?}",
                show(new)
            );
        }
    }
    assert_eq!(catalog_role(&mut db, &t.id, &owner).await, Some(Owner));

    // The admin key adds, promotes, demotes and removes OWNERs.
    for (old, new) in [
        (None, Some(Owner)),
        (Some(Owner), Some(Employee)),
        (Some(Employee), Some(Owner)),
        (Some(Owner), Some(Admin)),
        (Some(Admin), Some(Owner)),
        (Some(Owner), None),
    ] {
        change(&mut admin, &t.id, &other, old, new)
            .await
            .unwrap_or_else(|e| panic!("{} -> {}: {e:?}", show(old), show(new)));
        assert_eq!(catalog_role(&mut db, &t.id, &other).await, new);
    }
    // And may demote an OWNER who has another beside them.
    add(&mut admin, &t.id, &other, Owner).await;
    change(&mut admin, &t.id, &owner, Some(Owner), Some(Admin))
        .await
        .unwrap();
    assert_eq!(catalog_role(&mut db, &t.id, &owner).await, Some(Admin));
}

#[tokio::test]
async fn owners_removing_each_other_at_once_leave_one_owner() {
    let server = TestServer::start().await;
    let mut admin = server.clients().await;
    let mut db = server.db.connect().await;
    let (first, first_email) = new_user(&mut admin, "owner0").await;
    let t = new_tenant_owned_by(&mut admin, "race", &first).await;
    let mut owners = vec![(first, first_email)];
    for i in 1..4 {
        let (id, email) = new_user(&mut admin, &format!("owner{i}")).await;
        add(&mut admin, &t.id, &id, Owner).await;
        owners.push((id, email));
    }
    let mut tokens = Vec::new();
    for (_, email) in &owners {
        tokens.push(login(&mut admin, email, &t.id).await.access_token);
    }
    // Every OWNER removes or demotes every other one, all released at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(owners.len() * (owners.len() - 1)));
    let mut calls = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        for (j, (them, _)) in owners.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut me = server.clients_as(token).await;
            let (them, tenant, barrier) = (them.clone(), t.id.clone(), barrier.clone());
            let new = if (i + j) % 2 == 0 {
                None
            } else {
                Some(Employee)
            };
            calls.spawn(async move {
                barrier.wait().await;
                change(&mut me, &tenant, &them, Some(Owner), new).await
            });
        }
    }
    while let Some(outcome) = calls.join_next().await {
        if let Err(e) = outcome.unwrap() {
            assert!(
                matches!(
                    e.code(),
                    Code::PermissionDenied | Code::FailedPrecondition | Code::NotFound
                ),
                "a refusal, not a failure: {e:?}"
            );
        }
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenantd.user_tenants WHERE tenant_id = $1::uuid AND role = 'OWNER'",
    )
    .bind(&t.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(left, 1, "exactly one OWNER is left");
}

// ---- changes reach every replica ----

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
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
        sql: "INSERT INTO locations (name) VALUES (gen_random_uuid()::text)".into(),
        ..Default::default()
    }
}

fn read_call(tenant: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
        sql: "SELECT count(*) FROM locations".into(),
        read_only: true,
        ..Default::default()
    }
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
    let mut on_b = clients_at(&b.endpoint(), admin_key()).await;
    let mut db = server.db.connect().await;

    let (founder, _) = new_user(&mut on_a, "founder").await;
    let (victim, email) = new_user(&mut on_a, "victim").await;
    let (bystander, _) = new_user(&mut on_a, "bystander").await;
    let t = new_tenant_owned_by(&mut on_a, "reach", &founder).await;
    add(&mut on_a, &t.id, &victim, Owner).await;
    // Log in a second after joining, so that the token's role is trusted
    // (not older than the membership) and only the change can end that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let session = login(&mut on_a, &email, &t.id).await;
    let token = session.access_token.clone();
    let mut victim_b = clients_at(&b.endpoint(), &token).await;

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
            .execute(read_call(&t.id))
            .await
            .expect("an EMPLOYEE reads data");
    }
    // A token issued now for the same session carries what the catalog says.
    let refreshed = on_b
        .sessions
        .refresh(pb::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
            client_ip: String::new(),
        })
        .await;
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
    let t = new_tenant_owned_by(&mut c, "fresh", &founder).await;
    let (u, email) = new_user(&mut c, "member").await;
    add(&mut c, &t.id, &u, Admin).await;
    let mut refresh_token = login(&mut c, &email, &t.id).await.refresh_token;
    // Every role in turn, then out of the tenant: each refresh says the current one.
    for role in [Employee, Manager, Owner, Admin] {
        change(&mut c, &t.id, &u, Some(Admin), Some(role))
            .await
            .unwrap();
        let fresh = c
            .sessions
            .refresh(pb::RefreshRequest {
                refresh_token: refresh_token.clone(),
                client_ip: String::new(),
            })
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
        .refresh(pb::RefreshRequest {
            refresh_token,
            client_ip: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "no longer a member: no token"
    );
}
