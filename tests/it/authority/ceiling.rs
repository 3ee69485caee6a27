//! The role ceiling: a user adds, changes or removes only memberships below
//! their own role; only an OWNER touches OWNERs; service keys are exempt;
//! the last OWNER stays.

use std::collections::HashMap;
use std::sync::Arc;

use tenantd::pb::MemberRole;
use tonic::Code;

use super::{catalog_role, change, name, show};
use crate::common::identity::{add_member, log_in, new_user, tenant_owned_by};
use crate::common::{Clients, TestServer};

use MemberRole::{Admin, Employee, Manager, Owner};

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
        add_member(admin, tenant, target, old).await;
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
        let t = tenant_owned_by(&mut admin, "ceiling", &founder).await;
        let (caller, email) = new_user(&mut admin, name(role)).await;
        add_member(&mut admin, &t.id, &caller, role).await;
        let token = log_in(&mut admin, &email, &t.id).await.access_token;
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
        let t = tenant_owned_by(&mut admin, "self", &founder).await;
        let (me, email) = new_user(&mut admin, name(role)).await;
        add_member(&mut admin, &t.id, &me, role).await;
        let token = log_in(&mut admin, &email, &t.id).await.access_token;
        let mut as_me = server.clients_as(&token).await;
        for case in SELF_CASES.iter().filter(|c| c.caller == role) {
            // Back to the caller's role before each case (the admin key may).
            match catalog_role(&mut db, &t.id, &me).await {
                None => add_member(&mut admin, &t.id, &me, role).await,
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
    let t = tenant_owned_by(&mut admin, "last", &owner).await;
    let token = log_in(&mut admin, &email, &t.id).await.access_token;
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
    add_member(&mut admin, &t.id, &other, Owner).await;
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
    let t = tenant_owned_by(&mut admin, "race", &first).await;
    let mut owners = vec![(first, first_email)];
    for i in 1..4 {
        let (id, email) = new_user(&mut admin, &format!("owner{i}")).await;
        add_member(&mut admin, &t.id, &id, Owner).await;
        owners.push((id, email));
    }
    let mut tokens = Vec::new();
    for (_, email) in &owners {
        tokens.push(log_in(&mut admin, email, &t.id).await.access_token);
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
