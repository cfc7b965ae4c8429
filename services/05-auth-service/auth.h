/*
 * auth.h - auth-service's own declarations (SERVICES §05): the service state, its route
 * table and handlers, and the modules they share (secrets, signing keys, tokens, users).
 */
#ifndef AUTH_H
#define AUTH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "gr/auth.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/ratelimit.h"
#include "gr/router.h"
#include "gr/seal.h"
#include "gr/service.h"

#define AUTH_ACCESS_TTL_S  3600         /* decision 10 */
#define AUTH_REFRESH_TTL_S (30 * 86400) /* a session lives 30 days without use */
#define AUTH_GRACE_MS      10000        /* decision 20: parallel refresh of one token */
#define AUTH_RESET_TTL_S   3600         /* §05: reset tokens live 1 h */
#define AUTH_LOCK_AFTER    10           /* consecutive failures that lock the account */
#define AUTH_LOCK_S        (15 * 60)
#define AUTH_PW_MIN        8 /* decision 4 */
#define AUTH_PW_MAX        128
#define AUTH_TOKEN_B64     43 /* 32 random bytes as unpadded base64url */
#define AUTH_SHA256_HEX    65
#define AUTH_SEAL_MAX      8192 /* bytes of plaintext sealed at most */

struct auth_app {
    struct gr_ctx *ctx;
    struct gr_seal_key kek; /* seals private keys, TOTP secrets and grace-window tokens */
    pthread_rwlock_t keys_mu;
    struct gr_jwt_key *signer; /* keys_mu */
    char *jwks;                /* keys_mu: the published JWKS document */
    int64_t keys_loaded_ms;    /* keys_mu */
    struct gr_rl *rl;          /* login limits (decision 19) */
    struct gr_redis *redis;    /* REDIS_URL: login limits shared by every instance; or NULL */
    const char *signing_alg;   /* AUTH_SIGNING_ALG: ES256 (default) or RS256 */
    int rl_user, rl_ip;        /* logins a minute per (IP, identifier) and per IP */
};

/* ---- secrets.c ---------------------------------------------------------------------------- */

/** Loads the key-encryption key from AUTH_KEY_SECRET or DATA_DIR/auth-key-secret (made once). */
int auth_kek_load(struct auth_app *app, const char *data_dir);
/** gr_seal of @n bytes (at most AUTH_SEAL_MAX) under the KEK, no associated data, in @a. */
int auth_seal(const struct auth_app *app, struct gr_arena *a, const void *p, size_t n,
              const char **out);
/** Opens auth_seal's text; *@out is NUL-terminated arena memory. GR_EINVAL if tampered. */
int auth_open(const struct auth_app *app, struct gr_arena *a, const char *sealed, char **out,
              size_t *outlen);
/** Lowercase hex SHA-256 of @n bytes (@out: AUTH_SHA256_HEX bytes). */
void auth_sha256_hex(const void *p, size_t n, char out[AUTH_SHA256_HEX]);
/** 32 random bytes as unpadded base64url (@out: AUTH_TOKEN_B64 + 1 bytes). */
int auth_random_token(char out[AUTH_TOKEN_B64 + 1]);

/* ---- keys.c ------------------------------------------------------------------------------- */

/** Loads the signing keys from the database, creating the first one on a fresh database. */
int auth_keys_init(struct auth_app *app);
/** Reloads the keys when they are older than @max_age_ms (another instance may have rotated). */
int auth_keys_refresh(struct auth_app *app, int64_t max_age_ms);
/**
 * Rotation: a new @alg key is published now and signs from now + @delay_s; the current key
 * retires once the tokens it signed have expired. Emits auth.keys.rotated in @db's transaction.
 */
int auth_keys_rotate(struct auth_app *app, struct gr_req *req, const char *alg, int delay_s,
                     const char **kid_out);
/** Signs @claims with the current key (read-locked). *@out: gr_free(). */
int auth_keys_sign(struct auth_app *app, json_t *claims, char **out);

/* ---- tokens.c ----------------------------------------------------------------------------- */

/** A user's roles and expanded permissions ("*" for super_admin), as JSON arrays (new refs). */
int auth_user_grants(struct gr_db_conn *db, struct gr_arena *a, const char *user_id, json_t **roles,
                     json_t **perms);
/** A signed access token for @sub with @roles/@perms (borrowed); *@jti (arena) if non-NULL. */
int auth_access_token(struct auth_app *app, struct gr_arena *a, const char *sub, json_t *roles,
                      json_t *perms, char **token, const char **jti);
/**
 * A new refresh token for @user_id in @family_id (NULL: a new family, i.e. a new session),
 * child of @parent_id (or NULL). Inside the caller's transaction. *@token is arena text.
 */
int auth_refresh_new(struct gr_req *req, const char *user_id, const char *family_id,
                     const char *parent_id, const char **token, const char **id_out);
/** The token response {access_token, refresh_token, token_type, expires_in}. */
json_t *auth_token_body(const char *access, const char *refresh);
/** Revokes every live refresh token of @family_id (in the caller's transaction). */
int auth_family_revoke(struct gr_req *req, const char *family_id, const char *user_id,
                       const char *reason);
/** True when the access token's jti was revoked (logout) and has not expired yet. */
bool auth_jti_revoked(struct gr_req *req, const char *jti);

/* ---- events.c ----------------------------------------------------------------------------- */

#define AUTH_NSUBS 1
extern const struct gr_sub auth_subs[AUTH_NSUBS];

/* ---- handlers ----------------------------------------------------------------------------- */

#define AUTH_NROUTES 26

extern const struct gr_route auth_routes[AUTH_NROUTES];

int auth_register(struct gr_req *req, struct gr_resp *resp);
int auth_login(struct gr_req *req, struct gr_resp *resp);
int auth_refresh(struct gr_req *req, struct gr_resp *resp);
int auth_logout(struct gr_req *req, struct gr_resp *resp);
int auth_validate(struct gr_req *req, struct gr_resp *resp);
int auth_me(struct gr_req *req, struct gr_resp *resp);
int auth_jwks(struct gr_req *req, struct gr_resp *resp);
int auth_keys_rotate_h(struct gr_req *req, struct gr_resp *resp);
int auth_password_reset(struct gr_req *req, struct gr_resp *resp);
int auth_password_reset_confirm(struct gr_req *req, struct gr_resp *resp);
int auth_verify_email_request(struct gr_req *req, struct gr_resp *resp);
int auth_verify_email_confirm(struct gr_req *req, struct gr_resp *resp);
/* admin.c: roles, sessions, service clients, imports */
int auth_roles_list(struct gr_req *req, struct gr_resp *resp);
int auth_roles_create(struct gr_req *req, struct gr_resp *resp);
int auth_role_permissions_put(struct gr_req *req, struct gr_resp *resp);
int auth_user_roles_put(struct gr_req *req, struct gr_resp *resp);
int auth_users_import(struct gr_req *req, struct gr_resp *resp);
int auth_sessions_list(struct gr_req *req, struct gr_resp *resp);
int auth_sessions_delete(struct gr_req *req, struct gr_resp *resp);
int auth_clients_create(struct gr_req *req, struct gr_resp *resp);
int auth_token(struct gr_req *req, struct gr_resp *resp);
/**
 * Creates (or updates the secret of) the service client AUTH_BOOTSTRAP_CLIENT_ID /
 * AUTH_BOOTSTRAP_CLIENT_SECRET with role "service", when both are set: how `gravity up` gives
 * every service a client-credentials login without an administrator.
 */
int auth_bootstrap_client(struct auth_app *app);
/* mfa.c: TOTP enrolment (RFC 6238) with recovery codes */
int auth_mfa_totp_enroll(struct gr_req *req, struct gr_resp *resp);
int auth_mfa_totp_verify(struct gr_req *req, struct gr_resp *resp);
int auth_mfa_totp_delete(struct gr_req *req, struct gr_resp *resp);
/**
 * Checks a second factor of @user_id: a TOTP @code against the sealed secret (a step after
 * @last_step, then claimed) or an unused recovery code (then used). In its own transaction.
 * 0, GR_EUNAUTH, or another error.
 */
int auth_mfa_check(struct gr_req *req, const char *user_id, const char *secret_enc,
                   long long last_step, const char *code);
/* oauth.c: OAuth2/OIDC login with PKCE through configured providers */
int auth_oauth_authorize(struct gr_req *req, struct gr_resp *resp);
int auth_oauth_callback(struct gr_req *req, struct gr_resp *resp);
/** Checks the AUTH_OAUTH_* configuration at start-up: GR_ECONFIG with one line naming it. */
int auth_oauth_config_check(void);
/**
 * Logs @user_id in after an external proof (OAuth): a new session, tokens in @resp (200),
 * auth.login.succeeded with @method. Opens and commits its own transaction.
 */
int auth_issue_session(struct gr_req *req, struct gr_resp *resp, const char *user_id,
                       const char *method);
/**
 * Creates an account without a password (OAuth) for @email, or returns the existing one's id:
 * in its own transaction, with user.created for a new one. *@id_out is arena text.
 */
int auth_account_for_email(struct gr_req *req, const char *email, const char **id_out);

/* notify.c: queues links for the notification service; a sender thread delivers them. */
void auth_reset_link_send(struct gr_req *req, const char *email, const char *token);
void auth_verify_link_send(struct gr_req *req, const char *email, const char *token);
/** Delivers the links still queued, then stops the sender thread (at shutdown). */
void auth_links_stop(void);

/* users.c */
/** Validates and normalises an email (lowercase, 3..254, local@domain.tld); NULL if invalid. */
const char *auth_email_norm(struct gr_arena *a, const char *s);
/** Creates the first super_admin from AUTH_BOOTSTRAP_ADMIN_EMAIL/_PASSWORD when none exists. */
int auth_bootstrap_admin(struct auth_app *app);
/** The verified caller of a route that needs one: 401 unless authenticated and not revoked. */
int auth_caller(struct gr_req *req, struct gr_resp *resp);

#endif
