//! The connection budget every tenant pool shares: one semaphore permit per
//! connection, and closing idle connections of the least recently used
//! pools when a new one is needed at the cap.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clusters::{BudgetSlot, ConnectionBudget};
use crate::domain::{ClusterName, TenantId};
use crate::metrics::{EvictionReason, Metrics};

use super::{Canceller, PoolError, TenantPool, WAIT_SLICE};

/// State every pool and connection shares.
pub(super) struct Shared {
    pub(super) permits: Arc<Semaphore>,
    pub(super) budget: usize,
    pub(super) wait: Duration,
    /// Callers waiting for a permit.
    pub(super) waiters: AtomicUsize,
    pub(super) metrics: Metrics,
    /// The cache, for closing idle connections of other pools.
    pub(super) cache: moka::future::Cache<TenantId, Arc<TenantPool>>,
    pub(super) started: Instant,
    /// What cancels each call running now, so that shutdown can cancel
    /// them all and wait for it.
    /// A slab (its slots reused, no hashing per call), keyed by call id.
    pub(super) running: Mutex<slab::Slab<(u64, Canceller)>>,
    pub(super) next_call: AtomicU64,
    /// Cancels sent for calls abandoned by their callers, awaited at
    /// shutdown so that none is lost with the runtime.
    pub(super) cancels: tokio_util::task::TaskTracker,
}

impl Shared {
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A permit for one more connection, closing idle connections of the
    /// least recently used pools and then waiting if the budget is spent.
    pub(super) async fn permit(&self) -> Result<OwnedSemaphorePermit, PoolError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = scopeguard(|| {
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        });
        self.metrics.pool().budget_waits.inc();
        // One acquire for the whole wait keeps this caller's place in the
        // semaphore's queue; between looks it closes idle connections.
        let acquire = self.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            self.close_idle(1);
            let slice = (tokio::time::Instant::now() + WAIT_SLICE).min(deadline);
            tokio::select! {
                permit = &mut acquire => return permit.map_err(|_| PoolError::Closed),
                () = tokio::time::sleep_until(slice) => {
                    if slice >= deadline {
                        self.metrics.pool().budget_timeouts.inc();
                        return Err(PoolError::Exhausted(self.wait, self.budget));
                    }
                }
            }
        }
    }

    /// A place for one more connection in cluster `name`'s budget,
    /// closing idle connections of the least recently used pools on that
    /// cluster and then waiting if its budget is spent.
    pub(super) async fn cluster_slot(
        &self,
        name: &ClusterName,
        budget: &Arc<ConnectionBudget>,
    ) -> Result<BudgetSlot, PoolError> {
        if let Some(slot) = budget.try_take() {
            return Ok(slot);
        }
        // Connections to this cluster handed back meanwhile are closed.
        let _waiting = budget.waiting();
        self.metrics.pool().budget_waits.inc();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            self.close_idle_where(1, |p| Arc::ptr_eq(&p.budget, budget));
            if let Some(slot) = budget.try_take() {
                return Ok(slot);
            }
            if tokio::time::Instant::now() >= deadline {
                self.metrics.pool().budget_timeouts.inc();
                return Err(PoolError::ClusterExhausted(
                    self.wait,
                    name.to_string(),
                    budget.limit(),
                ));
            }
            tokio::time::sleep(WAIT_SLICE).await;
        }
    }

    /// Closes up to `want` idle connections, least recently used pool
    /// first; returns how many it closed.
    pub(super) fn close_idle(&self, want: usize) -> usize {
        self.close_idle_where(want, |_| true)
    }

    /// [`Self::close_idle`] among the pools `which` picks.
    fn close_idle_where(&self, want: usize, which: impl Fn(&TenantPool) -> bool) -> usize {
        let pools = oldest_first(
            self.cache
                .iter()
                .map(|(_, p)| p)
                .filter(|p| which(p) && p.pool.status().available > 0),
            |p| p.last_used.load(Ordering::Relaxed),
        );
        let mut closed = 0;
        for p in pools {
            if closed >= want {
                break;
            }
            let mut budget = want - closed;
            let removed = p
                .pool
                .retain(|_, _| {
                    if budget > 0 {
                        budget -= 1;
                        false
                    } else {
                        true
                    }
                })
                .removed;
            closed += removed.len();
            for _ in &removed {
                self.metrics.pool().evicted(EvictionReason::Budget);
            }
        }
        closed
    }
}

/// `items` ordered by `last_used`, oldest first, each item's time read once.
/// Checkouts on other threads move a pool's time on while this runs; a sort
/// that read the times as it compared would see them contradict each other,
/// and Rust's sort may then panic ("does not correctly implement a total
/// order"), failing the call that needed a connection.
pub(super) fn oldest_first<T>(
    items: impl IntoIterator<Item = T>,
    last_used: impl Fn(&T) -> u64,
) -> Vec<T> {
    let mut timed: Vec<(u64, T)> = items.into_iter().map(|t| (last_used(&t), t)).collect();
    timed.sort_by_key(|&(at, _)| at);
    timed.into_iter().map(|(_, t)| t).collect()
}

/// Runs `f` when dropped.
pub(super) fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
