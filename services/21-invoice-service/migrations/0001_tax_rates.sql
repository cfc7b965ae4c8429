-- invoice-service: the tax-rate table (SERVICES §21, decisions 15 and 22). Portable SQL: the
-- same file runs on SQLite and PostgreSQL. region '' means the whole country, so that the
-- UNIQUE constraint also holds for country-wide rates (NULLs never collide).
CREATE TABLE tax_rates (
    id                  TEXT PRIMARY KEY,
    country             TEXT NOT NULL CHECK (length(country) = 2),
    region              TEXT NOT NULL DEFAULT '' CHECK (length(region) <= 3),
    name                TEXT CHECK (name IS NULL OR length(name) BETWEEN 1 AND 100),
    rate_bp             INTEGER NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    inclusive           INTEGER NOT NULL DEFAULT 0 CHECK (inclusive IN (0, 1)),
    applies_to_shipping INTEGER NOT NULL DEFAULT 0 CHECK (applies_to_shipping IN (0, 1)),
    version             INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    UNIQUE (country, region)
);
CREATE INDEX tax_rates_created_idx ON tax_rates (created_at, id);
