//! Sorting database errors into the few kinds callers act on. The gRPC layer
//! maps the kinds to status codes once; nothing else inspects SQLSTATEs.

/// What a failed database call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// 23505: a unique constraint said no.
    UniqueViolation,
    /// 40001 / 40P01: serialization failure or deadlock; retrying may succeed.
    Conflict,
    /// 55P03 / 57014: a lock or statement time-out fired.
    Timeout,
    /// The pool or the connection failed: the database is unreachable,
    /// restarting or out of connections.
    Unavailable,
    /// Anything else: a bug or a broken invariant.
    Other,
}

pub fn classify(err: &sqlx::Error) -> DbErrorKind {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => DbErrorKind::UniqueViolation,
            Some("40001" | "40P01") => DbErrorKind::Conflict,
            Some("55P03" | "57014") => DbErrorKind::Timeout,
            // Class 08: connection exception; 57P01-57P03: admin shutdown,
            // crash shutdown, cannot connect now; 53300: too many connections.
            Some(code) if code.starts_with("08") || code.starts_with("57P") || code == "53300" => {
                DbErrorKind::Unavailable
            }
            _ => DbErrorKind::Other,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbErrorKind::Unavailable,
        _ => DbErrorKind::Other,
    }
}

/// A database failure as an operation's error carries it: what the caller can
/// do about it, with the cause kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum DbFailure {
    #[error("concurrent change, try again")]
    Conflict(#[source] sqlx::Error),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

impl DbFailure {
    /// `map_err(DbFailure::of("verb phrase"))`: sorts a sqlx error, naming
    /// what was being done for the log.
    pub fn of<E: From<DbFailure>>(context: &'static str) -> impl FnOnce(sqlx::Error) -> E {
        move |e| {
            E::from(match classify(&e) {
                DbErrorKind::Unavailable | DbErrorKind::Timeout => DbFailure::Unavailable(e),
                DbErrorKind::Conflict => DbFailure::Conflict(e),
                DbErrorKind::UniqueViolation | DbErrorKind::Other => DbFailure::Internal {
                    context,
                    source: e.into(),
                },
            })
        }
    }
}

/// A status or role word read from the catalog as its enum; a word the enum
/// does not know is a decoding error (the catalog's CHECK constraints and the
/// enums must agree).
pub(crate) fn decode<T: std::str::FromStr<Err = String>>(word: &str) -> Result<T, sqlx::Error> {
    word.parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}
