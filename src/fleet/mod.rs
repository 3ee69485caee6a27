//! Fleet-wide tenant schema upgrades: planning from the catalog, durable
//! runs, the workers that execute them in every replica, and watching.

pub(crate) mod apply;
pub(crate) mod runner;
mod service;

pub use runner::RunnerSettings;
pub use service::{Action, Event, UpgradeError, Upgrades};
