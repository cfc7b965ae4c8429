-- product-service schema: categories (a tree with materialised paths), products, their
-- variants and images. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are RFC 3339 UTC text with milliseconds, so text order is time order.

CREATE TABLE categories (
    id          TEXT PRIMARY KEY,
    parent_id   TEXT REFERENCES categories (id),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    slug        TEXT NOT NULL UNIQUE CHECK (length(slug) BETWEEN 1 AND 100),
    path        TEXT NOT NULL UNIQUE,           -- '/<root id>/…/<id>/'
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CHECK (parent_id IS NULL OR parent_id <> id)
);
CREATE INDEX categories_parent_idx ON categories (parent_id);
CREATE INDEX categories_created_idx ON categories (created_at, id);

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    slug        TEXT NOT NULL UNIQUE CHECK (length(slug) BETWEEN 1 AND 100),
    description TEXT,
    brand       TEXT CHECK (brand IS NULL OR length(brand) BETWEEN 1 AND 100),
    status      TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'archived')),
    category_id TEXT REFERENCES categories (id),
    attributes  TEXT NOT NULL DEFAULT '{}',     -- JSON object
    -- Derived from the non-archived variants in the same transaction as every variant write.
    min_price   BIGINT CHECK (min_price IS NULL OR min_price BETWEEN 0 AND 99999999),
    max_price   BIGINT CHECK (max_price IS NULL OR max_price BETWEEN 0 AND 99999999),
    currency    TEXT CHECK (currency IS NULL OR length(currency) = 3),
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CHECK (min_price IS NULL OR max_price >= min_price)
);
CREATE INDEX products_status_created_idx ON products (status, created_at, id);
CREATE INDEX products_created_idx ON products (created_at, id);
CREATE INDEX products_brand_idx ON products (brand);
CREATE INDEX products_category_idx ON products (category_id);
CREATE INDEX products_min_price_idx ON products (min_price);

CREATE TABLE variants (
    id             TEXT PRIMARY KEY,
    product_id     TEXT NOT NULL REFERENCES products (id),
    sku            TEXT NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 64),
    price_amount   BIGINT NOT NULL CHECK (price_amount BETWEEN 0 AND 99999999),
    price_currency TEXT NOT NULL CHECK (length(price_currency) = 3),
    weight_g       BIGINT CHECK (weight_g IS NULL OR weight_g BETWEEN 0 AND 10000000),
    options        TEXT NOT NULL DEFAULT '{}',  -- JSON object
    archived       INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX variants_product_idx ON variants (product_id, created_at, id);

CREATE TABLE product_images (
    product_id  TEXT NOT NULL REFERENCES products (id),
    file_id     TEXT NOT NULL,
    position    INTEGER NOT NULL CHECK (position BETWEEN 0 AND 9999),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (product_id, file_id)
);
