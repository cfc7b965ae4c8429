-- user-service schema: profiles, addresses, preferences and privacy requests (SERVICES §06).
-- Portable SQL: the same file runs on SQLite and PostgreSQL. Times are RFC 3339 UTC text with
-- milliseconds, so text order is time order. Booleans are INTEGER 0/1.

-- One row per user, keyed by auth's user id. Erasure keeps the row as a pseudonymous
-- tombstone (deleted_at set, every personal column NULL) so a late user.created cannot
-- recreate the profile. source_version is the version of 05's user data last applied.
CREATE TABLE profiles (
    user_id        TEXT PRIMARY KEY,
    email          TEXT CHECK (email IS NULL OR length(email) BETWEEN 3 AND 254),
    email_norm     TEXT,                         -- lower-case email, for ?email=
    username       TEXT CHECK (username IS NULL OR length(username) BETWEEN 1 AND 64),
    first_name     TEXT CHECK (first_name IS NULL OR length(first_name) BETWEEN 1 AND 50),
    last_name      TEXT CHECK (last_name IS NULL OR length(last_name) BETWEEN 1 AND 50),
    display_name   TEXT CHECK (display_name IS NULL OR length(display_name) BETWEEN 1 AND 100),
    avatar_file_id TEXT CHECK (avatar_file_id IS NULL OR length(avatar_file_id) = 36),
    locale         TEXT CHECK (locale IS NULL OR length(locale) BETWEEN 2 AND 35),
    timezone       TEXT CHECK (timezone IS NULL OR length(timezone) BETWEEN 1 AND 64),
    source_version BIGINT NOT NULL DEFAULT 0,
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    deleted_at     TEXT,
    CHECK (deleted_at IS NULL OR (email IS NULL AND first_name IS NULL AND last_name IS NULL))
);
CREATE INDEX profiles_created_idx ON profiles (created_at, user_id);
CREATE INDEX profiles_email_idx ON profiles (email_norm);
CREATE INDEX profiles_avatar_idx ON profiles (avatar_file_id);

CREATE TABLE addresses (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES profiles (user_id),
    label       TEXT CHECK (label IS NULL OR length(label) BETWEEN 1 AND 50),
    recipient   TEXT CHECK (recipient IS NULL OR length(recipient) BETWEEN 1 AND 100),
    line1       TEXT NOT NULL CHECK (length(line1) BETWEEN 1 AND 200),
    line2       TEXT CHECK (line2 IS NULL OR length(line2) BETWEEN 1 AND 200),
    city        TEXT NOT NULL CHECK (length(city) BETWEEN 1 AND 100),
    region      TEXT CHECK (region IS NULL OR length(region) BETWEEN 1 AND 100),
    postal_code TEXT CHECK (postal_code IS NULL OR length(postal_code) BETWEEN 1 AND 20),
    country     TEXT NOT NULL CHECK (length(country) = 2),   -- ISO 3166-1 alpha-2
    phone       TEXT CHECK (phone IS NULL OR length(phone) BETWEEN 3 AND 32),
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX addresses_user_idx ON addresses (user_id, created_at, id);
-- At most one default address per user, whatever the interleaving of writers.
CREATE UNIQUE INDEX addresses_one_default ON addresses (user_id) WHERE is_default = 1;

CREATE TABLE preferences (
    user_id    TEXT PRIMARY KEY REFERENCES profiles (user_id),
    doc        TEXT NOT NULL,                    -- JSON object, at most 16 KiB
    version    INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- GDPR requests: exports (archive stored here until 08 file-storage holds it: file_id) and
-- erasures (the record that one happened, without personal data).
CREATE TABLE privacy_requests (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES profiles (user_id),
    kind         TEXT NOT NULL CHECK (kind IN ('export', 'erasure')),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'expired')),
    file_id      TEXT,
    archive      TEXT,                           -- JSON document of a completed export
    created_at   TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX privacy_requests_user_idx ON privacy_requests (user_id, kind, created_at, id);
