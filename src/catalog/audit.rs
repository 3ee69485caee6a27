//! The hash-chained audit log. Events are appended inside the caller's
//! transaction by `tenantd.append_audit`, which holds the single head row
//! until commit, so the chain has no forks; call it last in a transaction to
//! keep that window short. [`verify`] recomputes the chain.

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// A catalog transaction whose commit carries its audit event: the change
/// and the event describing it commit together or not at all, and the event
/// is appended last, so the chain's head row is held only for the commit.
///
/// It dereferences to the connection, so catalog functions take `&mut tx`.
/// Dropped without a commit, it rolls back.
pub struct Audited(Transaction<'static, Postgres>);

impl Audited {
    pub async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self(pool.begin().await?))
    }

    /// Appends the event and commits; returns the event's sequence number.
    pub async fn commit(
        mut self,
        actor: &str,
        action: &str,
        target: &str,
        details: &serde_json::Value,
    ) -> Result<i64, sqlx::Error> {
        let seq = append(&mut self.0, actor, action, target, details).await?;
        self.0.commit().await?;
        Ok(seq)
    }

    /// Gives the change up.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }

    /// Commits a transaction whose change is not an event of its own (a
    /// retry that requeued items of a run without changing its status, say);
    /// `why` says so where it is called.
    pub async fn commit_unaudited(self, why: &'static str) -> Result<(), sqlx::Error> {
        let _ = why;
        self.0.commit().await
    }
}

impl std::ops::Deref for Audited {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl std::ops::DerefMut for Audited {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

/// Appends one event; returns its sequence number. Within a change, use
/// [`Audited::commit`].
pub async fn append(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    let (seq,): (i64,) = sqlx::query_as("SELECT tenantd.append_audit($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(details)
        .fetch_one(conn)
        .await?;
    Ok(seq)
}

/// The outcome of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// How many events were checked.
    pub checked: i64,
    /// The first event whose stored hashes do not match the recomputed ones.
    pub first_broken: Option<i64>,
}

/// Recomputes every link of the chain, in order, with the same encoding as
/// `tenantd.append_audit`.
pub async fn verify(conn: &mut PgConnection) -> anyhow::Result<Verification> {
    use futures::TryStreamExt;
    let mut rows =
        sqlx::query_as::<_, (i64, i64, String, String, String, String, Vec<u8>, Vec<u8>)>(
            "SELECT seq, (extract(epoch FROM at) * 1000000)::bigint, actor, action, target, \
                details::text, prev_hash, hash \
         FROM tenantd.audit_log ORDER BY seq",
        )
        .fetch(conn);
    let mut prev = vec![0u8; 32];
    let mut expected_seq = 1;
    let mut checked = 0;
    while let Some((seq, micros, actor, action, target, details, prev_hash, hash)) =
        rows.try_next().await.context("read the audit log")?
    {
        let payload = [
            seq.to_string(),
            micros.to_string(),
            actor,
            action,
            target,
            details,
        ]
        .join("\n");
        let mut h = Sha256::new();
        h.update(&prev);
        h.update(payload.as_bytes());
        let computed = h.finalize().to_vec();
        if seq != expected_seq || prev_hash != prev || hash != computed {
            return Ok(Verification {
                checked,
                first_broken: Some(seq),
            });
        }
        checked += 1;
        expected_seq += 1;
        prev = hash;
    }
    Ok(Verification {
        checked,
        first_broken: None,
    })
}
