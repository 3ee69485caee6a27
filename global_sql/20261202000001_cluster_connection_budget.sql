-- Tenant connections each replica may hold to a cluster: the replica's
-- connection budget (--pool-budget) is split per cluster by these caps,
-- so that one slow or busy cluster cannot take every connection. NULL: the
-- cluster shares the replica's budget with no cap of its own.
ALTER TABLE tenantd.clusters
    ADD COLUMN connection_budget integer CHECK (connection_budget > 0);

-- The cluster a worker's slot is upgrading tenants on now: a run upgrades
-- at most its concurrency of tenants at once on each cluster. NULL while
-- the slot is free or between batches.
ALTER TABLE tenantd.upgrade_slots ADD COLUMN cluster text;
