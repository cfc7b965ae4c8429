-- OAuth login (oauth.c): each pending authorization also keeps its OIDC nonce (checked against
-- the id_token) and the redirect URI it was sent with (the token endpoint must get the same).
-- oauth_states.state holds the SHA-256 hex of the state and code_verifier is sealed; expired
-- rows are swept by expires_at.
ALTER TABLE oauth_states ADD COLUMN nonce TEXT;
ALTER TABLE oauth_states ADD COLUMN redirect_uri TEXT NOT NULL DEFAULT '';
CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
-- user.deleted (events.c) removes an account's links by user_id.
CREATE INDEX oauth_accounts_user_idx ON oauth_accounts (user_id);
