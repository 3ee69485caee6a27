//! Identifier newtypes. A schema or role name can only be made from a
//! [`TenantId`], so dynamic DDL never contains a user-supplied string.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::ValidationError;

/// A tenant's id: a UUIDv7, so ids sort in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Parses the `field` of a request; any UUID form is accepted.
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::single(field, "is required"));
        }
        Uuid::from_str(value)
            .map(Self)
            .map_err(|_| ValidationError::single(field, "must be a UUID"))
    }

    pub fn schema_name(&self) -> SchemaName {
        SchemaName(format!("tenant_{}", self.0.simple()))
    }

    pub fn role_name(&self) -> RoleName {
        RoleName(format!("tenant_{}", self.0.simple()))
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `tenant_<id as 32 hex digits>`: only lower-case hex and an underscore, so
/// it is a valid identifier as it stands; [`SchemaName::quoted`] quotes it anyway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The PostgreSQL role a tenant's connections log in as. Same shape as the
/// schema name, made only from a [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName(String);

impl RoleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_role_names_derive_from_the_id_only() {
        let id =
            TenantId::from_uuid(Uuid::parse_str("0190c1d2-3e4f-7a8b-9c0d-1e2f3a4b5c6d").unwrap());
        assert_eq!(
            id.schema_name().as_str(),
            "tenant_0190c1d23e4f7a8b9c0d1e2f3a4b5c6d"
        );
        assert_eq!(
            id.role_name().quoted(),
            "\"tenant_0190c1d23e4f7a8b9c0d1e2f3a4b5c6d\""
        );
    }

    #[test]
    fn parse_names_the_field() {
        let err = TenantId::parse("id", "nope").unwrap_err();
        assert_eq!(err.violations[0].field, "id");
        let err = TenantId::parse("owner_user_id", "").unwrap_err();
        assert_eq!(err.violations[0].description, "is required");
    }
}
