-- pg_stat_activity's parts, one function each, open to PUBLIC by default:
-- pg_stat_get_backend_activity() shows the running query of every backend
-- of the caller's own role, that is the tenant's other calls, literals
-- included; the idset, wait-event and time functions show what every
-- backend is doing. The statement screen refuses the whole family; these
-- revocations hold for SQL it never sees (a tenant's own functions).
-- Monitoring keeps them through pg_monitor. Only a superuser can change
-- privileges on pg_catalog (docs/security.md has this for running by hand).
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND p.proname LIKE 'pg\_stat\_get\_backend\_%'
        LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f);
        END LOOP;
    ELSE
        RAISE NOTICE 'tenantd is not a superuser: the pg_stat_get_backend_* functions stay open to every role';
    END IF;
END
$$;
