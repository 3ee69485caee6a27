//! Client loops and their statistics, whatever the operation: in
//! [`measure`] each client is a [`Worker`] in a task of its own, timed per
//! call over a warm-up and a measured [`Window`]; in [`in_turn`] a few
//! clients share a fixed list of items, each taking the next one as it goes.
//! A phase's latencies give its [`CallStats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::flags;

/// Progress lines every so many items.
const PROGRESS_EVERY: usize = 1000;

/// One client's loop body: `prepare` is not timed, `send` is.
pub trait Worker: Send + 'static {
    type Request: Send;
    fn prepare(&mut self, seq: u64) -> Self::Request;
    fn send(&mut self, request: Self::Request) -> impl Future<Output = anyhow::Result<()>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

impl Window {
    /// From `--seconds` and `--warmup-seconds`, checked in that order.
    pub fn from_flags(seconds: f64, warmup_seconds: f64) -> anyhow::Result<Self> {
        let measure = flags::measured("--seconds", seconds)?;
        Ok(Self {
            warmup: flags::warmup(warmup_seconds)?,
            measure,
        })
    }

    /// `10s measured per phase after 2s warm-up`, for a markdown footnote.
    pub fn per_phase(&self) -> String {
        format!(
            "{:?} measured per phase after {:?} warm-up",
            self.measure, self.warmup
        )
    }
}

/// `2s warm-up, 10s measured`, for a phase's progress line.
impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} warm-up, {:?} measured", self.warmup, self.measure)
    }
}

/// Runs every worker in a loop of its own for the warm-up plus the measured
/// window. A call is recorded when it completes inside the measured window;
/// no call starts after it, and the ones in flight at its end are awaited
/// (so the next phase starts on a quiet database) but not recorded. The
/// first failing call stops the phase.
pub async fn measure<W: Worker>(workers: Vec<W>, window: Window) -> anyhow::Result<Vec<Duration>> {
    let start = Instant::now();
    let from = start + window.warmup;
    let until = from + window.measure;
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        tasks.spawn(async move {
            let mut recorded = Vec::new();
            for seq in 0u64.. {
                if Instant::now() >= until {
                    break;
                }
                let request = worker.prepare(seq);
                let sent = Instant::now();
                worker.send(request).await?;
                let done = Instant::now();
                if (from..=until).contains(&done) {
                    recorded.push(done - sent);
                }
            }
            anyhow::Ok(recorded)
        });
    }
    let mut all = Vec::new();
    // Returning early drops the set, which aborts the other clients.
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a benchmark client panicked")??);
    }
    Ok(all)
}

/// One client's go at item `i` of the list [`in_turn`] shares out.
pub trait Turn: Send + 'static {
    type Output: Send + 'static;
    fn take(&mut self, i: usize) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;
}

/// Items `0..progress.total` shared by `clients` (`what` names them in an
/// error), each in a task of its own taking the next item as it goes. Every
/// item's output in item order, and the time from the making of `progress`
/// to the end of the last item. The first failure ends it.
pub async fn in_turn<T: Turn>(
    what: &str,
    clients: Vec<T>,
    progress: Progress,
) -> anyhow::Result<(Vec<T::Output>, Duration)> {
    let total = progress.total;
    let progress = Arc::new(progress);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (next, progress) = (Arc::clone(&next), Arc::clone(&progress));
        tasks.spawn(async move {
            let mut outputs = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(outputs);
                }
                outputs.push((i, client.take(i).await?));
                progress.advanced(i, i + 1);
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    // Returning early drops the set, which aborts the other clients.
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.with_context(|| format!("a {what} client panicked"))??);
    }
    let took = progress.start.elapsed();
    all.sort_unstable_by_key(|&(i, _)| i);
    Ok((all.into_iter().map(|(_, output)| output).collect(), took))
}

/// A line on stderr each time another [`PROGRESS_EVERY`] of `total` items
/// are done: `tenantd-bench: <label> <done>/<total><unit> after <s> s`.
pub struct Progress {
    label: String,
    unit: &'static str,
    pub total: usize,
    start: Instant,
}

impl Progress {
    /// Counting from now.
    pub fn new(label: impl Into<String>, unit: &'static str, total: usize) -> Self {
        Self {
            label: label.into(),
            unit,
            total,
            start: Instant::now(),
        }
    }

    /// The items done went from `before` to `now`.
    pub fn advanced(&self, before: usize, now: usize) {
        if now / PROGRESS_EVERY > before / PROGRESS_EVERY {
            eprintln!(
                "tenantd-bench: {} {now}/{}{} after {:.1} s",
                self.label,
                self.total,
                self.unit,
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// A phase's calls: how many, how many a second over the time they are
/// counted over, and nearest-rank percentiles of their latencies.
#[derive(Debug, Clone, Copy)]
pub struct CallStats {
    pub calls: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl CallStats {
    /// None for no calls.
    pub fn new(mut latencies: Vec<Duration>, over: Duration) -> Option<Self> {
        latencies.sort_unstable();
        let max = *latencies.last()?;
        Some(Self {
            calls: latencies.len(),
            per_second: latencies.len() as f64 / over.as_secs_f64(),
            p50: percentile(&latencies, 0.50),
            p95: percentile(&latencies, 0.95),
            p99: percentile(&latencies, 0.99),
            p999: percentile(&latencies, 0.999),
            max,
        })
    }
}

/// Nearest-rank percentile of a sorted, non-empty sample.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
