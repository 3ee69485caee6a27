-- Fleet upgrade runs. A run and its items live here, not in any process:
-- every replica's workers claim items (FOR UPDATE SKIP LOCKED, with a lease),
-- and a process killed at any moment loses nothing.

CREATE TABLE tenantd.upgrade_runs (
    id                   uuid PRIMARY KEY,
    target_version       bigint NOT NULL CHECK (target_version > 0),
    status               text NOT NULL
                         CHECK (status IN ('running', 'paused', 'halted', 'cancelled', 'succeeded', 'failed')),
    status_reason        text NOT NULL DEFAULT '',
    concurrency          integer NOT NULL CHECK (concurrency BETWEEN 1 AND 64),
    canary_count         integer NOT NULL CHECK (canary_count >= 0),
    max_failures         integer NOT NULL CHECK (max_failures >= 0),
    max_attempts         integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    lock_timeout_ms      integer NOT NULL CHECK (lock_timeout_ms > 0),
    statement_timeout_ms integer NOT NULL CHECK (statement_timeout_ms > 0),
    selector             jsonb NOT NULL DEFAULT '{}',
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz
);
CREATE INDEX upgrade_runs_active_idx ON tenantd.upgrade_runs (status) WHERE status = 'running';

CREATE TABLE tenantd.upgrade_items (
    run_id           uuid NOT NULL REFERENCES tenantd.upgrade_runs (id),
    tenant_id        uuid NOT NULL REFERENCES tenantd.tenants (id),
    canary           boolean NOT NULL DEFAULT false,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    from_version     bigint NOT NULL,
    to_version       bigint,
    lease_owner      text,
    lease_expires_at timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_sqlstate    text,
    last_error       text,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The transaction that finished the item. Watchers read outcomes in this
    -- order, only below the oldest transaction still running, so an outcome
    -- that commits late is never skipped.
    finished_xid     xid8,
    PRIMARY KEY (run_id, tenant_id)
);
-- What workers look for: claimable items of a run, canaries first.
CREATE INDEX upgrade_items_claim_idx ON tenantd.upgrade_items (run_id, canary DESC, next_attempt_at)
    WHERE status IN ('pending', 'running');
-- Claims ask "is any canary of this run still to run?" on every call.
CREATE INDEX upgrade_items_canary_idx ON tenantd.upgrade_items (run_id)
    WHERE canary AND status IN ('pending', 'running');
-- Watchers read outcomes in the order they finished.
CREATE INDEX upgrade_items_finished_idx ON tenantd.upgrade_items (run_id, finished_xid)
    WHERE finished_xid IS NOT NULL;
-- PlanUpgrade's "failed before": failed items, and each tenant's latest item.
CREATE INDEX upgrade_items_failed_idx ON tenantd.upgrade_items (tenant_id, run_id) WHERE status = 'failed';
CREATE INDEX upgrade_items_tenant_idx ON tenantd.upgrade_items (tenant_id, run_id);

-- A run's concurrency is its number of slots: a worker upgrades a run's
-- tenants only while it holds one of the run's slots, on whichever replica.
CREATE TABLE tenantd.upgrade_slots (
    run_id           uuid NOT NULL REFERENCES tenantd.upgrade_runs (id),
    slot             integer NOT NULL,
    owner            text,
    lease_expires_at timestamptz,
    PRIMARY KEY (run_id, slot)
);

-- The version a tenant's own ledger records; NULL when the schema or its
-- ledger is missing. Lets one statement compare catalog and ledger.
CREATE FUNCTION tenantd.ledger_version(p_schema text)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    v bigint;
BEGIN
    IF to_regclass(format('%I.schema_migrations', p_schema)) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT coalesce(max(version), 0) FROM %I.schema_migrations', p_schema) INTO v;
    RETURN v;
END
$$;
REVOKE ALL ON FUNCTION tenantd.ledger_version(text) FROM PUBLIC;

-- Raised by a worker's one-round-trip upgrade batch when the tenant is not
-- as the claim expected (upgraded meanwhile, purged, run no longer running):
-- the batch rolls back and the worker takes the careful path.
CREATE FUNCTION tenantd.stale_upgrade()
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'tenant or run changed since the claim' USING ERRCODE = 'TD001';
END
$$;
REVOKE ALL ON FUNCTION tenantd.stale_upgrade() FROM PUBLIC;
