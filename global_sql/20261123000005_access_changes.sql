-- When a user's access to a tenant last changed, so that an access token
-- issued before it is not trusted for the role it names. Every replica loads
-- the changes of the last access-token lifetime every 5 s.
--
-- A member added, given another role or removed: one row per (tenant, user),
-- kept after the membership is gone.
CREATE TABLE tenantd.membership_changes (
    tenant_id  uuid NOT NULL REFERENCES tenantd.tenants (id),
    user_id    uuid NOT NULL REFERENCES tenantd.users (id),
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX membership_changes_changed_at_idx ON tenantd.membership_changes (changed_at);

-- A tenant's status changed (suspend, resume, archive, purge): every member's
-- tokens for it.
ALTER TABLE tenantd.tenants ADD COLUMN status_changed_at timestamptz;
CREATE INDEX tenants_status_changed_at_idx ON tenantd.tenants (status_changed_at)
    WHERE status_changed_at IS NOT NULL;
