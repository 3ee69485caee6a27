-- Moves of a tenant from one cluster to another, online, with logical
-- replication: durable jobs, run by whichever replica holds the lease, one
-- active move per tenant.
CREATE TABLE tenantd.tenant_moves (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenantd.tenants (id),
    source           text NOT NULL,
    target           text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    -- queued, preparing, copying, catching_up, cutting_over, switched,
    -- cleaning_up, done; rolling_back on the way to failed or cancelled.
    phase            text NOT NULL DEFAULT 'queued',
    cancel_requested boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    requested_by     text NOT NULL,
    error            text,
    tables_total     integer NOT NULL DEFAULT 0,
    tables_copied    integer NOT NULL DEFAULT 0,
    -- How long the tenant's writes were held at the switch, and what the
    -- verification compared: {"table": [rows, checksum], ...}.
    pause_ms         integer,
    verified         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    switched_at      timestamptz,
    finished_at      timestamptz,
    source_dropped_at timestamptz
);

CREATE UNIQUE INDEX tenant_moves_one_active ON tenantd.tenant_moves (tenant_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX tenant_moves_claimable ON tenantd.tenant_moves (created_at)
    WHERE status IN ('pending', 'running');
CREATE INDEX tenant_moves_source_left ON tenantd.tenant_moves (switched_at)
    WHERE status = 'succeeded' AND source_dropped_at IS NULL;
