//! `tenantd.v1.EventService`: the catalog's events, watched or paged.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::{Caller, caller, require_in_tenant, require_scope};
use super::convert::timestamp;
use super::pb::{self, event_service_server::EventService};
use super::status;
use crate::catalog::DbFailure;
use crate::domain::identity::{Permission, Scope};
use crate::domain::{ValidationError, Violations};
use crate::events::{self, Event, Events, ReadError, Selection, WatchEnd};
use crate::identity::Identity;

/// What a user (not a service key) may see of its tenant's events.
const USER_CATEGORIES: [&str; 3] = ["tenant", "member", "upgrade"];

/// Events queued per watcher between the replica's ring and the watcher's
/// connection.
const QUEUE: usize = 64;

pub struct EventApi {
    events: Events,
    identity: Identity,
    shutdown: CancellationToken,
}

impl EventApi {
    pub fn new(events: Events, identity: Identity, shutdown: CancellationToken) -> Self {
        Self {
            events,
            identity,
            shutdown,
        }
    }

    /// What the caller may see of what it asked for: a service key with
    /// `events:read` sees every tenant; a user only the tenant its token is
    /// bound to, with a role that grants `events:read`.
    async fn selection(
        &self,
        who: &Caller,
        filter: Option<pb::EventFilter>,
    ) -> Result<Selection, Status> {
        let filter = filter.unwrap_or_default();
        let mut v = Violations::new();
        let kinds = v.check(events::parse_kinds("filter.kinds", &filter.kinds));
        let tenant = v.check(events::parse_tenant("filter.tenant_id", &filter.tenant_id));
        v.finish().map_err(status::invalid)?;
        let (mut kinds, mut tenant) = (kinds.unwrap_or_default(), tenant.flatten());
        match who {
            Caller::Service(_) => require_scope(who, Scope::EventsRead)?,
            Caller::User(p) => {
                let bound = p.tenant_id.ok_or_else(|| {
                    Status::permission_denied(
                        "a user's token must be bound to a tenant to watch its events \
                         (log in with tenant_id)",
                    )
                })?;
                if tenant.is_some_and(|t| t != bound) {
                    return Err(status::invalid(ValidationError::single(
                        "filter.tenant_id",
                        "a user may only see the events of the tenant its token is bound to",
                    )));
                }
                tenant = Some(bound);
                // A member's own sessions (logins, with their addresses) are
                // not the tenant's business: users see the tenant's events.
                if kinds.is_empty() {
                    kinds = USER_CATEGORIES.iter().map(|c| (*c).to_owned()).collect();
                } else if let Some(i) = kinds
                    .iter()
                    .position(|k| !USER_CATEGORIES.contains(&events::category(k)))
                {
                    return Err(status::invalid(ValidationError::single(
                        format!("filter.kinds[{i}]"),
                        format!(
                            "a user may watch only the categories {}",
                            USER_CATEGORIES.join(", ")
                        ),
                    )));
                }
                require_in_tenant(
                    &self.identity,
                    who,
                    Scope::EventsRead,
                    bound,
                    Permission::EventsRead,
                )
                .await?;
            }
        }
        Ok(Selection { kinds, tenant })
    }
}

/// `after` checked: 0, or the cursor of an event that exists (a cursor
/// past the newest was never handed out: waiting for it would skip what
/// comes before).
fn cursor(field: &str, value: i64, head: i64) -> Result<i64, Status> {
    if value < 0 {
        return Err(status::invalid(ValidationError::single(
            field,
            "must be 0 or the cursor of an event",
        )));
    }
    if value > head {
        return Err(status::invalid(ValidationError::single(
            field,
            format!("is past the newest event ({head}): pass the cursor of an event handled, or 0"),
        )));
    }
    Ok(value)
}

fn read_failed(e: ReadError) -> Status {
    match e {
        ReadError::Busy => Status::unavailable(
            "this replica's event readers are all busy: retry shortly (or on another replica)",
        ),
        ReadError::Db(e) => status::db(DbFailure::of::<DbFailure>("read events")(e)),
    }
}

impl EventApi {
    async fn head(&self) -> Result<i64, Status> {
        self.events
            .head()
            .await
            .map_err(|e| read_failed(ReadError::Db(e)))
    }
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    let category = match events::category(&e.action) {
        "tenant" => pb::EventCategory::Tenant,
        "member" => pb::EventCategory::Member,
        "session" => pb::EventCategory::Session,
        "user" => pb::EventCategory::User,
        "upgrade" => pb::EventCategory::Upgrade,
        "cluster" | "cluster_job" | "citus" => pb::EventCategory::Cluster,
        _ => pb::EventCategory::Other,
    };
    pb::Event {
        cursor: e.seq,
        at: Some(timestamp(e.at)),
        kind: e.action.clone(),
        category: category as i32,
        actor: e.actor.clone(),
        target: e.target.clone(),
        tenant_id: e.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
        details_json: e.details.clone(),
    }
}

type WatchStream = ReceiverStream<Result<pb::Event, Status>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let who = caller(&request)?;
        let credential = super::auth::credential(&request).map(str::to_owned);
        let r = request.into_inner();
        let selection = self.selection(&who, r.filter).await?;
        if r.from_now && r.after != 0 {
            return Err(status::invalid(ValidationError::single(
                "after",
                "must be 0 with from_now",
            )));
        }
        let head = self.head().await?;
        let after = if r.from_now {
            head
        } else {
            cursor("after", r.after, head)?
        };
        let slot = self
            .events
            .admit(
                &who.actor(),
                match who {
                    Caller::User(_) => selection.tenant,
                    Caller::Service(_) => None,
                },
            )
            .map_err(Status::resource_exhausted)?;
        let (tx, rx) = mpsc::channel::<Result<pb::Event, Status>>(QUEUE);
        let (events_tx, mut events_rx) = mpsc::channel::<Arc<Event>>(QUEUE);
        let events = self.events.clone();
        let identity = self.identity.clone();
        let shutdown = self.shutdown.clone();
        let tenant = selection.tenant;
        // Converts events to messages while the watch runs; the watch's end
        // (if not the watcher's leaving) becomes the stream's status.
        tokio::spawn(async move {
            let _slot = slot;
            // Ends as soon as the watcher goes away (cancels, disconnects),
            // not only at the next event sent to it: its end closes the
            // watch's queue, which ends the watch.
            let forward = {
                let tx = tx.clone();
                async move {
                    loop {
                        let e = tokio::select! {
                            e = events_rx.recv() => e,
                            () = tx.closed() => break,
                        };
                        let Some(e) = e else { break };
                        if tx.send(Ok(event_to_pb(&e))).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let watch = events.watch(after, selection, events_tx, shutdown, || {
                still_allowed(&identity, &who, credential.as_deref(), tenant)
            });
            let (end, ()) = tokio::join!(watch, forward);
            let status = match end {
                None => return,
                Some(WatchEnd::TooSlow { cursor }) => Status::resource_exhausted(format!(
                    "this watcher fell too far behind the newest event and was cut off; \
                     resume with after = {cursor}"
                )),
                Some(WatchEnd::ShuttingDown { cursor }) => Status::unavailable(format!(
                    "this replica is shutting down; resume with after = {cursor} on another"
                )),
                Some(WatchEnd::Denied(why)) => Status::permission_denied(why),
                Some(WatchEnd::Unauthenticated(why)) => Status::unauthenticated(why),
                Some(WatchEnd::Busy { cursor }) => Status::unavailable(format!(
                    "this replica's event readers stayed busy; resume with after = {cursor}"
                )),
                Some(WatchEnd::Catalog(e)) => {
                    tracing::warn!(error = %e, "an event watch cannot read the catalog");
                    Status::unavailable(
                        "cannot read the catalog's events; resume from the last cursor",
                    )
                }
            };
            let _ = tx.send(Err(status)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let selection = self.selection(&who, r.filter).await?;
        // Checked against the head the page itself read: one round trip.
        let after = cursor("after", r.after, i64::MAX)?;
        let limit = match r.page_size {
            0 => 100,
            n @ 1..=1000 => n,
            _ => {
                return Err(status::invalid(ValidationError::single(
                    "page_size",
                    "must be between 1 and 1000 (0: 100)",
                )));
            }
        };
        let page = self
            .events
            .page(after, &selection, i64::from(limit))
            .await
            .map_err(read_failed)?;
        cursor("after", after, page.head)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.events.iter().map(event_to_pb).collect(),
            next_after: page.next_after,
            head: page.head,
        }))
    }
}

/// Whether a watching user may still watch: its token still valid (not
/// revoked, not expired) and its role in the tenant still granting
/// `events:read`. Service keys are checked against the replica's keys.
async fn still_allowed(
    identity: &Identity,
    who: &Caller,
    credential: Option<&str>,
    tenant: Option<Uuid>,
) -> Result<(), WatchEnd> {
    let gone = || {
        WatchEnd::Unauthenticated(
            "the watch's credentials expired or were revoked: resume from the last cursor \
             with valid ones"
                .into(),
        )
    };
    let credential = credential.ok_or_else(gone)?;
    match who {
        Caller::Service(_) => match identity.keys.verify(credential) {
            Some(k) if k.has(Scope::EventsRead) => Ok(()),
            Some(_) => Err(WatchEnd::Denied(
                "the service key no longer has events:read".into(),
            )),
            None => Err(gone()),
        },
        Caller::User(_) => {
            let p = identity.validate(credential).map_err(|_| gone())?;
            let tenant = tenant.ok_or_else(gone)?;
            require_in_tenant(
                identity,
                &Caller::User(p),
                Scope::EventsRead,
                tenant,
                Permission::EventsRead,
            )
            .await
            .map_err(|s| WatchEnd::Denied(s.message().to_owned()))
        }
    }
}
