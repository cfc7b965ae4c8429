/*
 * session.c - login, refresh, logout, validate-token, me, the JWKS, key rotation and password
 * reset (SERVICES §05, decisions 4, 10, 19, 20).
 *
 * Login defences: 5 attempts a minute per (client IP, identifier) and 60 per IP (429 with
 * Retry-After); 10 straight failures lock the account for 15 minutes; an unknown identifier,
 * a wrong password and a locked account get the same 401 body after the same Argon2 work
 * (an unknown user verifies against a dummy hash).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "password.h"

#define RL_WINDOW_MS 60000

static int bad_credentials(struct gr_req *req, struct gr_resp *resp)
{
    return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_credentials", "invalid credentials");
}

static int emit_simple(struct gr_req *req, const char *type, const char *user_id,
                       const char *reason)
{
    char data[256];

    snprintf(data, sizeof(data), "{\"user_id\":\"%s\",\"reason\":\"%s\",\"ip\":\"%s\"}", user_id,
             reason, gr_req_client_ip(req));
    return gr_req_emit(req, type, user_id, data);
}

/*
 * Records a failed password for an existing account; the 10th in a row locks it (and starts
 * the count again). Decided in SQL on the row itself, so parallel failures cannot skip it.
 * Body of a gr_req_tx: its retries, not the core's re-run of the handler, absorb parallel
 * logins of one account, which would count the attempt twice against the login limits.
 */
static int login_failed_tx(struct gr_req *req, void *arg)
{
    const char *user_id = arg;
    long long locked = 0;
    int rc = gr_db_exec(req->db,
                        "UPDATE credentials SET failed_logins = 0, locked_until = $2"
                        " WHERE id = $1 AND failed_logins + 1 >= $3",
                        (struct gr_db_val[]){ GR_DB_TEXT(user_id),
                                              GR_DB_INT(gr_time_now_s() + AUTH_LOCK_S),
                                              GR_DB_INT(AUTH_LOCK_AFTER) },
                        3, &locked);

    if (rc == 0 && locked == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET failed_logins = failed_logins + 1 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, NULL);
    if (rc == 0)
        rc = emit_simple(req, "auth.login.failed", user_id, "bad_password");
    if (rc == 0 && locked) {
        rc = emit_simple(req, "auth.user.locked", user_id, "too_many_failures");
        gr_log_warn("account locked after failed logins", "user_id", user_id);
    }
    return rc;
}

static int login_failed(struct gr_req *req, const char *user_id)
{
    return gr_req_tx(req, login_failed_tx, (void *)(uintptr_t)user_id);
}

struct login_ok {
    const char *user_id, *newhash, *refresh;
    bool upgrade;
    char *access;
};

/* The success transaction (a gr_req_tx body); GR_EUNAUTH when the account was locked meanwhile. */
static int login_succeeded_tx(struct gr_req *req, void *arg)
{
    struct login_ok *l = arg;
    json_t *roles = NULL, *perms = NULL;
    long long changes = 0;
    int rc;

    /* Only while not locked: a parallel failure may have locked it since our read. */
    rc = gr_db_exec(req->db,
                    l->upgrade ? "UPDATE credentials SET failed_logins = 0, locked_until = 0,"
                                 " password_hash = $3 WHERE id = $1 AND locked_until <= $2"
                               : "UPDATE credentials SET failed_logins = 0, locked_until = 0"
                                 " WHERE id = $1 AND locked_until <= $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(l->user_id), GR_DB_INT(gr_time_now_s()),
                                          GR_DB_TEXT(l->newhash) },
                    l->upgrade ? 3 : 2, &changes);
    if (rc == 0 && changes == 0)
        rc = GR_EUNAUTH;
    if (rc == 0)
        rc = auth_refresh_new(req, l->user_id, NULL, NULL, &l->refresh, NULL);
    if (rc == 0)
        rc = auth_user_grants(req->db, req->arena, l->user_id, &roles, &perms);
    if (rc == 0)
        rc = auth_access_token(req->app, req->arena, l->user_id, roles, perms, &l->access, NULL);
    if (rc == 0)
        rc = emit_simple(req, "auth.login.succeeded", l->user_id,
                         l->upgrade ? "rehashed" : "password");
    json_decref(roles);
    json_decref(perms);
    return rc;
}

/* POST /api/v1/auth/login {username|email, password, totp?} */
int auth_login(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "username", "email", "password", "totp", NULL };
    struct auth_app *app = req->app;
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *user_in = NULL, *email_in = NULL, *pw = NULL, *code = NULL, *ident, *ip;
    const char *user_id, *hash_text;
    char newhash[256] = "";
    struct login_ok ok_state;
    struct gr_db_rows *rows = NULL;
    bool ok = false, upgrade = false, locked;
    int retry = 0, rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "username", GR_JSON_OPTIONAL, 1, 254, &user_in, NULL);
    (void)gr_json_str(&r, req->json, "", "email", GR_JSON_OPTIONAL, 1, 254, &email_in, NULL);
    /* Any length is checked against the hash (a short one simply fails), up to the cap. */
    (void)gr_json_str(&r, req->json, "", "password", GR_JSON_REQUIRED, 1, AUTH_PW_MAX, &pw, NULL);
    (void)gr_json_str(&r, req->json, "", "totp", GR_JSON_OPTIONAL, 1, 32, &code, NULL);
    if (!user_in == !email_in && resp->errs.n == 0)
        gr_resp_field_error(req, resp, "", "give exactly one of username and email");
    if (resp->errs.n > 0)
        return GR_EVALID;
    ident = email_in ? auth_email_norm(req->arena, email_in) : NULL;
    if (!ident) {
        /* usernames are stored lowercase; an email given as username works too */
        char *low = gr_arena_strdup(req->arena, email_in ? email_in : user_in);

        for (char *p = low; *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        ident = low;
    }
    ip = gr_req_client_ip(req);
    if (!gr_rl_hit(app->rl, gr_arena_printf(req->arena, "ip|%s", ip), app->rl_ip, RL_WINDOW_MS,
                   &retry) ||
        !gr_rl_hit(app->rl, gr_arena_printf(req->arena, "ipu|%s|%.200s", ip, ident), app->rl_user,
                   RL_WINDOW_MS, &retry)) {
        gr_resp_header(req, resp, "Retry-After", gr_arena_printf(req->arena, "%d", retry));
        return gr_resp_problem(req, resp, GR_ERATE, "login_rate_limited",
                               "too many login attempts; retry in %d s", retry);
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, password_hash, status, failed_logins, locked_until,"
                     " totp_enabled, totp_secret_enc, totp_last_step FROM credentials"
                     " WHERE email = $1 OR username = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(ident) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0 || gr_db_isnull(rows, 0, 1)) {
        if (pw_dummy_verify(pw, strlen(pw)) == GR_EBUSY)
            return GR_EUNAVAIL;
        return bad_credentials(req, resp);
    }
    user_id = gr_db_text(rows, 0, 0);
    hash_text = gr_db_text(rows, 0, 1);
    locked =
        gr_db_int(rows, 0, 4) > gr_time_now_s() || strcmp(gr_db_text(rows, 0, 2), "active") != 0;
    if (locked) {
        if (pw_dummy_verify(pw, strlen(pw)) == GR_EBUSY)
            return GR_EUNAVAIL;
        return bad_credentials(req, resp);
    }
    rc = pw_verify(pw, strlen(pw), hash_text, &ok, &upgrade);
    if (rc == GR_EBUSY)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL,
                               "too many password operations at once; retry");
    if (rc < 0 || !ok) {
        rc = login_failed(req, user_id);
        return rc < 0 ? rc : bad_credentials(req, resp);
    }
    if (gr_db_int(rows, 0, 5)) {
        if (!code)
            return gr_resp_problem(req, resp, GR_EUNAUTH, "mfa_required",
                                   "this account needs a TOTP or recovery code (field totp)");
        rc = auth_mfa_check(req, user_id, gr_db_text(rows, 0, 6), gr_db_int(rows, 0, 7), code);
        if (rc == GR_EUNAUTH) {
            rc = login_failed(req, user_id);
            return rc < 0 ? rc
                          : gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_totp",
                                            "invalid or already used TOTP code");
        }
        if (rc < 0)
            return rc;
    }
    if (upgrade && pw_hash(pw, strlen(pw), newhash, sizeof(newhash)) != 0)
        upgrade = false; /* keep the old hash; try again at the next login */
    ok_state = (struct login_ok){ .user_id = user_id, .newhash = newhash, .upgrade = upgrade };
    rc = gr_req_tx(req, login_succeeded_tx, &ok_state);
    if (rc == GR_EUNAUTH)
        return bad_credentials(req, resp);
    if (rc < 0)
        return rc;
    if (upgrade)
        gr_log_info("password hash upgraded to argon2id", "user_id", user_id);
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 200, auth_token_body(ok_state.access, ok_state.refresh));
    return 0;
}

/* POST /api/v1/auth/refresh {refresh_token} */
int auth_refresh(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "refresh_token", NULL };
    struct auth_app *app = req->app;
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *tok = NULL, *child = NULL, *id, *family, *user_id, *sealed = NULL;
    char hash[AUTH_SHA256_HEX], *access = NULL, *opened = NULL;
    struct gr_db_rows *rows = NULL, *u = NULL;
    json_t *roles = NULL, *perms = NULL;
    int64_t now_ms = gr_time_now_ms();
    long long changes = 0;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "refresh_token", GR_JSON_REQUIRED, 1, 512, &tok, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    auth_sha256_hex(tok, strlen(tok), hash);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT id, family_id, user_id, used_at, revoked_at, expires_at,"
                         " child_enc FROM refresh_tokens WHERE token_hash = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(hash) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0 || !gr_db_isnull(rows, 0, 4) ||
        gr_db_int(rows, 0, 5) < gr_time_now_s()) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_refresh_token",
                               "invalid, expired or revoked refresh token");
    }
    id = gr_db_text(rows, 0, 0);
    family = gr_db_text(rows, 0, 1);
    user_id = gr_db_text(rows, 0, 2);
    if (!gr_db_isnull(rows, 0, 3)) {
        /* Used before: the same child within the grace window, else a replay. */
        if (now_ms - gr_db_int(rows, 0, 3) <= AUTH_GRACE_MS && !gr_db_isnull(rows, 0, 6) &&
            auth_open(app, req->arena, gr_db_text(rows, 0, 6), &opened, NULL) == 0) {
            child = opened;
        } else {
            rc = auth_family_revoke(req, family, user_id, "refresh_token_reuse");
            if (rc == 0)
                rc = gr_db_commit(req->db);
            gr_log_warn("refresh token reused: session revoked", "user_id", user_id);
            return rc < 0 ? rc
                          : gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_refresh_token",
                                            "invalid, expired or revoked refresh token");
        }
    } else {
        rc = gr_db_exec(req->db,
                        "UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_INT(now_ms) }, 2, &changes);
        if (rc == 0 && changes == 0)
            rc = GR_EBUSY; /* a parallel refresh won: run again, the grace path answers */
        if (rc == 0)
            rc = auth_refresh_new(req, user_id, family, id, &child, NULL);
        if (rc == 0)
            rc = auth_seal(app, req->arena, child, strlen(child), &sealed);
        if (rc == 0)
            rc = gr_db_exec(req->db, "UPDATE refresh_tokens SET child_enc = $2 WHERE id = $1",
                            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(sealed) }, 2, NULL);
    }
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT status FROM credentials WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, &u);
    if (rc == 0 && (gr_db_nrows(u) == 0 || strcmp(gr_db_text(u, 0, 0), "active") != 0)) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_refresh_token",
                               "invalid, expired or revoked refresh token");
    }
    /* Roles are read again: a role change reaches the token here (decision 10). */
    if (rc == 0)
        rc = auth_user_grants(req->db, req->arena, user_id, &roles, &perms);
    if (rc == 0)
        rc = auth_access_token(app, req->arena, user_id, roles, perms, &access, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    json_decref(roles);
    json_decref(perms);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 200, auth_token_body(access, child));
    return 0;
}

/* POST /api/v1/auth/logout {refresh_token?} with the access token: both die. */
int auth_logout(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "refresh_token", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const struct gr_principal *p = req->principal;
    const char *tok = NULL, *family = NULL;
    struct gr_db_rows *rows = NULL;
    char hash[AUTH_SHA256_HEX], data[256];
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "refresh_token", GR_JSON_OPTIONAL, 1, 512, &tok, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_req_begin(req);
    /* Revocations of tokens that have expired since are no longer needed. */
    if (rc == 0)
        rc = gr_db_exec(req->db, "DELETE FROM revoked_tokens WHERE expires_at < $1",
                        (struct gr_db_val[]){ GR_DB_INT(gr_time_now_s() - GR_AUTH_LEEWAY_S) }, 1,
                        NULL);
    if (rc == 0 && p->jti)
        rc = gr_db_exec(req->db,
                        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)"
                        " ON CONFLICT (jti) DO NOTHING",
                        (struct gr_db_val[]){ GR_DB_TEXT(p->jti), GR_DB_INT(p->exp) }, 2, NULL);
    if (rc == 0 && tok) {
        auth_sha256_hex(tok, strlen(tok), hash);
        rc = gr_db_query(req->db, req->arena,
                         "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND"
                         " user_id = $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_TEXT(p->sub) }, 2, &rows);
        if (rc == 0 && gr_db_nrows(rows) > 0) {
            family = gr_db_text(rows, 0, 0);
            rc = auth_family_revoke(req, family, p->sub, "logout");
        }
    }
    if (rc == 0 && p->jti) {
        snprintf(data, sizeof(data),
                 "{\"user_id\":\"%s\",\"jti\":\"%s\",\"exp\":%lld,\"reason\":\"logout\"}", p->sub,
                 p->jti, p->exp);
        rc = gr_req_emit(req, "auth.token.revoked", p->sub, data);
    }
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

/* POST /api/v1/auth/validate-token {token} → {active, sub, roles, permissions, exp} or 401 */
int auth_validate(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "token", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    struct gr_principal p;
    const char *tok = NULL;
    json_t *roles, *perms;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "token", GR_JSON_REQUIRED, 1, GR_AUTH_TOKEN_MAX, &tok,
                      NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_auth_verify(req->ctx->auth, req->arena, tok, strlen(tok), &p);
    if (rc == 0) {
        req->principal = &p;
        rc = auth_caller(req, resp);
        req->principal = NULL;
        if (rc < 0)
            return rc;
    }
    if (rc < 0)
        return gr_resp_problem(req, resp, GR_EUNAUTH, NULL, "invalid or expired token");
    roles = json_array();
    perms = json_array();
    for (size_t i = 0; i < p.nroles; i++)
        json_array_append_new(roles, json_string(p.roles[i]));
    for (size_t i = 0; i < p.nperms; i++)
        json_array_append_new(perms, json_string(p.perms[i]));
    gr_resp_json(resp, 200,
                 json_pack("{s:b,s:s,s:o,s:o,s:I}", "active", 1, "sub", p.sub, "roles", roles,
                           "permissions", perms, "exp", (json_int_t)p.exp));
    return 0;
}

/* GET /api/v1/auth/me */
int auth_me(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    json_t *roles = NULL, *perms = NULL;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT id, email, username, email_verified, totp_enabled, created_at"
                     " FROM credentials WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no account for this token");
    rc = auth_user_grants(req->db, req->arena, req->principal->sub, &roles, &perms);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200,
                 json_pack("{s:s,s:s,s:s?,s:b,s:b,s:o,s:o,s:s}", "id", gr_db_text(rows, 0, 0),
                           "email", gr_db_text(rows, 0, 1), "username", gr_db_text(rows, 0, 2),
                           "email_verified", (int)gr_db_int(rows, 0, 3), "mfa_enabled",
                           (int)gr_db_int(rows, 0, 4), "roles", roles, "permissions", perms,
                           "created_at", gr_db_text(rows, 0, 5)));
    return 0;
}

/* GET /api/v1/auth/jwks */
int auth_jwks(struct gr_req *req, struct gr_resp *resp)
{
    struct auth_app *app = req->app;
    char *doc;

    (void)auth_keys_refresh(app, 10000); /* another instance may have rotated */
    pthread_rwlock_rdlock(&app->keys_mu);
    doc = gr_arena_strdup(req->arena, app->jwks);
    pthread_rwlock_unlock(&app->keys_mu);
    resp->status = 200;
    resp->body = doc;
    resp->body_len = strlen(doc);
    resp->content_type = "application/jwk-set+json";
    gr_resp_header(req, resp, "Cache-Control", "public, max-age=60");
    return 0;
}

/* POST /api/v1/auth/keys/rotate {alg?, delay_s?} (auth:admin) */
int auth_keys_rotate_h(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "alg", "delay_s", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *alg = NULL, *kid = NULL;
    long long delay = 60;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "alg", GR_JSON_OPTIONAL, 5, 5, &alg, NULL);
    (void)gr_json_int(&r, req->json, "", "delay_s", GR_JSON_OPTIONAL, 0, 86400, &delay, NULL);
    if (alg && strcmp(alg, "RS256") != 0 && strcmp(alg, "ES256") != 0)
        gr_resp_field_error(req, resp, "/alg", "must be RS256 or ES256");
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = auth_keys_rotate(req->app, req, alg ? alg : ((struct auth_app *)req->app)->signing_alg,
                          (int)delay, &kid);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 201,
                 json_pack("{s:s,s:s,s:I}", "kid", kid, "alg",
                           alg ? alg : ((struct auth_app *)req->app)->signing_alg, "signs_from",
                           (json_int_t)(gr_time_now_s() + delay)));
    return 0;
}

/* POST /api/v1/auth/password-reset {email} → always 202 */
int auth_password_reset(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "email", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *email_in = NULL, *email;
    struct gr_db_rows *rows = NULL;
    char tok[AUTH_TOKEN_B64 + 1], hash[AUTH_SHA256_HEX], now[GR_TIME_STR_LEN];
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "email", GR_JSON_REQUIRED, 3, 254, &email_in, NULL);
    email = email_in ? auth_email_norm(req->arena, email_in) : NULL;
    if (email_in && !email)
        gr_resp_field_error(req, resp, "/email", "must be an email address");
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_db_query(req->db, req->arena, "SELECT id FROM credentials WHERE email = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(email) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) > 0) {
        rc = auth_random_token(tok);
        auth_sha256_hex(tok, AUTH_TOKEN_B64, hash);
        gr_time_format(gr_time_now_ms(), now);
        if (rc == 0)
            rc = gr_db_exec(req->db,
                            "INSERT INTO password_resets (token_hash, user_id, expires_at,"
                            " created_at) VALUES ($1, $2, $3, $4)",
                            (struct gr_db_val[]){
                                GR_DB_TEXT(hash), GR_DB_TEXT(gr_db_text(rows, 0, 0)),
                                GR_DB_INT(gr_time_now_s() + AUTH_RESET_TTL_S), GR_DB_TEXT(now) },
                            4, NULL);
        if (rc < 0)
            return rc;
        /* The link goes to the notification service (07) directly, never on the bus. */
        auth_reset_link_send(req, email, tok);
    }
    gr_resp_json(resp, 202, json_pack("{s:s}", "status", "accepted"));
    return 0;
}

/* POST /api/v1/auth/password-reset/confirm {token, new_password} */
int auth_password_reset_confirm(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "token", "new_password", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *tok = NULL, *pw = NULL, *user_id;
    struct gr_db_rows *rows = NULL, *fam = NULL;
    char hash[AUTH_SHA256_HEX], pwhash[256];
    long long changes = 0;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "token", GR_JSON_REQUIRED, 1, 512, &tok, NULL);
    (void)gr_json_str(&r, req->json, "", "new_password", GR_JSON_REQUIRED, AUTH_PW_MIN, AUTH_PW_MAX,
                      &pw, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    auth_sha256_hex(tok, strlen(tok), hash);
    rc = pw_hash(pw, strlen(pw), pwhash, sizeof(pwhash));
    if (rc < 0)
        return rc;
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT user_id FROM password_resets WHERE token_hash = $1 AND"
                         " used_at IS NULL AND expires_at > $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_INT(gr_time_now_s()) }, 2,
                         &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_reset_token",
                               "invalid, used or expired reset token");
    }
    user_id = gr_db_text(rows, 0, 0);
    rc = gr_db_exec(req->db,
                    "UPDATE password_resets SET used_at = $2 WHERE token_hash = $1 AND used_at IS"
                    " NULL",
                    (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_INT(gr_time_now_s()) }, 2,
                    &changes);
    if (rc == 0 && changes == 0)
        rc = GR_EBUSY;
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET password_hash = $2, failed_logins = 0,"
                        " locked_until = 0, version = version + 1 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(user_id), GR_DB_TEXT(pwhash) }, 2, NULL);
    /* Success revokes every session of the account. */
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT DISTINCT family_id FROM refresh_tokens WHERE user_id = $1 AND"
                         " revoked_at IS NULL",
                         (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, &fam);
    for (size_t i = 0; rc == 0 && i < gr_db_nrows(fam); i++)
        rc = auth_family_revoke(req, gr_db_text(fam, i, 0), user_id, "password_reset");
    if (rc == 0)
        rc = emit_simple(req, "auth.password.changed", user_id, "reset");
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

int auth_issue_session(struct gr_req *req, struct gr_resp *resp, const char *user_id,
                       const char *method)
{
    struct auth_app *app = req->app;
    const char *refresh = NULL;
    char *access = NULL;
    json_t *roles = NULL, *perms = NULL;
    int rc = gr_req_begin(req);

    if (rc == 0)
        rc = auth_refresh_new(req, user_id, NULL, NULL, &refresh, NULL);
    if (rc == 0)
        rc = auth_user_grants(req->db, req->arena, user_id, &roles, &perms);
    if (rc == 0)
        rc = auth_access_token(app, req->arena, user_id, roles, perms, &access, NULL);
    if (rc == 0)
        rc = emit_simple(req, "auth.login.succeeded", user_id, method);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    json_decref(roles);
    json_decref(perms);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 200, auth_token_body(access, refresh));
    return 0;
}
