//! The SQL that provisions and purges a tenant. Built only from a
//! [`TenantId`] (through [`SchemaName`](crate::domain::SchemaName) and
//! [`RoleName`](crate::domain::RoleName)), shipped migration text, checksums
//! and a password verifier this process computed — never from a request
//! string — and sent as one batch: one round trip per tenant, however many
//! statements the migrations hold.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::TenantMigrations;
use crate::domain::TenantId;

/// The password of a tenant's role: HMAC-SHA-256 of the tenant id under the
/// catalog's role secret. Derived again whenever a pool needs it, never stored.
pub fn role_password(secret: &[u8], id: TenantId) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(id.as_uuid().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Everything that makes a tenant, after its catalog row: its role (logging
/// in with a SCRAM verifier, so no password travels in the DDL), its schema
/// with default privileges set before any table exists (so no
/// `GRANT … ON ALL TABLES` has to scan pg_class), every migration, and the
/// ledger. The tenant's role gets USAGE on its schema and DML on its tables,
/// nothing on the catalog or any other schema, and only SELECT on its ledger.
pub fn create_tenant_ddl(
    id: TenantId,
    scram_verifier: &str,
    migrations: &TenantMigrations,
) -> String {
    debug_assert!(!scram_verifier.contains('\''));
    let schema = id.schema_name().quoted();
    let role = id.role_name().quoted();
    let mut sql = String::with_capacity(16 * 1024);
    let _ = write!(
        sql,
        "CREATE ROLE {role} LOGIN NOINHERIT NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '{scram_verifier}';\n\
         CREATE SCHEMA {schema};\n\
         GRANT USAGE ON SCHEMA {schema} TO {role};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role};\n\
         ALTER ROLE {role} SET search_path TO {schema};\n\
         SET LOCAL search_path TO {schema};\n"
    );
    for m in migrations.all() {
        let _ = writeln!(sql, "-- {}\n{}\n;", m.name, m.sql);
    }
    sql.push_str("INSERT INTO ");
    sql.push_str(&schema);
    sql.push_str(".schema_migrations (version, name, checksum) VALUES ");
    for (i, m) in migrations.all().iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{sep}({}, '{}', decode('{}', 'hex'))",
            m.version,
            m.name,
            hex::encode(m.checksum)
        );
    }
    let _ = write!(
        sql,
        ";\nREVOKE INSERT, UPDATE, DELETE ON {schema}.schema_migrations FROM {role};\n\
         SET LOCAL search_path TO DEFAULT;\n"
    );
    sql
}

/// Drops a tenant's schema with everything in it, then its role. `DROP OWNED`
/// removes the role's grants and default privileges in this database, which
/// would otherwise keep the role from being dropped.
pub fn purge_tenant_ddl(id: TenantId) -> String {
    let schema = id.schema_name().quoted();
    let role = id.role_name().quoted();
    format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;\n\
         DROP OWNED BY {role};\n\
         DROP ROLE {role};\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_names_only_the_derived_identifiers() {
        let id = TenantId::new();
        let set = TenantMigrations::embedded().unwrap();
        let sql = create_tenant_ddl(id, "SCRAM-SHA-256$4096:abc$def:ghi", &set);
        let hex = id.as_uuid().simple().to_string();
        assert!(sql.starts_with(&format!("CREATE ROLE \"tenant_{hex}\" LOGIN")));
        assert!(sql.contains(&format!("CREATE SCHEMA \"tenant_{hex}\";")));
        // Default privileges come before the first table.
        let privileges = sql.find("ALTER DEFAULT PRIVILEGES").unwrap();
        let first_table = sql.find("CREATE TABLE").unwrap();
        assert!(privileges < first_table);
        assert!(!sql.contains("ON ALL TABLES"));
    }

    #[test]
    fn role_password_is_stable_per_tenant() {
        let a = TenantId::new();
        let b = TenantId::new();
        assert_eq!(role_password(b"k", a), role_password(b"k", a));
        assert_ne!(role_password(b"k", a), role_password(b"k", b));
        assert_ne!(role_password(b"k", a), role_password(b"j", a));
    }
}
