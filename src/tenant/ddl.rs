//! The SQL that provisions and purges a tenant. Built only from a
//! [`TenantId`] (through [`SchemaName`](crate::domain::SchemaName) and
//! [`RoleName`](crate::domain::RoleName)), shipped migration text, checksums
//! and a password verifier this process computed — never from a request
//! string — and sent as one batch: one round trip per tenant, however many
//! statements the migrations hold.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::TenantMigrations;
use crate::domain::TenantId;

/// The password of a tenant's role: HMAC-SHA-256 of the tenant id under the
/// catalog's role secret. Derived again whenever a pool needs it, never stored.
pub fn role_password(secret: &[u8], id: TenantId) -> String {
    hex::encode(hmac_sha256(secret, id.as_uuid().as_bytes()))
}

/// PBKDF2 rounds in a tenant role's SCRAM verifier. The password is a 256-bit
/// HMAC output, not something a person chose, so key stretching protects
/// nothing; PostgreSQL's default of 4096 would cost milliseconds of CPU per
/// tenant on the provisioning path.
pub const ROLE_SCRAM_ITERATIONS: u32 = 16;

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A SCRAM-SHA-256 verifier (RFC 5802/7677, PostgreSQL's `rolpassword`
/// format) for `password`, so the password itself never travels in DDL.
/// `password` must be ASCII without control characters (SASLprep is then
/// the identity), as [`role_password`]'s hex output is.
pub fn scram_verifier(password: &str, salt: &[u8; 16], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let stored_key = Sha256::digest(hmac_sha256(&salted, b"Client Key"));
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

/// The verifier of tenant `id`'s role, with a fresh random salt.
pub fn role_verifier(secret: &[u8], id: TenantId) -> String {
    let salt: [u8; 16] = rand::random();
    scram_verifier(&role_password(secret, id), &salt, ROLE_SCRAM_ITERATIONS)
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
    create_tenant_ddl_with(id, scram_verifier, migrations.all())
}

/// [`create_tenant_ddl`] with the migrations `applied` only (a tenant
/// made again elsewhere at the version it is at).
pub fn create_tenant_ddl_with(
    id: TenantId,
    scram_verifier: &str,
    applied: &[super::TenantMigration],
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
    for m in applied {
        let _ = writeln!(sql, "-- {}\n{}\n;", m.name, m.sql_for_new_tenant());
    }
    ledger_rows(&mut sql, &schema, applied);
    let _ = write!(
        sql,
        "REVOKE INSERT, UPDATE, DELETE ON {schema}.schema_migrations FROM {role};\n\
         SET LOCAL search_path TO DEFAULT;\n"
    );
    sql
}

/// The ledger rows recording `applied` in `schema` (quoted), as one INSERT.
/// Names and checksums come from the migration set, never from a request.
pub fn ledger_rows(sql: &mut String, schema: &str, applied: &[super::TenantMigration]) {
    let _ = write!(
        sql,
        "INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES "
    );
    for (i, m) in applied.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{sep}({}, '{}', decode('{}', 'hex'))",
            m.version,
            m.name,
            hex::encode(m.checksum)
        );
    }
    sql.push_str(";\n");
}

/// Lets the tenant's role log in, or not: only an ACTIVE tenant's can, so a
/// suspended or archived tenant is refused by PostgreSQL itself too.
pub fn role_login_ddl(id: TenantId, login: bool) -> String {
    let role = id.role_name().quoted();
    let login = if login { "LOGIN" } else { "NOLOGIN" };
    format!("ALTER ROLE {role} {login}")
}

/// Drops a tenant's schema with everything in it, then its role. `DROP OWNED`
/// removes the role's grants and default privileges in this database, which
/// would otherwise keep the role from being dropped.
pub fn purge_tenant_ddl(id: TenantId) -> String {
    let schema = id.schema_name().quoted();
    let role = id.role_name().quoted();
    // DROP OWNED BY needs the privileges of the role it names: a superuser
    // has them; a CREATEROLE role (managed PostgreSQL) grants itself the
    // membership first (PostgreSQL 15 lets CREATEROLE grant any
    // non-superuser role; 16 makes the creator the role's admin). The
    // membership goes with the role.
    format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;\n\
         GRANT {role} TO CURRENT_USER;\n\
         DROP OWNED BY {role};\n\
         DROP ROLE {role};\n"
    )
}

/// [`purge_tenant_ddl`] that may run again, and may find nothing: for
/// what a create left half-made, or a purge whose catalog commit failed,
/// on a cluster other than the catalog's (plain PostgreSQL: the role is
/// dropped inside a `DO` block, which Citus would not carry to its nodes).
pub fn purge_tenant_ddl_if_exists(id: TenantId) -> String {
    let schema = id.schema_name().quoted();
    let role = id.role_name().quoted();
    let role_name = id.role_name();
    format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE;\n\
         DO $purge$ BEGIN\n\
           IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{}') THEN\n\
             GRANT {role} TO CURRENT_USER;\n\
             DROP OWNED BY {role};\n\
             DROP ROLE {role};\n\
           END IF;\n\
         END $purge$;\n",
        role_name.as_str()
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

    /// Runs a whole SCRAM exchange with postgres-protocol's client against
    /// our verifier, checking the proof the way the server does.
    #[test]
    fn verifier_accepts_the_password_and_nothing_else() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let salt = [7u8; 16];
        let verifier = scram_verifier("secret-password", &salt, 16);
        let (head, keys) = verifier.split_once('$').unwrap().1.split_once('$').unwrap();
        assert_eq!(head, format!("16:{}", BASE64.encode(salt)));
        let (stored_key, server_key) = keys.split_once(':').unwrap();
        let stored_key = BASE64.decode(stored_key).unwrap();
        let server_key = BASE64.decode(server_key).unwrap();

        let exchange = |password: &str| -> bool {
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let client_first = String::from_utf8(client.message().to_vec()).unwrap();
            let client_first_bare = client_first.strip_prefix("n,,").unwrap().to_owned();
            // The nonce is random printable text, "r=" included now and then.
            let nonce = client_first_bare.strip_prefix("n=,r=").unwrap().to_owned();
            let server_first = format!("r={nonce}server,s={},i=16", BASE64.encode(salt));
            client.update(server_first.as_bytes()).unwrap();
            let client_final = String::from_utf8(client.message().to_vec()).unwrap();
            let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
            let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
            let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
            let proof = BASE64.decode(proof).unwrap();
            let client_key: Vec<u8> = proof.iter().zip(signature).map(|(a, b)| a ^ b).collect();
            if Sha256::digest(&client_key).as_slice() != stored_key.as_slice() {
                return false;
            }
            let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
            let server_final = format!("v={}", BASE64.encode(server_signature));
            client.finish(server_final.as_bytes()).is_ok()
        };
        assert!(exchange("secret-password"));
        assert!(!exchange("wrong-password"));
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
