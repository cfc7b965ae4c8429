/*
 * users.c - accounts: registration, the first administrator (decision 11), email rules, and
 * the caller check of the routes that need a live access token.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "password.h"

const char *auth_email_norm(struct gr_arena *a, const char *s)
{
    size_t n = s ? strlen(s) : 0, at = n, dot = n;
    char *out;

    if (n < 3 || n > 254)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '(' || c == ')' || c == ',' || c == ':' ||
            c == ';' || c == '<' || c == '>' || c == '[' || c == ']' || c == '\\')
            return NULL;
        if (c == '@') {
            if (at != n)
                return NULL; /* two @ */
            at = i;
        } else if (c == '.' && at != n) {
            dot = i;
        }
    }
    /* local part 1..64; a domain with a dot, not at either end, labels not empty */
    if (at == 0 || at == n || at > 64 || dot == n || dot == at + 1 || dot == n - 1 ||
        strstr(s + at, "..") || s[at + 1] == '.' || s[at + 1] == '-')
        return NULL;
    /* One account per address whatever its case (as Keycloak and Supabase do). */
    out = gr_arena_strdup(a, s);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)out[i]);
    return out;
}

/* A username: 3..64 of [a-z0-9._-], stored lowercase; never contains '@' (emails do). */
static const char *username_norm(struct gr_arena *a, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    char *out;

    if (n < 3 || n > 64)
        return NULL;
    out = gr_arena_strdup(a, s);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tolower((unsigned char)out[i]);

        if (!(isalnum(c) || c == '.' || c == '_' || c == '-'))
            return NULL;
        out[i] = (char)c;
    }
    return out;
}

/* Inserts the account, its role and user.created (in the open transaction). */
static int account_insert(struct gr_req *req, const char *id, const char *email,
                          const char *username, const char *hash, const char *role)
{
    char now[GR_TIME_STR_LEN];
    json_t *data;
    char *text;
    int rc;

    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO credentials (id, email, username, password_hash, created_at,"
                    " updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(email), GR_DB_TEXT(username),
                                          GR_DB_TEXT(hash), GR_DB_TEXT(now) },
                    5, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db, "INSERT INTO user_roles (user_id, role_name) VALUES ($1, $2)",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(role) }, 2, NULL);
    if (rc < 0)
        return rc;
    data = json_pack("{s:s,s:s,s:s?,s:[s],s:i,s:s}", "id", id, "email", email, "username", username,
                     "roles", role, "version", 1, "created_at", now);
    text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (!text)
        return GR_EINTERNAL;
    rc = gr_req_emit(req, "user.created", id, text);
    gr_free(text);
    return rc;
}

/* POST /api/v1/auth/register {email, password, username?} → 201 */
int auth_register(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "email", "password", "username", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *email_in = NULL, *pw = NULL, *user_in = NULL, *email, *username = NULL;
    char id[GR_ID_LEN], hash[256], now[GR_TIME_STR_LEN];
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "email", GR_JSON_REQUIRED, 3, 254, &email_in, NULL);
    (void)gr_json_str(&r, req->json, "", "password", GR_JSON_REQUIRED, AUTH_PW_MIN, AUTH_PW_MAX,
                      &pw, NULL);
    (void)gr_json_str(&r, req->json, "", "username", GR_JSON_OPTIONAL, 3, 64, &user_in, NULL);
    email = email_in ? auth_email_norm(req->arena, email_in) : NULL;
    if (email_in && !email)
        gr_resp_field_error(req, resp, "/email", "must be an email address");
    if (user_in) {
        username = username_norm(req->arena, user_in);
        if (!username)
            gr_resp_field_error(req, resp, "/username", "must be 3..64 of a-z 0-9 . _ -");
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    /* Hash before the transaction: ~20 ms of CPU must not hold the write lock. */
    rc = pw_hash(pw, strlen(pw), hash, sizeof(hash));
    if (rc < 0)
        return rc == GR_EBUSY ? gr_resp_problem(req, resp, GR_EUNAVAIL, NULL,
                                                "too many password operations at once; retry")
                              : rc;
    gr_id_new(id);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = account_insert(req, id, email, username, hash, "customer");
    if (rc == GR_ECONFLICT) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ECONFLICT, "account_exists",
                               "an account with this email or username exists");
    }
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    gr_time_format(gr_time_now_ms(), now);
    gr_resp_json(resp, 201,
                 json_pack("{s:s,s:s,s:s?,s:[s],s:b,s:s}", "id", id, "email", email, "username",
                           username, "roles", "customer", "email_verified", 0, "created_at", now));
    return 0;
}

int auth_account_for_email(struct gr_req *req, const char *email, const char **id_out)
{
    struct gr_db_rows *rows = NULL;
    char id[GR_ID_LEN];
    int rc;

    for (int attempt = 0; attempt < 2; attempt++) {
        rc = gr_db_query(req->db, req->arena, "SELECT id FROM credentials WHERE email = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(email) }, 1, &rows);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(rows) > 0) {
            *id_out = gr_arena_strdup(req->arena, gr_db_text(rows, 0, 0));
            return 0;
        }
        gr_id_new(id);
        rc = gr_req_begin(req);
        if (rc == 0)
            rc = account_insert(req, id, email, NULL, NULL, "customer");
        if (rc == 0)
            rc = gr_db_commit(req->db);
        else
            (void)gr_db_rollback(req->db);
        if (rc == 0) {
            *id_out = gr_arena_strdup(req->arena, id);
            return 0;
        }
        if (rc != GR_ECONFLICT)
            return rc; /* a conflict: created meanwhile, read it again */
    }
    return GR_ECONFLICT;
}

int auth_bootstrap_admin(struct auth_app *app)
{
    const char *email_in = getenv("AUTH_BOOTSTRAP_ADMIN_EMAIL");
    const char *pw = getenv("AUTH_BOOTSTRAP_ADMIN_PASSWORD");
    struct gr_req req = { 0 };
    struct gr_arena a;
    struct gr_db_rows *rows = NULL;
    char id[GR_ID_LEN], hash[256];
    const char *email;
    int rc;

    if (!email_in || !*email_in || !pw || !*pw)
        return 0;
    gr_arena_init(&a);
    req.arena = &a;
    req.ctx = app->ctx;
    email = auth_email_norm(&a, email_in);
    if (!email || strlen(pw) < AUTH_PW_MIN || strlen(pw) > AUTH_PW_MAX) {
        gr_log_error("AUTH_BOOTSTRAP_ADMIN_EMAIL must be an email and "
                     "AUTH_BOOTSTRAP_ADMIN_PASSWORD 8..128 characters");
        gr_arena_release(&a);
        return GR_ECONFIG;
    }
    rc = gr_db_conn(app->ctx->db, &req.db);
    if (rc == 0)
        rc = gr_db_query(req.db, &a, "SELECT 1 FROM user_roles WHERE role_name = 'super_admin'",
                         NULL, 0, &rows);
    if (rc == 0 && gr_db_nrows(rows) > 0) {
        gr_arena_release(&a);
        return 0;
    }
    if (rc == 0)
        rc = pw_hash(pw, strlen(pw), hash, sizeof(hash));
    gr_id_new(id);
    if (rc == 0)
        rc = gr_db_begin(req.db);
    if (rc == 0) {
        rc = account_insert(&req, id, email, NULL, hash, "super_admin");
        rc = rc == 0 ? gr_db_commit(req.db) : (gr_db_rollback(req.db), rc);
    }
    if (rc == 0)
        gr_log_info("created the first super_admin", "user_id", id);
    else if (rc == GR_ECONFLICT)
        gr_log_warn("AUTH_BOOTSTRAP_ADMIN_EMAIL belongs to an existing account; not promoted");
    gr_arena_release(&a);
    return rc == GR_ECONFLICT ? 0 : rc;
}

int auth_caller(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    if (!req->principal)
        return gr_resp_problem(req, resp, GR_EUNAUTH, NULL, "a bearer token is required");
    /* One round trip: the account's status (none for a service token) and the jti's revocation. */
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT (SELECT status FROM credentials WHERE id = $1),"
        " (SELECT 1 FROM revoked_tokens WHERE jti = $2)",
        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub),
                              GR_DB_TEXT(req->principal->jti ? req->principal->jti : "") },
        2, &rows);
    if (rc < 0)
        return rc;
    /* A revoked jti, or a disabled or erased account: the token is dead. */
    if (gr_db_nrows(rows) != 1 || !gr_db_isnull(rows, 0, 1) ||
        (!gr_db_isnull(rows, 0, 0) && strcmp(gr_db_text(rows, 0, 0), "active") != 0))
        return gr_resp_problem(req, resp, GR_EUNAUTH, NULL, "invalid or expired token");
    return 0;
}

/* POST /api/v1/auth/verify-email: sends the caller a verification link (202) */
int auth_verify_email_request(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    char tok[AUTH_TOKEN_B64 + 1], hash[AUTH_SHA256_HEX], now[GR_TIME_STR_LEN];
    const char *email;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT email, email_verified FROM credentials WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no account for this token");
    if (gr_db_int(rows, 0, 1))
        return gr_resp_problem(req, resp, GR_ECONFLICT, "email_verified",
                               "the email is already verified");
    email = gr_db_text(rows, 0, 0);
    rc = auth_random_token(tok);
    auth_sha256_hex(tok, AUTH_TOKEN_B64, hash);
    gr_time_format(gr_time_now_ms(), now);
    if (rc == 0)
        rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO email_verifications (token_hash, user_id, email, expires_at,"
                        " created_at) VALUES ($1, $2, $3, $4, $5)",
                        (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_TEXT(req->principal->sub),
                                              GR_DB_TEXT(email), GR_DB_INT(gr_time_now_s() + 86400),
                                              GR_DB_TEXT(now) },
                        5, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    auth_verify_link_send(req, email, tok);
    gr_resp_json(resp, 202, json_pack("{s:s}", "status", "accepted"));
    return 0;
}

/* POST /api/v1/auth/verify-email/confirm {token} → 204 */
int auth_verify_email_confirm(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "token", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    struct gr_db_rows *rows = NULL;
    const char *tok = NULL;
    char hash[AUTH_SHA256_HEX];
    long long changes = 0;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "token", GR_JSON_REQUIRED, 1, 512, &tok, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    auth_sha256_hex(tok, strlen(tok), hash);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT user_id, email FROM email_verifications WHERE token_hash = $1"
                         " AND used_at IS NULL AND expires_at > $2",
                         (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_INT(gr_time_now_s()) }, 2,
                         &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_verification_token",
                               "invalid, used or expired verification token");
    }
    rc = gr_db_exec(req->db,
                    "UPDATE email_verifications SET used_at = $2 WHERE token_hash = $1 AND"
                    " used_at IS NULL",
                    (struct gr_db_val[]){ GR_DB_TEXT(hash), GR_DB_INT(gr_time_now_s()) }, 2,
                    &changes);
    if (rc == 0 && changes == 0)
        rc = GR_EBUSY;
    /* Only the address the link was sent to: an email changed since is not verified by it. */
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "UPDATE credentials SET email_verified = 1, version = version + 1"
                        " WHERE id = $1 AND email = $2",
                        (struct gr_db_val[]){ GR_DB_TEXT(gr_db_text(rows, 0, 0)),
                                              GR_DB_TEXT(gr_db_text(rows, 0, 1)) },
                        2, NULL);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}
