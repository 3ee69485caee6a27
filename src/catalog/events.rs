//! Reads of the event stream: the audit log, by sequence number.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// One event as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub tenant_id: Option<Uuid>,
    /// A JSON object, as text: read once, sent to every watcher as is.
    pub details: String,
}

/// What a page selects: kinds ("tenant.create") or categories ("tenant")
/// and a tenant. Empty lists select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub kinds: Vec<String>,
    pub tenant: Option<Uuid>,
}

/// A page of events and the newest event's number when it was read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<EventRow>,
    /// The last sequence number this page covers: where the next begins.
    pub next_after: i64,
    pub head: i64,
}

/// The newest event's number: committed events are numbered 1..=head
/// without gaps (appenders serialize on the head row).
pub async fn head(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM tenantd.audit_head")
        .fetch_one(conn)
        .await
}

/// Every event after `after`, up to `limit` of them, unfiltered: what the
/// replica's fan-out reads.
pub async fn after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, at, actor, action, target, tenant_id, details::text AS details \
         FROM tenantd.audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Up to `limit` selected events after `after`, looking at no more than
/// `window` sequence numbers (so a selection that matches little costs a
/// bounded scan per page), with the head read in the same statement.
pub async fn page(
    conn: &mut PgConnection,
    after: i64,
    selection: &Selection,
    limit: i64,
    window: i64,
) -> Result<Page, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        head: i64,
        seq: Option<i64>,
        at: Option<DateTime<Utc>>,
        actor: Option<String>,
        action: Option<String>,
        target: Option<String>,
        tenant_id: Option<Uuid>,
        details: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT h.seq AS head, e.seq, e.at, e.actor, e.action, e.target, e.tenant_id, e.details \
         FROM tenantd.audit_head h \
         LEFT JOIN LATERAL ( \
             SELECT seq, at, actor, action, target, tenant_id, details::text AS details \
             FROM tenantd.audit_log \
             WHERE seq > $1 AND seq <= $5 \
               AND ($2::uuid IS NULL OR tenant_id = $2) \
               AND (cardinality($3::text[]) = 0 OR action = ANY($3) \
                    OR split_part(action, '.', 1) = ANY($3)) \
             ORDER BY seq LIMIT $4) e ON true \
         ORDER BY e.seq",
    )
    .bind(after)
    .bind(selection.tenant)
    .bind(&selection.kinds)
    .bind(limit)
    .bind(after.saturating_add(window))
    .fetch_all(conn)
    .await?;
    let head = rows.first().map_or(after, |r| r.head);
    let events: Vec<EventRow> = rows
        .into_iter()
        .filter_map(|r| {
            Some(EventRow {
                seq: r.seq?,
                at: r.at?,
                actor: r.actor?,
                action: r.action?,
                target: r.target?,
                tenant_id: r.tenant_id,
                details: r.details?,
            })
        })
        .collect();
    let next_after = if events.len() as i64 >= limit {
        events.last().map_or(after, |e| e.seq)
    } else {
        // Everything up to the window's end (or the head) was looked at.
        head.min(after.saturating_add(window)).max(after)
    };
    Ok(Page {
        events,
        next_after,
        head,
    })
}

/// The newest `n` events, newest first.
pub async fn newest(conn: &mut PgConnection, n: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, at, actor, action, target, tenant_id, details::text AS details \
         FROM tenantd.audit_log ORDER BY seq DESC LIMIT $1",
    )
    .bind(n)
    .fetch_all(conn)
    .await
}
