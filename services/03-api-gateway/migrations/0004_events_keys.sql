-- api-gateway: state shared by the replicas of one database (SERVICES §03 Events, api_keys).
-- Portable SQL (SQLite and PostgreSQL).

-- An API key's label, shown by GET /api/v1/gateway/api-keys (never the key nor its hash).
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '' CHECK (length(name) <= 100);

-- Token ids revoked by auth.token.revoked, until their exp (unix seconds). The replica that
-- consumed the event writes the row; every replica loads rows newer than its watermark.
CREATE TABLE revoked_jtis (
    jti        TEXT PRIMARY KEY CHECK (length(jti) BETWEEN 1 AND 256),
    exp_s      BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX revoked_jtis_created_idx ON revoked_jtis (created_ms);

-- Counters the replicas poll: 'jwks' is bumped by auth.keys.rotated (every replica refetches).
CREATE TABLE gw_epochs (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL DEFAULT 0
);
INSERT INTO gw_epochs (name, value) VALUES ('jwks', 0);
