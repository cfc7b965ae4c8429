-- api-gateway schema (SERVICES §03): the routing table the admin API edits and the API keys.
-- Portable SQL: the same file runs on SQLite and PostgreSQL. Times are RFC 3339 UTC text with
-- milliseconds, so text order is time order.

CREATE TABLE routes (
    id          TEXT PRIMARY KEY,                 -- UUIDv7
    prefix      TEXT NOT NULL UNIQUE CHECK (length(prefix) BETWEEN 9 AND 255
                                            AND substr(prefix, 1, 8) = '/api/v1/'),
    service     TEXT NOT NULL CHECK (length(service) BETWEEN 1 AND 63),
    auth        TEXT NOT NULL DEFAULT 'jwt' CHECK (auth IN ('public', 'jwt')),
    timeout_ms  INTEGER NOT NULL DEFAULT 5000 CHECK (timeout_ms BETWEEN 1 AND 60000),
    retries     INTEGER NOT NULL DEFAULT 2 CHECK (retries BETWEEN 0 AND 5),
    max_body    BIGINT NOT NULL DEFAULT 1048576 CHECK (max_body BETWEEN 1 AND 67108864),
    rate_policy TEXT NOT NULL DEFAULT '' CHECK (length(rate_policy) <= 31),
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX routes_created_idx ON routes (created_at, id);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,                 -- UUIDv7
    key_hash    TEXT NOT NULL UNIQUE,             -- SHA-256 of the key, hex; never the key
    owner_id    TEXT NOT NULL,
    scopes      TEXT NOT NULL DEFAULT '[]',       -- JSON array of permissions
    created_at  TEXT NOT NULL
);
CREATE INDEX api_keys_owner_idx ON api_keys (owner_id);
