//! Tenant schemas: the tenant migration set, the DDL that provisions and
//! purges a tenant, and the tenant lifecycle built on the catalog.

mod ddl;
pub(crate) mod migrations;
mod service;

pub use ddl::{
    ROLE_SCRAM_ITERATIONS, create_tenant_ddl, create_tenant_ddl_with, ledger_rows,
    purge_tenant_ddl, purge_tenant_ddl_if_exists, role_login_ddl, role_password, role_verifier,
    scram_verifier,
};
pub use migrations::{MigrationSetError, TenantMigration, TenantMigrations};
pub use service::{TenantError, Tenants};
