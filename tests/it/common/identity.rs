//! Users and logins as the tests make them: one password for everyone,
//! e-mail logins from one documentation address.

use tenantd::pb::{self, login_request::Identifier};

use super::Clients;

/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A CreateUserRequest for `first` Tester with `email` and [`PASSWORD`].
pub fn user(first: &str, email: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        first_name: first.into(),
        last_name: "Tester".into(),
        email: email.into(),
        phone: String::new(),
        password: PASSWORD.into(),
    }
}

/// A LoginRequest by e-mail; `tenant` empty for a login to no tenant.
pub fn login(email: &str, password: &str, tenant: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        identifier: Some(Identifier::Email(email.into())),
        password: password.into(),
        tenant_id: tenant.into(),
        device: "test".into(),
        client_ip: "192.0.2.10".into(),
    }
}

/// A RefreshRequest of `token`.
pub fn refresh(token: &str) -> pb::RefreshRequest {
    pb::RefreshRequest {
        refresh_token: token.into(),
        client_ip: String::new(),
    }
}

/// A new user with a unique e-mail address; returns (id, email).
pub async fn new_user(c: &mut Clients, first: &str) -> (String, String) {
    let email = format!(
        "{first}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let u = c
        .users
        .create_user(user(first, &email))
        .await
        .unwrap()
        .into_inner();
    (u.id, email)
}

/// An AddMemberRequest of `user` to `tenant` as `role`.
pub fn member(tenant: &str, user: &str, role: pb::MemberRole) -> pb::AddMemberRequest {
    pb::AddMemberRequest {
        tenant_id: tenant.into(),
        user_id: user.into(),
        role: role as i32,
    }
}

/// Makes `user` a member of `tenant` as `role`, through `c`.
pub async fn add_member(c: &mut Clients, tenant: &str, user: &str, role: pb::MemberRole) {
    c.users
        .add_member(member(tenant, user, role))
        .await
        .unwrap_or_else(|e| panic!("add {user} as {role:?}: {e:?}"));
}

/// Logs `email` in with [`PASSWORD`] (to `tenant`, or to none when empty).
pub async fn log_in(c: &mut Clients, email: &str, tenant: &str) -> pb::LoginResponse {
    c.sessions
        .login(login(email, PASSWORD, tenant))
        .await
        .unwrap_or_else(|e| panic!("log {email} in: {e:?}"))
        .into_inner()
}

/// Creates a tenant whose first OWNER is the user `owner`.
pub async fn tenant_owned_by(c: &mut Clients, prefix: &str, owner: &str) -> pb::Tenant {
    let mut request = super::new_tenant(prefix);
    request.owner_user_id = owner.to_owned();
    c.tenants.create_tenant(request).await.unwrap().into_inner()
}
