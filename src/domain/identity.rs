//! Who callers are and what they may do: tenant roles and the permission
//! matrix, the role ceiling on membership changes, what a tenant that is not
//! ACTIVE still grants, service-key scopes, and the validated shapes of user
//! data.

use std::fmt;
use std::str::FromStr;

use super::{TenantStatus, ValidationError};

/// A member's role in a tenant, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Manager,
    Employee,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Manager, Role::Employee];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "OWNER",
            Self::Admin => "ADMIN",
            Self::Manager => "MANAGER",
            Self::Employee => "EMPLOYEE",
        }
    }

    /// Higher is stronger.
    pub const fn rank(self) -> u8 {
        match self {
            Self::Owner => 4,
            Self::Admin => 3,
            Self::Manager => 2,
            Self::Employee => 1,
        }
    }

    /// The permission matrix: the weakest role that holds each permission.
    ///
    /// | permission     | OWNER | ADMIN | MANAGER | EMPLOYEE |
    /// |----------------|-------|-------|---------|----------|
    /// | tenant:read    | yes   | yes   | yes     | yes      |
    /// | data:read      | yes   | yes   | yes     | yes      |
    /// | data:write     | yes   | yes   | yes     | no       |
    /// | members:read   | yes   | yes   | yes     | no       |
    /// | tenant:update  | yes   | yes   | no      | no       |
    /// | members:manage | yes   | yes   | no      | no       |
    /// | upgrades:run   | yes   | yes   | no      | no       |
    /// | tenant:delete  | yes   | no    | no      | no       |
    pub const fn grants(self, permission: Permission) -> bool {
        self.rank() >= permission.weakest_role().rank()
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "OWNER" => Ok(Self::Owner),
            "ADMIN" => Ok(Self::Admin),
            "MANAGER" => Ok(Self::Manager),
            "EMPLOYEE" => Ok(Self::Employee),
            _ => Err(format!("unknown role {s:?}")),
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Whether a user may log in at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserStatus {
    Active,
    /// For good: there is no way back.
    Deactivated,
}

impl UserStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deactivated => "deactivated",
        }
    }
}

impl FromStr for UserStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "deactivated" => Ok(Self::Deactivated),
            _ => Err(format!("unknown user status {s:?}")),
        }
    }
}

impl TryFrom<String> for UserStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user may do within a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    TenantRead,
    TenantUpdate,
    TenantDelete,
    MembersRead,
    MembersManage,
    DataRead,
    DataWrite,
    UpgradesRun,
    EventsRead,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::TenantRead,
        Permission::TenantUpdate,
        Permission::TenantDelete,
        Permission::MembersRead,
        Permission::MembersManage,
        Permission::DataRead,
        Permission::DataWrite,
        Permission::UpgradesRun,
        Permission::EventsRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TenantRead => "tenant:read",
            Self::TenantUpdate => "tenant:update",
            Self::TenantDelete => "tenant:delete",
            Self::MembersRead => "members:read",
            Self::MembersManage => "members:manage",
            Self::DataRead => "data:read",
            Self::DataWrite => "data:write",
            Self::UpgradesRun => "upgrades:run",
            Self::EventsRead => "events:read",
        }
    }

    /// Whether it only reads: all a member keeps in a tenant that is not
    /// ACTIVE (suspended, archived).
    pub const fn is_read(self) -> bool {
        matches!(
            self,
            Self::TenantRead | Self::DataRead | Self::MembersRead | Self::EventsRead
        )
    }

    /// Whether it changes who may do what, or the tenant itself (members,
    /// settings, lifecycle, schema): decided from the catalog at the time of
    /// the call, never from the role an access token names.
    pub const fn changes_authority(self) -> bool {
        matches!(
            self,
            Self::MembersManage | Self::TenantUpdate | Self::TenantDelete | Self::UpgradesRun
        )
    }

    pub const fn weakest_role(self) -> Role {
        match self {
            Self::TenantRead | Self::DataRead => Role::Employee,
            Self::DataWrite | Self::MembersRead => Role::Manager,
            Self::TenantUpdate | Self::MembersManage | Self::UpgradesRun | Self::EventsRead => {
                Role::Admin
            }
            Self::TenantDelete => Role::Owner,
        }
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == value)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|p| p.as_str()).collect();
                ValidationError::single(field, format!("must be one of {}", known.join(", ")))
            })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role ceiling: whether a member whose role is `actor` may move a
/// membership (another's or their own) from `old` to `new` (`None`: not a
/// member, so `old: None` adds and `new: None` removes). It needs
/// members:manage, and both roles strictly below the actor's own, except
/// that an OWNER may do anything, to OWNERs too. So nobody raises their own
/// role. The last-OWNER rule is checked apart, as it binds service keys too.
/// The error says why, for the caller.
pub fn check_membership_change(
    actor: Role,
    old: Option<Role>,
    new: Option<Role>,
) -> Result<(), String> {
    if !actor.grants(Permission::MembersManage) {
        return Err(format!(
            "role {actor} in this tenant does not grant {} (needs {} or stronger)",
            Permission::MembersManage,
            Permission::MembersManage.weakest_role()
        ));
    }
    if actor == Role::Owner {
        return Ok(());
    }
    let above = |r: Option<Role>| r.filter(|r| r.rank() >= actor.rank());
    if let Some(role) = above(old) {
        return Err(format!(
            "role {actor} may add, change or remove only members below {actor}: this member is {role}"
        ));
    }
    if let Some(role) = above(new) {
        return Err(format!(
            "role {actor} may grant only roles below {actor}, not {role}"
        ));
    }
    Ok(())
}

/// What a user holds in a tenant: their role, and the tenant's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub role: Role,
    pub tenant_status: TenantStatus,
}

impl Access {
    /// Whether this grants `permission`: the role's matrix while the tenant
    /// is ACTIVE, and of that only the reads while it is not. `Ok` says why
    /// it is allowed, `Err` why not.
    pub fn check(&self, permission: Permission) -> Result<String, String> {
        let role = self.role;
        if !role.grants(permission) {
            return Err(format!(
                "role {role} in this tenant does not grant {permission} (needs {} or stronger)",
                permission.weakest_role()
            ));
        }
        if self.tenant_status != TenantStatus::Active && !permission.is_read() {
            return Err(format!(
                "the tenant is {}: its members may only read, not {permission}",
                self.tenant_status
            ));
        }
        Ok(format!("role {role} in this tenant grants {permission}"))
    }
}

/// What a service key may do, across all tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read tenants and upgrade runs.
    TenantsRead,
    /// Create and change tenants.
    TenantsWrite,
    /// Plan, start and steer fleet upgrades.
    UpgradesRun,
    /// Users, memberships and sessions; audit verification.
    IdentityAdmin,
    /// Validate tokens and check permissions for end users.
    SessionsValidate,
    /// Read and write tenant data.
    Data,
    /// Add and change Citus nodes; move, rebalance and drain tenants.
    ClustersAdmin,
    /// Watch and list the catalog's events, of every tenant.
    EventsRead,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::TenantsRead,
        Scope::TenantsWrite,
        Scope::UpgradesRun,
        Scope::IdentityAdmin,
        Scope::SessionsValidate,
        Scope::Data,
        Scope::ClustersAdmin,
        Scope::EventsRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TenantsRead => "tenants:read",
            Self::TenantsWrite => "tenants:write",
            Self::UpgradesRun => "upgrades:run",
            Self::IdentityAdmin => "identity:admin",
            Self::SessionsValidate => "sessions:validate",
            Self::Data => "data",
            Self::ClustersAdmin => "clusters:admin",
            Self::EventsRead => "events:read",
        }
    }

    /// A scope that implies this one (write implies read).
    pub const fn implied_by(self) -> Option<Scope> {
        match self {
            Self::TenantsRead => Some(Self::TenantsWrite),
            _ => None,
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An e-mail address, kept as given; compared and unique in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let v = value.trim();
        let bad =
            || ValidationError::single(field, "must be an e-mail address such as ada@example.com");
        if v.len() > 254 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = v.rsplit_once('@').ok_or_else(bad)?;
        let domain_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
            return Err(bad());
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form (`+` and 8–15 digits); spaces, dashes and
/// parentheses in the input are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let compact: String = value
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
            .collect();
        let digits = compact.strip_prefix('+').unwrap_or("");
        if !(8..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(ValidationError::single(
                field,
                "must be an international number such as +49 30 1234567",
            ));
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first or last name: 1–100 characters, no control characters.
pub fn person_name(field: &str, value: &str) -> Result<String, ValidationError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ValidationError::single(field, "is required"));
    }
    if v.chars().count() > 100 || v.chars().any(char::is_control) {
        return Err(ValidationError::single(
            field,
            "must be at most 100 characters without control characters",
        ));
    }
    Ok(v.to_owned())
}

/// Passwords: at least 12 characters, at most 256, and not a single
/// repeated character or an obvious sequence. Long passphrases beat
/// character-class rules (NIST SP 800-63B).
pub fn check_password_strength(field: &str, value: &str) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n < 12 {
        return Err(ValidationError::single(
            field,
            "must be at least 12 characters",
        ));
    }
    if n > 256 {
        return Err(ValidationError::single(
            field,
            "must be at most 256 characters",
        ));
    }
    let distinct: std::collections::HashSet<char> = value.chars().collect();
    let lower = value.to_lowercase();
    let common = ["password", "123456", "qwerty", "letmein", "abcdef"];
    if distinct.len() < 5 || common.iter().any(|c| lower.contains(c)) {
        return Err(ValidationError::single(field, "is too easy to guess"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_monotonic_in_rank() {
        for p in Permission::ALL {
            for r in Role::ALL {
                for stronger in Role::ALL.iter().filter(|s| s.rank() > r.rank()) {
                    assert!(
                        !r.grants(p) || stronger.grants(p),
                        "{stronger} has all of {r}'s rights"
                    );
                }
            }
        }
        assert!(Role::Employee.grants(Permission::DataRead));
        assert!(!Role::Employee.grants(Permission::DataWrite));
        assert!(Role::Manager.grants(Permission::DataWrite));
        assert!(!Role::Manager.grants(Permission::MembersManage));
        assert!(Role::Admin.grants(Permission::UpgradesRun));
        assert!(!Role::Admin.grants(Permission::TenantDelete));
        assert!(Role::Owner.grants(Permission::TenantDelete));
    }

    /// Spot checks of the ceiling; the whole table is walked end to end in
    /// tests/it/authority/.
    #[test]
    fn the_role_ceiling() {
        use Role::*;
        let allowed = [
            (Owner, None, Some(Owner)),
            (Owner, Some(Owner), None),
            (Owner, Some(Owner), Some(Employee)),
            (Admin, None, Some(Manager)),
            (Admin, Some(Employee), Some(Manager)),
            (Admin, Some(Manager), None),
        ];
        let denied = [
            (Admin, None, Some(Admin)),
            (Admin, Some(Admin), Some(Owner)),
            (Admin, Some(Admin), Some(Employee)),
            (Admin, Some(Owner), None),
            (Admin, Some(Employee), Some(Owner)),
            (Manager, None, Some(Employee)),
            (Employee, Some(Employee), None),
        ];
        for (actor, old, new) in allowed {
            assert!(
                check_membership_change(actor, old, new).is_ok(),
                "{actor} {old:?} -> {new:?}"
            );
        }
        for (actor, old, new) in denied {
            let why = check_membership_change(actor, old, new).unwrap_err();
            assert!(why.contains(actor.as_str()), "{why}");
        }
    }

    #[test]
    fn a_tenant_that_is_not_active_grants_only_reads() {
        for status in [
            TenantStatus::Suspended,
            TenantStatus::Archived,
            TenantStatus::Purged,
        ] {
            let owner = Access {
                role: Role::Owner,
                tenant_status: status,
            };
            for p in Permission::ALL {
                assert_eq!(owner.check(p).is_ok(), p.is_read(), "{status} {p}");
                assert!(!(p.is_read() && p.changes_authority()), "{p}");
            }
        }
        let active = Access {
            role: Role::Manager,
            tenant_status: TenantStatus::Active,
        };
        assert!(active.check(Permission::DataWrite).is_ok());
        let why = active.check(Permission::MembersManage).unwrap_err();
        assert!(
            why.contains("MANAGER") && why.contains("members:manage"),
            "{why}"
        );
    }

    #[test]
    fn emails_and_phones() {
        assert!(Email::parse("email", "Ada.Lovelace+x@Example.co.uk").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@exa_mple.com",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
        assert_eq!(
            Phone::parse("phone", "+49 (30) 123-4567").unwrap().as_str(),
            "+49301234567"
        );
        for bad in ["", "12345678", "+1234", "+0123456789", "+49abc12345"] {
            assert!(Phone::parse("phone", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(check_password_strength("password", "correct horse battery staple").is_ok());
        for bad in [
            "short",
            "aaaaaaaaaaaaaaaa",
            "MyPassword2024!",
            "ababababababab",
        ] {
            assert!(check_password_strength("password", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_and_roles_parse() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!(Permission::parse("permission", "data:write").is_ok());
        assert!(Permission::parse("permission", "data:delete").is_err());
    }
}
