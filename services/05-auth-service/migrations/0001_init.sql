-- auth-service schema (SERVICES §05). Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are RFC 3339 UTC text with milliseconds (text order is time order); epoch seconds where
-- the code compares them with the clock.

CREATE TABLE credentials (
    id              TEXT PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    username        TEXT UNIQUE CHECK (username IS NULL OR length(username) BETWEEN 3 AND 64),
    password_hash   TEXT,                       -- NULL: OAuth-only account
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    email_verified  INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    failed_logins   INTEGER NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    locked_until    BIGINT NOT NULL DEFAULT 0,  -- epoch s
    totp_secret_enc TEXT,                       -- AES-256-GCM under the key secret
    totp_enabled    INTEGER NOT NULL DEFAULT 0 CHECK (totp_enabled IN (0, 1)),
    totp_last_step  BIGINT NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE roles (
    name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE permissions (
    role_name  TEXT NOT NULL REFERENCES roles (name),
    permission TEXT NOT NULL CHECK (length(permission) BETWEEN 1 AND 128),
    PRIMARY KEY (role_name, permission)
);

CREATE TABLE user_roles (
    user_id   TEXT NOT NULL REFERENCES credentials (id),
    role_name TEXT NOT NULL REFERENCES roles (name),
    PRIMARY KEY (user_id, role_name)
);

-- One row per refresh token; a family is one login's chain of rotations (a "session").
CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    parent_id   TEXT,
    user_id     TEXT NOT NULL REFERENCES credentials (id),
    token_hash  TEXT NOT NULL UNIQUE,           -- SHA-256 hex of the token
    child_enc   TEXT,                           -- the child token, encrypted, for the grace window
    used_at     BIGINT,                         -- epoch ms of its rotation
    revoked_at  BIGINT,
    expires_at  BIGINT NOT NULL,                -- epoch s
    created_at  TEXT NOT NULL,
    user_agent  TEXT,
    ip          TEXT
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id, created_at);

-- Access tokens revoked before their exp (logout), by jti; kept until exp.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES credentials (id),
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    created_at TEXT NOT NULL
);

CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES credentials (id),
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE oauth_accounts (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES credentials (id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (provider, subject)
);

CREATE TABLE oauth_states (
    state         TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    expires_at    BIGINT NOT NULL
);

-- Signing keys: the JWKS publishes every key whose retire_at is in the future; the key with
-- the latest signs_from <= now signs.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL CHECK (alg IN ('RS256', 'ES256')),
    public_jwk  TEXT NOT NULL,
    private_enc TEXT NOT NULL,
    signs_from  BIGINT NOT NULL,                -- epoch s
    retire_at   BIGINT,                         -- epoch s; NULL while current
    created_at  TEXT NOT NULL
);

CREATE TABLE service_clients (
    client_id   TEXT PRIMARY KEY CHECK (length(client_id) BETWEEN 3 AND 64),
    secret_hash TEXT NOT NULL,
    roles       TEXT NOT NULL DEFAULT '["service"]',  -- JSON array
    created_at  TEXT NOT NULL
);

-- The seed's roles and their permissions (SERVICES §0 Identity and RBAC; decision 10).
INSERT INTO roles (name, description, created_at) VALUES
    ('super_admin', 'everything', '2026-01-01T00:00:00.000Z'),
    ('admin', 'administers users, catalogue and orders', '2026-01-01T00:00:00.000Z'),
    ('manager', 'manages the catalogue and orders', '2026-01-01T00:00:00.000Z'),
    ('customer', 'a shopper: acts on their own records', '2026-01-01T00:00:00.000Z'),
    ('service', 'a service calling another', '2026-01-01T00:00:00.000Z');
INSERT INTO permissions (role_name, permission) VALUES
    ('super_admin', '*'),
    ('admin', 'auth:admin'), ('admin', 'users:read'), ('admin', 'users:delete'),
    ('admin', 'products:write'), ('admin', 'categories:write'), ('admin', 'products:read'),
    ('admin', 'orders:read'), ('admin', 'orders:write'), ('admin', 'inventory:write'),
    ('manager', 'products:write'), ('manager', 'categories:write'), ('manager', 'products:read'),
    ('manager', 'orders:read'), ('manager', 'inventory:write'),
    ('service', 'events:publish'), ('service', 'events:subscribe'), ('service', 'users:read'),
    ('service', 'products:read'), ('service', 'orders:read'), ('service', 'inventory:write');
