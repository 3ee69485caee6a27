//! The gRPC edge: generated types, request conversion, the one mapping of
//! errors to statuses, and the service implementations. Nothing below this
//! module sees a generated type or a `tonic::Status`.

pub mod auth;
mod convert;
pub mod data;
pub mod identity;
mod migrations;
pub mod request_id;
mod status;
mod tenants;

pub use data::DataApi;
pub use identity::{SessionApi, UserApi};
pub use migrations::MigrationApi;
pub use tenants::TenantApi;

/// Generated protobuf and gRPC types of package `tenantd.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tenantd.v1");

    /// The encoded descriptor set that server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tenantd_descriptor");
}
