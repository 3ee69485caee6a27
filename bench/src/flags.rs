//! Checks of the subcommands' flags that more than one of them makes, with
//! one wording: each names the flag and the values it takes.

use std::fmt::Display;
use std::time::Duration;

use anyhow::ensure;

/// `value` within `lo..=hi`.
pub fn between<T: PartialOrd + Display>(flag: &str, value: T, lo: T, hi: T) -> anyhow::Result<()> {
    ensure!(
        lo <= value && value <= hi,
        "{flag} must be between {lo} and {hi}"
    );
    Ok(())
}

/// `value` at least `lo`.
pub fn at_least<T: PartialOrd + Display>(flag: &str, value: T, lo: T) -> anyhow::Result<()> {
    ensure!(value >= lo, "{flag} must be at least {lo}");
    Ok(())
}

/// A list flag (one phase per value): not empty, every value within
/// `lo..=hi`.
pub fn each_between(flag: &str, values: &[usize], lo: usize, hi: usize) -> anyhow::Result<()> {
    ensure!(!values.is_empty(), "{flag} needs at least one value");
    ensure!(
        values.iter().all(|v| (lo..=hi).contains(v)),
        "{flag} values must be between {lo} and {hi}"
    );
    Ok(())
}

/// A phase's measured seconds: more than zero.
pub fn measured(flag: &str, seconds: f64) -> anyhow::Result<Duration> {
    ensure!(
        seconds.is_finite() && seconds > 0.0,
        "{flag} must be more than zero"
    );
    Ok(Duration::from_secs_f64(seconds))
}

/// `--warmup-seconds`: not negative.
pub fn warmup(seconds: f64) -> anyhow::Result<Duration> {
    ensure!(
        seconds.is_finite() && seconds >= 0.0,
        "--warmup-seconds must not be negative"
    );
    Ok(Duration::from_secs_f64(seconds))
}
