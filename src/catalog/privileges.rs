//! What the catalog migrations revoke from PUBLIC when tenantd is a
//! superuser, checked again at every start: on managed PostgreSQL tenantd's
//! role cannot change privileges on `pg_catalog`, so these stay open until
//! a superuser (or the provider's admin role, where it can) runs the SQL in
//! docs/security.md. The statement screen refuses all of them in calls
//! either way; what stays open reaches only SQL the screen never sees (a
//! tenant's own functions and triggers).

use sqlx::PgPool;

/// The functions of pg_catalog (as `p`) that no tenant role may call: the
/// catalog migrations revoke them from PUBLIC.
macro_rules! revoked_functions {
    () => {
        r"p.pronamespace = 'pg_catalog'::regnamespace
   AND (p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
        OR p.proname ~ '^(lo_.*|loread|lowrite|pg_cancel_backend|pg_terminate_backend|pg_notify|setseed|pg_prepared_statement|pg_stat_get_activity|pg_logical_emit_message)$'
        OR p.proname LIKE 'pg\_stat\_get\_backend\_%'"
    };
}

const OPEN_TO_PUBLIC: &str = concat!(
    r"
SELECT p.oid::regprocedure::text
  FROM pg_proc p
 WHERE ",
    revoked_functions!(),
    r")
   AND (p.proacl IS NULL
        OR EXISTS (SELECT FROM aclexplode(p.proacl) a
                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
UNION ALL
SELECT format('%s ON %s', t.privilege, t.rel)
  FROM (VALUES ('UPDATE', 'pg_catalog.pg_settings'),
               ('SELECT', 'pg_catalog.pg_prepared_statements'),
               ('SELECT', 'pg_catalog.pg_stat_activity')) AS t (privilege, rel)
  JOIN pg_class c ON c.oid = t.rel::regclass
 WHERE EXISTS (SELECT FROM aclexplode(c.relacl) a
                WHERE a.grantee = 0 AND a.privilege_type = t.privilege)
ORDER BY 1"
);

/// The functions (as `name(argument types)`) and view privileges (as
/// `UPDATE ON pg_catalog.pg_settings`) still open to every role.
pub async fn open_to_public(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(OPEN_TO_PUBLIC).fetch_all(pool).await
}

/// On a Citus coordinator, as a superuser: the same revocations on every
/// worker and the coordinator, with Citus's `run_command_on_*` (which run
/// SQL text on the nodes) — privileges are per node, and a tenant's
/// queries run as its role on the workers. Citus itself carries the
/// database's TEMPORARY revocation to the workers, and refuses it there.
/// Returns the workers where it failed, with why.
pub async fn revoke_on_citus_nodes(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    const REVOKE: &str = concat!(
        r"DO $revoke$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p WHERE ",
        revoked_functions!(),
        r"
                OR p.proname LIKE 'run\_command\_on\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace
           AND p.proname LIKE 'pg\_stat\_get\_backend\_%'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f);
    END LOOP;
END
$revoke$"
    );
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT nodename || ':' || nodeport, result FROM run_command_on_workers($1) \
          WHERE NOT success",
    )
    .bind(REVOKE)
    .fetch_all(pool)
    .await?;
    // The coordinator last: run_command_on_workers is among what it revokes.
    sqlx::raw_sql(REVOKE).execute(pool).await?;
    Ok(failed
        .into_iter()
        .map(|(node, why)| format!("{node}: {why}"))
        .collect())
}

/// On a cluster other than the catalog's: what the catalog migrations do
/// on `default` (they never run there) — TEMPORARY on the database revoked
/// from PUBLIC (as its owner or a superuser) and, as a superuser, every
/// function of [`revoked_functions!`] and the session views. Run at every
/// registration; each statement may run again.
pub async fn harden(pool: &PgPool) -> Result<(), sqlx::Error> {
    const HARDEN: &str = concat!(
        r"DO $harden$
DECLARE
    f regprocedure;
BEGIN
    BEGIN
        EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'tenantd may not revoke TEMPORARY on the database from PUBLIC';
    END;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p WHERE ",
        revoked_functions!(),
        r")
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace
           AND (p.proname LIKE 'pg\_stat\_get\_backend\_%' OR p.proname = 'pg_stat_get_activity')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f);
    END LOOP;
    REVOKE UPDATE ON pg_catalog.pg_settings FROM PUBLIC;
    REVOKE SELECT ON pg_catalog.pg_prepared_statements, pg_catalog.pg_stat_activity FROM PUBLIC;
    GRANT SELECT ON pg_catalog.pg_stat_activity TO pg_monitor;
END
$harden$"
    );
    sqlx::raw_sql(HARDEN).execute(pool).await.map(drop)
}
