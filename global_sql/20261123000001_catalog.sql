-- The global catalog. Lives in the `tenantd` schema, which no tenant role can
-- use; applied at start by the service under an advisory lock.

CREATE TABLE tenantd.settings (
    key        text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenantd.users (
    id            uuid PRIMARY KEY,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    email         text,
    phone         text,
    password_hash text,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deactivated')),
    deactivated_at timestamptz,
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (email IS NOT NULL OR phone IS NOT NULL)
);
CREATE UNIQUE INDEX users_email_key ON tenantd.users (lower(email));
CREATE UNIQUE INDEX users_phone_key ON tenantd.users (phone);

CREATE TABLE tenantd.tenants (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{1,61})[a-z0-9]$'),
    name            text NOT NULL,
    industry        text NOT NULL DEFAULT '',
    description     text NOT NULL DEFAULT '',
    country         text CHECK (country IS NULL OR country ~ '^[A-Z]{2}$'),
    status          text NOT NULL
                    CHECK (status IN ('provisioning', 'active', 'suspended', 'archived', 'purged')),
    schema_name     text NOT NULL UNIQUE,
    schema_version  bigint NOT NULL DEFAULT 0,
    -- Which PostgreSQL cluster holds the schema; one today.
    placement       text NOT NULL DEFAULT 'default',
    idempotency_key text UNIQUE,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    purged_at       timestamptz
);
-- A purged tenant is a tombstone: its slug may be taken again.
CREATE UNIQUE INDEX tenants_slug_key ON tenantd.tenants (slug) WHERE status <> 'purged';
CREATE INDEX tenants_status_id_idx ON tenantd.tenants (status, id);
CREATE INDEX tenants_schema_version_idx ON tenantd.tenants (schema_version);

CREATE TABLE tenantd.user_tenants (
    tenant_id  uuid NOT NULL REFERENCES tenantd.tenants (id),
    user_id    uuid NOT NULL REFERENCES tenantd.users (id),
    role       text NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'MANAGER', 'EMPLOYEE')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX user_tenants_user_idx ON tenantd.user_tenants (user_id);

-- A login. Its refresh tokens rotate; the access tokens it issues carry its id.
CREATE TABLE tenantd.sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES tenantd.users (id),
    tenant_id     uuid REFERENCES tenantd.tenants (id),
    device        text NOT NULL DEFAULT '',
    client_ip     inet,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_idx ON tenantd.sessions (user_id);
CREATE INDEX sessions_revoked_idx ON tenantd.sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Refresh tokens by SHA-256 (the token itself is never stored). The current
-- one of a session has rotated_at NULL; presenting a rotated one means it
-- was stolen or replayed, and revokes the session.
CREATE TABLE tenantd.refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES tenantd.sessions (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON tenantd.refresh_tokens (session_id);

-- Service keys: `tdk_<id>_<secret>`; only SHA-256 of the secret is kept.
CREATE TABLE tenantd.service_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Every tenant migration ever shipped. A shipped migration never changes.
CREATE TABLE tenantd.tenant_migrations (
    version       bigint PRIMARY KEY CHECK (version > 0),
    name          text NOT NULL,
    checksum      bytea NOT NULL,
    transactional boolean NOT NULL DEFAULT true,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Hash-chained audit log: hash = sha256(prev_hash || payload), where payload
-- is seq, time (µs since the epoch), actor, action, target and details (jsonb
-- text), joined by newlines. Appended only through tenantd.append_audit, which
-- serializes appenders on the single audit_head row.
CREATE TABLE tenantd.audit_log (
    seq       bigint PRIMARY KEY,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL,
    details   jsonb NOT NULL DEFAULT '{}',
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);

CREATE TABLE tenantd.audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL,
    hash bytea NOT NULL
);
INSERT INTO tenantd.audit_head (id, seq, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION tenantd.append_audit(p_actor text, p_action text, p_target text, p_details jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    v_seq  bigint;
    v_prev bytea;
    v_at   timestamptz := clock_timestamp();
    v_hash bytea;
BEGIN
    SELECT seq + 1, hash INTO v_seq, v_prev FROM tenantd.audit_head WHERE id FOR UPDATE;
    v_hash := sha256(v_prev || convert_to(concat_ws(E'\n',
        v_seq::text,
        (extract(epoch FROM v_at) * 1000000)::bigint::text,
        p_actor, p_action, p_target, p_details::text), 'UTF8'));
    INSERT INTO tenantd.audit_log (seq, at, actor, action, target, details, prev_hash, hash)
    VALUES (v_seq, v_at, p_actor, p_action, p_target, p_details, v_prev, v_hash);
    UPDATE tenantd.audit_head SET seq = v_seq, hash = v_hash WHERE id;
    RETURN v_seq;
END
$$;
REVOKE ALL ON FUNCTION tenantd.append_audit(text, text, text, jsonb) FROM PUBLIC;
