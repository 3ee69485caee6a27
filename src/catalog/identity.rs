//! Users, memberships, sessions and refresh tokens in the catalog. Each
//! function is one statement on the caller's connection.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::TenantStatus;
use crate::domain::identity::{Role, UserStatus};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: UserStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const USER_COLUMNS: &str =
    "id, first_name, last_name, email, phone, status, version, created_at, updated_at";

pub struct NewUser<'a> {
    pub id: Uuid,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub password_hash: &'a str,
}

/// `None` when the e-mail (case-insensitively) or the phone is taken.
pub async fn insert_user(
    conn: &mut PgConnection,
    u: &NewUser<'_>,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO tenantd.users (id, first_name, last_name, email, phone, password_hash) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING {USER_COLUMNS}"
    ))
    .bind(u.id)
    .bind(u.first_name)
    .bind(u.last_name)
    .bind(u.email)
    .bind(u.phone)
    .bind(u.password_hash)
    .fetch_optional(conn)
    .await
}

pub async fn get_user(conn: &mut PgConnection, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    read_user(conn, id, "").await
}

/// Locks the user's row for the caller's transaction.
pub async fn lock_user(conn: &mut PgConnection, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    read_user(conn, id, " FOR UPDATE").await
}

async fn read_user(
    conn: &mut PgConnection,
    id: Uuid,
    suffix: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM tenantd.users WHERE id = $1{suffix}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: Option<String>,
}

/// The user a login names, with the password hash, in one round trip.
pub async fn find_login(
    conn: &mut PgConnection,
    email: Option<&str>,
    phone: Option<&str>,
) -> Result<Option<(UserRow, Option<String>)>, sqlx::Error> {
    let row: Option<LoginRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS}, password_hash FROM tenantd.users \
         WHERE ($1::text IS NOT NULL AND lower(email) = lower($1)) OR ($2::text IS NOT NULL AND phone = $2)"
    ))
    .bind(email)
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.user, r.password_hash)))
}

pub async fn password_hash(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT password_hash FROM tenantd.users WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map(Option::flatten)
}

/// Applies the given fields (`None`: unchanged; for e-mail and phone
/// `Some(None)` clears). Fails with 23505 when e-mail or phone is taken, 23514
/// when neither would remain.
pub async fn update_user(
    conn: &mut PgConnection,
    id: Uuid,
    first_name: Option<&str>,
    last_name: Option<&str>,
    email: Option<Option<&str>>,
    phone: Option<Option<&str>>,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tenantd.users SET first_name = coalesce($2, first_name), last_name = coalesce($3, last_name), \
             email = CASE WHEN $4 THEN $5 ELSE email END, phone = CASE WHEN $6 THEN $7 ELSE phone END, \
             version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(first_name)
    .bind(last_name)
    .bind(email.is_some())
    .bind(email.flatten())
    .bind(phone.is_some())
    .bind(phone.flatten())
    .fetch_one(conn)
    .await
}

pub async fn set_password(
    conn: &mut PgConnection,
    id: Uuid,
    hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tenantd.users SET password_hash = $2, version = version + 1, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn deactivate_user(conn: &mut PgConnection, id: Uuid) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tenantd.users SET status = 'deactivated', deactivated_at = now(), version = version + 1, \
             updated_at = now() WHERE id = $1 RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

// ---- memberships ----

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MemberRow {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const MEMBER_COLUMNS: &str = "tenant_id, user_id, role, created_at, updated_at";

/// `None` when the user is a member already.
pub async fn insert_member(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
    role: Role,
) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO tenantd.user_tenants (tenant_id, user_id, role) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING {MEMBER_COLUMNS}"
    ))
    .bind(tenant)
    .bind(user)
    .bind(role.as_str())
    .fetch_optional(conn)
    .await
}

pub async fn get_member(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MEMBER_COLUMNS} FROM tenantd.user_tenants WHERE tenant_id = $1 AND user_id = $2"
    ))
    .bind(tenant)
    .bind(user)
    .fetch_optional(conn)
    .await
}

/// Locks every OWNER row of the tenant (so two demotions cannot both see
/// another owner) and returns how many there are.
pub async fn lock_owners(conn: &mut PgConnection, tenant: Uuid) -> Result<i64, sqlx::Error> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM tenantd.user_tenants WHERE tenant_id = $1 AND role = 'OWNER' FOR UPDATE",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(owners.len() as i64)
}

pub async fn set_role(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
    role: Role,
) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE tenantd.user_tenants SET role = $3, updated_at = now() WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING {MEMBER_COLUMNS}"
    ))
    .bind(tenant)
    .bind(user)
    .bind(role.as_str())
    .fetch_optional(conn)
    .await
}

pub async fn delete_member(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM tenantd.user_tenants WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant)
        .bind(user)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() == 1)
}

// ---- access: a user's role in a tenant, and when it last changed ----

/// A user's role in a tenant, the tenant's status and whether the user is
/// active: what deciding the user's rights there needs.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccessRow {
    #[sqlx(try_from = "String")]
    pub role: Role,
    #[sqlx(try_from = "String")]
    pub tenant_status: TenantStatus,
    pub user_active: bool,
}

const ACCESS_QUERY: &str = "SELECT m.role, t.status AS tenant_status, u.status = 'active' AS user_active \
     FROM tenantd.user_tenants m JOIN tenantd.tenants t ON t.id = m.tenant_id \
     JOIN tenantd.users u ON u.id = m.user_id WHERE m.tenant_id = $1 AND m.user_id = $2";

/// `None` when the user is not a member of the tenant.
pub async fn access(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<Option<AccessRow>, sqlx::Error> {
    sqlx::query_as(ACCESS_QUERY)
        .bind(tenant)
        .bind(user)
        .fetch_optional(conn)
        .await
}

/// [`access`], with the tenant's row share-locked until the caller's
/// transaction ends: a membership change ([`lock_tenant_members`]) or a
/// status change of the tenant waits for it, and so is later than anything
/// the caller does (such as issuing an access token that names the role).
/// The lock is taken first, and the membership read by a statement of its
/// own, so that what it reads is what was committed when the lock came.
pub async fn lock_access(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<Option<AccessRow>, sqlx::Error> {
    sqlx::query("SELECT FROM tenantd.tenants WHERE id = $1 FOR SHARE")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    access(conn, tenant, user).await
}

/// Locks the tenant's row against other membership changes, status changes
/// and token issues ([`lock_access`]) until the caller's transaction ends;
/// returns its status (`None`: no such tenant). Every change of the
/// tenant's memberships takes it first, so they run one after another.
pub async fn lock_tenant_members(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Option<TenantStatus>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM tenantd.tenants WHERE id = $1 FOR NO KEY UPDATE")
            .bind(tenant)
            .fetch_optional(conn)
            .await?;
    status.map(|s| super::decode(&s)).transpose()
}

/// Records that the user's membership of the tenant changed (added, new
/// role, removed), at the clock of this statement, which follows the
/// change's own row lock; returns that time.
pub async fn note_membership_change(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO tenantd.membership_changes (tenant_id, user_id, changed_at) \
         VALUES ($1, $2, clock_timestamp()) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET changed_at = excluded.changed_at \
         RETURNING changed_at",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(conn)
    .await
}

/// One change of access: a member's (`user: Some`) or a whole tenant's
/// status (`user: None`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccessChange {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub changed_at: DateTime<Utc>,
}

/// Membership and tenant-status changes within `window` of now.
pub async fn access_changes(
    conn: &mut PgConnection,
    window: std::time::Duration,
) -> Result<Vec<AccessChange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, user_id, changed_at FROM tenantd.membership_changes \
         WHERE changed_at > now() - $1 \
         UNION ALL SELECT id, NULL, status_changed_at FROM tenantd.tenants \
         WHERE status_changed_at > now() - $1",
    )
    .bind(window)
    .fetch_all(conn)
    .await
}

/// The database's clock now (not the transaction's start): the issue time of
/// access tokens, so that it compares with the changes' times on one clock.
pub async fn clock(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await
}

/// Members of a tenant in user-id order after `after`.
pub async fn list_members(
    conn: &mut PgConnection,
    tenant: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MEMBER_COLUMNS} FROM tenantd.user_tenants WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id > $2) \
         ORDER BY user_id LIMIT $3"
    ))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A user's memberships in tenants that still exist.
pub async fn user_tenants(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.tenant_id, m.user_id, m.role, m.created_at, m.updated_at FROM tenantd.user_tenants m \
         JOIN tenantd.tenants t ON t.id = m.tenant_id WHERE m.user_id = $1 AND t.status <> 'purged' ORDER BY m.tenant_id",
    )
    .bind(user)
    .fetch_all(conn)
    .await
}

// ---- sessions ----

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub device: String,
    pub client_ip: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

const SESSION_COLUMNS: &str = "id, user_id, tenant_id, device, host(client_ip) AS client_ip, expires_at, revoked_at, created_at, last_used_at";

pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub device: &'a str,
    pub client_ip: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
    pub refresh_hash: &'a [u8],
}

pub async fn insert_session(
    conn: &mut PgConnection,
    s: &NewSession<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH s AS (INSERT INTO tenantd.sessions (id, user_id, tenant_id, device, client_ip, expires_at) \
                    VALUES ($1, $2, $3, $4, $5::inet, $6)) \
         INSERT INTO tenantd.refresh_tokens (token_hash, session_id) VALUES ($7, $1)",
    )
    .bind(s.id)
    .bind(s.user_id)
    .bind(s.tenant_id)
    .bind(s.device)
    .bind(s.client_ip)
    .bind(s.expires_at)
    .bind(s.refresh_hash)
    .execute(conn)
    .await
    .map(drop)
}

/// A refresh token's session, locked, and whether the token was already rotated.
pub async fn lock_refresh(
    conn: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<(SessionRow, bool)>, sqlx::Error> {
    let row: Option<(Uuid, bool)> = sqlx::query_as(
        "SELECT session_id, rotated_at IS NOT NULL FROM tenantd.refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((session, rotated)) = row else {
        return Ok(None);
    };
    let s: Option<SessionRow> = sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM tenantd.sessions WHERE id = $1 FOR UPDATE"
    ))
    .bind(session)
    .fetch_optional(conn)
    .await?;
    Ok(s.map(|s| (s, rotated)))
}

/// Marks `old` rotated and stores `new` for the same session.
pub async fn rotate_refresh(
    conn: &mut PgConnection,
    session: Uuid,
    old: &[u8],
    new: &[u8],
    client_ip: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH r AS (UPDATE tenantd.refresh_tokens SET rotated_at = now() WHERE token_hash = $2), \
              s AS (UPDATE tenantd.sessions SET last_used_at = now(), client_ip = coalesce($4::inet, client_ip) WHERE id = $1) \
         INSERT INTO tenantd.refresh_tokens (token_hash, session_id) VALUES ($3, $1)",
    )
    .bind(session)
    .bind(old)
    .bind(new)
    .bind(client_ip)
    .execute(conn)
    .await
    .map(drop)
}

/// Revokes sessions (one, or every live one of a user but `except`);
/// returns their ids.
pub async fn revoke_sessions(
    conn: &mut PgConnection,
    session: Option<Uuid>,
    user: Option<Uuid>,
    except: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tenantd.sessions SET revoked_at = now(), revoke_reason = $3 \
         WHERE revoked_at IS NULL AND ($1::uuid IS NULL OR id = $1) AND ($2::uuid IS NULL OR user_id = $2) \
           AND ($1::uuid IS NOT NULL OR $2::uuid IS NOT NULL) AND ($4::uuid IS NULL OR id <> $4) RETURNING id",
    )
    .bind(session)
    .bind(user)
    .bind(reason)
    .bind(except)
    .fetch_all(conn)
    .await
}

pub async fn list_sessions(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM tenantd.sessions WHERE user_id = $1 AND expires_at > now() - interval '1 day' \
         ORDER BY created_at DESC LIMIT 200"
    ))
    .bind(user)
    .fetch_all(conn)
    .await
}

// ---- service keys ----

/// Stores a service key's hash under its id unless that id exists already.
pub async fn insert_service_key(
    conn: &mut PgConnection,
    id: &str,
    name: &str,
    secret_hash: &[u8],
    scopes: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenantd.service_keys (id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(secret_hash)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored service key: id, name, secret hash, scope names.
pub type ServiceKeyRow = (String, String, Vec<u8>, Vec<String>);

/// Every service key not revoked.
pub async fn active_service_keys(
    conn: &mut PgConnection,
) -> Result<Vec<ServiceKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, secret_hash, scopes FROM tenantd.service_keys WHERE revoked_at IS NULL",
    )
    .fetch_all(conn)
    .await
}

/// Sessions revoked within `window`, and the unexpired sessions of
/// deactivated users: those whose tokens must be refused.
pub async fn ended_sessions(
    conn: &mut PgConnection,
    window: std::time::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM tenantd.sessions WHERE revoked_at > now() - $1 \
         UNION SELECT s.id FROM tenantd.sessions s JOIN tenantd.users u ON u.id = s.user_id \
         WHERE u.status = 'deactivated' AND s.expires_at > now()",
    )
    .bind(window)
    .fetch_all(conn)
    .await
}
