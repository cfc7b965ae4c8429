-- order-service schema (SERVICES §16): orders, their lines, the status history and the saga
-- state of each order. Portable SQL: the same file runs on SQLite and PostgreSQL. Times are
-- RFC 3339 UTC text with milliseconds, so text order is time order. Money is integer minor
-- units in the order's currency.

CREATE TABLE orders (
    id                   TEXT PRIMARY KEY,
    number_seq           BIGINT NOT NULL UNIQUE CHECK (number_seq >= 1),
    number               TEXT NOT NULL UNIQUE,            -- 'GRV-000123'
    user_id              TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'PROCESSING',
                                                         'SHIPPED', 'DELIVERED', 'CANCELLED')),
    cancel_reason        TEXT,
    cancel_requested     INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    currency             TEXT NOT NULL CHECK (length(currency) = 3),
    subtotal             BIGINT NOT NULL CHECK (subtotal BETWEEN 0 AND 99999999),
    discount_total       BIGINT NOT NULL DEFAULT 0 CHECK (discount_total BETWEEN 0 AND 99999999),
    shipping_total       BIGINT NOT NULL DEFAULT 0 CHECK (shipping_total BETWEEN 0 AND 99999999),
    tax_total            BIGINT NOT NULL DEFAULT 0 CHECK (tax_total BETWEEN 0 AND 99999999),
    tax_inclusive        INTEGER NOT NULL DEFAULT 0 CHECK (tax_inclusive IN (0, 1)),
    tax_rate_bp          INTEGER NOT NULL DEFAULT 0 CHECK (tax_rate_bp BETWEEN 0 AND 10000),
    tax_shipping         INTEGER NOT NULL DEFAULT 0 CHECK (tax_shipping IN (0, 1)),
    grand_total          BIGINT NOT NULL CHECK (grand_total BETWEEN 0 AND 99999999),
    coupon_code          TEXT,
    coupon_redemption_id TEXT,
    shipping_address     TEXT NOT NULL,                   -- JSON object
    shipping_rate_id     TEXT,
    payment_method_id    TEXT NOT NULL,                   -- a payment method id or provider token
    reservation_id       TEXT,
    payment_id           TEXT,
    payment_status       TEXT,
    idem_caller          TEXT NOT NULL,
    idem_key             TEXT NOT NULL,
    version              INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    UNIQUE (idem_caller, idem_key),
    CHECK (discount_total <= subtotal),
    -- grand_total = Σ lines − discount + shipping + tax (a tax-inclusive rate is in the lines)
    CHECK (grand_total = subtotal - discount_total + shipping_total
                         + CASE WHEN tax_inclusive = 1 THEN 0 ELSE tax_total END),
    CHECK (status <> 'CANCELLED' OR cancel_reason IS NOT NULL)
);
CREATE INDEX orders_created_idx ON orders (created_at, id);
CREATE INDEX orders_status_created_idx ON orders (status, created_at, id);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at, id);

CREATE TABLE order_items (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    position    INTEGER NOT NULL CHECK (position BETWEEN 0 AND 99),
    variant_id  TEXT NOT NULL,
    product_id  TEXT,
    sku         TEXT NOT NULL,
    unit_price  BIGINT NOT NULL CHECK (unit_price BETWEEN 0 AND 99999999),
    quantity    INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 999),
    line_total  BIGINT NOT NULL CHECK (line_total BETWEEN 0 AND 99999999),
    discount    BIGINT NOT NULL DEFAULT 0 CHECK (discount BETWEEN 0 AND line_total),
    tax         BIGINT NOT NULL DEFAULT 0 CHECK (tax >= 0),
    PRIMARY KEY (order_id, position),
    CHECK (line_total = unit_price * quantity)
);

CREATE TABLE order_status_history (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT,
    actor       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (order_id, version)
);

-- One row per order: where its saga is. status running (forward steps), compensating
-- (undoing after CANCELLED), done. lease_until / owner: a runner's hold (ms, library clock).
CREATE TABLE saga_state (
    order_id    TEXT PRIMARY KEY REFERENCES orders (id),
    step        TEXT NOT NULL CHECK (step IN ('coupon', 'reserve', 'pay', 'confirm',
                                              'compensate', 'done')),
    status      TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'done')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    owner       TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL DEFAULT 0,
    refund      INTEGER NOT NULL DEFAULT 0 CHECK (refund IN (0, 1)),
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX saga_state_open_idx ON saga_state (status, next_at);
