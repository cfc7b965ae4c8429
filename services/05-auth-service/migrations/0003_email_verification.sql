-- auth-service: email verification tokens (like password resets: 32 random bytes, only the
-- SHA-256 kept, 24 h, single use).
CREATE TABLE email_verifications (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES credentials (id),
    email      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    created_at TEXT NOT NULL
);
CREATE INDEX email_verifications_user_idx ON email_verifications (user_id);
