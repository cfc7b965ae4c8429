-- inventory-service schema: warehouses, the skus the service knows, stock per (sku,
-- warehouse), reservations with their allocations, and the append-only movement ledger.
-- Portable SQL: the same file runs on SQLite and PostgreSQL. Times are RFC 3339 UTC text with
-- milliseconds, so text order is time order.

CREATE TABLE warehouses (
    id          TEXT PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE CHECK (length(code) BETWEEN 1 AND 32),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    priority    INTEGER NOT NULL DEFAULT 100 CHECK (priority BETWEEN 0 AND 10000),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX warehouses_created_idx ON warehouses (created_at, id);

-- A sku is known once product.created announced it or an adjustment first stocked it.
CREATE TABLE skus (
    sku         TEXT PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    product_id  TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE stock_levels (
    sku          TEXT NOT NULL REFERENCES skus (sku),
    warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
    on_hand      BIGINT NOT NULL DEFAULT 0,
    reserved     BIGINT NOT NULL DEFAULT 0,
    version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (sku, warehouse_id),
    CHECK (on_hand >= 0 AND reserved >= 0 AND reserved <= on_hand)
);
CREATE INDEX stock_levels_wh_idx ON stock_levels (warehouse_id);

CREATE TABLE reservations (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL UNIQUE CHECK (length(order_id) BETWEEN 1 AND 64),
    status      TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'confirmed', 'committed', 'released', 'expired')),
    expires_at  TEXT,                 -- NULL once confirmed (and after it ended)
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CHECK (status IN ('active', 'expired') OR expires_at IS NULL)
);
CREATE INDEX reservations_expiry_idx ON reservations (status, expires_at);

-- One row per (sku, warehouse) a reservation took stock from.
CREATE TABLE reservation_items (
    reservation_id TEXT NOT NULL REFERENCES reservations (id),
    sku            TEXT NOT NULL,
    warehouse_id   TEXT NOT NULL,
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku, warehouse_id),
    FOREIGN KEY (sku, warehouse_id) REFERENCES stock_levels (sku, warehouse_id)
);

-- Append-only: the sum of delta per (sku, warehouse) is that level's on_hand.
CREATE TABLE movements (
    id           TEXT PRIMARY KEY,
    sku          TEXT NOT NULL,
    warehouse_id TEXT NOT NULL,
    delta        BIGINT NOT NULL CHECK (delta <> 0),
    reason       TEXT NOT NULL
                 CHECK (reason IN ('adjustment', 'transfer_in', 'transfer_out', 'commit')),
    ref_id       TEXT,                -- the transfer or reservation
    note         TEXT CHECK (note IS NULL OR length(note) <= 500),
    created_at   TEXT NOT NULL,
    FOREIGN KEY (sku, warehouse_id) REFERENCES stock_levels (sku, warehouse_id)
);
CREATE INDEX movements_sku_idx ON movements (sku, created_at, id);
