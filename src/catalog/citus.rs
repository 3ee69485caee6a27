//! Citus's own metadata, read on a coordinator.

use sqlx::PgConnection;

/// `host:port` of the node that holds the shards of distributed schema
/// `schema`; `None` when it is not a distributed schema.
pub async fn node_of(conn: &mut PgConnection, schema: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s.nodename || ':' || s.nodeport FROM citus_shards s \
         JOIN pg_class c ON c.oid = s.table_name \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 ORDER BY s.shardid LIMIT 1",
    )
    .bind(schema)
    .fetch_optional(conn)
    .await
}
