-- The default tables of every tenant. Runs with search_path set to the
-- tenant's own schema, inside the transaction that creates the tenant, as the
-- service's role; the tenant's role receives its rights through the default
-- privileges set on the schema before this runs. Keep it Citus-compatible: no
-- CREATE SCHEMA ... CREATE TABLE, no reference outside the schema.

CREATE TABLE locations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email           text CHECK (email IS NULL OR email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    phone           text CHECK (phone IS NULL OR phone ~ '^\+?[0-9 ()-]{4,32}$'),
    country         char(2) CHECK (country IS NULL OR country ~ '^[A-Z]{2}$'),
    address_line_1  text,
    address_line_2  text,
    city            text,
    state           text,
    pincode         text CHECK (pincode IS NULL OR length(pincode) <= 16),
    is_default      boolean NOT NULL DEFAULT false,
    is_headquarters boolean NOT NULL DEFAULT false,
    location_type   text NOT NULL DEFAULT 'office'
                    CHECK (location_type IN ('office', 'warehouse', 'factory', 'store', 'other')),
    image_url       text,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX locations_name_key ON locations (lower(name));
-- At most one default and one headquarters location.
CREATE UNIQUE INDEX locations_one_default ON locations (is_default) WHERE is_default;
CREATE UNIQUE INDEX locations_one_headquarters ON locations (is_headquarters) WHERE is_headquarters;

CREATE TABLE suppliers (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code          text NOT NULL UNIQUE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email         text,
    phone         text,
    tax_id        text,
    payment_terms_days integer NOT NULL DEFAULT 30 CHECK (payment_terms_days BETWEEN 0 AND 365),
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code          text NOT NULL UNIQUE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email         text,
    phone         text,
    tax_id        text,
    credit_limit  numeric(14,2) NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inventory_items (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    location_id   uuid NOT NULL REFERENCES locations (id),
    supplier_id   uuid REFERENCES suppliers (id),
    sku           text NOT NULL,
    name          text NOT NULL,
    quantity      numeric(14,3) NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    unit          text NOT NULL DEFAULT 'pcs',
    unit_cost     numeric(14,4) CHECK (unit_cost IS NULL OR unit_cost >= 0),
    reorder_level numeric(14,3) NOT NULL DEFAULT 0 CHECK (reorder_level >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (location_id, sku)
);
CREATE INDEX inventory_items_supplier_idx ON inventory_items (supplier_id);

CREATE TABLE production_orders (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_no      text NOT NULL UNIQUE,
    location_id   uuid NOT NULL REFERENCES locations (id),
    item_id       uuid REFERENCES inventory_items (id),
    customer_id   uuid REFERENCES customers (id),
    status        text NOT NULL DEFAULT 'planned'
                  CHECK (status IN ('planned', 'released', 'in_progress', 'completed', 'cancelled')),
    quantity      numeric(14,3) NOT NULL CHECK (quantity > 0),
    due_date      date,
    started_at    timestamptz,
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at)
);
CREATE INDEX production_orders_status_idx ON production_orders (status, due_date);

CREATE TABLE quality_records (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    production_order_id uuid REFERENCES production_orders (id) ON DELETE CASCADE,
    item_id             uuid REFERENCES inventory_items (id),
    result              text NOT NULL CHECK (result IN ('pass', 'fail', 'rework')),
    defects             jsonb NOT NULL DEFAULT '[]',
    inspector           text,
    inspected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quality_records_order_idx ON quality_records (production_order_id);

CREATE TABLE financial_transactions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    location_id   uuid REFERENCES locations (id),
    customer_id   uuid REFERENCES customers (id),
    supplier_id   uuid REFERENCES suppliers (id),
    kind          text NOT NULL CHECK (kind IN ('sale', 'purchase', 'payment', 'receipt', 'adjustment')),
    amount        numeric(14,2) NOT NULL,
    currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reference     text,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX financial_transactions_occurred_idx ON financial_transactions (occurred_at);

-- The tenant's own ledger of applied migrations: the source of truth for its
-- schema version (the catalog keeps a copy, written in the same transaction).
CREATE TABLE schema_migrations (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    checksum   bytea NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
