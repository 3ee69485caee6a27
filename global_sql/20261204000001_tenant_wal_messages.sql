-- pg_logical_emit_message() writes a message of any size into the
-- write-ahead log, open to PUBLIC by default and allowed in a read-only
-- transaction: one call could fill the disk every tenant shares and put
-- messages in front of every logical decoding consumer. The statement
-- screen refuses it; this revocation holds for SQL it never sees (a
-- tenant's own functions). Only a superuser can change privileges on
-- pg_catalog (docs/security.md has this for running by hand).
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND p.proname = 'pg_logical_emit_message'
        LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        END LOOP;
    ELSE
        RAISE NOTICE 'tenantd is not a superuser: pg_logical_emit_message stays open to every role';
    END IF;
END
$$;
