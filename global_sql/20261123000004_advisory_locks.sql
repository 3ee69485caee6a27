-- Advisory lock keys are shared by every session of the database: tenantd's
-- own (catalog migrations, tenant migration registration, one per tenant for
-- upgrades) must not be takeable by a tenant's role through the data plane.
-- Only a superuser can revoke these functions from PUBLIC; where tenantd's
-- role is not one, this is done once by hand (docs/security.md).
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'pg_catalog'::regnamespace
              AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
        LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        END LOOP;
    ELSE
        RAISE NOTICE 'tenantd is not a superuser: advisory lock functions stay open to every role';
    END IF;
END
$$;
