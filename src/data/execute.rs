//! Running a tenant's statements on one of its connections.
//!
//! A call is one transaction: `BEGIN [READ ONLY]` with `statement_timeout`
//! set locally, the statements, `COMMIT`, and `RESET ALL` so that nothing a
//! statement set for the session outlives the call. For a single statement
//! the three are pipelined: one round trip to PostgreSQL when the statement
//! is already prepared on the connection (prepared statements are cached
//! per connection).
//!
//! Results are read as they stream in: rows past the row limit or the
//! response size limit are counted and dropped, never buffered. A call that
//! outlives its timeout on the client side too (a statement that lifted its
//! own timeout) has its query cancelled and its connection closed, as does a
//! call abandoned by its caller mid-way.

use std::time::Duration;

use futures::TryStreamExt as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::pools::Checkout;
use super::values::{Value, check_column_type};

/// One statement of a call.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
    /// Rows returned at most.
    pub max_rows: usize,
}

/// What a statement produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Name and PostgreSQL type name of each column.
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    pub truncated: bool,
}

/// The limits of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub read_only: bool,
    /// statement_timeout of each statement.
    pub timeout: Duration,
    /// Bytes of rows in the whole response, roughly.
    pub max_response_bytes: usize,
}

/// Why a call failed. `statement` is the index of the failing statement in
/// the call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// PostgreSQL refused a statement (or the commit).
    #[error("SQLSTATE {code}: {message}")]
    Sql {
        statement: Option<usize>,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
        position: Option<u32>,
    },
    /// A statement was refused before it ran.
    #[error("{message}")]
    Invalid {
        statement: usize,
        /// The request field, relative to the statement ("sql",
        /// "params", "params[2]").
        field: String,
        message: String,
    },
    /// The call ran past its timeout on the client side too.
    #[error("the call ran past its timeout of {0:?}")]
    TimedOut(Duration),
    /// The connection broke. `retryable`: nothing can have been committed.
    #[error("connection to PostgreSQL lost: {message}")]
    ConnectionLost { message: String, retryable: bool },
    /// This side failed to encode a parameter or decode a result (the
    /// statement may have run, and committed).
    #[error("{0}")]
    Client(String),
}

impl ExecError {
    /// Whether running the call again on a fresh connection is safe and may
    /// succeed.
    pub fn retry_on_fresh_connection(&self) -> bool {
        matches!(
            self,
            ExecError::ConnectionLost {
                retryable: true,
                ..
            }
        )
    }

    /// A statement prepared on this connection went stale: its tables
    /// changed under it (a tenant upgrade), or it was deallocated. Nothing
    /// was committed; prepared again, the call may succeed.
    fn stale_statement(&self) -> bool {
        match self {
            ExecError::Sql { code, .. } => {
                code == SqlState::FEATURE_NOT_SUPPORTED.code()
                    || code == SqlState::INVALID_SQL_STATEMENT_NAME.code()
            }
            _ => false,
        }
    }

    /// Whether the connection must not be used again.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            ExecError::ConnectionLost { .. } | ExecError::TimedOut(_) | ExecError::Client(_)
        )
    }

    fn at(self, index: usize) -> Self {
        match self {
            ExecError::Sql {
                code,
                message,
                detail,
                hint,
                position,
                ..
            } => ExecError::Sql {
                statement: Some(index),
                code,
                message,
                detail,
                hint,
                position,
            },
            ExecError::Invalid { field, message, .. } => ExecError::Invalid {
                statement: index,
                field,
                message,
            },
            other => other,
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        ExecError::Invalid {
            statement: 0,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Sorts a driver error; `before_any_statement` marks errors of the
/// transaction's first message, after which nothing can have run.
fn classify(err: tokio_postgres::Error, before_any_statement: bool) -> ExecError {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code().to_owned();
        // 57P01 and friends: the server ended the session.
        let lost = code.starts_with("57P") || code.starts_with("08");
        if lost {
            return ExecError::ConnectionLost {
                message: db.message().to_owned(),
                retryable: before_any_statement,
            };
        }
        return ExecError::Sql {
            statement: None,
            code,
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
            position: match db.position() {
                Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                _ => None,
            },
        };
    }
    if err.is_closed() {
        return ExecError::ConnectionLost {
            message: err.to_string(),
            retryable: before_any_statement,
        };
    }
    // Neither the server nor the connection: a value this side could not
    // encode or decode, or a message it did not expect.
    ExecError::Client(err.to_string())
}

/// Statements tenantd runs itself, or that would leave the connection in a
/// state the next call must not inherit.
const REFUSED: [(&str, &str); 10] = [
    (
        "BEGIN",
        "transactions are managed by tenantd: use Transaction for several statements",
    ),
    (
        "START",
        "transactions are managed by tenantd: use Transaction for several statements",
    ),
    (
        "COMMIT",
        "transactions are managed by tenantd: a call commits when it succeeds",
    ),
    (
        "END",
        "transactions are managed by tenantd: a call commits when it succeeds",
    ),
    (
        "ROLLBACK",
        "transactions are managed by tenantd: a failing call rolls back",
    ),
    (
        "ABORT",
        "transactions are managed by tenantd: a failing call rolls back",
    ),
    (
        "PREPARE",
        "statements are prepared by tenantd: pass parameters instead",
    ),
    ("DEALLOCATE", "statements are prepared by tenantd"),
    (
        "DISCARD",
        "session state is reset by tenantd after every call",
    ),
    (
        "COPY",
        "COPY is not supported; use INSERT … SELECT or SELECT",
    ),
];

/// The first keyword of `sql`, upper-cased, past whitespace and comments.
fn leading_keyword(sql: &str) -> String {
    leading_keywords(sql).0
}

/// The first keyword of `sql` and the rest after it, past whitespace,
/// empty statements and comments.
fn leading_keywords(sql: &str) -> (String, &str) {
    let mut rest = sql;
    loop {
        // PostgreSQL drops empty statements: ";COMMIT" is a COMMIT.
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if rest.starts_with("/*") {
            // Block comments nest in PostgreSQL.
            let mut depth = 0usize;
            let mut end = rest.len();
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i + 1 < bytes.len() {
                if bytes[i] == b'/' && bytes[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            rest = &rest[end..];
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    (rest[..end].to_ascii_uppercase(), &rest[end..])
}

/// Refuses what a call must not run, before anything is sent.
fn screen(sql: &str) -> Result<(), ExecError> {
    if sql.trim().is_empty() {
        return Err(ExecError::invalid("sql", "is required"));
    }
    let (keyword, rest) = leading_keywords(sql);
    if keyword == "ALTER" && matches!(leading_keyword(rest).as_str(), "ROLE" | "USER") {
        return Err(ExecError::invalid(
            "sql",
            "the tenant's role is managed by tenantd",
        ));
    }
    match REFUSED.iter().find(|(k, _)| *k == keyword) {
        Some((_, why)) => Err(ExecError::invalid("sql", *why)),
        None => Ok(()),
    }
}

/// A statement ready to run: prepared, its parameters checked.
struct Prepared<'a> {
    statement: tokio_postgres::Statement,
    params: &'a [Value],
    max_rows: usize,
}

async fn prepare<'a>(conn: &Checkout, s: &'a Statement) -> Result<Prepared<'a>, ExecError> {
    screen(&s.sql)?;
    let statement = match conn.statement_cache().prepare(conn.client(), &s.sql).await {
        Ok(statement) => statement,
        Err(e) => {
            // The cache keeps a placeholder for a statement that failed to
            // prepare; distinct bad statements must not pile up.
            conn.statement_cache().remove(&s.sql, &[]);
            return Err(classify(e, true));
        }
    };
    let types = statement.params();
    if types.len() != s.params.len() {
        return Err(ExecError::invalid(
            "params",
            format!(
                "the statement has {} parameter(s) but {} value(s) were given",
                types.len(),
                s.params.len()
            ),
        ));
    }
    for (i, (value, ty)) in s.params.iter().zip(types).enumerate() {
        value
            .check_param(ty)
            .map_err(|m| ExecError::invalid(&format!("params[{i}]"), m))?;
    }
    for column in statement.columns() {
        check_column_type(column.type_())
            .map_err(|m| ExecError::invalid("sql", format!("column {:?}: {m}", column.name())))?;
    }
    Ok(Prepared {
        statement,
        params: &s.params,
        max_rows: s.max_rows,
    })
}

/// Runs one prepared statement and reads its rows within the limits.
async fn run_one(
    client: &tokio_postgres::Client,
    p: &Prepared<'_>,
    budget: &mut usize,
) -> Result<Outcome, tokio_postgres::Error> {
    let columns = p
        .statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), type_name(c.type_())))
        .collect();
    let stream = client.query_raw(&p.statement, p.params.iter()).await?;
    futures::pin_mut!(stream);
    let mut out = Outcome {
        columns,
        ..Outcome::default()
    };
    while let Some(row) = stream.try_next().await? {
        if out.truncated {
            continue;
        }
        if out.rows.len() >= p.max_rows {
            out.truncated = true;
            continue;
        }
        let mut values = Vec::with_capacity(row.len());
        let mut size = 0;
        for i in 0..row.len() {
            let v: Value = row.try_get(i)?;
            size += v.approximate_size();
            values.push(v);
        }
        if size > *budget {
            out.truncated = true;
            continue;
        }
        *budget -= size;
        out.rows.push(values);
    }
    out.rows_affected = stream.rows_affected().unwrap_or(0);
    Ok(out)
}

fn type_name(ty: &Type) -> String {
    ty.name().to_owned()
}

/// Runs `statements` as one transaction on `conn`.
pub async fn run(
    conn: &mut Checkout,
    statements: &[Statement],
    limits: CallLimits,
) -> Result<Vec<Outcome>, ExecError> {
    // Until the call finishes cleanly, the connection is not handed back: a
    // caller that goes away mid-call leaves it closed (and its query
    // cancelled), never half-way through a transaction.
    conn.set_discard(true);
    let abandoned = CancelOnDrop(Some(conn.canceller()));
    let deadline = limits
        .timeout
        .saturating_mul(u32::try_from(statements.len().max(1)).unwrap_or(u32::MAX))
        .saturating_add(Duration::from_secs(2));
    let mut dirty = false;
    let attempt = async {
        match run_inner(conn, statements, limits, &mut dirty).await {
            // Nothing was committed: prepare afresh and run once more.
            Err(e) if e.stale_statement() => {
                conn.statement_cache().clear();
                run_inner(conn, statements, limits, &mut dirty).await
            }
            other => other,
        }
    };
    let result = match tokio::time::timeout(deadline, attempt).await {
        Ok(r) => r,
        // Dropping `abandoned` cancels the query.
        Err(_) => return Err(ExecError::TimedOut(limits.timeout)),
    };
    abandoned.disarm();
    match &result {
        Err(e) if e.breaks_connection() => {}
        _ if dirty => {}
        _ => conn.set_discard(false),
    }
    result
}

/// Run after every call, whatever became of it, so that nothing a statement
/// did to the session reaches the next call on the connection: settings,
/// cursors kept open, LISTENs, session advisory locks, temporary tables.
macro_rules! reset {
    () => {
        "RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP"
    };
}
const RESET: &str = reset!();

/// Sends `end` (COMMIT or ROLLBACK) followed by the reset in one message;
/// when `end` fails the rest of the message is skipped, so the reset is
/// sent again on its own. A failed reset marks the connection `dirty`.
async fn finish(
    client: &tokio_postgres::Client,
    end_and_reset: &str,
    dirty: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let ended = client.batch_execute(end_and_reset).await;
    if ended.is_err() {
        *dirty |= client.batch_execute(RESET).await.is_err();
    }
    ended
}

const COMMIT_AND_RESET: &str = concat!("COMMIT; ", reset!());
const ROLLBACK_AND_RESET: &str = concat!("ROLLBACK; ", reset!());

/// One attempt at the call. `dirty` is set when the connection's session
/// could not be reset.
async fn run_inner(
    conn: &Checkout,
    statements: &[Statement],
    limits: CallLimits,
    dirty: &mut bool,
) -> Result<Vec<Outcome>, ExecError> {
    let mut prepared = Vec::with_capacity(statements.len());
    for (i, s) in statements.iter().enumerate() {
        prepared.push(prepare(conn, s).await.map_err(|e| e.at(i))?);
    }
    let client = conn.client();
    let timeout_ms = limits.timeout.as_millis().clamp(1, i32::MAX as u128);
    // A read-only transaction takes its snapshot at once, so no statement
    // can switch it to read-write afterwards.
    let begin = if limits.read_only {
        format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout_ms}; SELECT 1")
    } else {
        format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}")
    };
    let mut budget = limits.max_response_bytes;
    if let [only] = prepared.as_slice() {
        // BEGIN, the statement, COMMIT and the reset in one round trip:
        // tokio-postgres queues a request's messages when its future is
        // first polled, and join3 polls in order, so they go out in order.
        // COMMIT after a failed statement only rolls back.
        let (began, ran, committed) = futures::future::join3(
            client.batch_execute(&begin),
            run_one(client, only, &mut budget),
            client.batch_execute(COMMIT_AND_RESET),
        )
        .await;
        if committed.is_err() {
            *dirty |= client.batch_execute(RESET).await.is_err();
        }
        // The COMMIT went out with the BEGIN: after a lost connection the
        // outcome is unknown, so none of these is retried.
        began.map_err(|e| classify(e, false))?;
        let outcome = ran.map_err(|e| classify(e, false).at(0))?;
        committed.map_err(|e| classify(e, false))?;
        return Ok(vec![outcome]);
    }
    // Several statements: each waits for the one before; no COMMIT is sent
    // until all succeeded, so a connection lost before it committed nothing.
    let mut outcomes = Vec::with_capacity(prepared.len());
    let mut began = Some(client.batch_execute(&begin));
    for (i, p) in prepared.iter().enumerate() {
        let ran = match began.take() {
            Some(begin) => {
                let (began, ran) =
                    futures::future::join(begin, run_one(client, p, &mut budget)).await;
                if let Err(e) = began {
                    let err = classify(e, true);
                    if !err.breaks_connection() {
                        finish(client, ROLLBACK_AND_RESET, dirty)
                            .await
                            .map_err(|e| classify(e, true))?;
                    }
                    return Err(err);
                }
                ran
            }
            None => run_one(client, p, &mut budget).await,
        };
        match ran {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                let err = classify(e, true).at(i);
                if !err.breaks_connection() {
                    finish(client, ROLLBACK_AND_RESET, dirty)
                        .await
                        .map_err(|e| classify(e, true))?;
                }
                return Err(err);
            }
        }
    }
    finish(client, COMMIT_AND_RESET, dirty)
        .await
        .map_err(|e| classify(e, false))?;
    Ok(outcomes)
}

/// Cancels the running query when a call is dropped before it finished.
struct CancelOnDrop(Option<super::pools::Canceller>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(canceller) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(canceller.cancel());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_keywords_skip_comments() {
        assert_eq!(leading_keyword("  select 1"), "SELECT");
        assert_eq!(leading_keyword("-- hi\n commit"), "COMMIT");
        assert_eq!(leading_keyword("/* a /* nested */ b */ begin;"), "BEGIN");
        assert_eq!(leading_keyword("(select 1)"), "");
        assert_eq!(leading_keyword(""), "");
    }

    #[test]
    fn transaction_control_is_refused() {
        for sql in [
            ";COMMIT",
            " ; /*x*/ DEALLOCATE ALL",
            "alter role current_user password 'x'",
            "COMMIT",
            "rollback",
            " begin",
            "start transaction",
            "copy t to stdout",
        ] {
            assert!(
                matches!(screen(sql), Err(ExecError::Invalid { .. })),
                "{sql}"
            );
        }
        for sql in [
            "select 1",
            "insert into t values (1)",
            "with x as (select 1) select * from x",
        ] {
            assert!(screen(sql).is_ok(), "{sql}");
        }
        assert!(screen("  ").is_err());
    }
}
