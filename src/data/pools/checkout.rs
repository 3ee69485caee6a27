//! A connection handed out of a tenant pool, and what cancels the call
//! running on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use deadpool::managed::Object;

use crate::clusters::ConnectionBudget;
use crate::data::socket::{Control, Endpoint};

use super::{CONNECT_TIMEOUT, Shared, TenantManager};

/// Stops a connection's running call: cancels its query over a connection
/// of its own, and closes the connection.
pub struct Canceller {
    pub(super) token: tokio_postgres::CancelToken,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) control: Arc<Control>,
}

impl Canceller {
    /// Cancels the connection's running query, then closes the connection:
    /// a statement that catches the cancel ends when its backend sees the
    /// connection closed.
    pub async fn cancel(self) {
        if let Ok(socket) = self.endpoint.connect(CONNECT_TIMEOUT).await {
            let _ = self
                .token
                .cancel_query_raw(socket, tokio_postgres::NoTls)
                .await;
        }
        self.control.close_now();
    }
}

/// A connection handed out; dropping it hands it back (or closes it when
/// broken, abandoned mid-call, or wanted by a waiter).
pub struct Checkout {
    pub(super) obj: Option<Object<TenantManager>>,
    pub(super) shared: Arc<Shared>,
    /// The budget of the connection's cluster.
    pub(super) budget: Arc<ConnectionBudget>,
    pub(super) discard: bool,
}

impl Checkout {
    pub fn client(&self) -> &tokio_postgres::Client {
        match &self.obj {
            Some(obj) => obj.client(),
            None => unreachable!("the object is only taken on drop"),
        }
    }

    /// What cancels this connection's running query from elsewhere.
    pub fn canceller(&self) -> Canceller {
        match &self.obj {
            Some(obj) => Canceller {
                token: obj.client().cancel_token(),
                endpoint: obj.endpoint.clone(),
                control: obj.control.clone(),
            },
            None => unreachable!("the object is only taken on drop"),
        }
    }

    pub fn statement_cache(&self) -> &deadpool_postgres::StatementCache {
        match &self.obj {
            Some(obj) => &obj.client().statement_cache,
            None => unreachable!("the object is only taken on drop"),
        }
    }

    /// Counts `bytes` of SQL going into the statement cache.
    pub fn note_cached(&self, bytes: usize) {
        if let Some(obj) = &self.obj {
            obj.cached_sql.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// What the socket's message guard dropped or refused.
    pub fn socket(&self) -> &Control {
        match &self.obj {
            Some(obj) => &obj.control,
            None => unreachable!("the object is only taken on drop"),
        }
    }

    /// Registers the call about to run, so that shutdown can cancel it; the
    /// guard cancels it when dropped before [`Running::disarm`].
    pub fn cancel_on_drop(&self) -> Running {
        let id = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        let canceller = self.canceller();
        let slot = self
            .shared
            .running
            .lock()
            .ok()
            .map(|mut running| running.insert((id, canceller)));
        Running {
            id,
            slot,
            shared: self.shared.clone(),
        }
    }

    /// Close the connection instead of handing it back.
    pub fn set_discard(&mut self, discard: bool) {
        self.discard = discard;
    }
}

/// A call running on a connection; see [`Checkout::cancel_on_drop`].
pub struct Running {
    pub(super) id: u64,
    /// The call's slot among the running ones, until taken. A freed slot
    /// is reused by a later call: the id tells whose it is now.
    pub(super) slot: Option<usize>,
    pub(super) shared: Arc<Shared>,
}

impl Running {
    pub(super) fn take(&mut self) -> Option<Canceller> {
        let slot = self.slot.take()?;
        let mut running = self.shared.running.lock().ok()?;
        // Another call's, or none, when shutdown drained the calls first.
        if running.get(slot).is_none_or(|(id, _)| *id != self.id) {
            return None;
        }
        Some(running.remove(slot).1)
    }

    /// Cancels the call's query now, and waits until the request is sent.
    pub async fn fire(mut self) {
        if let Some(canceller) = self.take() {
            canceller.cancel().await;
        }
    }

    /// The call finished: nothing to cancel.
    pub fn disarm(mut self) {
        self.take();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(canceller) = self.take() {
            self.shared.cancels.spawn(canceller.cancel());
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.shared.metrics.pool().connections_in_use.dec();
        if let Some(obj) = self.obj.take()
            && (self.discard
                || self.shared.waiters.load(Ordering::SeqCst) > 0
                || self.budget.wanted())
        {
            drop(Object::take(obj));
        }
    }
}
