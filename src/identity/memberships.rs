//! Memberships: who belongs to a tenant with which role, the role ceiling
//! that bounds who may change them, and a caller's current access.

use serde_json::json;
use uuid::Uuid;

use super::service::{Identity, IdentityError, Principal, db};
use crate::catalog::audit::Audited;
use crate::catalog::identity::{self as store, AccessRow, MemberRow};
use crate::domain::identity::{Access, Permission, Role, UserStatus, check_membership_change};
use crate::domain::{TenantId, TenantStatus};

/// What a new access token says about its tenant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Binding {
    pub(super) tenant: Uuid,
    pub(super) role: Role,
    /// Whether the tenant is ACTIVE: only then does the token name the role
    /// (a token trusted for its role stands for an ACTIVE tenant's rights).
    pub(super) active: bool,
}

/// The access an [`AccessRow`] describes, if the user is active and the row
/// makes sense; otherwise none (fail closed).
fn access_of(row: AccessRow) -> Option<Access> {
    if !row.user_active {
        return None;
    }
    Some(Access {
        role: row.role,
        tenant_status: row.tenant_status,
    })
}

impl Identity {
    //
    // `by` is the acting user; `None` for a service key, which is above the
    // role ceiling (but not the last-OWNER rule).

    /// Checks, in the change's transaction, that the acting user may move
    /// a membership of `tenant` from `old` to `new`: their current role (not
    /// their token's) in an ACTIVE tenant, under the role ceiling.
    async fn check_actor(
        tx: &mut sqlx::PgConnection,
        tenant: Uuid,
        by: Option<Uuid>,
        old: Option<Role>,
        new: Option<Role>,
    ) -> Result<(), IdentityError> {
        let Some(by) = by else {
            return Ok(());
        };
        let access = store::access(tx, tenant, by)
            .await
            .map_err(db("read the acting user's role"))?
            .and_then(access_of)
            .ok_or_else(|| IdentityError::Forbidden("not a member of this tenant".into()))?;
        access
            .check(Permission::MembersManage)
            .map_err(IdentityError::Forbidden)?;
        check_membership_change(access.role, old, new).map_err(IdentityError::Forbidden)
    }

    pub async fn add_member(
        &self,
        tenant: Uuid,
        user: Uuid,
        role: Role,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<MemberRow, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin add member"))?;
        let live = store::lock_tenant_members(&mut tx, tenant)
            .await
            .map_err(db("lock tenant"))?;
        Self::check_actor(&mut tx, tenant, by, None, Some(role)).await?;
        if matches!(live, None | Some(TenantStatus::Purged)) {
            return Err(IdentityError::NotFound("tenant"));
        }
        let user_row = store::get_user(&mut tx, user)
            .await
            .map_err(db("look up user"))?
            .ok_or(IdentityError::NotFound("user"))?;
        if user_row.status != UserStatus::Active {
            return Err(IdentityError::Precondition(
                "the user is deactivated".into(),
            ));
        }
        let member = store::insert_member(&mut tx, tenant, user, role)
            .await
            .map_err(db("add member"))?
            .ok_or_else(|| {
                IdentityError::AlreadyExists("the user is a member of this tenant already".into())
            })?;
        self.commit_member_change(
            tx,
            tenant,
            user,
            actor,
            "member.add",
            json!({ "user_id": user, "role": role.as_str() }),
        )
        .await?;
        Ok(member)
    }

    pub async fn change_role(
        &self,
        tenant: Uuid,
        user: Uuid,
        role: Role,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<MemberRow, IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin change role"))?;
        let current = Self::lock_member_for_change(&mut tx, tenant, user, by, Some(role)).await?;
        let member = store::set_role(&mut tx, tenant, user, role)
            .await
            .map_err(db("change role"))?
            .ok_or(IdentityError::NotFound("membership"))?;
        self.commit_member_change(
            tx,
            tenant,
            user,
            actor,
            "member.change_role",
            json!({ "user_id": user, "from": current.role.as_str(), "to": role.as_str() }),
        )
        .await?;
        Ok(member)
    }

    pub async fn remove_member(
        &self,
        tenant: Uuid,
        user: Uuid,
        actor: &str,
        by: Option<Uuid>,
    ) -> Result<(), IdentityError> {
        let mut tx = Audited::begin(&self.pool)
            .await
            .map_err(db("begin remove member"))?;
        let current = Self::lock_member_for_change(&mut tx, tenant, user, by, None).await?;
        store::delete_member(&mut tx, tenant, user)
            .await
            .map_err(db("remove member"))?;
        self.commit_member_change(
            tx,
            tenant,
            user,
            actor,
            "member.remove",
            json!({ "user_id": user, "role": current.role.as_str() }),
        )
        .await
    }

    /// Locks the tenant's memberships and its owners, reads `user`'s
    /// membership, and checks that `by` may move it to `new` (`None`:
    /// remove it) and that the tenant keeps an owner.
    async fn lock_member_for_change(
        tx: &mut Audited,
        tenant: Uuid,
        user: Uuid,
        by: Option<Uuid>,
        new: Option<Role>,
    ) -> Result<MemberRow, IdentityError> {
        store::lock_tenant_members(tx, tenant)
            .await
            .map_err(db("lock tenant"))?;
        let owners = store::lock_owners(tx, tenant)
            .await
            .map_err(db("lock owners"))?;
        let current = store::get_member(tx, tenant, user)
            .await
            .map_err(db("get member"))?;
        Self::check_actor(tx, tenant, by, current.as_ref().map(|m| m.role), new).await?;
        let current = current.ok_or(IdentityError::NotFound("membership"))?;
        if current.role == Role::Owner && new != Some(Role::Owner) && owners <= 1 {
            return Err(IdentityError::LastOwner);
        }
        Ok(current)
    }

    /// Notes the membership change (tokens naming the old role stop being
    /// trusted for it) and commits it with its audit event.
    async fn commit_member_change(
        &self,
        mut tx: Audited,
        tenant: Uuid,
        user: Uuid,
        actor: &str,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), IdentityError> {
        let changed = store::note_membership_change(&mut tx, tenant, user)
            .await
            .map_err(db("note membership change"))?;
        tx.commit(actor, action, &format!("tenant:{tenant}"), &details)
            .await
            .map_err(db("commit membership change"))?;
        self.revocations.membership_changed(tenant, user, changed);
        Ok(())
    }

    pub async fn list_members(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        size: usize,
    ) -> Result<(Vec<MemberRow>, Option<Uuid>), IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        let mut rows = store::list_members(&mut c, tenant, after, size as i64 + 1)
            .await
            .map_err(db("list members"))?;
        let next = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|m| m.user_id)
        } else {
            None
        };
        Ok((rows, next))
    }

    pub async fn user_tenants(&self, user: Uuid) -> Result<Vec<MemberRow>, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        store::user_tenants(&mut c, user)
            .await
            .map_err(db("list user tenants"))
    }

    /// What `user` holds in `tenant` by the catalog now; `None` when not a
    /// member (or deactivated).
    async fn access_in_catalog(
        &self,
        tenant: Uuid,
        user: Uuid,
    ) -> Result<Option<Access>, IdentityError> {
        let mut c = self
            .pool
            .acquire()
            .await
            .map_err(db("acquire catalog connection"))?;
        Ok(store::access(&mut c, tenant, user)
            .await
            .map_err(db("read the user's role"))?
            .and_then(access_of))
    }

    /// What the principal holds in `tenant` for deciding `permission`: the
    /// token's role while it is current and bound to that tenant (then the
    /// tenant is ACTIVE), except for permissions that change authority; the
    /// catalog's otherwise.
    pub async fn access(
        &self,
        p: &Principal,
        tenant: Uuid,
        permission: Permission,
    ) -> Result<Option<Access>, IdentityError> {
        match p.role {
            Some(role) if p.tenant_id == Some(tenant) && !permission.changes_authority() => {
                Ok(Some(Access {
                    role,
                    tenant_status: TenantStatus::Active,
                }))
            }
            _ => self.access_in_catalog(tenant, p.user_id).await,
        }
    }

    /// The principal with its role read from the catalog when the token's
    /// own is not current (or it named none).
    pub async fn with_current_role(&self, mut p: Principal) -> Result<Principal, IdentityError> {
        if let (Some(tenant), None) = (p.tenant_id, p.role) {
            p.role = self
                .access_in_catalog(tenant, p.user_id)
                .await?
                .map(|a| a.role);
        }
        Ok(p)
    }

    /// A tenant's status changed here: its members' tokens stop vouching for
    /// their roles at once on this replica (elsewhere at the next reload).
    pub async fn tenant_status_changed(&self, tenant: TenantId) {
        let at = match self.pool.acquire().await {
            Ok(mut c) => crate::catalog::tenants::status_changed_at(&mut c, tenant).await,
            Err(e) => Err(e),
        };
        match at {
            Ok(Some(at)) => self.revocations.tenant_changed(*tenant.as_uuid(), at),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "cannot read the tenant's status change; other replicas' reload will bring it")
            }
        }
    }

    /// The user's role in `tenant` for a new token, with the tenant's row
    /// share-locked until the transaction ends: a membership or status
    /// change waits for it, so is later than the token. `None` when not a
    /// member (or deactivated).
    pub(super) async fn binding(
        tx: &mut sqlx::PgConnection,
        tenant: Uuid,
        user: Uuid,
    ) -> Result<Option<Binding>, IdentityError> {
        Ok(store::lock_access(tx, tenant, user)
            .await
            .map_err(db("read the user's role"))?
            .and_then(access_of)
            .map(|a| Binding {
                tenant,
                role: a.role,
                active: a.tenant_status == TenantStatus::Active,
            }))
    }
}
