-- cart-service schema (SERVICES §19). Portable SQL: the same file runs on SQLite and
-- PostgreSQL. Times are RFC 3339 UTC text with milliseconds, so text order is time order.

CREATE TABLE carts (
    id               TEXT PRIMARY KEY,
    user_id          TEXT,                      -- NULL: anonymous, reached with its token
    token_hash       TEXT UNIQUE,               -- SHA-256 hex of the cart_token; never the token
    currency         TEXT CHECK (currency IS NULL OR length(currency) = 3),
    status           TEXT NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'merged', 'checked_out', 'abandoned')),
    coupon_code      TEXT CHECK (coupon_code IS NULL OR length(coupon_code) BETWEEN 1 AND 64),
    order_id         TEXT,
    merged_into      TEXT REFERENCES carts (id),
    version          INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_activity_at TEXT NOT NULL,
    abandoned_at     TEXT,
    CHECK (user_id IS NOT NULL OR token_hash IS NOT NULL),
    CHECK (status <> 'checked_out' OR order_id IS NOT NULL)
);
-- One open cart per signed-in user.
CREATE UNIQUE INDEX carts_user_open_idx ON carts (user_id) WHERE status IN ('active', 'abandoned');
-- The sweeper's scan: active carts by last activity.
CREATE INDEX carts_status_activity_idx ON carts (status, last_activity_at);

CREATE TABLE cart_items (
    id                  TEXT PRIMARY KEY,
    cart_id             TEXT NOT NULL REFERENCES carts (id),
    variant_id          TEXT NOT NULL,
    quantity            INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    unit_price_amount   BIGINT NOT NULL CHECK (unit_price_amount BETWEEN 0 AND 99999999),
    unit_price_currency TEXT NOT NULL CHECK (length(unit_price_currency) = 3),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    UNIQUE (cart_id, variant_id)
);
CREATE INDEX cart_items_cart_idx ON cart_items (cart_id, created_at, id);
