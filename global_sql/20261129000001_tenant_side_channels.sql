-- What a tenant's role could otherwise reach beyond its own schema, through
-- privileges every role has by default (PUBLIC). The statement screen of the
-- data plane refuses these too; the privileges are the boundary that holds
-- whatever SQL gets through.
--
-- * Temporary tables: a tenant has no use for them, and a session that
--   creates one keeps state across calls. The database's owner may revoke
--   TEMPORARY from PUBLIC; tenantd owns its database (or is a superuser).
-- * Large objects live in the whole database, outside any schema: a
--   read-only call could store them, and two tenants could share one.
-- * pg_cancel_backend / pg_terminate_backend let a role signal its own other
--   sessions: one call of a tenant could kill the tenant's other calls.
-- * pg_notify reaches every listener of the database.
-- Functions of pg_catalog belong to the bootstrap superuser: only a superuser
-- can revoke them from PUBLIC. Elsewhere the screen is what stands, and
-- tenantd says so at start (docs/security.md lists the grants to do by hand).
DO $$
DECLARE
    f regprocedure;
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'pg_catalog'::regnamespace
              AND p.proname ~ '^(lo_.*|loread|lowrite|pg_cancel_backend|pg_terminate_backend|pg_notify)$'
        LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        END LOOP;
    ELSE
        RAISE NOTICE 'tenantd is not a superuser: large-object, backend-signal and pg_notify functions stay open to every role';
    END IF;
END
$$;
