-- config-service schema. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Secret values are stored sealed (AES-256-GCM, base64url of nonce | ciphertext | tag); other
-- values as their JSON text. Times are RFC 3339 UTC text with milliseconds.

CREATE TABLE entries (
    service     TEXT NOT NULL CHECK (length(service) BETWEEN 1 AND 63),
    env         TEXT NOT NULL CHECK (env IN ('default', 'dev', 'test', 'staging', 'prod')),
    key         TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 256),
    value       TEXT NOT NULL,
    is_secret   INTEGER NOT NULL DEFAULT 0 CHECK (is_secret IN (0, 1)),
    revision    BIGINT NOT NULL CHECK (revision >= 1),
    updated_at  TEXT NOT NULL,
    updated_by  TEXT,
    UNIQUE (service, env, key)
);

-- Append-only: one row per write of a key (a deletion has deleted = 1 and no value).
CREATE TABLE revisions (
    service     TEXT NOT NULL,
    env         TEXT NOT NULL,
    key         TEXT NOT NULL,
    revision    BIGINT NOT NULL CHECK (revision >= 1),
    value       TEXT,
    is_secret   INTEGER NOT NULL DEFAULT 0 CHECK (is_secret IN (0, 1)),
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    created_at  TEXT NOT NULL,
    actor       TEXT,
    PRIMARY KEY (service, env, key, revision)
);

-- The config index: bumped by every write, in the write's transaction (long-poll watch).
CREATE TABLE config_index (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    value       BIGINT NOT NULL
);
INSERT INTO config_index (id, value) VALUES (1, 0);
