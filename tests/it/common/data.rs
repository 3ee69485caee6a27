//! Requests of the tenant data plane.

use tenantd::pb;

/// An Execute of `sql` with `params` in `tenant` (read-write).
pub fn exec(tenant: &str, sql: &str, params: Vec<pb::Value>) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        tenant_id: tenant.into(),
        sql: sql.into(),
        params,
        ..Default::default()
    }
}

/// A read-only Execute of `sql` in `tenant`.
pub fn read(tenant: &str, sql: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        read_only: true,
        ..exec(tenant, sql, vec![])
    }
}

/// One statement of a Transaction, without parameters.
pub fn stmt(sql: &str) -> pb::Statement {
    pb::Statement {
        sql: sql.into(),
        ..Default::default()
    }
}
