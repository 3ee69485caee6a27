//! Crash points, for the tests of what a crash half-way through a change
//! leaves behind: with `TENANTD_CRASH_AT=<point>` in its environment, the
//! process aborts (no unwinding, no cleanup, as `kill -9` would) when it
//! reaches that point. Without the variable each point is one comparison
//! against a value read once.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const CRASH_AT: &str = "TENANTD_CRASH_AT";

/// Aborts the process when `point` is the one named by [`CRASH_AT`].
pub fn point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_AT).ok().filter(|v| !v.is_empty()));
    if at.as_deref() == Some(point) {
        eprintln!("tenantd: crashing at {point} ({CRASH_AT})");
        std::process::abort();
    }
}
