//! Identifiers, names and validation rules of the tenant domain. Knows no SQL
//! and no gRPC: everything here is checked once, at the edge, and the rest of
//! the service only ever sees values that already passed.

pub mod cluster;
pub mod identity;
mod ids;
mod tenant;
pub mod upgrade;
mod validation;

pub use cluster::{ClusterLimits, ClusterName, ClusterState, NewCluster, PasswordSource};
pub use ids::{RoleName, SchemaName, TenantId};
pub use tenant::{
    Country, LifecycleAction, NewTenant, Slug, Tenant, TenantName, TenantPatch, TenantStatus,
    TextField,
};
pub use validation::{FieldViolation, ValidationError, Violations};
