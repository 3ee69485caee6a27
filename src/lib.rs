//! tenantd: the control plane of a schema-per-tenant PostgreSQL platform.
//!
//! Dependencies point one way (ARCHITECTURE.md draws it):
//! binaries → [`app`] → [`grpc`] → ([`fleet`], [`data`], [`identity`],
//! [`tenant`]) → [`catalog`] → [`domain`], with [`metrics`] a leaf that
//! knows no tonic and no SQL. Only [`grpc`] knows tonic and the generated
//! types ([`pb`]); only [`catalog`] names a `tenantd.*` table; one module,
//! `grpc::status`, turns errors into statuses.
//!
//! The public surface is what the binaries, the bench and the integration
//! tests use; every other submodule is `pub(crate)`.

pub mod app;
pub mod catalog;
pub mod clusters;
pub mod config;
pub mod console;
pub mod counts;
pub mod crash;
pub mod data;
pub mod domain;
pub mod events;
pub mod files;
pub mod fleet;
pub mod grpc;
pub mod identity;
pub mod listener;
pub mod local_pg;
pub mod log_bursts;
pub mod metrics;
pub mod pgtls;
pub mod placement;
pub mod telemetry;
pub mod tenant;
pub mod usage;

pub use grpc::pb;
