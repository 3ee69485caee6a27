//! `tenantd.v1.UserService` and `tenantd.v1.SessionService`.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::{Caller, caller, require_in_tenant, require_scope, require_self_or};
use super::convert::timestamp;
use super::pb::{self, session_service_server::SessionService, user_service_server::UserService};
use super::status;
use crate::catalog::identity::{MemberRow, UserRow};
use crate::domain::identity::{
    Email, Permission, Phone, Role, Scope, UserStatus, check_password_strength, person_name,
};
use crate::domain::{TenantId, ValidationError, Violations};
use crate::identity::{Identity, LoginInput, Principal, UserPatch};

fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    TenantId::parse(field, value)
        .map(|t| *t.as_uuid())
        .map_err(status::invalid)
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(timestamp(t))
}

fn role_from_pb(field: &str, value: i32) -> Result<Role, Status> {
    match pb::MemberRole::try_from(value) {
        Ok(pb::MemberRole::Owner) => Ok(Role::Owner),
        Ok(pb::MemberRole::Admin) => Ok(Role::Admin),
        Ok(pb::MemberRole::Manager) => Ok(Role::Manager),
        Ok(pb::MemberRole::Employee) => Ok(Role::Employee),
        _ => Err(status::invalid(ValidationError::single(
            field,
            "must be OWNER, ADMIN, MANAGER or EMPLOYEE",
        ))),
    }
}

fn role_to_pb(role: Option<Role>) -> i32 {
    (match role {
        Some(Role::Owner) => pb::MemberRole::Owner,
        Some(Role::Admin) => pb::MemberRole::Admin,
        Some(Role::Manager) => pb::MemberRole::Manager,
        Some(Role::Employee) => pb::MemberRole::Employee,
        None => pb::MemberRole::Unspecified,
    }) as i32
}

fn user_to_pb(u: UserRow) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        first_name: u.first_name,
        last_name: u.last_name,
        email: u.email.unwrap_or_default(),
        phone: u.phone.unwrap_or_default(),
        status: if u.status == UserStatus::Active {
            pb::UserStatus::Active
        } else {
            pb::UserStatus::Deactivated
        } as i32,
        version: u.version,
        created_at: ts(u.created_at),
        updated_at: ts(u.updated_at),
    }
}

fn member_to_pb(m: MemberRow) -> pb::Membership {
    pb::Membership {
        tenant_id: m.tenant_id.to_string(),
        user_id: m.user_id.to_string(),
        role: role_to_pb(Some(m.role)),
        created_at: ts(m.created_at),
        updated_at: ts(m.updated_at),
    }
}

fn principal_to_pb(p: &Principal) -> pb::Principal {
    pb::Principal {
        user_id: p.user_id.to_string(),
        session_id: p.session_id.to_string(),
        tenant_id: p.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
        role: role_to_pb(p.role),
        expires_at: ts(p.expires_at),
    }
}

fn optional_email(field: &str, value: &str) -> Result<Option<Email>, ValidationError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        Email::parse(field, value).map(Some)
    }
}

fn optional_phone(field: &str, value: &str) -> Result<Option<Phone>, ValidationError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        Phone::parse(field, value).map(Some)
    }
}

fn client_ip(field: &str, value: &str) -> Result<Option<std::net::IpAddr>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        status::invalid(ValidationError::single(
            field,
            "must be an IPv4 or IPv6 address",
        ))
    })
}

/// Users, memberships, audit verification.
pub struct UserApi {
    identity: Identity,
}

impl UserApi {
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }

    /// The tenant and user a membership call names, once the caller may
    /// manage that tenant's members.
    async fn membership(
        &self,
        who: &Caller,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<(Uuid, Uuid), Status> {
        let (tenant, user) = (uuid("tenant_id", tenant_id)?, uuid("user_id", user_id)?);
        require_in_tenant(
            &self.identity,
            who,
            Scope::IdentityAdmin,
            tenant,
            Permission::MembersManage,
        )
        .await?;
        Ok((tenant, user))
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::IdentityAdmin)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let first = v.check(person_name("first_name", &r.first_name));
        let last = v.check(person_name("last_name", &r.last_name));
        let email = v.check(optional_email("email", &r.email)).flatten();
        let phone = v.check(optional_phone("phone", &r.phone)).flatten();
        if r.email.trim().is_empty() && r.phone.trim().is_empty() {
            v.add(
                "email",
                "give an e-mail address or a phone number (or both)",
            );
        }
        v.check(check_password_strength("password", &r.password));
        v.finish().map_err(status::invalid)?;
        let (Some(first), Some(last)) = (first, last) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        let user = self
            .identity
            .create_user(first, last, email, phone, &r.password, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(user_to_pb(user)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&request)?;
        let id = uuid("id", &request.get_ref().id)?;
        require_self_or(&who, Scope::IdentityAdmin, id)?;
        Ok(Response::new(user_to_pb(
            self.identity.get_user(id).await.map_err(status::identity)?,
        )))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let id = uuid("id", &r.id)?;
        require_self_or(&who, Scope::IdentityAdmin, id)?;
        let mut v = Violations::new();
        let patch = UserPatch {
            first_name: r
                .first_name
                .as_deref()
                .and_then(|n| v.check(person_name("first_name", n))),
            last_name: r
                .last_name
                .as_deref()
                .and_then(|n| v.check(person_name("last_name", n))),
            email: r
                .email
                .as_deref()
                .and_then(|e| v.check(optional_email("email", e))),
            phone: r
                .phone
                .as_deref()
                .and_then(|p| v.check(optional_phone("phone", p))),
            expected_version: r.expected_version,
        };
        v.finish().map_err(status::invalid)?;
        let current = current_password_of(&who, patch.changes_login(), &r.current_password)?;
        let user = self
            .identity
            .update_user(id, patch, current, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(user_to_pb(user)))
    }

    async fn deactivate_user(
        &self,
        request: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::IdentityAdmin)?;
        let r = request.into_inner();
        let id = uuid("id", &r.id)?;
        let user = self
            .identity
            .deactivate_user(id, &r.reason, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(user_to_pb(user)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let id = uuid("user_id", &r.user_id)?;
        require_self_or(&who, Scope::IdentityAdmin, id)?;
        check_password_strength("new_password", &r.new_password).map_err(status::invalid)?;
        let current = current_password_of(&who, true, &r.current_password)?;
        let keep = match &who {
            Caller::User(p) => Some(p.session_id),
            Caller::Service(_) => None,
        };
        let n = self
            .identity
            .change_password(id, current, &r.new_password, keep, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::ChangePasswordResponse {
            sessions_revoked: n as i32,
        }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let (tenant, user) = self.membership(&who, &r.tenant_id, &r.user_id).await?;
        let role = role_from_pb("role", r.role)?;
        let m = self
            .identity
            .add_member(tenant, user, role, &who.actor(), who.user_id())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(member_to_pb(m)))
    }

    async fn change_role(
        &self,
        request: Request<pb::ChangeRoleRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let (tenant, user) = self.membership(&who, &r.tenant_id, &r.user_id).await?;
        let role = role_from_pb("role", r.role)?;
        let m = self
            .identity
            .change_role(tenant, user, role, &who.actor(), who.user_id())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(member_to_pb(m)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let (tenant, user) = self.membership(&who, &r.tenant_id, &r.user_id).await?;
        self.identity
            .remove_member(tenant, user, &who.actor(), who.user_id())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let tenant = uuid("tenant_id", &r.tenant_id)?;
        let size = match r.page_size {
            0 => 100,
            n if (1..=1000).contains(&n) => n as usize,
            _ => {
                return Err(status::invalid(ValidationError::single(
                    "page_size",
                    "must be between 1 and 1000",
                )));
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(uuid("page_token", &r.page_token)?)
        };
        require_in_tenant(
            &self.identity,
            &who,
            Scope::IdentityAdmin,
            tenant,
            Permission::MembersRead,
        )
        .await?;
        let (rows, next) = self
            .identity
            .list_members(tenant, after, size)
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::ListMembersResponse {
            members: rows.into_iter().map(member_to_pb).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_user_tenants(
        &self,
        request: Request<pb::ListUserTenantsRequest>,
    ) -> Result<Response<pb::ListUserTenantsResponse>, Status> {
        let who = caller(&request)?;
        let user = uuid("user_id", &request.get_ref().user_id)?;
        require_self_or(&who, Scope::IdentityAdmin, user)?;
        let rows = self
            .identity
            .user_tenants(user)
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::ListUserTenantsResponse {
            memberships: rows.into_iter().map(member_to_pb).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        require_scope(&caller(&request)?, Scope::IdentityAdmin)?;
        let v = self
            .identity
            .verify_audit()
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::VerifyAuditResponse {
            ok: v.first_broken.is_none(),
            events_checked: v.checked,
            first_broken_seq: v.first_broken.unwrap_or(0),
        }))
    }
}

/// Logins, refreshes, validation.
pub struct SessionApi {
    identity: Identity,
}

impl SessionApi {
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }
}

fn issued_to_pb(i: crate::identity::Issued) -> pb::LoginResponse {
    pb::LoginResponse {
        access_token: i.access_token,
        access_expires_at: ts(i.access_expires_at),
        refresh_token: i.refresh_token,
        refresh_expires_at: ts(i.refresh_expires_at),
        session_id: i.principal.session_id.to_string(),
        principal: Some(principal_to_pb(&i.principal)),
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::SessionsValidate)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let (email, phone) = match &r.identifier {
            Some(pb::login_request::Identifier::Email(e)) => {
                (v.check(Email::parse("email", e)), None)
            }
            Some(pb::login_request::Identifier::Phone(p)) => {
                (None, v.check(Phone::parse("phone", p)))
            }
            None => {
                v.add("identifier", "give an email or a phone");
                (None, None)
            }
        };
        if r.password.is_empty() {
            v.add("password", "is required");
        }
        let tenant_id = if r.tenant_id.is_empty() {
            None
        } else {
            v.check(TenantId::parse("tenant_id", &r.tenant_id))
                .map(|t| *t.as_uuid())
        };
        v.finish().map_err(status::invalid)?;
        let input = LoginInput {
            email,
            phone,
            password: r.password,
            tenant_id,
            device: r.device.chars().take(200).collect(),
            client_ip: client_ip("client_ip", &r.client_ip)?,
        };
        let issued = self
            .identity
            .login(input, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(issued_to_pb(issued)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let who = caller(&request)?;
        require_scope(&who, Scope::SessionsValidate)?;
        let r = request.into_inner();
        if r.refresh_token.is_empty() {
            return Err(status::invalid(ValidationError::single(
                "refresh_token",
                "is required",
            )));
        }
        let ip = client_ip("client_ip", &r.client_ip)?;
        let issued = self
            .identity
            .refresh(&r.refresh_token, ip, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(issued_to_pb(issued)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let who = caller(&request)?;
        let token = &request.get_ref().access_token;
        let session = match (&who, token.is_empty()) {
            (Caller::User(p), true) => p.session_id,
            (_, false) => {
                let p = self.identity.validate(token).map_err(status::identity)?;
                if who.user_id().is_some_and(|u| u != p.user_id) {
                    return Err(Status::permission_denied(
                        "users may only end their own sessions",
                    ));
                }
                if let Caller::Service(_) = who {
                    require_scope(&who, Scope::SessionsValidate)?;
                }
                p.session_id
            }
            (Caller::Service(_), true) => {
                return Err(status::invalid(ValidationError::single(
                    "access_token",
                    "is required",
                )));
            }
        };
        self.identity
            .logout(session, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn revoke_all_sessions(
        &self,
        request: Request<pb::RevokeAllSessionsRequest>,
    ) -> Result<Response<pb::RevokeAllSessionsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let user = uuid("user_id", &r.user_id)?;
        require_self_or(&who, Scope::IdentityAdmin, user)?;
        let n = self
            .identity
            .revoke_all(user, &r.reason, &who.actor())
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::RevokeAllSessionsResponse {
            sessions_revoked: n as i32,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let who = caller(&request)?;
        let user = uuid("user_id", &request.get_ref().user_id)?;
        require_self_or(&who, Scope::IdentityAdmin, user)?;
        let rows = self
            .identity
            .list_sessions(user)
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: rows
                .into_iter()
                .map(|s| pb::Session {
                    id: s.id.to_string(),
                    tenant_id: s.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                    device: s.device,
                    client_ip: s.client_ip.unwrap_or_default(),
                    created_at: ts(s.created_at),
                    last_used_at: ts(s.last_used_at),
                    expires_at: ts(s.expires_at),
                    revoked: s.revoked_at.is_some(),
                })
                .collect(),
        }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        require_scope(&caller(&request)?, Scope::SessionsValidate)?;
        let p = self
            .identity
            .validate(&request.get_ref().access_token)
            .map_err(status::identity)?;
        // The role the user holds now, when the token's is no longer current.
        let p = self
            .identity
            .with_current_role(p)
            .await
            .map_err(status::identity)?;
        Ok(Response::new(principal_to_pb(&p)))
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        require_scope(&caller(&request)?, Scope::SessionsValidate)?;
        let r = request.into_inner();
        let tenant = uuid("tenant_id", &r.tenant_id)?;
        let permission = Permission::parse("permission", &r.permission).map_err(status::invalid)?;
        let (allowed, reason, role) = self
            .identity
            .check_permission(&r.access_token, tenant, permission)
            .await
            .map_err(status::identity)?;
        Ok(Response::new(pb::CheckPermissionResponse {
            allowed,
            reason,
            role: role_to_pb(role),
        }))
    }
}

/// The current password a user must give to change how it logs in; a
/// service key gives none.
fn current_password_of<'a>(
    who: &Caller,
    sensitive: bool,
    given: &'a str,
) -> Result<Option<&'a str>, Status> {
    match who {
        Caller::User(_) if sensitive => {
            if given.is_empty() {
                Err(status::invalid(ValidationError::single(
                    "current_password",
                    "is required to change a password, e-mail address or phone number",
                )))
            } else {
                Ok(Some(given))
            }
        }
        _ => Ok(None),
    }
}
