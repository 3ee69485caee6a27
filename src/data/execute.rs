//! Running a tenant's statements on one of its connections.
//!
//! A call is one transaction: `BEGIN [READ ONLY]` with `statement_timeout`
//! set locally, the statements, `COMMIT`, and `RESET ALL` so that nothing a
//! statement set for the session outlives the call. For a single statement
//! all of it is one request: Bind and Execute messages under one Sync, so
//! one round trip to PostgreSQL when the statement is already prepared on
//! the connection (prepared statements are cached per connection), and one
//! ReadyForQuery — PostgreSQL flushes its output once per call, one send
//! and, over TLS, one record. (The driver's typed API ends every query with
//! a Sync of its own; tenantd's copy of tokio-postgres adds the one method
//! that sends messages encoded here, see vendor/tokio-postgres/PATCH.md.)
//!
//! Results are read as they stream in: rows past the row limit or the
//! response budget are counted and dropped, never buffered, and a value is
//! measured in its wire form before it is decoded (see `Budget`).
//!
//! The whole call ends by its deadline, whatever its SQL does: at the
//! deadline its query is cancelled and its connection closed (a backend
//! that ignores the cancel notices the closed connection within
//! `client_connection_check_interval` and ends). A call abandoned by its
//! caller mid-way is cancelled and closed the same way.
//!
//! What each statement may be was decided before the call took a
//! connection, by the statement screen (`data::screen`).

use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::message::backend::{CommandCompleteBody, DataRowBody, Message};
use postgres_protocol::message::frontend;
use tokio_postgres::Responses;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql as _, Type};

use super::pools::Checkout;
use super::values::{Budget, Value, check_column_type};

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
    /// What the caller asked for: the call's whole wall time.
    pub timeout: Duration,
    /// When the call ends, done or not (its start plus `timeout`).
    pub deadline: tokio::time::Instant,
    /// What the rows of the whole response may take.
    pub budget: Budget,
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
        /// "params", "params\[2\]").
        field: String,
        message: String,
    },
    /// The call ran past its timeout and was cancelled.
    #[error("the call ran past its timeout of {0:?}")]
    TimedOut(Duration),
    /// The connection broke; `stage` tells what may have been committed.
    #[error("connection to PostgreSQL lost: {message}")]
    ConnectionLost { message: String, stage: Lost },
    /// PostgreSQL sent a message larger than a response may hold (an error
    /// message quoting a huge value); the connection was closed unread.
    #[error("{0}")]
    TooLarge(String),
    /// This side failed to encode a parameter, or PostgreSQL answered
    /// what the protocol does not allow here.
    #[error("{0}")]
    Client(String),
    /// A value of the result could not be read here; the rest of the
    /// answer was read to its end and dropped. `committed`: the call's
    /// writes were committed all the same (the COMMIT of a single statement
    /// goes with it), so it must not be sent again.
    #[error("{message}")]
    Unreadable { message: String, committed: bool },
}

/// Where a call was when its connection broke, in the order of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lost {
    /// Before any statement ran: the call may run again as it is.
    BeforeAnyStatement,
    /// PostgreSQL ended the session (57P01: an administrator, or a move
    /// of the tenant to another cluster at its switch) and said so before
    /// COMMIT: nothing was committed, and the call may run again.
    Terminated,
    /// Before COMMIT was sent: nothing was committed.
    NotCommitted,
    /// With COMMIT sent (or on its way): the writes may have committed.
    OutcomeUnknown,
}

impl ExecError {
    /// Whether running the call again on a fresh connection is safe and may
    /// succeed: nothing of it ran, or the server ended the session before
    /// it committed. (A tenant moved to another cluster has its calls held
    /// at the switch and their sessions ended so: they run again where the
    /// tenant now is.)
    pub fn retry_on_fresh_connection(&self) -> bool {
        matches!(
            self,
            ExecError::ConnectionLost {
                stage: Lost::BeforeAnyStatement | Lost::Terminated,
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
            ExecError::ConnectionLost { .. }
                | ExecError::TimedOut(_)
                | ExecError::Client(_)
                | ExecError::TooLarge(_)
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

/// Sorts a driver error; `stage` is what a lost connection means for the
/// call at this point.
fn classify(err: tokio_postgres::Error, stage: Lost) -> ExecError {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code().to_owned();
        // 57P01 and friends: the server ended the session. It said so in
        // answer to the statement or the COMMIT in flight, which therefore
        // did not commit: only a connection lost without an answer leaves
        // the outcome unknown.
        let lost = code.starts_with("57P") || code.starts_with("08");
        if lost {
            let said = if code == SqlState::ADMIN_SHUTDOWN.code() {
                Lost::Terminated
            } else {
                Lost::NotCommitted
            };
            return ExecError::ConnectionLost {
                message: db.message().to_owned(),
                stage: stage.min(said),
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
            stage,
        };
    }
    // Neither the server nor the connection: a value this side could not
    // encode or decode, or a message it did not expect.
    ExecError::Client(err.to_string())
}

/// A statement ready to run: prepared, its parameters checked.
struct Prepared<'a> {
    statement: tokio_postgres::Statement,
    params: &'a [Value],
    max_rows: usize,
}

/// Statements longer than this are prepared for their call only, not kept
/// on the connection: the cache is bounded by bytes, not only by count.
const MAX_CACHED_SQL: usize = 8 * 1024;

async fn prepare<'a>(conn: &Checkout, s: &'a Statement) -> Result<Prepared<'a>, ExecError> {
    let cache = conn.statement_cache();
    let prepared = if s.sql.len() > MAX_CACHED_SQL {
        conn.client().prepare(&s.sql).await
    } else {
        let before = cache.size();
        let prepared = cache.prepare(conn.client(), &s.sql).await;
        if cache.size() > before {
            conn.note_cached(s.sql.len());
        }
        prepared
    };
    let statement = match prepared {
        Ok(statement) => statement,
        Err(e) => {
            // The cache keeps a placeholder for a statement that failed to
            // prepare; distinct bad statements must not pile up.
            cache.remove(&s.sql, &[]);
            return Err(classify(e, Lost::BeforeAnyStatement));
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

/// A lost connection that the socket's guard ended over an oversized
/// message is reported as such.
fn lost_or(conn: &Checkout, err: ExecError) -> ExecError {
    match err {
        ExecError::ConnectionLost { .. } if conn.socket().ended_connection() => {
            ExecError::TooLarge(
                "PostgreSQL's answer held a message larger than a response may; it was not read"
                    .to_owned(),
            )
        }
        other => other,
    }
}

/// The rows of one statement, read within the limits as they stream in.
struct Rows<'p> {
    prepared: &'p Prepared<'p>,
    out: Outcome,
    /// Why a value could not be decoded; no row is taken after it.
    unreadable: Option<String>,
    /// What the socket had dropped before the statement ran.
    dropped_before: u64,
}

impl<'p> Rows<'p> {
    fn new(conn: &Checkout, prepared: &'p Prepared<'p>) -> Self {
        let columns = prepared
            .statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), type_name(c.type_())))
            .collect();
        Rows {
            prepared,
            out: Outcome {
                columns,
                ..Outcome::default()
            },
            unreadable: None,
            dropped_before: conn.socket().rows_dropped(),
        }
    }

    /// Takes a row whole, or counts it as cut off: past the row limit, or
    /// when its values would not fit in what is left of the budget. A value
    /// that cannot be decoded is noted, and no row is taken after it.
    fn push(&mut self, row: &DataRowBody, budget: &mut Budget) {
        if self.unreadable.is_none()
            && let Err(why) = self.take(row, budget)
        {
            self.unreadable = Some(why);
        }
    }

    fn take(&mut self, row: &DataRowBody, budget: &mut Budget) -> Result<(), String> {
        if self.out.truncated {
            return Ok(());
        }
        if self.out.rows.len() >= self.prepared.max_rows {
            self.out.truncated = true;
            return Ok(());
        }
        let columns = self.prepared.statement.columns();
        let buffer = row.buffer();
        let mut ranges = row.ranges();
        let mut left = *budget;
        let mut values = Vec::with_capacity(columns.len());
        for column in columns {
            let raw = match ranges.next() {
                Ok(Some(None)) => None,
                Ok(Some(Some(range))) => match buffer.get(range) {
                    Some(raw) => Some(raw),
                    None => return Err("a malformed row".to_owned()),
                },
                Ok(None) => return Err("a row with too few values".to_owned()),
                Err(e) => return Err(format!("a malformed row: {e}")),
            };
            match left.decode(column.type_(), raw) {
                Ok(Some(v)) => values.push(v),
                Ok(None) => break,
                Err(e) => return Err(format!("column {:?}: {e}", column.name())),
            }
        }
        if values.len() < columns.len() {
            self.out.truncated = true;
            return Ok(());
        }
        *budget = left;
        self.out.rows.push(values);
        Ok(())
    }

    fn finish(mut self, conn: &Checkout) -> Outcome {
        // Rows too large to read at all were dropped by the socket.
        if conn.socket().rows_dropped() != self.dropped_before {
            self.out.truncated = true;
        }
        self.out
    }
}

/// A request to PostgreSQL: statements as Bind and Execute messages under
/// one Sync, so that the server answers them all with one ReadyForQuery —
/// one flush, one send, one TLS record — and stops at the first that fails.
#[derive(Default)]
struct Request {
    buf: BytesMut,
    statements: usize,
}

impl Request {
    /// One of tenantd's own statements, its parameters in text. Returns
    /// its index.
    fn own(&mut self, own: &Own, params: &[&str]) -> Result<usize, ExecError> {
        let name = match own {
            Own::Prepared(statement) => statement.name(),
            Own::Parsed(sql) => {
                frontend::parse("", sql, std::iter::empty(), &mut self.buf)
                    .map_err(|e| ExecError::Client(format!("encode {sql:?}: {e}")))?;
                ""
            }
        };
        frontend::bind(
            "",
            name,
            std::iter::empty(),
            params,
            |param, buf| {
                buf.extend_from_slice(param.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty(),
            &mut self.buf,
        )
        .map_err(|_| ExecError::Client("encode a statement of tenantd's own".to_owned()))?;
        frontend::execute("", 0, &mut self.buf)
            .map_err(|e| ExecError::Client(format!("encode a statement: {e}")))?;
        self.statements += 1;
        Ok(self.statements - 1)
    }

    /// COMMIT and the session reset. Returns the COMMIT's index.
    fn commit_and_reset(&mut self, own: &OwnStatements) -> Result<usize, ExecError> {
        let commit = self.own(&own.commit, &[])?;
        for statement in &own.reset {
            self.own(statement, &[])?;
        }
        Ok(commit)
    }

    /// A call's statement, prepared on the connection, with its parameters
    /// and every result column in binary. Returns its index.
    fn prepared(&mut self, p: &Prepared<'_>) -> Result<usize, ExecError> {
        let types = p.statement.params();
        let formats: Vec<i16> = p
            .params
            .iter()
            .zip(types)
            .map(|(value, ty)| value.encode_format(ty) as i16)
            .collect();
        let mut failed_at = 0;
        frontend::bind(
            "",
            p.statement.name(),
            formats,
            p.params.iter().zip(types).enumerate(),
            |(i, (value, ty)), buf| match value.to_sql_checked(ty, buf) {
                Ok(IsNull::No) => Ok(postgres_protocol::IsNull::No),
                Ok(IsNull::Yes) => Ok(postgres_protocol::IsNull::Yes),
                Err(e) => {
                    failed_at = i;
                    Err(e)
                }
            },
            [1],
            &mut self.buf,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => {
                ExecError::Client(format!("params[{failed_at}]: {e}"))
            }
            frontend::BindError::Serialization(e) => ExecError::Client(e.to_string()),
        })?;
        frontend::execute("", 0, &mut self.buf)
            .map_err(|e| ExecError::Client(format!("encode a statement: {e}")))?;
        self.statements += 1;
        Ok(self.statements - 1)
    }

    /// Sends the request; its answers are read with [`read_reply`].
    fn send(mut self, client: &tokio_postgres::Client) -> Result<Responses, tokio_postgres::Error> {
        frontend::sync(&mut self.buf);
        client.send_encoded(self.buf.freeze())
    }
}

/// Where a request stopped: at its statement `step`, with the error
/// PostgreSQL gave (or the connection's).
struct Failure {
    step: usize,
    error: tokio_postgres::Error,
    /// Whether the session is still in a (failed) transaction block, as
    /// the ReadyForQuery after it said: a COMMIT that ran and failed ended
    /// it; a failure before the COMMIT ran did not.
    in_transaction: bool,
}

/// Reads a request's answers up to its ReadyForQuery: the rows of its
/// statement at `target`'s index (into its rows, within its budget), and
/// where it stopped if it did not run to the end.
async fn read_reply(
    responses: &mut Responses,
    mut target: Option<(usize, &mut Rows<'_>, &mut Budget)>,
) -> Result<Option<Failure>, ExecError> {
    let mut step = 0;
    let mut failure = None;
    loop {
        let message = match responses.next().await {
            Ok(message) => message,
            // PostgreSQL skips the rest of the request; its ReadyForQuery
            // still comes.
            Err(error) if error.as_db_error().is_some() => {
                failure.get_or_insert(Failure {
                    step,
                    error,
                    in_transaction: true,
                });
                continue;
            }
            // The connection is gone: what PostgreSQL said before (a
            // FATAL naming why) tells more than the closed socket.
            Err(error) => {
                return Ok(Some(failure.unwrap_or(Failure {
                    step,
                    error,
                    in_transaction: true,
                })));
            }
        };
        match (message, &mut target) {
            (Message::DataRow(row), Some((at, rows, budget))) if *at == step => {
                rows.push(&row, budget)
            }
            (Message::CommandComplete(body), target) => {
                if let Some((at, rows, _)) = target
                    && *at == step
                {
                    rows.out.rows_affected = rows_affected(&body);
                }
                step += 1;
            }
            (Message::EmptyQueryResponse, _) => step += 1,
            (Message::ReadyForQuery(body), _) => {
                if let Some(failure) = failure.as_mut() {
                    failure.in_transaction = body.status() != b'I';
                }
                return Ok(failure);
            }
            (Message::CopyInResponse(_) | Message::CopyOutResponse(_), _) => {
                return Err(ExecError::Client(
                    "PostgreSQL began a COPY, which a call cannot run".to_owned(),
                ));
            }
            // ParseComplete, BindComplete, the rows of tenantd's own
            // statements.
            _ => {}
        }
    }
}

/// The count at the end of a command tag ("INSERT 0 5", "UPDATE 2").
fn rows_affected(body: &CommandCompleteBody) -> u64 {
    body.tag()
        .ok()
        .and_then(|tag| tag.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

fn type_name(ty: &Type) -> String {
    ty.name().to_owned()
}

/// Runs `statements` as one transaction on `conn`, within the call's
/// deadline.
pub async fn run(
    conn: &mut Checkout,
    statements: &[Statement],
    limits: CallLimits,
) -> Result<Vec<Outcome>, ExecError> {
    // Until the call finishes cleanly, the connection is not handed back: a
    // caller that goes away mid-call leaves it closed (and its query
    // cancelled), never half-way through a transaction.
    conn.set_discard(true);
    let abandoned = conn.cancel_on_drop();
    let mut dirty = false;
    let attempt = async {
        match run_inner(conn, statements, limits, OwnHow::Prepared, &mut dirty).await {
            // Nothing was committed: prepare afresh and run once more, with
            // tenantd's own statements parsed in the request (a function
            // that deallocates prepared statements cannot take them away
            // half-way through the call again).
            Err(e) if e.stale_statement() => {
                conn.statement_cache().clear();
                run_inner(conn, statements, limits, OwnHow::Parsed, &mut dirty).await
            }
            other => other,
        }
    };
    let result = match tokio::time::timeout_at(limits.deadline, attempt).await {
        Ok(r) => r,
        // The statement is cancelled now, and the connection closed when
        // the checkout is dropped: a backend that ignores the cancel (a
        // function catching query_canceled) ends when it sees the closed
        // connection.
        Err(_) => {
            abandoned.fire().await;
            return Err(ExecError::TimedOut(limits.timeout));
        }
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
/// did to the session reaches the next call on the connection: settings
/// (the role included, which RESET ALL leaves), cursors kept open, LISTENs,
/// session advisory locks, temporary tables, sequence state (`currval`,
/// `lastval`). Prepared statements stay: they are tenantd's own, and a call
/// cannot PREPARE (the screen refuses it in every form a call could send).
///
/// Utility statements cost PostgreSQL about a microsecond each; a SELECT
/// goes through the planner and executor and costs several, and one that
/// calls `set_config` more still (measured with pgbench, BENCHMARKS.md): the
/// one SELECT left is the advisory-lock release, which has no statement of
/// its own outside DISCARD ALL (which would drop the prepared statements).
macro_rules! reset {
    () => {
        "RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES; \
         SELECT pg_advisory_unlock_all()"
    };
}
/// The session reset on its own (also what the benchmark's raw side sends).
pub const SESSION_RESET: &str = reset!();

/// The reset's statements one by one, for a request under one Sync.
fn reset_statements() -> impl Iterator<Item = &'static str> {
    SESSION_RESET.split("; ")
}

const ROLLBACK_AND_RESET: &str = concat!("ROLLBACK; ", reset!());

/// How much before the call's deadline PostgreSQL's own statement_timeout
/// fires.
const SERVER_FIRST: Duration = Duration::from_millis(25);

/// tenantd's own statements in a call: BEGIN, the timeout, COMMIT and the
/// reset.
struct OwnStatements {
    begin: Own,
    /// `SET LOCAL statement_timeout` with the value as a parameter. As a
    /// SELECT it also takes the transaction's snapshot, so that no
    /// statement can switch a read-only transaction to read-write
    /// afterwards.
    set_timeout: Own,
    commit: Own,
    reset: Vec<Own>,
}

const SET_TIMEOUT: &str = "SELECT set_config('statement_timeout', $1, true)";

/// One of tenantd's own statements in a request.
enum Own {
    /// Prepared on the connection (and cached with the calls' statements):
    /// PostgreSQL neither parses nor plans it again.
    Prepared(tokio_postgres::Statement),
    /// Parsed in the request, as the unnamed statement.
    Parsed(&'static str),
}

/// How a call gets tenantd's own statements.
#[derive(Debug, Clone, Copy)]
enum OwnHow {
    Prepared,
    Parsed,
}

impl Own {
    async fn get(conn: &Checkout, sql: &'static str, how: OwnHow) -> Result<Own, ExecError> {
        match how {
            OwnHow::Parsed => Ok(Own::Parsed(sql)),
            OwnHow::Prepared => conn
                .statement_cache()
                .prepare(conn.client(), sql)
                .await
                .map(Own::Prepared)
                .map_err(|e| classify(e, Lost::BeforeAnyStatement)),
        }
    }
}

impl OwnStatements {
    /// The statements, prepared (all in one round trip, on a connection's
    /// first call) or not, as `how` says.
    async fn get(conn: &Checkout, read_only: bool, how: OwnHow) -> Result<Self, ExecError> {
        let begin = if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        };
        let (begin, set_timeout, commit, reset) = futures::try_join!(
            Own::get(conn, begin, how),
            Own::get(conn, SET_TIMEOUT, how),
            Own::get(conn, "COMMIT", how),
            futures::future::try_join_all(reset_statements().map(|sql| Own::get(conn, sql, how))),
        )?;
        Ok(OwnStatements {
            begin,
            set_timeout,
            commit,
            reset,
        })
    }
}

/// One attempt at the call. `dirty` is set when the connection's session
/// could not be reset.
async fn run_inner(
    conn: &Checkout,
    statements: &[Statement],
    limits: CallLimits,
    own: OwnHow,
    dirty: &mut bool,
) -> Result<Vec<Outcome>, ExecError> {
    let mut prepared = Vec::with_capacity(statements.len());
    for (i, s) in statements.iter().enumerate() {
        prepared.push(prepare(conn, s).await.map_err(|e| e.at(i))?);
    }
    let own = OwnStatements::get(conn, limits.read_only, own).await?;
    let client = conn.client();
    let mut budget = limits.budget;
    if let [only] = prepared.as_slice() {
        // BEGIN, the statement, COMMIT and the reset under one Sync: one
        // round trip, and one answer from the server. After a failure
        // PostgreSQL skips the rest (the COMMIT included) up to the Sync.
        let mut request = Request::default();
        begin(&mut request, &own, limits)?;
        let target = request.prepared(only)?;
        let commit = request.commit_and_reset(&own)?;
        let mut responses = request
            .send(client)
            .map_err(|e| classify(e, Lost::BeforeAnyStatement))?;
        let mut rows = Rows::new(conn, only);
        let failure = read_reply(&mut responses, Some((target, &mut rows, &mut budget))).await?;
        // The COMMIT went out with the BEGIN: after a lost connection the
        // outcome is unknown, so none of these is retried.
        settle(conn, failure, commit, Some(target), dirty).await?;
        if let Some(message) = rows.unreadable.take() {
            return Err(ExecError::Unreadable {
                message,
                committed: !limits.read_only,
            });
        }
        return Ok(vec![rows.finish(conn)]);
    }
    // Several statements: each waits for the one before (the first goes
    // with the BEGIN); no COMMIT is sent until all succeeded, so a
    // connection lost before it committed nothing.
    let mut outcomes = Vec::with_capacity(prepared.len());
    for (i, p) in prepared.iter().enumerate() {
        let mut request = Request::default();
        if i == 0 {
            begin(&mut request, &own, limits)?;
        }
        let target = request.prepared(p)?;
        let mut responses = request
            .send(client)
            .map_err(|e| classify(e, Lost::NotCommitted))?;
        let mut rows = Rows::new(conn, p);
        let failure = read_reply(&mut responses, Some((target, &mut rows, &mut budget))).await?;
        let Some(Failure {
            step,
            error,
            in_transaction,
        }) = failure
        else {
            if let Some(why) = rows.unreadable.take() {
                roll_back(client, true, dirty).await;
                return Err(ExecError::Unreadable {
                    message: format!("statement {i}: {why}"),
                    committed: false,
                });
            }
            outcomes.push(rows.finish(conn));
            continue;
        };
        let err = if step < target {
            lost_or(conn, classify(error, Lost::BeforeAnyStatement))
        } else {
            lost_or(conn, classify(error, Lost::NotCommitted)).at(i)
        };
        if !err.breaks_connection() {
            roll_back(client, in_transaction, dirty).await;
        }
        return Err(err);
    }
    let mut request = Request::default();
    let commit = request.commit_and_reset(&own)?;
    let mut responses = request
        .send(client)
        .map_err(|e| classify(e, Lost::NotCommitted))?;
    let failure = read_reply(&mut responses, None).await?;
    settle(conn, failure, commit, None, dirty).await?;
    Ok(outcomes)
}

/// The start of a call's transaction: read-only or not, with PostgreSQL
/// ending each statement itself a little before the call's deadline (so
/// the caller learns SQLSTATE 57014); at the deadline the client side
/// cancels whatever lifted its own timeout.
fn begin(request: &mut Request, own: &OwnStatements, limits: CallLimits) -> Result<(), ExecError> {
    let left = limits
        .deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .saturating_sub(SERVER_FIRST);
    let timeout_ms = left.as_millis().clamp(1, i32::MAX as u128).to_string();
    request.own(&own.begin, &[])?;
    request.own(&own.set_timeout, &[&timeout_ms])?;
    Ok(())
}

/// What a request that sent COMMIT (at index `commit`) and the reset came
/// to. A failure after the COMMIT succeeded leaves the writes committed and
/// the reset half-done: the reset is sent again. A failure before it (in
/// the statement at `statement`, or the COMMIT itself) is the call's error,
/// its transaction rolled back. After a lost connection the outcome is
/// unknown.
async fn settle(
    conn: &Checkout,
    failure: Option<Failure>,
    commit: usize,
    statement: Option<usize>,
    dirty: &mut bool,
) -> Result<(), ExecError> {
    let Some(Failure {
        step,
        error,
        in_transaction,
    }) = failure
    else {
        return Ok(());
    };
    let client = conn.client();
    if step > commit {
        // (Over a lost connection this fails, and the connection goes.)
        *dirty |= client.batch_execute(SESSION_RESET).await.is_err();
        return Ok(());
    }
    let err = lost_or(conn, classify(error, Lost::OutcomeUnknown));
    if !err.breaks_connection() {
        roll_back(client, in_transaction, dirty).await;
    }
    Err(if Some(step) == statement {
        err.at(0)
    } else {
        err
    })
}

/// Ends a failed call's transaction, if it is still open, and resets the
/// session; a connection where that fails is not used again.
async fn roll_back(client: &tokio_postgres::Client, in_transaction: bool, dirty: &mut bool) {
    let sql = if in_transaction {
        ROLLBACK_AND_RESET
    } else {
        SESSION_RESET
    };
    *dirty |= client.batch_execute(sql).await.is_err();
}
