-- service-discovery schema: instances, their checks and the registry index. Portable SQL:
-- the same file runs on SQLite and PostgreSQL. Times are RFC 3339 UTC text with milliseconds.

CREATE TABLE instances (
    id                TEXT PRIMARY KEY,
    service           TEXT NOT NULL CHECK (length(service) BETWEEN 1 AND 63),
    address           TEXT NOT NULL CHECK (length(address) BETWEEN 1 AND 253),
    port              INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    tags              TEXT NOT NULL DEFAULT '[]',      -- JSON array of strings
    status            TEXT NOT NULL CHECK (status IN ('passing', 'critical')),
    last_heartbeat_at TEXT NOT NULL,
    status_since      TEXT NOT NULL,                    -- when status last changed
    failures          INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0), -- HTTP checks in a row
    checked_at        TEXT,                             -- last HTTP check
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    UNIQUE (service, address, port)
);
CREATE INDEX instances_service_idx ON instances (service, status);

CREATE TABLE checks (
    instance_id        TEXT PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    kind               TEXT NOT NULL CHECK (kind IN ('http', 'ttl')),
    ttl_s              INTEGER NOT NULL CHECK (ttl_s BETWEEN 1 AND 86400),
    deregister_after_s INTEGER NOT NULL CHECK (deregister_after_s BETWEEN 1 AND 604800)
);

CREATE TABLE registry_index (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    idx BIGINT NOT NULL CHECK (idx >= 1)
);
INSERT INTO registry_index (id, idx) VALUES (1, 1);
