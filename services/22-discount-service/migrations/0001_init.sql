-- discount-service schema: coupons and their redemptions (SERVICES §22). Portable SQL: the
-- same file runs on SQLite and PostgreSQL. Times are RFC 3339 UTC text with milliseconds, so
-- text order is time order.

CREATE TABLE coupons (
    id                 TEXT PRIMARY KEY,
    code               TEXT NOT NULL CHECK (length(code) BETWEEN 1 AND 64),
    code_norm          TEXT NOT NULL UNIQUE,            -- lower(code): unique case-insensitively
    kind               TEXT NOT NULL CHECK (kind IN ('percent', 'fixed', 'free_shipping')),
    percent_off_bp     INTEGER CHECK (percent_off_bp IS NULL OR percent_off_bp BETWEEN 1 AND 10000),
    amount_off         BIGINT CHECK (amount_off IS NULL OR amount_off BETWEEN 1 AND 99999999),
    currency           TEXT CHECK (currency IS NULL OR length(currency) = 3),
    max_redemptions    INTEGER CHECK (max_redemptions IS NULL OR max_redemptions >= 1),
    per_customer_limit INTEGER CHECK (per_customer_limit IS NULL OR per_customer_limit >= 1),
    starts_at          TEXT,
    ends_at            TEXT,
    stackable          INTEGER NOT NULL DEFAULT 0 CHECK (stackable IN (0, 1)),
    product_ids        TEXT NOT NULL DEFAULT '[]',      -- JSON array of ids ([] = every product)
    category_ids       TEXT NOT NULL DEFAULT '[]',      -- JSON array of ids
    -- Reserved plus confirmed redemptions: the slot counter that reservations take with a
    -- conditional UPDATE, so max_redemptions holds under concurrent reservations.
    redeemed_count     INTEGER NOT NULL DEFAULT 0 CHECK (redeemed_count >= 0),
    version            INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    CHECK (kind <> 'percent' OR (percent_off_bp IS NOT NULL AND amount_off IS NULL)),
    CHECK (kind <> 'fixed' OR (amount_off IS NOT NULL AND currency IS NOT NULL
                               AND percent_off_bp IS NULL)),
    CHECK (kind <> 'free_shipping' OR (amount_off IS NULL AND percent_off_bp IS NULL)),
    CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX coupons_created_idx ON coupons (created_at, id);

CREATE TABLE redemptions (
    id             TEXT PRIMARY KEY,
    coupon_id      TEXT NOT NULL REFERENCES coupons (id),
    user_id        TEXT NOT NULL,
    order_id       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('reserved', 'confirmed', 'released')),
    release_reason TEXT CHECK (release_reason IS NULL
                               OR release_reason IN ('released', 'expired', 'order_cancelled')),
    discount       BIGINT NOT NULL CHECK (discount BETWEEN 0 AND 99999999),
    currency       TEXT NOT NULL CHECK (length(currency) = 3),
    expires_at     TEXT NOT NULL,
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (coupon_id, order_id)
);
CREATE INDEX redemptions_coupon_idx ON redemptions (coupon_id, created_at, id);
CREATE INDEX redemptions_user_idx ON redemptions (coupon_id, user_id, status);
CREATE INDEX redemptions_order_idx ON redemptions (order_id);
CREATE INDEX redemptions_expiry_idx ON redemptions (coupon_id, status, expires_at);
