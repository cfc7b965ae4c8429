-- payment-service schema (SERVICES §15). Portable SQL: the same file runs on SQLite and
-- PostgreSQL. Times are RFC 3339 UTC text with milliseconds, so text order is time order.
-- Money is integer minor units; the refund invariant is a constraint as well as a rule.

CREATE TABLE payment_methods (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    provider_token TEXT NOT NULL,            -- pm_… (stripe) or the test token
    brand          TEXT NOT NULL,
    last4          TEXT NOT NULL CHECK (length(last4) = 4),
    fingerprint    TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE INDEX payment_methods_user_idx ON payment_methods (user_id, created_at, id);

CREATE TABLE payments (
    id                TEXT PRIMARY KEY,
    order_id          TEXT,
    user_id           TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency          TEXT NOT NULL CHECK (length(currency) = 3),
    amount_captured   BIGINT NOT NULL DEFAULT 0 CHECK (amount_captured BETWEEN 0 AND amount),
    amount_refunded   BIGINT NOT NULL DEFAULT 0
                      CHECK (amount_refunded >= 0 AND amount_refunded <= amount_captured),
    status            TEXT NOT NULL CHECK (status IN ('requires_payment_method', 'requires_action',
                          'requires_capture', 'processing', 'succeeded', 'cancelled', 'failed')),
    capture_method    TEXT NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    payment_method_id TEXT,
    method_ref        TEXT NOT NULL,          -- what the provider is given (pm_… / tok_…)
    fingerprint       TEXT NOT NULL,
    last4             TEXT,
    provider          TEXT NOT NULL,
    provider_ref      TEXT UNIQUE,            -- pi_…
    failure_code      TEXT,
    cancellation_reason TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0, -- order.cancelled: refund or void pending
    idem_caller       TEXT NOT NULL,
    idem_key          TEXT NOT NULL,
    version           INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    authorized_at     TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    UNIQUE (idem_caller, idem_key)
);
CREATE INDEX payments_user_idx ON payments (user_id, created_at, id);
CREATE INDEX payments_created_idx ON payments (created_at, id);
CREATE INDEX payments_order_idx ON payments (order_id);
CREATE INDEX payments_status_idx ON payments (status, authorized_at);
CREATE INDEX payments_cancel_requested_idx ON payments (cancel_requested);

CREATE TABLE refunds (
    id           TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL REFERENCES payments (id),
    amount       BIGINT NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    origin       TEXT NOT NULL CHECK (origin IN ('api', 'order_cancelled')),
    provider_ref TEXT,
    failure_code TEXT,
    idem_caller  TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (idem_caller, idem_key, payment_id) -- gr scopes keys by path, which names the payment
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE INDEX refunds_status_idx ON refunds (status, origin);

-- Append-only log of every state change (0002 forbids UPDATE and DELETE).
CREATE TABLE transactions (
    id                TEXT PRIMARY KEY,
    payment_id        TEXT NOT NULL REFERENCES payments (id),
    refund_id         TEXT,
    kind              TEXT NOT NULL,
    status_from       TEXT,
    status_to         TEXT,
    amount            BIGINT NOT NULL DEFAULT 0,
    currency          TEXT NOT NULL,
    fingerprint       TEXT,
    source            TEXT NOT NULL CHECK (source IN ('api', 'webhook', 'sweeper', 'event')),
    provider_event_id TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX transactions_payment_idx ON transactions (payment_id, created_at);
CREATE INDEX transactions_fraud_idx ON transactions (fingerprint, kind, created_at);

-- A provider event is applied once: its id is the key.
CREATE TABLE provider_events (
    id          TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    type        TEXT NOT NULL,
    payment_id  TEXT,
    received_at TEXT NOT NULL
);
