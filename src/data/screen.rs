//! The statement screen: what a data call may run, decided by PostgreSQL's
//! own parser (libpg_query, through the `pg_query` crate) and never by
//! reading the text.
//!
//! Each SQL string must parse to exactly one statement, whose parse-tree
//! node is on an allow-list: queries and DML (SELECT, VALUES, TABLE,
//! INSERT, UPDATE, DELETE, MERGE), EXPLAIN of those, SHOW, cursors inside
//! the call (DECLARE without HOLD, FETCH, MOVE, CLOSE), LOCK, CALL, and SET
//! of a few presentation settings. Everything else — transaction control,
//! COPY, PREPARE/EXECUTE/DEALLOCATE, DISCARD, LISTEN/NOTIFY/UNLISTEN, LOAD,
//! DO, SET/RESET of anything that matters, and any CREATE, ALTER or DROP —
//! is refused before it reaches PostgreSQL.
//!
//! Inside an allowed statement, calls of functions that reach past the
//! tenant's schema (large objects, backend signals, advisory locks,
//! `set_config`, functions that run SQL given as text, NOTIFY) are refused
//! too, wherever they are in the tree. That list is a second line: the
//! first is the tenant role's privileges, which tenantd revokes where its
//! own privileges allow (see docs/security.md).
//!
//! The parser is libpg_query's, with PostgreSQL's defaults
//! (`standard_conforming_strings = on`); tenant connections are pinned to
//! the same setting, so both read a string the same way. Verdicts are
//! cached by SQL text, so a statement is parsed once per process.

use std::sync::{Arc, OnceLock};

use pg_query::NodeEnum;
use serde_json::Value as Json;

/// Why a statement is refused: its kind (as SQL words, e.g. `COMMIT`) and
/// why that kind is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} is not allowed: {why}")]
pub struct Refusal {
    pub kind: String,
    pub why: String,
    /// The SQLSTATE PostgreSQL itself would answer with, when it would
    /// refuse the text too (a syntax error: `42601`).
    pub sqlstate: Option<&'static str>,
}

impl Refusal {
    fn new(kind: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            why: why.into(),
            sqlstate: None,
        }
    }
}

/// Bytes of SQL text the verdict cache holds at most.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Longer statements are judged every time: they are rare, and a cache of
/// them would be spent by a few.
const MAX_CACHED_SQL: usize = 16 * 1024;

/// Stack reserved for judging one statement (address space; pages are
/// touched only as deep as the tree goes).
const PARSE_STACK: usize = 512 * 1024 * 1024;

type Verdict = Result<(), Refusal>;

fn cache() -> &'static moka::sync::Cache<Arc<str>, Verdict> {
    static CACHE: OnceLock<moka::sync::Cache<Arc<str>, Verdict>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(|sql: &Arc<str>, _| u32::try_from(sql.len() + 64).unwrap_or(u32::MAX))
            .build()
    })
}

/// Names of functions and relations that belong to an extension whose
/// administration is not a tenant's (Citus), read from the database at
/// start: a name-prefix list cannot know every function an extension
/// ships (`create_intermediate_result` runs the SQL text it is given,
/// `lock_relation_if_exists` is LOCK by another name).
#[derive(Default)]
struct ExtensionObjects {
    functions: std::collections::HashSet<String>,
    relations: std::collections::HashSet<String>,
}

fn extension_objects() -> &'static std::sync::RwLock<ExtensionObjects> {
    static OBJECTS: OnceLock<std::sync::RwLock<ExtensionObjects>> = OnceLock::new();
    OBJECTS.get_or_init(Default::default)
}

/// Functions of an extension a tenant must never call, whatever they are
/// named, even though PUBLIC may execute them; aggregates a query may use
/// are left out by the caller. Verdicts cached before are dropped.
pub fn refuse_extension_objects(
    functions: impl IntoIterator<Item = String>,
    relations: impl IntoIterator<Item = String>,
) {
    {
        let mut objects = extension_objects()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        objects
            .functions
            .extend(functions.into_iter().map(|f| f.to_ascii_lowercase()));
        objects
            .relations
            .extend(relations.into_iter().map(|r| r.to_ascii_lowercase()));
    }
    cache().invalidate_all();
}

fn is_extension_function(name: &str) -> bool {
    extension_objects()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .functions
        .contains(name)
}

fn is_extension_relation(name: &str) -> bool {
    extension_objects()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .relations
        .contains(name)
}

/// Whether a data call may run `sql`; cached by text.
pub fn screen(sql: &str) -> Result<(), Refusal> {
    if let Some(verdict) = cache().get(sql) {
        return verdict;
    }
    let verdict = judge(sql);
    if sql.len() <= MAX_CACHED_SQL {
        cache().insert(Arc::from(sql), verdict.clone());
    }
    verdict
}

/// Judges `sql` uncached. The parse tree is decoded and walked recursively
/// (prost, serde): a deep one (`a || b || …` thousands of terms long, as
/// deep as libpg_query allows) would overflow a task's stack, so it is
/// judged on a stack of its own, mapped lazily: only what it touches is
/// used.
fn judge(sql: &str) -> Verdict {
    stacker::grow(PARSE_STACK, || classify(sql))
}

/// Parses `sql` and judges its one statement.
fn classify(sql: &str) -> Result<(), Refusal> {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => parsed,
        // PostgreSQL would refuse it too; say why in its words.
        Err(pg_query::Error::Parse(message)) => {
            return Err(Refusal {
                sqlstate: Some("42601"),
                ..Refusal::new("the statement", message)
            });
        }
        Err(pg_query::Error::Conversion(_)) => {
            return Err(Refusal::new(
                "the statement",
                "SQL text may not contain a NUL character",
            ));
        }
        Err(e) => {
            return Err(Refusal::new(
                "the statement",
                format!("it cannot be parsed: {e}"),
            ));
        }
    };
    let statements = &parsed.protobuf.stmts;
    let statement = match statements.as_slice() {
        [] => return Err(Refusal::new("empty SQL", "give one statement")),
        [one] => one,
        more => {
            return Err(Refusal::new(
                format!("a string of {} statements", more.len()),
                "each string holds exactly one statement; use Transaction for several",
            ));
        }
    };
    let Some(node) = inner(&statement.stmt) else {
        return Err(Refusal::new("empty SQL", "give one statement"));
    };
    judge_statement(node)?;
    let tree = serde_json::to_value(node).map_err(|e| {
        Refusal::new(
            "the statement",
            format!("its parse tree cannot be read: {e}"),
        )
    })?;
    refuse_functions(&tree)
}

/// The variant name of a serialised `Node` (`{"SelectStmt": {…}}`).
fn variant_name(tree: &Json) -> &str {
    match tree {
        Json::Object(map) if map.len() == 1 => map.keys().next().map_or("", String::as_str),
        _ => "",
    }
}

/// The node inside an optional boxed `Node` message.
fn inner(node: &Option<Box<pg_query::Node>>) -> Option<&NodeEnum> {
    node.as_deref().and_then(|n| n.node.as_ref())
}

/// Settings a call may SET or RESET: how values are presented and how long
/// a lock may be waited for. Nothing here widens what a call may do.
const SETTABLE: [&str; 5] = [
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "lock_timeout",
];

/// DECLARE … WITH HOLD: the cursor outlives the transaction.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// Judges the top-level statement node.
fn judge_statement(node: &NodeEnum) -> Result<(), Refusal> {
    match node {
        NodeEnum::SelectStmt(select) => {
            if select.into_clause.is_some() {
                return Err(Refusal::new(
                    "SELECT INTO",
                    "it creates a table; tenant tables come from tenant migrations",
                ));
            }
            Ok(())
        }
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_)
        | NodeEnum::VariableShowStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::CallStmt(_) => Ok(()),
        NodeEnum::ExplainStmt(explain) => match inner(&explain.query) {
            Some(query) => judge_statement(query).map_err(|r| Refusal {
                kind: format!("EXPLAIN of {}", r.kind),
                ..r
            }),
            None => Err(Refusal::new("EXPLAIN", "it explains nothing")),
        },
        NodeEnum::DeclareCursorStmt(declare) => {
            if declare.options & CURSOR_OPT_HOLD != 0 {
                return Err(Refusal::new(
                    "DECLARE … WITH HOLD",
                    "a cursor may not outlive its call",
                ));
            }
            match inner(&declare.query) {
                Some(query) => judge_statement(query),
                None => Err(Refusal::new("DECLARE", "it declares no query")),
            }
        }
        NodeEnum::VariableSetStmt(set) => judge_set(set),
        NodeEnum::TransactionStmt(t) => Err(Refusal::new(
            transaction_kind(t.kind()),
            "transactions are managed by tenantd: a call is one transaction, committed when \
             it succeeds; use Transaction for several statements",
        )),
        NodeEnum::CopyStmt(_) => Err(Refusal::new(
            "COPY",
            "use INSERT … SELECT or SELECT instead",
        )),
        NodeEnum::PrepareStmt(_) | NodeEnum::ExecuteStmt(_) | NodeEnum::DeallocateStmt(_) => {
            Err(Refusal::new(
                kind_of(node),
                "statements are prepared by tenantd: pass parameters instead",
            ))
        }
        NodeEnum::DiscardStmt(_) => Err(Refusal::new(
            "DISCARD",
            "session state is reset by tenantd after every call",
        )),
        NodeEnum::ListenStmt(_) | NodeEnum::UnlistenStmt(_) | NodeEnum::NotifyStmt(_) => {
            Err(Refusal::new(
                kind_of(node),
                "notification channels are shared by the whole database",
            ))
        }
        NodeEnum::LoadStmt(_) => Err(Refusal::new("LOAD", "loading libraries is not allowed")),
        NodeEnum::LockStmt(_) => Err(Refusal::new(
            "LOCK",
            "an explicit lock would hold the tenant's other calls, or any session, for the \
             call's whole time; rows are locked by the statements that change them",
        )),
        NodeEnum::DoStmt(_) => Err(Refusal::new(
            "DO",
            "anonymous code blocks can run any SQL; send the statements themselves",
        )),
        NodeEnum::AlterRoleStmt(_)
        | NodeEnum::AlterRoleSetStmt(_)
        | NodeEnum::CreateRoleStmt(_)
        | NodeEnum::DropRoleStmt(_)
        | NodeEnum::GrantRoleStmt(_) => Err(Refusal::new(
            kind_of(node),
            "the tenant's role is managed by tenantd",
        )),
        _ => {
            let kind = kind_of(node);
            let ddl = [
                "CREATE", "ALTER", "DROP", "INDEX", "VIEW", "RULE", "RENAME", "COMMENT", "GRANT",
                "TRUNCATE",
            ]
            .iter()
            .any(|w| kind.starts_with(w));
            let why = if ddl {
                "the tenant's schema is changed by tenant migrations, not by data calls"
            } else {
                "data calls run queries and DML only"
            };
            Err(Refusal::new(kind, why))
        }
    }
}

/// SET and RESET: only of [`SETTABLE`], never `SET TRANSACTION`, `SET
/// SESSION CHARACTERISTICS`, `SET ROLE` or `SET SESSION AUTHORIZATION`.
fn judge_set(set: &pg_query::protobuf::VariableSetStmt) -> Result<(), Refusal> {
    use pg_query::protobuf::VariableSetKind as K;
    let name = set.name.as_str();
    let verb = match set.kind() {
        K::VarReset | K::VarResetAll => "RESET",
        _ if set.is_local => "SET LOCAL",
        _ => "SET",
    };
    match set.kind() {
        K::VarResetAll => Err(Refusal::new(
            "RESET ALL",
            "tenantd sets the call's limits and resets the session after it",
        )),
        K::VarSetMulti => Err(Refusal::new(
            format!("{verb} {}", name.to_ascii_uppercase()),
            "transaction characteristics are set by tenantd (read_only, timeout_ms)",
        )),
        K::VarSetValue | K::VarSetDefault | K::VarReset
            if SETTABLE.contains(&name.to_ascii_lowercase().as_str()) =>
        {
            Ok(())
        }
        _ => Err(Refusal::new(
            format!("{verb} {name}"),
            format!("only {} may be set by a data call", SETTABLE.join(", ")),
        )),
    }
}

/// `BEGIN`, `COMMIT`, `SAVEPOINT` … of a TransactionStmt.
fn transaction_kind(kind: pg_query::protobuf::TransactionStmtKind) -> &'static str {
    use pg_query::protobuf::TransactionStmtKind as K;
    match kind {
        K::TransStmtBegin => "BEGIN",
        K::TransStmtStart => "START TRANSACTION",
        K::TransStmtCommit => "COMMIT",
        K::TransStmtRollback => "ROLLBACK",
        K::TransStmtSavepoint => "SAVEPOINT",
        K::TransStmtRelease => "RELEASE SAVEPOINT",
        K::TransStmtRollbackTo => "ROLLBACK TO SAVEPOINT",
        K::TransStmtPrepare => "PREPARE TRANSACTION",
        K::TransStmtCommitPrepared => "COMMIT PREPARED",
        K::TransStmtRollbackPrepared => "ROLLBACK PREPARED",
        K::Undefined => "transaction control",
    }
}

/// A statement node's kind in SQL's words: `AlterRoleSetStmt` → `ALTER
/// ROLE SET`.
fn kind_of(node: &NodeEnum) -> String {
    let tree = serde_json::to_value(node).unwrap_or(Json::Null);
    sql_words(variant_name(&tree))
}

/// A node name in SQL's words.
fn sql_words(node: &str) -> String {
    let name = node.strip_suffix("Stmt").unwrap_or(node);
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Functions a tenant role must not call, by name (any schema): what they
/// reach is shared by the whole database or cluster, or they run SQL given
/// as text, which no screen could read.
fn forbidden_function(name: &str) -> Option<&'static str> {
    const LARGE_OBJECTS: &str =
        "large objects are shared by the whole database; store bytes in a bytea column";
    const RUNS_TEXT: &str = "it runs SQL given as text; send the statement itself";
    let name = name.to_ascii_lowercase();
    let why = match name.as_str() {
        "loread" | "lowrite" => LARGE_OBJECTS,
        n if n.starts_with("lo_") => LARGE_OBJECTS,
        "pg_terminate_backend" | "pg_cancel_backend" => {
            "signalling backends is tenantd's; a call ends at its own deadline"
        }
        n if n.starts_with("pg_advisory") || n.starts_with("pg_try_advisory") => {
            "advisory lock keys are shared by the whole database"
        }
        "set_config" => "settings are managed by tenantd; SET LOCAL the presentation settings",
        "pg_notify" => "notification channels are shared by the whole database",
        "pg_logical_emit_message" => {
            "it writes to the write-ahead log, which the whole cluster and every logical decoding \
             consumer share"
        }
        "setseed" => "the seed of random() would outlive the call on the connection",
        "txid_current" | "pg_current_xact_id" => {
            "it takes a transaction id from the cluster's shared supply, so that even a read-only \
             call would write its commit; txid_current_if_assigned() and \
             pg_current_xact_id_if_assigned() read one without taking it"
        }
        "pg_prepared_statement" | "pg_stat_get_activity" | "pg_stat_statements" => SHOWS_OTHERS,
        // pg_stat_activity's parts one by one: the running query's text,
        // wait event and times of every backend.
        n if n.starts_with("pg_stat_get_backend_") => SHOWS_OTHERS,
        n if n.starts_with("query_to_xml")
            || n.starts_with("cursor_to_xml")
            || n.starts_with("table_to_xml")
            || n.starts_with("schema_to_xml")
            || n.starts_with("database_to_xml")
            || n == "ts_stat"
            || n == "ts_rewrite" =>
        {
            RUNS_TEXT
        }
        n if n.starts_with("dblink") => "connections to other databases are not allowed",
        n if n.starts_with("run_command_on_") => {
            "it runs SQL given as text on other nodes; send the statement itself"
        }
        n if is_citus_administration(n) || is_extension_function(n) => CITUS_ADMINISTRATION,
        n if n.starts_with("pg_read_")
            || n.starts_with("pg_ls_")
            || n == "pg_stat_file"
            || n == "pg_reload_conf"
            || n == "pg_rotate_logfile" =>
        {
            "server files and configuration are not the tenant's"
        }
        _ => return None,
    };
    Some(why)
}

/// On a Citus coordinator, what the operator steers through ClusterService:
/// placement, moves, rebalancing, distribution, metadata.
const CITUS_ADMINISTRATION: &str =
    "Citus's placement and metadata are the operator's (ClusterService), not the tenant's";

/// Citus's administration functions, by name: most are open to PUBLIC and
/// check ownership themselves; a tenant has no business calling any
/// (`citus_rebalance_start` would schedule moves of the whole cluster).
fn is_citus_administration(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "citus_",
        "master_",
        "worker_",
        "get_rebalance_",
        "rebalance_table_shards",
        "replicate_table_shards",
        "create_distributed_",
        "create_reference_table",
        "undistribute_table",
        "alter_distributed_table",
        "isolate_tenant_to_new_shard",
        "update_distributed_table_colocation",
        "mark_tables_colocated",
        "start_metadata_sync_to_node",
        "stop_metadata_sync_to_node",
        "truncate_local_data_after_distributing_table",
        "lock_shard_",
        "create_time_partitions",
        "drop_old_time_partitions",
        "alter_old_partitions_set_access_method",
        "alter_table_set_access_method",
        "create_intermediate_result",
        "broadcast_intermediate_result",
        "read_intermediate_result",
        "fetch_intermediate_results",
        "lock_relation_if_exists",
        "get_all_active_transactions",
        "get_global_active_transactions",
        "dump_local_wait_edges",
        "dump_global_wait_edges",
        "check_distributed_deadlocks",
        "remove_local_tables_from_metadata",
        "replicate_reference_tables",
        "fix_all_partition_shard_index_names",
        "fix_partition_shard_index_names",
        "assign_distributed_transaction_id",
        "shard_name",
        "get_shard_id_for_distribution_column",
        "get_colocated_table_array",
        "time_partitions",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Views that show the SQL of other calls: the statements other members'
/// calls prepared on the same pooled connection, the queries of the
/// tenant's other sessions.
const SHOWS_OTHERS: &str = "it shows the SQL of the tenant's other calls";

/// Why a relation may not be read, if so.
fn forbidden_relation(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "pg_prepared_statements"
        | "pg_stat_activity"
        | "pg_stat_statements"
        | "pg_stat_statements_info" => Some(SHOWS_OTHERS),
        // Citus's metadata and views: the cluster's nodes, every tenant's
        // tables and sizes, every backend's query across the nodes.
        n if n.starts_with("citus_") || n.starts_with("pg_dist_") || is_extension_relation(n) => {
            Some(CITUS_ADMINISTRATION)
        }
        _ => None,
    }
}

/// Why a statement may not change `relation` (a serialised RangeVar), if
/// so: PostgreSQL's catalog is not the tenant's, and some of its views turn
/// a change into something else (`UPDATE pg_settings` runs `set_config`).
fn forbidden_target(relation: &Json) -> Option<&'static str> {
    let field = |f: &str| {
        relation
            .get(f)
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let (schema, name) = (field("schemaname"), field("relname"));
    let catalog = matches!(schema.as_str(), "pg_catalog" | "information_schema")
        || schema.starts_with("pg_")
        || name.starts_with("pg_");
    catalog.then_some("PostgreSQL's catalog and settings are not the tenant's to change")
}

/// Walks the whole tree (without recursion, however deep it is) and
/// refuses the first call of a forbidden function, read of a forbidden
/// view, or change of PostgreSQL's catalog.
fn refuse_functions(tree: &Json) -> Result<(), Refusal> {
    let mut stack = vec![tree];
    while let Some(node) = stack.pop() {
        match node {
            Json::Object(map) => {
                if let Some(range) = map.get("RangeVar")
                    && let Some(name) = range.get("relname").and_then(Json::as_str)
                    && let Some(why) = forbidden_relation(name)
                {
                    return Err(Refusal::new(format!("reading {name}"), why));
                }
                for change in ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"] {
                    if let Some(relation) = map.get(change).and_then(|s| s.get("relation"))
                        && let Some(why) = forbidden_target(relation)
                    {
                        let name = relation.get("relname").and_then(Json::as_str).unwrap_or("");
                        return Err(Refusal::new(format!("changing {name}"), why));
                    }
                }
                if let Some(call) = map.get("FuncCall") {
                    let name = call
                        .get("funcname")
                        .and_then(Json::as_array)
                        .and_then(|parts| parts.last())
                        .and_then(|n| n.get("node"))
                        .and_then(|n| n.get("String"))
                        .and_then(|s| s.get("sval"))
                        .and_then(Json::as_str)
                        .unwrap_or("");
                    if let Some(why) = forbidden_function(name) {
                        return Err(Refusal::new(format!("calling {name}()"), why));
                    }
                }
                stack.extend(map.values());
            }
            Json::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> Refusal {
        match judge(sql) {
            Err(r) => r,
            Ok(()) => panic!("{sql:?} was allowed"),
        }
    }

    #[test]
    fn queries_and_dml_are_allowed() {
        for sql in [
            "select 1",
            "SELECT * FROM t WHERE a = $1",
            "insert into t values (1) returning *",
            "update t set a = 2",
            "delete from t",
            "with x as (select 1) select * from x",
            "with d as (delete from t returning *) select count(*) from d",
            "values (1), (2)",
            "table t",
            "merge into t using s on t.a = s.a when matched then update set b = s.b",
            "explain select 1",
            "explain analyze update t set a = 1",
            "show timezone",
            "set local timezone = 'UTC'",
            "SET TIME ZONE 'Europe/Berlin'",
            "declare c cursor for select 1",
            "fetch 10 from c",
            "close c",
            "select 1;",
            ";;select 1;;",
            "-- comment\nselect 1",
            "/* a /* nested */ comment */ select 1",
            "select $$COMMIT$$",
            "select 'lo_import'",
            "select \"lo_get\" from t",
            "select txid_current_if_assigned(), pg_current_xact_id_if_assigned()",
            "select txid_current_snapshot()",
        ] {
            assert_eq!(judge(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn a_comment_ended_by_a_carriage_return_hides_nothing() {
        let r = refused("-- harmless\rCOMMIT");
        assert_eq!(r.kind, "COMMIT");
        let r = refused("select 1 -- x\r; commit");
        assert!(r.kind.contains("2 statements"), "{r:?}");
    }

    #[test]
    fn forbidden_kinds_name_themselves() {
        for (sql, kind) in [
            ("COMMIT", "COMMIT"),
            ("end", "COMMIT"),
            ("abort", "ROLLBACK"),
            ("begin", "BEGIN"),
            ("start transaction read write", "START TRANSACTION"),
            ("savepoint a", "SAVEPOINT"),
            ("prepare transaction 'x'", "PREPARE TRANSACTION"),
            ("copy t to stdout", "COPY"),
            ("prepare p as select 1", "PREPARE"),
            ("execute p", "EXECUTE"),
            ("deallocate all", "DEALLOCATE"),
            ("discard all", "DISCARD"),
            ("listen x", "LISTEN"),
            ("notify x", "NOTIFY"),
            ("unlisten *", "UNLISTEN"),
            ("load 'auto_explain'", "LOAD"),
            ("do $$ begin commit; end $$", "DO"),
            ("set statement_timeout = 0", "SET statement_timeout"),
            (
                "set local statement_timeout = 0",
                "SET LOCAL statement_timeout",
            ),
            ("reset statement_timeout", "RESET statement_timeout"),
            ("reset all", "RESET ALL"),
            ("set role postgres", "SET role"),
            ("reset role", "RESET role"),
            (
                "set session authorization postgres",
                "SET session_authorization",
            ),
            ("set transaction read write", "SET TRANSACTION"),
            (
                "set session characteristics as transaction read write",
                "SET SESSION CHARACTERISTICS",
            ),
            ("set search_path = public", "SET search_path"),
            ("alter role current_user password 'x'", "ALTER ROLE"),
            (
                "alter user current_user set work_mem = '1GB'",
                "ALTER ROLE SET",
            ),
            ("create table x (a int)", "CREATE"),
            ("create temp table x (a int)", "CREATE"),
            ("drop table t", "DROP"),
            ("alter table t add column b int", "ALTER TABLE"),
            ("truncate t", "TRUNCATE"),
            ("grant select on t to public", "GRANT"),
            ("select 1 into x", "SELECT INTO"),
            ("create table x as select 1", "CREATE TABLE AS"),
            (
                "declare c cursor with hold for select 1",
                "DECLARE … WITH HOLD",
            ),
            (
                "explain analyze create table x as select 1",
                "EXPLAIN of CREATE TABLE AS",
            ),
            ("vacuum t", "VACUUM"),
            ("checkpoint", "CHECK POINT"),
            ("select lo_from_bytea(0, 'x')", "calling lo_from_bytea()"),
            ("lock table t in access exclusive mode", "LOCK"),
            (
                "update pg_settings set setting = '0' where name = 'statement_timeout'",
                "changing pg_settings",
            ),
            (
                "UPDATE pg_catalog.PG_SETTINGS SET setting = 'off'",
                "changing pg_settings",
            ),
            (
                "with x as (update pg_settings set setting = '3GB' where name = 'work_mem' returning 1) select * from x",
                "changing pg_settings",
            ),
            (
                "insert into information_schema.sql_features select * from t",
                "changing sql_features",
            ),
            ("select setseed(0.42)", "calling setseed()"),
            (
                "select statement from pg_prepared_statements",
                "reading pg_prepared_statements",
            ),
            (
                "select query from pg_catalog.pg_stat_activity",
                "reading pg_stat_activity",
            ),
            (
                "select * from t where exists (select from pg_stat_activity)",
                "reading pg_stat_activity",
            ),
            (
                "select pg_stat_get_activity(null)",
                "calling pg_stat_get_activity()",
            ),
            (
                "select pg_stat_get_backend_activity(s) from pg_stat_get_backend_idset() s",
                "calling pg_stat_get_backend_activity()",
            ),
            (
                "select * from PG_CATALOG.\"pg_stat_get_backend_idset\"()",
                "calling pg_stat_get_backend_idset()",
            ),
            ("select pg_catalog.lo_put(1, 0, 'x')", "calling lo_put()"),
            (
                "select * from t where pg_terminate_backend(1)",
                "calling pg_terminate_backend()",
            ),
            ("select pg_advisory_lock(1)", "calling pg_advisory_lock()"),
            (
                "select set_config('role', 'x', false)",
                "calling set_config()",
            ),
            (
                "select query_to_xml('commit', true, true, '')",
                "calling query_to_xml()",
            ),
            ("select pg_notify('c', 'x')", "calling pg_notify()"),
            ("select txid_current()", "calling txid_current()"),
            (
                "select 1 where pg_current_xact_id() is not null",
                "calling pg_current_xact_id()",
            ),
            (
                "with x as (select lo_creat(-1)) select 1",
                "calling lo_creat()",
            ),
            ("insert into t select * from lo_get(1)", "calling lo_get()"),
            (
                "select citus_rebalance_start()",
                "calling citus_rebalance_start()",
            ),
            (
                "select * from run_command_on_workers($$select 1$$)",
                "calling run_command_on_workers()",
            ),
            (
                "select pg_catalog.\"citus_schema_move\"('s', 'h', 1)",
                "calling citus_schema_move()",
            ),
            (
                "select * from get_rebalance_table_shards_plan()",
                "calling get_rebalance_table_shards_plan()",
            ),
            (
                "select query from citus_stat_activity",
                "reading citus_stat_activity",
            ),
            (
                "select create_intermediate_result('r', $q$select * from run_command_on_workers($$select 1$$)$q$)",
                "calling create_intermediate_result()",
            ),
            (
                "select lock_relation_if_exists('customers', 'ACCESS EXCLUSIVE'), pg_sleep(8)",
                "calling lock_relation_if_exists()",
            ),
            (
                "select * from get_all_active_transactions()",
                "calling get_all_active_transactions()",
            ),
            (
                "select nodename from pg_catalog.PG_DIST_NODE",
                "reading pg_dist_node",
            ),
        ] {
            let r = refused(sql);
            assert!(r.kind.starts_with(kind), "{sql}: {r:?}");
        }
    }

    #[test]
    fn several_statements_and_none_are_refused() {
        assert!(refused("select 1; select 2").kind.contains("2 statements"));
        assert_eq!(refused("").kind, "empty SQL");
        assert_eq!(refused(" -- nothing\n ;; /* */").kind, "empty SQL");
        assert!(refused("select \0").why.contains("NUL"));
        let r = refused("selec 1");
        assert!(r.why.contains("syntax error"), "{r:?}");
        assert_eq!(r.sqlstate, Some("42601"));
    }

    #[test]
    fn deep_nesting_is_judged_or_refused_without_crashing() {
        for depth in [10, 100, 1_000, 4_900, 10_000] {
            for sql in [
                format!("select {}1{}", "(".repeat(depth), ")".repeat(depth)),
                format!("select {}1{}", "array[".repeat(depth), "]".repeat(depth)),
                format!(
                    "select {}",
                    (0..depth)
                        .map(|i| format!("a{i}"))
                        .collect::<Vec<_>>()
                        .join(" || ")
                ),
                format!(
                    "select {}lo_get(1){}",
                    "coalesce(".repeat(depth),
                    ", 1)".repeat(depth)
                ),
            ] {
                let verdict = screen(&sql);
                if sql.contains("lo_get") {
                    assert!(verdict.is_err(), "depth {depth}");
                }
            }
        }
        // An ordinary report-sized expression is allowed.
        let sql = format!(
            "select {} from t",
            (0..200)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(" || ")
        );
        assert_eq!(judge(&sql), Ok(()));
    }

    #[test]
    fn an_extensions_own_functions_are_refused_whatever_their_name() {
        let sql = "select \"Some_Extension_Fn\"(1) from t, extension_view_x";
        assert!(screen("select some_extension_fn(1)").is_ok());
        refuse_extension_objects(
            ["some_extension_fn".to_owned()],
            ["extension_view_x".to_owned()],
        );
        // The verdict cached before is dropped.
        let r = screen("select some_extension_fn(1)").unwrap_err();
        assert_eq!(r.kind, "calling some_extension_fn()");
        assert!(screen("select * from public.extension_view_x").is_err());
        // Quoted names keep their case: a different function.
        assert!(screen(sql).is_err(), "the view is still refused");
    }

    #[test]
    fn verdicts_are_cached() {
        let sql = "select 4242 /* cached */";
        // Another test may drop every verdict meanwhile (an extension's
        // objects refused): then the next screen caches it again.
        let cached = (0..3).any(|_| {
            assert_eq!(screen(sql), Ok(()));
            cache().contains_key(sql)
        });
        assert!(cached);
    }
}
