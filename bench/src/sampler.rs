//! Watching tenantd over a phase: [`every`] takes a sample at once, then at
//! an interval until told to stop, and once more then; a [`Series`] keeps
//! the first, highest and last of the values read.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::or_na;

/// One figure over the samples: the first, highest and last value read, and
/// how many were (a sample may find none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Series {
    pub start: Option<f64>,
    pub peak: Option<f64>,
    pub end: Option<f64>,
    pub samples: usize,
}

impl Series {
    pub fn record(&mut self, v: Option<f64>) {
        let Some(v) = v else { return };
        self.start.get_or_insert(v);
        self.peak = Some(self.peak.map_or(v, |p| p.max(v)));
        self.end = Some(v);
        self.samples += 1;
    }

    /// `start<unit>=… peak<unit>=… end<unit>=…`, for a result line.
    pub fn fields(&self, unit: &str) -> String {
        format!(
            "start{unit}={} peak{unit}={} end{unit}={}",
            or_na(self.start, 1),
            or_na(self.peak, 1),
            or_na(self.end, 1)
        )
    }

    /// `start | peak | end` with `digits` decimals, for a markdown row.
    pub fn cells(&self, digits: usize) -> String {
        format!(
            "{} | {} | {}",
            or_na(self.start, digits),
            or_na(self.peak, digits),
            or_na(self.end, digits)
        )
    }
}

/// Runs `sample` now and every `period` until `stop`, and once more then.
/// A sample that takes longer than `period` delays the next one.
pub async fn every(period: Duration, stop: &CancellationToken, mut sample: impl AsyncFnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            biased;
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        sample().await;
        if last {
            return;
        }
    }
}
