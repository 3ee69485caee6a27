//! The catalog's event stream. Every change tenantd makes is an audit-log
//! event written in the change's transaction and numbered in commit order
//! without gaps; that number is the watchers' cursor.
//!
//! Each replica has one fan-out task that, while anyone watches, reads the
//! events newer than the last it saw every `poll_interval` and broadcasts
//! them into a bounded ring shared by that replica's watchers. A watcher
//! first pages from the catalog from its own cursor, then follows the ring,
//! going back to the catalog whenever it sees a gap. A watcher that falls a
//! whole ring behind (it reads slower than events come) is cut off, so it
//! costs neither the writers nor the replica's memory, and resumes from its
//! cursor.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::catalog::events::{EventRow as Event, Page, Selection};
use crate::domain::ValidationError;

/// How events reach watchers.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// How often the fan-out looks for new events while anyone watches.
    pub poll_interval: Duration,
    /// Events a replica keeps for its watchers; a watcher further behind
    /// than this is cut off.
    pub buffer: usize,
    /// Watchers a replica serves at once, in all.
    pub max_watchers: usize,
    /// Watchers one caller (a user, a service key) may have open on a
    /// replica at once.
    pub max_watchers_per_caller: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(50),
            buffer: 4096,
            max_watchers: 1024,
            max_watchers_per_caller: 16,
        }
    }
}

/// Catalog reads of event pages (ListEvents, watchers catching up) at
/// once on a replica: the rest wait their turn, so a flood of them never
/// takes the catalog pool from everything else.
const READERS: usize = 4;
/// How long a page waits for its turn before the caller is told to retry.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Why a page could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Every reader's turn was taken for longer than [`READ_WAIT`].
    Busy,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// A watch's place among the replica's watchers; given back when dropped.
pub struct WatchSlot {
    inner: Arc<Inner>,
    caller: String,
    tenant: Option<Uuid>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.inner.open.lock() {
            crate::counts::release(&mut open.by_caller, &self.caller);
            if let Some(tenant) = self.tenant {
                crate::counts::release(&mut open.by_tenant, &tenant);
                open.users -= 1;
            }
            open.total -= 1;
        }
    }
}

/// Watchers open on the replica: in all, users' (per tenant), per caller.
#[derive(Default)]
struct Open {
    total: usize,
    users: usize,
    by_caller: std::collections::HashMap<String, usize>,
    by_tenant: std::collections::HashMap<Uuid, usize>,
}

/// Users' watchers of one tenant, at most, in callers' limits: the members
/// of one tenant cannot take a replica's places from the others.
const TENANT_CALLERS: usize = 4;

/// Events read from the catalog per statement.
const PAGE: i64 = 1000;
/// Sequence numbers a filtered page looks at, at most.
const WINDOW: i64 = 20_000;

/// Why a watch ended other than by the watcher leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// It fell more than the buffer behind; resume after `cursor`.
    TooSlow { cursor: i64 },
    /// Its credentials were revoked or expired.
    Unauthenticated(String),
    /// Its role no longer allows it.
    Denied(String),
    /// The catalog could not be read.
    Catalog(String),
    /// The replica's event readers stayed busy; resume after `cursor`.
    Busy { cursor: i64 },
    /// The replica is shutting down; resume after `cursor` elsewhere.
    ShuttingDown { cursor: i64 },
}

/// The categories a kind filter may name, and what kinds belong to them.
pub const CATEGORIES: [&str; 8] = [
    "tenant",
    "member",
    "session",
    "user",
    "upgrade",
    "cluster",
    "cluster_job",
    "citus",
];

/// Checks a filter's kinds: each a category or `category.action`, in
/// lower case.
pub fn parse_kinds(field: &str, kinds: &[String]) -> Result<Vec<String>, ValidationError> {
    if kinds.len() > 64 {
        return Err(ValidationError::single(field, "at most 64 kinds"));
    }
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let (category, action) = match k.split_once('.') {
                Some((c, a)) => (c, Some(a)),
                None => (k.as_str(), None),
            };
            let word = |w: &str| {
                !w.is_empty()
                    && w.len() <= 64
                    && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            };
            if CATEGORIES.contains(&category) && action.is_none_or(word) {
                Ok(k.clone())
            } else {
                Err(ValidationError::single(
                    format!("{field}[{i}]"),
                    format!(
                        "must be a category ({}) or a kind such as tenant.create",
                        CATEGORIES.join(", ")
                    ),
                ))
            }
        })
        .collect()
}

impl Selection {
    /// Whether the event is selected (the same test the catalog's page
    /// query makes).
    pub fn matches(&self, e: &Event) -> bool {
        if self.tenant.is_some_and(|t| e.tenant_id != Some(t)) {
            return false;
        }
        self.kinds.is_empty()
            || self
                .kinds
                .iter()
                .any(|k| *k == e.action || category(&e.action) == k)
    }
}

/// The event stream of one replica.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: EventSettings,
    metrics: crate::metrics::Metrics,
    live: broadcast::Sender<Arc<Event>>,
    /// Wakes the fan-out when its first watcher comes.
    watched: Notify,
    readers: tokio::sync::Semaphore,
    open: std::sync::Mutex<Open>,
}

impl Events {
    pub fn new(pool: PgPool, settings: EventSettings, metrics: crate::metrics::Metrics) -> Self {
        let (live, _) = broadcast::channel(settings.buffer.max(16));
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                metrics,
                live,
                watched: Notify::new(),
                readers: tokio::sync::Semaphore::new(READERS),
                open: Default::default(),
            }),
        }
    }

    /// Runs the fan-out until `shutdown`.
    pub fn spawn(&self, shutdown: CancellationToken, tasks: &TaskTracker) {
        let this = self.clone();
        tasks.spawn(async move { this.fan_out(shutdown).await });
    }

    async fn fan_out(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut idle = true;
        let mut failing = false;
        // The last event broadcast.
        let mut head = 0;
        loop {
            if inner.live.receiver_count() == 0 {
                idle = true;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = inner.watched.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let step = async {
                let mut conn = inner.pool.acquire().await?;
                if idle {
                    // Nobody watched: start from the newest; watchers page
                    // what they missed from the catalog.
                    head = crate::catalog::events::head(&mut conn).await?;
                }
                loop {
                    let rows = crate::catalog::events::after(&mut conn, head, PAGE).await?;
                    let full = rows.len() as i64 == PAGE;
                    for row in rows {
                        let seq = row.seq;
                        // No receivers is not an error: they may come back.
                        let _ = inner.live.send(Arc::new(row));
                        head = seq;
                    }
                    if !full {
                        return Ok::<_, sqlx::Error>(());
                    }
                }
            }
            .await;
            match step {
                Ok(()) => {
                    idle = false;
                    if failing {
                        tracing::info!("event fan-out reads the catalog again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "event fan-out cannot read the catalog; retrying");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(inner.settings.poll_interval) => {}
            }
        }
    }

    /// A page of selected events after `after`, read in its turn among
    /// the replica's [`READERS`].
    pub async fn page(
        &self,
        after: i64,
        selection: &Selection,
        limit: i64,
    ) -> Result<Page, ReadError> {
        let _turn = tokio::time::timeout(READ_WAIT, self.inner.readers.acquire())
            .await
            .map_err(|_| ReadError::Busy)?
            .map_err(|_| ReadError::Busy)?;
        let mut conn = self.inner.pool.acquire().await?;
        Ok(crate::catalog::events::page(&mut conn, after, selection, limit, WINDOW).await?)
    }

    /// The newest event's cursor.
    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        let mut conn = self.inner.pool.acquire().await?;
        crate::catalog::events::head(&mut conn).await
    }

    /// A place for one more watch of `caller` (a user's watching `tenant`,
    /// a service key's `None`), or why not: the replica's limit, of which a
    /// quarter is kept for service keys; for a user, its tenant's share
    /// ([`TENANT_CALLERS`] callers' worth); the caller's own limit.
    pub fn admit(&self, caller: &str, tenant: Option<Uuid>) -> Result<WatchSlot, String> {
        let s = &self.inner.settings;
        let mut open = self
            .inner
            .open
            .lock()
            .map_err(|_| "the watcher registry is unusable".to_owned())?;
        if open.total >= s.max_watchers {
            return Err(format!(
                "this replica serves {} event watchers, its limit (--events-max-watchers): \
                 try another replica or later",
                s.max_watchers
            ));
        }
        if let Some(t) = tenant {
            let for_users = s.max_watchers - s.max_watchers / 4;
            if open.users >= for_users {
                return Err(format!(
                    "users hold {} event watchers on this replica, all the places not kept \
                     for services: try another replica or later",
                    open.users
                ));
            }
            let of_tenant = open.by_tenant.get(&t).copied().unwrap_or(0);
            let tenant_limit = s.max_watchers_per_caller * TENANT_CALLERS;
            if of_tenant >= tenant_limit {
                return Err(format!(
                    "the members of this tenant hold {of_tenant} event watchers on this \
                     replica, the tenant's limit ({TENANT_CALLERS} × \
                     --events-max-watchers-per-caller): close one first"
                ));
            }
        }
        let mine = open.by_caller.get(caller).copied().unwrap_or(0);
        if mine >= s.max_watchers_per_caller {
            return Err(format!(
                "{caller} has {mine} event watchers open on this replica, its limit \
                 (--events-max-watchers-per-caller): close one first"
            ));
        }
        open.total += 1;
        *open.by_caller.entry(caller.to_owned()).or_default() += 1;
        if let Some(t) = tenant {
            open.users += 1;
            *open.by_tenant.entry(t).or_default() += 1;
        }
        Ok(WatchSlot {
            inner: Arc::clone(&self.inner),
            caller: caller.to_owned(),
            tenant,
        })
    }

    /// Sends every selected event after `after` to `out`, then each new one,
    /// until the receiver goes away (`None`), `shutdown`, or `still_allowed`
    /// (asked every few seconds) says no.
    pub async fn watch<F, Fut>(
        &self,
        after: i64,
        selection: Selection,
        out: mpsc::Sender<Arc<Event>>,
        shutdown: CancellationToken,
        still_allowed: F,
    ) -> Option<WatchEnd>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), WatchEnd>>,
    {
        let m = self.inner.metrics.watch();
        m.watchers.inc();
        let end = self
            .follow(after, selection, out, shutdown, still_allowed)
            .await;
        m.watchers.dec();
        if matches!(end, Some(WatchEnd::TooSlow { .. })) {
            m.cut_off.inc();
        }
        end
    }

    async fn follow<F, Fut>(
        &self,
        mut after: i64,
        selection: Selection,
        out: mpsc::Sender<Arc<Event>>,
        shutdown: CancellationToken,
        mut still_allowed: F,
    ) -> Option<WatchEnd>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), WatchEnd>>,
    {
        // Subscribe before reading the catalog, so nothing committed in
        // between is missed: what the ring repeats is skipped by number.
        let mut live = self.inner.live.subscribe();
        self.inner.watched.notify_one();
        let mut recheck = tokio::time::interval(Duration::from_secs(2));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let mut catching_up = true;
        loop {
            if catching_up {
                // Page from the catalog until the page reaches the head.
                let page = tokio::select! {
                    () = out.closed() => return None,
                    () = shutdown.cancelled() => return Some(WatchEnd::ShuttingDown { cursor: after }),
                    page = self.page(after, &selection, PAGE) => page,
                };
                let page = match page {
                    Ok(p) => p,
                    Err(ReadError::Busy) => return Some(WatchEnd::Busy { cursor: after }),
                    Err(ReadError::Db(e)) => return Some(WatchEnd::Catalog(e.to_string())),
                };
                for e in page.events {
                    let seq = e.seq;
                    if out.send(Arc::new(e)).await.is_err() {
                        return None;
                    }
                    after = seq;
                }
                after = after.max(page.next_after);
                if page.next_after < page.head {
                    continue;
                }
                catching_up = false;
                // The ring may have overflowed while the catalog was paged:
                // follow it from now on; a gap sends the watcher back to the
                // catalog.
                live = live.resubscribe();
            }
            let next = tokio::select! {
                () = out.closed() => return None,
                () = shutdown.cancelled() => return Some(WatchEnd::ShuttingDown { cursor: after }),
                _ = recheck.tick() => {
                    if let Err(end) = still_allowed().await {
                        return Some(end);
                    }
                    continue;
                }
                next = live.recv() => next,
            };
            match next {
                Ok(e) if e.seq <= after => {}
                Ok(e) if e.seq == after + 1 => {
                    after = e.seq;
                    if selection.matches(&e) {
                        // A full queue means the watcher is slow; the ring
                        // then overflows and the next receive says so.
                        tokio::select! {
                            sent = out.send(e) => if sent.is_err() { return None },
                            () = shutdown.cancelled() => {
                                return Some(WatchEnd::ShuttingDown { cursor: after - 1 });
                            }
                        }
                    }
                }
                // A gap: the ring started after the cursor.
                Ok(_) => catching_up = true,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(WatchEnd::TooSlow { cursor: after });
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Some(WatchEnd::ShuttingDown { cursor: after });
                }
            }
        }
    }
}

/// The category an event's kind belongs to.
pub fn category(kind: &str) -> &str {
    kind.split_once('.').map_or(kind, |(c, _)| c)
}

/// A tenant id from a filter, if given.
pub fn parse_tenant(field: &str, value: &str) -> Result<Option<Uuid>, ValidationError> {
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value)
        .map(Some)
        .map_err(|_| ValidationError::single(field, "must be a tenant id (a UUID)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, action: &str, tenant: Option<Uuid>) -> Event {
        Event {
            seq,
            at: chrono::Utc::now(),
            actor: "tenantd".into(),
            action: action.into(),
            target: String::new(),
            tenant_id: tenant,
            details: "{}".into(),
        }
    }

    #[test]
    fn kinds_are_categories_or_kinds_of_them() {
        let ok = |k: &[&str]| {
            parse_kinds(
                "filter.kinds",
                &k.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(ok(&["tenant", "member.add", "upgrade.tenant_failed"]).is_ok());
        for bad in [
            "Tenant",
            "tenant.",
            "tenants",
            "tenant.Create",
            "tenant.a.b",
            "",
            "tenant.create;",
            " tenant",
        ] {
            let err = ok(&["tenant", bad]).unwrap_err();
            assert_eq!(err.violations.len(), 1, "{bad:?}");
            assert_eq!(err.violations[0].field, "filter.kinds[1]", "{bad:?}");
        }
    }

    #[test]
    fn selection_matches_as_the_catalog_query_does() {
        let t = Uuid::new_v4();
        let other = Uuid::new_v4();
        let s = Selection {
            kinds: vec!["member".into(), "tenant.purge".into()],
            tenant: Some(t),
        };
        assert!(s.matches(&event(1, "member.add", Some(t))));
        assert!(s.matches(&event(1, "tenant.purge", Some(t))));
        assert!(!s.matches(&event(1, "tenant.create", Some(t))));
        assert!(!s.matches(&event(1, "member.add", Some(other))));
        assert!(!s.matches(&event(1, "member.add", None)));
        assert!(!s.matches(&event(1, "membership.add", Some(t))));
        assert!(Selection::default().matches(&event(1, "user.create", None)));
    }
}
