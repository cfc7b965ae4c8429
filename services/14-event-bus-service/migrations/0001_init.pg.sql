-- event-bus-service schema (SERVICES §14): the event log, subscriptions with their
-- deliveries, and schemas. Only the events key differs between the engines.
CREATE TABLE events (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 255),
    source     TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 255),
    type       TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 128),
    subject    TEXT,
    time       TEXT NOT NULL,
    data       TEXT,                           -- JSON text of data, NULL when absent
    envelope   TEXT NOT NULL,                  -- the stored CloudEvent, compact JSON
    created_at TEXT NOT NULL
);

CREATE UNIQUE INDEX events_source_id_idx ON events (source, id);
CREATE INDEX events_type_idx ON events (type, seq);

CREATE TABLE subscriptions (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    type_filters TEXT NOT NULL,                 -- JSON array as given
    mode         TEXT NOT NULL CHECK (mode IN ('pull', 'push')),
    push_url     TEXT,
    ordered      INTEGER NOT NULL CHECK (ordered IN (0, 1)),
    ack_wait_s   INTEGER NOT NULL CHECK (ack_wait_s BETWEEN 1 AND 3600),
    max_deliver  INTEGER NOT NULL CHECK (max_deliver BETWEEN 1 AND 100),
    start        TEXT NOT NULL CHECK (start IN ('all', 'new')),
    created_at   TEXT NOT NULL,
    CHECK ((mode = 'push') = (push_url IS NOT NULL))
);

-- One row per filter: pattern is the type, or the prefix before a trailing '*'.
CREATE TABLE subscription_filters (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    pattern         TEXT NOT NULL,
    is_prefix       INTEGER NOT NULL CHECK (is_prefix IN (0, 1)),
    PRIMARY KEY (subscription_id, pattern, is_prefix)
);

-- One row per (subscription, event) once the event is due to it. deliver_after is in
-- milliseconds since the epoch: when a pending row becomes due, or when an in-flight one
-- expires. subject is the event's, copied for the ordered-mode check.
CREATE TABLE deliveries (
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL REFERENCES events (seq),
    subject         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'inflight', 'acked', 'dead')),
    deliver_after   BIGINT NOT NULL,
    dead_at         TEXT,
    PRIMARY KEY (subscription_id, seq)
);
CREATE INDEX deliveries_due_idx ON deliveries (subscription_id, state, deliver_after);
CREATE INDEX deliveries_subject_idx ON deliveries (subscription_id, subject, seq);

CREATE TABLE event_schemas (
    type       TEXT PRIMARY KEY,
    schema     TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    updated_at TEXT NOT NULL
);

