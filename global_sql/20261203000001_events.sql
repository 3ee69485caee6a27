-- Events: the audit log is the catalog's event stream. Its sequence numbers
-- are gap-free and in commit order (appenders serialize on audit_head), so
-- they are the watchers' cursor. Each event's tenant, when it has one, is
-- derived from its target ("tenant:<id>") or its details' tenant_id, for
-- watchers that follow one tenant. The column is not part of the hash chain.
ALTER TABLE tenantd.audit_log ADD COLUMN tenant_id uuid GENERATED ALWAYS AS (
    CASE
        WHEN target ~ '^tenant:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN substr(target, 8)::uuid
        WHEN details ->> 'tenant_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN (details ->> 'tenant_id')::uuid
    END
) STORED;

CREATE INDEX audit_log_tenant ON tenantd.audit_log (tenant_id, seq) WHERE tenant_id IS NOT NULL;
