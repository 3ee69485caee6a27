-- Views and functions through which a tenant's call could change settings
-- or read the SQL of the tenant's other calls (PUBLIC may use them all by
-- default). The statement screen refuses them too; these revocations hold
-- for SQL it never sees.
--
-- * UPDATE on pg_settings runs set_config: work_mem, statement_timeout,
--   client_connection_check_interval … for the rest of the call, and it
--   lets a read-only call lock the view, which every session reads.
-- * pg_prepared_statements shows the statements other members' calls
--   prepared on the same pooled connection, literals included;
--   pg_stat_activity shows the queries of the tenant role's other sessions.
--   Monitoring keeps them through pg_monitor.
-- * setseed makes random() predictable for the next calls on a connection.
-- pg_catalog belongs to the bootstrap superuser: only a superuser can do
-- this (docs/security.md has it for running by hand).
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        REVOKE UPDATE ON pg_catalog.pg_settings FROM PUBLIC;
        REVOKE SELECT ON pg_catalog.pg_prepared_statements, pg_catalog.pg_stat_activity FROM PUBLIC;
        GRANT SELECT ON pg_catalog.pg_stat_activity TO pg_monitor;
        REVOKE EXECUTE ON FUNCTION pg_catalog.pg_prepared_statement() FROM PUBLIC;
        REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) TO pg_monitor;
        REVOKE EXECUTE ON FUNCTION pg_catalog.setseed(double precision) FROM PUBLIC;
    ELSE
        RAISE NOTICE 'tenantd is not a superuser: pg_settings, pg_prepared_statements, pg_stat_activity and setseed stay open to every role';
    END IF;
END
$$;
