-- Placement jobs on a Citus coordinator: moves of tenant schemas between
-- workers (one tenant, a rebalance, a drain). A job and its moves live here,
-- not in any process: one job runs at a time, oldest first, by the replica
-- holding its lease; a replica that takes over a lapsed lease asks Citus
-- where each tenant is before it moves anything again.

CREATE TABLE tenantd.cluster_jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('move', 'rebalance', 'drain')),
    status           text NOT NULL
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    -- The target of a move, the drained node of a drain (host:port).
    node             text NOT NULL DEFAULT '',
    requested_by     text NOT NULL,
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text NOT NULL DEFAULT '',
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX cluster_jobs_active_idx ON tenantd.cluster_jobs (created_at)
    WHERE status IN ('pending', 'running');
CREATE INDEX cluster_jobs_created_idx ON tenantd.cluster_jobs (created_at DESC);

CREATE TABLE tenantd.cluster_job_moves (
    job_id      uuid NOT NULL REFERENCES tenantd.cluster_jobs (id),
    position    integer NOT NULL,
    tenant_id   uuid NOT NULL REFERENCES tenantd.tenants (id),
    source      text NOT NULL,
    target      text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled', 'skipped')),
    -- The coordinator backend running citus_schema_move, while it runs: a
    -- replica taking the job over waits for it to end, Cancel cancels it.
    backend_pid integer,
    error       text NOT NULL DEFAULT '',
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX cluster_job_moves_tenant_idx ON tenantd.cluster_job_moves (tenant_id);
