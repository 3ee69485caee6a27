-- Every replica looks for tenants that left ACTIVE since its last look (to
-- close their connection pools), by updated_at.
CREATE INDEX tenants_updated_at_idx ON tenantd.tenants (updated_at);
