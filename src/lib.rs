//! tenantd: the control plane of a schema-per-tenant PostgreSQL platform.
//!
//! Dependencies point one way: `app` → `grpc` → `tenant` → `catalog` →
//! `domain`. `domain` knows no SQL and no gRPC; only `grpc` knows tonic and
//! the generated types.

pub mod app;
pub mod catalog;
pub mod config;
pub mod data;
pub mod domain;
pub mod fleet;
pub mod grpc;
pub mod identity;
pub mod local_pg;
pub mod log_bursts;
pub mod metrics;
pub mod telemetry;
pub mod tenant;

pub use grpc::pb;
