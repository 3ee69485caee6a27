//! The gRPC edge: generated types, request conversion, the one mapping of
//! errors to statuses, and the service implementations. Nothing below this
//! module sees a generated type or a `tonic::Status`.

pub mod admission;
pub(crate) mod arrival;
pub mod auth;
mod clusters;
pub(crate) mod codec;
mod convert;
pub(crate) mod data;
pub(crate) mod events;
pub(crate) mod identity;
pub(crate) mod metrics;
mod migrations;
pub(crate) mod request_id;
mod status;
mod tenants;
pub mod tls;
mod usage;

pub use clusters::ClusterApi;
pub use data::DataApi;
pub use events::EventApi;
pub use identity::{SessionApi, UserApi};
pub use migrations::MigrationApi;
pub use tenants::TenantApi;
pub use usage::UsageApi;

use tonic::transport::server::{Connected, TcpConnectInfo};

/// The listener's guarded connections carry their TCP addresses to the
/// calls, as plain TCP connections do.
impl Connected for crate::listener::Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// The canonical name of a status code ("OK", "NOT_FOUND", …), as
/// metrics label it and tenantctl prints it.
pub const fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Generated protobuf and gRPC types of package `tenantd.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tenantd.v1");

    /// The encoded descriptor set that server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tenantd_descriptor");
}
