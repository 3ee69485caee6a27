//! Bursts of one failure, logged once: the first occurrence of a kind (its
//! key) is logged in full, the ones after it are only counted, and once a
//! window has passed the count is logged as one summary line ("N more like
//! this in the last Xs"). A kind that did not occur again within the window
//! is forgotten, so its next occurrence is logged in full again.
//!
//! A PostgreSQL restart fails every call the same way for its whole length:
//! thousands of identical lines would bury what happened. [`LogBursts::first`]
//! and [`LogBursts::due`] only decide, which keeps them testable with any
//! clock; [`LogBursts::warn`] logs with them the way the listeners do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Kinds tracked at once; a new kind past this is logged every time (keys
/// are few in practice: a SQLSTATE, or the text of an I/O error).
const MAX_KINDS: usize = 64;

/// Counts repeated failures per kind; see the module doc.
#[derive(Debug)]
pub struct LogBursts {
    window: Duration,
    /// Per kind, the burst going on; a mutex, since failures of many calls
    /// report at once and each holds it only to count.
    bursts: Mutex<HashMap<String, Burst>>,
}

#[derive(Debug)]
struct Burst {
    /// When the current window began.
    since: Instant,
    /// Occurrences since then that were not logged.
    more: u64,
    /// The first occurrence's text, repeated in summaries.
    sample: String,
}

/// Occurrences of one kind that were counted but not logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub key: String,
    /// The text of the burst's first occurrence.
    pub sample: String,
    pub more: u64,
    /// The time they were counted over.
    pub over: Duration,
}

impl LogBursts {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            bursts: Mutex::new(HashMap::new()),
        }
    }

    /// Logs `message` (an occurrence of `key`) as a warning when it starts
    /// a burst, and a summary of each burst whose window has passed: "N
    /// more `what` like this in the last Xs: …".
    pub fn warn(&self, what: &str, key: &str, message: &str) {
        let now = Instant::now();
        for s in self.due(now) {
            tracing::warn!(
                more = s.more,
                "{} more {what} like this in the last {}s: {}",
                s.more,
                s.over.as_secs(),
                s.sample
            );
        }
        if self.first(key, message, now) {
            tracing::warn!("{message}; repeats are counted and summed up");
        }
    }

    /// Whether an occurrence of `key` at `now` is to be logged in full (it
    /// starts a burst); otherwise it has been counted for a summary.
    /// `sample` is what later summaries repeat.
    pub fn first(&self, key: &str, sample: &str, now: Instant) -> bool {
        let mut bursts = self.bursts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(burst) = bursts.get_mut(key) {
            burst.more += 1;
            return false;
        }
        if bursts.len() < MAX_KINDS {
            bursts.insert(
                key.to_owned(),
                Burst {
                    since: now,
                    more: 0,
                    sample: sample.to_owned(),
                },
            );
        }
        true
    }

    /// The bursts whose window has passed by `now`: each with uncounted
    /// occurrences is answered and starts a new window; each without has
    /// ended and is forgotten.
    pub fn due(&self, now: Instant) -> Vec<Summary> {
        let mut bursts = self.bursts.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        bursts.retain(|key, burst| {
            let over = now.saturating_duration_since(burst.since);
            if over < self.window {
                return true;
            }
            if burst.more == 0 {
                return false;
            }
            due.push(Summary {
                key: key.clone(),
                sample: burst.sample.clone(),
                more: burst.more,
                over,
            });
            burst.since = now;
            burst.more = 0;
            true
        });
        due.sort_by(|a, b| a.key.cmp(&b.key));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_burst_is_one_line_then_one_summary_per_window() {
        let b = LogBursts::new(WINDOW);
        let t0 = Instant::now();
        // 4,500 identical failures over 30 s, as in one PostgreSQL restart.
        let mut logged = 0;
        let mut summaries = Vec::new();
        for i in 0..4500u64 {
            let now = t0 + Duration::from_millis(i * 30_000 / 4500);
            if b.first("57P03", "the database system is shutting down", now) {
                logged += 1;
            }
            summaries.extend(b.due(now));
        }
        assert_eq!(logged, 1);
        // One summary per 10 s window, together accounting for every
        // occurrence that was not logged.
        assert_eq!(summaries.len(), 2, "{summaries:?}");
        let tail = b.due(t0 + s(45));
        assert_eq!(
            tail.len(),
            1,
            "the last window's summary comes once it has passed"
        );
        summaries.extend(tail);
        assert_eq!(summaries.iter().map(|s| s.more).sum::<u64>(), 4499);
        for summary in &summaries {
            assert_eq!(summary.key, "57P03");
            assert_eq!(summary.sample, "the database system is shutting down");
            assert!(summary.over >= WINDOW, "{summary:?}");
        }
        // Quiet for a window: the burst is over and forgotten, and the next
        // failure is logged in full again.
        assert!(b.due(t0 + s(60)).is_empty());
        assert!(b.first("57P03", "the database system is starting up", t0 + s(61)));
    }

    #[test]
    fn kinds_are_counted_apart() {
        let b = LogBursts::new(WINDOW);
        let t0 = Instant::now();
        for key in ["53300", "57P03", "connect: No such file or directory"] {
            assert!(b.first(key, key, t0), "{key}: first is logged");
            for _ in 0..3 {
                assert!(!b.first(key, key, t0 + s(1)), "{key}: repeats are counted");
            }
        }
        assert!(!b.first("53300", "53300", t0 + s(1)));
        let due = b.due(t0 + WINDOW);
        let counts: Vec<(&str, u64)> = due.iter().map(|s| (s.key.as_str(), s.more)).collect();
        assert_eq!(
            counts,
            [
                ("53300", 4),
                ("57P03", 3),
                ("connect: No such file or directory", 3)
            ]
        );
    }

    #[test]
    fn a_single_failure_has_no_summary() {
        let b = LogBursts::new(WINDOW);
        let t0 = Instant::now();
        assert!(b.first("08006", "x", t0));
        assert!(b.due(t0 + s(5)).is_empty(), "window not passed");
        assert!(b.due(t0 + s(11)).is_empty(), "nothing counted");
        assert!(b.first("08006", "x", t0 + s(12)), "a new burst");
    }

    #[test]
    fn kinds_past_the_limit_are_logged_every_time() {
        let b = LogBursts::new(WINDOW);
        let t0 = Instant::now();
        for i in 0..MAX_KINDS {
            assert!(b.first(&i.to_string(), "", t0));
        }
        for _ in 0..3 {
            assert!(b.first("one too many", "", t0));
        }
        assert!(!b.first("0", "", t0));
    }
}
