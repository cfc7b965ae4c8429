-- auth-service: logout purges revocations whose tokens have expired; index that range.
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);
