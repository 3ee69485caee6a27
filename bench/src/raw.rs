//! The raw side's create-tenant transaction, shared by `create` (where it is
//! measured) and `upgrade` (where it builds the fleet): the same transaction
//! as `Tenants::create`, built with the library's own DDL, with no service
//! in between.

use std::fmt::Write as _;

use serde_json::json;
use tenantd::domain::TenantId;
use tenantd::tenant::{TenantMigrations, create_tenant_ddl};

/// The actor the raw side writes into the audit log.
pub const RAW_ACTOR: &str = "tenantd-bench@raw";

/// A SCRAM verifier of a random password, made once per client so the PBKDF2
/// it costs stays outside any measurement; PostgreSQL stores the verifier as
/// given, so sharing one between roles changes nothing there.
pub fn shared_verifier() -> String {
    let password = hex::encode(rand::random::<[u8; 32]>());
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// `BEGIN; INSERT …; <tenant DDL>; SELECT tenantd.append_audit(…); COMMIT;`
/// with every value a literal: catalog row, role, schema, every tenant
/// migration, ledger and audit event as one simple-query batch. `slug`
/// doubles as the name and must be bench-made (`[a-z0-9-]`), like everything
/// else in the text.
pub fn create_tenant_sql(
    id: TenantId,
    slug: &str,
    verifier: &str,
    migrations: &TenantMigrations,
) -> String {
    debug_assert!(
        slug.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    let schema = id.schema_name();
    let version = migrations.latest();
    let details = json!({
        "slug": slug,
        "name": slug,
        "schema": schema.as_str(),
        "schema_version": version,
        "owner_user_id": null,
    })
    .to_string();
    let ddl = create_tenant_ddl(id, verifier, migrations);
    let mut sql = String::with_capacity(ddl.len() + 1024);
    let _ = write!(
        sql,
        "BEGIN;\n\
         INSERT INTO tenantd.tenants (id, slug, name, industry, description, country, status, \
                                      schema_name, schema_version) \
         VALUES ('{id}', '{slug}', '{slug}', '', '', NULL, 'active', '{schema}', {version});\n\
         {ddl}\
         SELECT tenantd.append_audit('{RAW_ACTOR}', 'tenant.create', 'tenant:{id}', {});\n\
         COMMIT;\n",
        literal(&details)
    );
    sql
}

/// A SQL string literal of bench-made text.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
