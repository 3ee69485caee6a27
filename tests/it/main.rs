//! tenantd's integration tests, one test binary: a real PostgreSQL (one
//! cluster shared by every test, one fresh database per test), the real
//! server in process or as a child process, spoken to through the generated
//! client, tenantctl and a Python client. The harness is in `common`; each
//! other module is one concern.
//!
//! One module: `cargo test --test it -- data::`; one test: its path, e.g.
//! `cargo test --test it -- identity::sessions::logout`.

mod common;

mod authority;
mod citus;
mod citus_moves;
mod data;
mod deploy;
mod docs;
mod events;
mod identity;
mod isolation;
mod listener;
mod managed;
mod metrics;
mod multi_cluster;
mod pg16;
mod pg_tls;
mod provisioning;
mod python_client;
mod serve_binary;
mod shutdown;
mod tenantctl;
mod tenants;
mod tls;
mod upgrades;
