-- The PostgreSQL clusters tenants are placed on. `default` is the catalog's
-- own database (no URL: tenantd already connects to it); every other entry
-- is a server of its own, reached with its URL (never a password: that is
-- read by each replica from password_file or password_env).
CREATE TABLE tenantd.clusters (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,39}$'),
    url           text CHECK ((name = 'default') = (url IS NULL)),
    password_file text,
    password_env  text,
    -- open: new tenants may land here; draining: none land, moves take
    -- tenants away; closed: none land, none are moved here.
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'draining', 'closed')),
    -- Share of new tenants: placement picks the open cluster with the
    -- fewest tenants per unit of weight.
    weight        integer NOT NULL DEFAULT 100 CHECK (weight BETWEEN 1 AND 10000),
    max_tenants   bigint CHECK (max_tenants > 0),
    max_relations bigint CHECK (max_relations > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tenantd.clusters (name) VALUES ('default');

-- Placement counts tenants per cluster at every create.
CREATE INDEX tenants_placement ON tenantd.tenants (placement) WHERE status <> 'purged';

-- A tenant being created on a cluster other than the catalog's: written and
-- committed before its role and schema are made there, deleted in the
-- transaction that commits its catalog row. One left behind names a create
-- that died between the two; the sweeper removes what it made.
CREATE TABLE tenantd.cluster_intents (
    tenant_id  uuid PRIMARY KEY,
    cluster    text NOT NULL REFERENCES tenantd.clusters (name),
    created_at timestamptz NOT NULL DEFAULT now()
);
