//! Client loops and their statistics, whatever the operation: each client
//! is a [`Worker`] in a task of its own, timed per call over a warm-up and a
//! measured window; a phase's calls give tenants/s and p50/p95 latency.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::task::JoinSet;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Raw,
    Tenantd,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Tenantd => "tenantd",
        }
    }
}

#[derive(Debug)]
pub struct PhaseResult {
    pub side: Side,
    pub clients: usize,
    pub tenants: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p95: Duration,
}

impl PhaseResult {
    pub fn new(
        side: Side,
        clients: usize,
        window: Window,
        mut latencies: Vec<Duration>,
    ) -> anyhow::Result<Self> {
        ensure!(
            !latencies.is_empty(),
            "{} clients={clients}: no tenant was created inside the measured window; raise --seconds",
            side.label()
        );
        latencies.sort_unstable();
        Ok(Self {
            side,
            clients,
            tenants: latencies.len(),
            per_second: latencies.len() as f64 / window.measure.as_secs_f64(),
            p50: percentile(&latencies, 0.50),
            p95: percentile(&latencies, 0.95),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{:<8} clients={} tenants={} tenants_per_s={:.1} p50_ms={:.1} p95_ms={:.1}",
            self.side.label(),
            self.clients,
            self.tenants,
            self.per_second,
            ms(self.p50),
            ms(self.p95)
        )
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

pub struct Check {
    pub label: &'static str,
    pub markdown: &'static str,
    pub value: Option<f64>,
    pub limit: Limit,
    pub missing: &'static str,
}

#[derive(Clone, Copy)]
pub enum Limit {
    AtMost(f64),
    AtLeast(f64),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::AtMost(v) => write!(f, "≤ {v:.2}"),
            Limit::AtLeast(v) => write!(f, "≥ {v:.2}"),
        }
    }
}

impl Check {
    pub fn verdict(&self, value: f64) -> &'static str {
        let pass = match self.limit {
            Limit::AtMost(limit) => value <= limit,
            Limit::AtLeast(limit) => value >= limit,
        };
        if pass { "PASS" } else { "FAIL" }
    }

    pub fn line(&self) -> String {
        match self.value {
            Some(v) => format!(
                "{}: {v:.2} (target {}) {}",
                self.label,
                self.limit,
                self.verdict(v)
            ),
            None => format!("{}: n/a ({})", self.label, self.missing),
        }
    }
}
