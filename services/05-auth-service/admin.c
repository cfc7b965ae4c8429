/*
 * admin.c - roles and permissions (auth:admin), users' roles, imported accounts, the
 * caller's sessions, and service clients with their client-credentials tokens.
 *
 * A session is one refresh-token family (one login); its live head is the family's unused
 * token. Service clients get a 256-bit random secret shown once and stored as its SHA-256
 * (a slow hash adds nothing to a secret of that entropy); POST /token (RFC 6749 §4.4, form or
 * JSON body, or HTTP Basic) answers an access token with sub = client_id and the permissions
 * of the client's roles (role "service" by default).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth.h"
#include "gr/buf.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/router.h"
#include "gr/time.h"

#define MAX_PERMS 64
#define MAX_ROLES 16

static bool name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);

    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!(islower(c) || isdigit(c) || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* "*", "resource:action" or "resource:*" with lowercase names. */
static bool perm_ok(const char *p)
{
    const char *colon = strchr(p, ':');
    char res[128];

    if (strcmp(p, "*") == 0)
        return true;
    if (!colon || (size_t)(colon - p) >= sizeof(res) || strlen(p) > 128)
        return false;
    memcpy(res, p, (size_t)(colon - p));
    res[colon - p] = '\0';
    return name_ok(res, 64) && (strcmp(colon + 1, "*") == 0 || name_ok(colon + 1, 64));
}

/* Reads a JSON array of unique strings at @key, each checked by @ok; arena copies. */
static int str_list(struct gr_req *req, struct gr_resp *resp, const char *key, size_t max,
                    bool (*ok)(const char *), const char ***out, size_t *n)
{
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    json_t *arr = NULL;
    bool present = false;

    *n = 0;
    *out = gr_arena_alloc(req->arena, (max + 1) * sizeof(char *));
    if (gr_json_arr(&r, req->json, "", key, GR_JSON_REQUIRED, max, &arr, &present) < 0)
        return GR_EVALID;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        const char *ptr = gr_json_ptr_idx(req->arena, gr_json_ptr_key(req->arena, "", key), i);

        if (!json_is_string(v) || !ok(json_string_value(v))) {
            gr_resp_field_error(req, resp, ptr, "is not a valid name");
            continue;
        }
        for (size_t j = 0; j < *n; j++)
            if (strcmp((*out)[j], json_string_value(v)) == 0)
                gr_resp_field_error(req, resp, ptr, "is given twice");
        (*out)[(*n)++] = gr_arena_strdup(req->arena, json_string_value(v));
    }
    return resp->errs.n ? GR_EVALID : 0;
}

static bool role_name_ok(const char *s)
{
    return name_ok(s, 64);
}

static json_t *role_json(struct gr_req *req, const char *name, const char *desc)
{
    struct gr_db_rows *p = NULL;
    json_t *perms = json_array();

    if (gr_db_query(req->db, req->arena,
                    "SELECT permission FROM permissions WHERE role_name = $1 ORDER BY 1",
                    (struct gr_db_val[]){ GR_DB_TEXT(name) }, 1, &p) == 0)
        for (size_t i = 0; i < gr_db_nrows(p); i++)
            json_array_append_new(perms, json_string(gr_db_text(p, i, 0)));
    return json_pack("{s:s,s:s,s:o}", "name", name, "description", desc ? desc : "", "permissions",
                     perms);
}

/* GET /api/v1/auth/roles */
int auth_roles_list(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    json_t *data;
    int rc =
        gr_db_query(req->db, req->arena,
                    "SELECT name, description FROM roles ORDER BY name LIMIT 1000", NULL, 0, &rows);

    if (rc < 0)
        return rc;
    data = json_array();
    for (size_t i = 0; i < gr_db_nrows(rows); i++)
        json_array_append_new(data, role_json(req, gr_db_text(rows, i, 0), gr_db_text(rows, i, 1)));
    gr_resp_json(resp, 200, json_pack("{s:o,s:b,s:n}", "data", data, "has_more", 0, "next_cursor"));
    return 0;
}

static int emit_role_updated(struct gr_req *req, const char *subject, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);
    int rc = text ? gr_req_emit(req, "auth.role.updated", subject, text) : GR_EINTERNAL;

    gr_free(text);
    return rc;
}

static int set_permissions(struct gr_req *req, const char *role, const char **perms, size_t n)
{
    int rc = gr_db_exec(req->db, "DELETE FROM permissions WHERE role_name = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(role) }, 1, NULL);

    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = gr_db_exec(req->db, "INSERT INTO permissions (role_name, permission) VALUES ($1, $2)",
                        (struct gr_db_val[]){ GR_DB_TEXT(role), GR_DB_TEXT(perms[i]) }, 2, NULL);
    return rc;
}

/* POST /api/v1/auth/roles {name, description?, permissions} */
int auth_roles_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "name", "description", "permissions", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *name = NULL, *desc = NULL, **perms = NULL;
    char now[GR_TIME_STR_LEN];
    size_t n = 0;
    json_t *body;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "name", GR_JSON_REQUIRED, 1, 64, &name, NULL);
    (void)gr_json_str(&r, req->json, "", "description", GR_JSON_OPTIONAL, 0, 200, &desc, NULL);
    if (name && !role_name_ok(name))
        gr_resp_field_error(req, resp, "/name", "must be 1..64 of a-z 0-9 . _ -");
    (void)str_list(req, resp, "permissions", MAX_PERMS, perm_ok, &perms, &n);
    if (resp->errs.n > 0)
        return GR_EVALID;
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(
            req->db, "INSERT INTO roles (name, description, created_at) VALUES ($1, $2, $3)",
            (struct gr_db_val[]){ GR_DB_TEXT(name), GR_DB_TEXT(desc ? desc : ""), GR_DB_TEXT(now) },
            3, NULL);
    if (rc == GR_ECONFLICT) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ECONFLICT, "role_exists", "role '%s' exists", name);
    }
    if (rc == 0)
        rc = set_permissions(req, name, perms, n);
    body = rc == 0 ? role_json(req, name, desc) : NULL;
    if (rc == 0)
        rc = emit_role_updated(req, name, body);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0) {
        json_decref(body);
        return rc;
    }
    gr_resp_json(resp, 201, body);
    return 0;
}

/* PUT /api/v1/auth/roles/{name}/permissions {permissions} */
int auth_role_permissions_put(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "permissions", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *name = gr_req_param(req, "name"), **perms = NULL;
    struct gr_db_rows *rows = NULL;
    size_t n = 0;
    json_t *body;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)str_list(req, resp, "permissions", MAX_PERMS, perm_ok, &perms, &n);
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (strcmp(name, "super_admin") == 0)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "role_fixed",
                               "super_admin always has every permission");
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT description FROM roles WHERE name = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(name) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such role");
    }
    rc = set_permissions(req, name, perms, n);
    body = rc == 0 ? role_json(req, name, gr_db_text(rows, 0, 0)) : NULL;
    if (rc == 0)
        rc = emit_role_updated(req, name, body);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0) {
        json_decref(body);
        return rc;
    }
    gr_resp_json(resp, 200, body);
    return 0;
}

/* PUT /api/v1/auth/users/{id}/roles {roles} */
int auth_user_roles_put(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "roles", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *id = gr_req_param(req, "id"), **roles = NULL;
    struct gr_db_rows *rows = NULL;
    json_t *arr, *body;
    bool keeps_admin = false;
    size_t n = 0;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)str_list(req, resp, "roles", MAX_ROLES, role_name_ok, &roles, &n);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM credentials WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such user");
    }
    for (size_t i = 0; i < n; i++) {
        rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM roles WHERE name = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(roles[i]) }, 1, &rows);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(rows) == 0)
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/roles", i),
                                "no such role");
        keeps_admin = keeps_admin || strcmp(roles[i], "super_admin") == 0;
    }
    if (resp->errs.n > 0) {
        (void)gr_db_rollback(req->db);
        return GR_EVALID;
    }
    if (!keeps_admin) {
        rc = gr_db_query(req->db, req->arena,
                         "SELECT user_id FROM user_roles WHERE role_name = 'super_admin' AND"
                         " user_id <> $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(rows) == 0) {
            struct gr_db_rows *me = NULL;

            rc = gr_db_query(req->db, req->arena,
                             "SELECT 1 FROM user_roles WHERE role_name = 'super_admin' AND"
                             " user_id = $1",
                             (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &me);
            if (rc == 0 && gr_db_nrows(me) > 0) {
                (void)gr_db_rollback(req->db);
                return gr_resp_problem(req, resp, GR_ECONFLICT, "last_super_admin",
                                       "the last super_admin keeps the role");
            }
        }
    }
    rc = gr_db_exec(req->db, "DELETE FROM user_roles WHERE user_id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    arr = json_array();
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = gr_db_exec(req->db, "INSERT INTO user_roles (user_id, role_name) VALUES ($1, $2)",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(roles[i]) }, 2, NULL);
        json_array_append_new(arr, json_string(roles[i]));
    }
    body = json_pack("{s:s,s:o}", "user_id", id, "roles", arr);
    if (rc == 0)
        rc = emit_role_updated(req, id, body);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0) {
        json_decref(body);
        return rc;
    }
    gr_resp_json(resp, 200, body);
    return 0;
}

/* POST /api/v1/auth/users/import {email, password_hash, username?} */
int auth_users_import(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "email", "password_hash", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *email_in = NULL, *hash = NULL, *email;
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN], data[512];
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "email", GR_JSON_REQUIRED, 3, 254, &email_in, NULL);
    (void)gr_json_str(&r, req->json, "", "password_hash", GR_JSON_REQUIRED, 20, 255, &hash, NULL);
    email = email_in ? auth_email_norm(req->arena, email_in) : NULL;
    if (email_in && !email)
        gr_resp_field_error(req, resp, "/email", "must be an email address");
    if (hash && strncmp(hash, "$2a$", 4) != 0 && strncmp(hash, "$2b$", 4) != 0 &&
        strncmp(hash, "$2y$", 4) != 0 && strncmp(hash, "$argon2id$", 10) != 0)
        gr_resp_field_error(req, resp, "/password_hash", "must be a bcrypt or argon2id hash");
    if (resp->errs.n > 0)
        return GR_EVALID;
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO credentials (id, email, password_hash, created_at,"
                        " updated_at) VALUES ($1, $2, $3, $4, $4)",
                        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(email), GR_DB_TEXT(hash),
                                              GR_DB_TEXT(now) },
                        4, NULL);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO user_roles (user_id, role_name) VALUES ($1, 'customer')",
                        (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
    if (rc == GR_ECONFLICT) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ECONFLICT, "account_exists",
                               "an account with this email exists");
    }
    if (rc == 0) {
        snprintf(data, sizeof(data),
                 "{\"id\":\"%s\",\"email\":\"%s\",\"roles\":[\"customer\"],\"version\":1,"
                 "\"created_at\":\"%s\",\"imported\":true}",
                 id, email, now);
        rc = gr_req_emit(req, "user.created", id, data);
    }
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 201,
                 json_pack("{s:s,s:s,s:[s],s:s}", "id", id, "email", email, "roles", "customer",
                           "created_at", now));
    return 0;
}

/* GET /api/v1/auth/sessions: the caller's live sessions, newest first */
int auth_sessions_list(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *rows = NULL;
    json_t *data;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    rc = gr_db_query(
        req->db, req->arena,
        "SELECT family_id, created_at, user_agent, ip FROM refresh_tokens"
        " WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL AND"
        " expires_at > $2 ORDER BY created_at DESC, id DESC LIMIT 100",
        (struct gr_db_val[]){ GR_DB_TEXT(req->principal->sub), GR_DB_INT(gr_time_now_s()) }, 2,
        &rows);
    if (rc < 0)
        return rc;
    data = json_array();
    for (size_t i = 0; i < gr_db_nrows(rows); i++)
        json_array_append_new(data,
                              json_pack("{s:s,s:s,s:s?,s:s?}", "id", gr_db_text(rows, i, 0),
                                        "last_used_at", gr_db_text(rows, i, 1), "user_agent",
                                        gr_db_text(rows, i, 2), "ip", gr_db_text(rows, i, 3)));
    gr_resp_json(resp, 200, json_pack("{s:o,s:b,s:n}", "data", data, "has_more", 0, "next_cursor"));
    return 0;
}

/* DELETE /api/v1/auth/sessions/{id}: the caller's own (or any, with auth:admin) */
int auth_sessions_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *fam = gr_req_param(req, "id");
    struct gr_db_rows *rows = NULL;
    int rc = auth_caller(req, resp);

    if (rc < 0)
        return rc;
    if (!gr_id_valid(fam, strlen(fam)))
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such session");
    rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena,
                         "SELECT user_id FROM refresh_tokens WHERE family_id = $1 AND"
                         " revoked_at IS NULL LIMIT 1",
                         (struct gr_db_val[]){ GR_DB_TEXT(fam) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0 || (strcmp(gr_db_text(rows, 0, 0), req->principal->sub) != 0 &&
                                   !gr_req_can(req, "auth:admin"))) {
        (void)gr_db_rollback(req->db);
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no such session");
    }
    rc = auth_family_revoke(req, fam, gr_db_text(rows, 0, 0), "session_revoked");
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc < 0)
        return rc;
    resp->status = 204;
    return 0;
}

/* POST /api/v1/auth/clients {client_id, roles?} → 201 with the secret, shown once */
int auth_clients_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "client_id", "roles", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *cid = NULL, **roles = NULL;
    char secret[AUTH_TOKEN_B64 + 1], hash[AUTH_SHA256_HEX], now[GR_TIME_STR_LEN];
    struct gr_db_rows *rows = NULL;
    json_t *arr = json_array(), *body;
    char *roles_text;
    size_t n = 0;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_str(&r, req->json, "", "client_id", GR_JSON_REQUIRED, 3, 64, &cid, NULL);
    if (cid && !name_ok(cid, 64))
        gr_resp_field_error(req, resp, "/client_id", "must be 3..64 of a-z 0-9 . _ -");
    if (json_object_get(req->json, "roles"))
        (void)str_list(req, resp, "roles", MAX_ROLES, role_name_ok, &roles, &n);
    for (size_t i = 0; resp->errs.n == 0 && i < n; i++) {
        if (strcmp(roles[i], "super_admin") == 0)
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/roles", i),
                                "a service client cannot be super_admin");
        rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM roles WHERE name = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(roles[i]) }, 1, &rows);
        if (rc == 0 && gr_db_nrows(rows) == 0)
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/roles", i),
                                "no such role");
    }
    if (resp->errs.n > 0) {
        json_decref(arr);
        return GR_EVALID;
    }
    if (n == 0)
        json_array_append_new(arr, json_string("service"));
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(roles[i]));
    roles_text = json_dumps(arr, JSON_COMPACT);
    rc = roles_text ? auth_random_token(secret) : GR_EINTERNAL;
    auth_sha256_hex(secret, AUTH_TOKEN_B64, hash);
    gr_time_format(gr_time_now_ms(), now);
    if (rc == 0)
        rc = gr_req_begin(req);
    if (rc == 0)
        rc = gr_db_exec(req->db,
                        "INSERT INTO service_clients (client_id, secret_hash, roles, created_at)"
                        " VALUES ($1, $2, $3, $4)",
                        (struct gr_db_val[]){ GR_DB_TEXT(cid), GR_DB_TEXT(hash),
                                              GR_DB_TEXT(roles_text), GR_DB_TEXT(now) },
                        4, NULL);
    gr_free(roles_text);
    if (rc == 0)
        rc = gr_db_commit(req->db);
    if (rc == GR_ECONFLICT) {
        json_decref(arr);
        return gr_resp_problem(req, resp, GR_ECONFLICT, "client_exists", "client '%s' exists", cid);
    }
    if (rc < 0) {
        json_decref(arr);
        return rc;
    }
    body = json_pack("{s:s,s:s,s:o,s:s}", "client_id", cid, "client_secret", secret, "roles", arr,
                     "created_at", now);
    OPENSSL_cleanse(secret, sizeof(secret));
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 201, body);
    return 0;
}

/* A form value (RFC 1866 urlencoding: '+' is a space) as arena text; NULL when malformed. */
static const char *form_decode(struct gr_arena *a, const char *s, size_t n)
{
    const char *out = NULL;

    return gr_url_decode(a, s, n, true, &out) == 0 ? out : NULL;
}

/* The value of @key in an application/x-www-form-urlencoded body; "" dup → NULL. */
static int form_get(struct gr_req *req, const char *key, const char **out)
{
    const char *p = req->body.ptr, *end = p + req->body.len;
    size_t klen = strlen(key);

    *out = NULL;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *eq;

        if (!amp)
            amp = end;
        eq = memchr(p, '=', (size_t)(amp - p));
        if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) {
            if (*out)
                return GR_EINVAL; /* given twice */
            *out = form_decode(req->arena, eq + 1, (size_t)(amp - eq - 1));
            if (!*out)
                return GR_EINVAL;
        }
        p = amp + 1;
    }
    return 0;
}

/* POST /api/v1/auth/token: client credentials (RFC 6749 §4.4) */
int auth_token(struct gr_req *req, struct gr_resp *resp)
{
    struct auth_app *app = req->app;
    const char *ct = gr_req_header(req, "Content-Type"), *grant = NULL, *cid = NULL, *secret = NULL,
               *basic = gr_req_header(req, "Authorization");
    char hash[AUTH_SHA256_HEX], *access = NULL;
    struct gr_db_rows *rows = NULL, *p = NULL;
    json_t *roles = NULL, *perms, *croles;
    json_error_t jerr;
    int rc = 0;

    if (req->body.len > 8192)
        return gr_resp_problem(req, resp, GR_ETOOBIG, NULL, "the body exceeds 8192 bytes");
    if (ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0) {
        if (memchr(req->body.ptr, '\0', req->body.len))
            return gr_resp_problem(req, resp, GR_EINVAL, NULL, "malformed form body");
        if (form_get(req, "grant_type", &grant) < 0 || form_get(req, "client_id", &cid) < 0 ||
            form_get(req, "client_secret", &secret) < 0)
            return gr_resp_problem(req, resp, GR_EINVAL, NULL, "malformed form body");
    } else if (ct && strncasecmp(ct, "application/json", 16) == 0) {
        json_t *j = json_loadb(req->body.ptr, req->body.len, JSON_REJECT_DUPLICATES, &jerr);

        if (!json_is_object(j)) {
            json_decref(j);
            return gr_resp_problem(req, resp, GR_EINVAL, NULL, "the body is not a JSON object");
        }
        grant = json_string_value(json_object_get(j, "grant_type"));
        cid = json_string_value(json_object_get(j, "client_id"));
        secret = json_string_value(json_object_get(j, "client_secret"));
        grant = grant ? gr_arena_strdup(req->arena, grant) : NULL;
        cid = cid ? gr_arena_strdup(req->arena, cid) : NULL;
        secret = secret ? gr_arena_strdup(req->arena, secret) : NULL;
        json_decref(j);
    } else {
        return gr_resp_problem(req, resp, GR_EMEDIA, NULL,
                               "use application/x-www-form-urlencoded or application/json");
    }
    /* HTTP Basic client authentication (RFC 6749 §2.3.1), when no secret in the body. */
    if (!secret && basic && strncasecmp(basic, "Basic ", 6) == 0) {
        size_t blen = strlen(basic + 6), n = 0;
        unsigned char *raw = gr_arena_alloc(req->arena, blen + 1);
        char *colon;
        int dn;

        if (blen == 0 || blen > 1024 || blen % 4 != 0)
            return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_client", "invalid client");
        /* standard base64 (RFC 7617), padding decoded as NUL bytes at the end */
        dn = EVP_DecodeBlock(raw, (const unsigned char *)basic + 6, (int)blen);
        n = dn > 0 ? (size_t)dn : 0;
        if (n == 0 || n > blen)
            return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_client", "invalid client");
        raw[n] = '\0';
        colon = strchr((char *)raw, ':');
        if (!colon)
            return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_client", "invalid client");
        *colon = '\0';
        cid = form_decode(req->arena, (char *)raw, strlen((char *)raw));
        secret = form_decode(req->arena, colon + 1, strlen(colon + 1));
    }
    if (!grant || strcmp(grant, "client_credentials") != 0)
        return gr_resp_problem(req, resp, GR_EINVAL, "unsupported_grant_type",
                               "grant_type must be client_credentials");
    if (!cid || !secret || strlen(cid) > 64 || strlen(secret) > 256)
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_client", "invalid client");
    auth_sha256_hex(secret, strlen(secret), hash);
    rc = gr_db_query(req->db, req->arena,
                     "SELECT secret_hash, roles FROM service_clients WHERE client_id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(cid) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) == 0 || CRYPTO_memcmp(gr_db_text(rows, 0, 0), hash, 64) != 0)
        return gr_resp_problem(req, resp, GR_EUNAUTH, "invalid_client", "invalid client");
    croles = json_loads(gr_db_text(rows, 0, 1), 0, &jerr);
    if (!json_is_array(croles)) {
        json_decref(croles);
        return GR_EINTERNAL;
    }
    perms = json_array();
    for (size_t i = 0; i < json_array_size(croles); i++) {
        const char *role = json_string_value(json_array_get(croles, i));

        if (!role)
            continue;
        rc = gr_db_query(req->db, req->arena,
                         "SELECT permission FROM permissions WHERE role_name = $1 ORDER BY 1",
                         (struct gr_db_val[]){ GR_DB_TEXT(role) }, 1, &p);
        for (size_t k = 0; rc == 0 && k < gr_db_nrows(p); k++)
            json_array_append_new(perms, json_string(gr_db_text(p, k, 0)));
    }
    roles = croles;
    if (rc == 0)
        rc = auth_access_token(app, req->arena, cid, roles, perms, &access, NULL);
    json_decref(roles);
    json_decref(perms);
    if (rc < 0)
        return rc;
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 200,
                 json_pack("{s:s,s:s,s:i}", "access_token", access, "token_type", "Bearer",
                           "expires_in", AUTH_ACCESS_TTL_S));
    return 0;
}

int auth_bootstrap_client(struct auth_app *app)
{
    const char *cid = getenv("AUTH_BOOTSTRAP_CLIENT_ID");
    const char *secret = getenv("AUTH_BOOTSTRAP_CLIENT_SECRET");
    struct gr_db_conn *db;
    char hash[AUTH_SHA256_HEX], now[GR_TIME_STR_LEN];
    int rc;

    if (!cid || !*cid || !secret || !*secret)
        return 0;
    if (!name_ok(cid, 64) || strlen(cid) < 3 || strlen(secret) < 32 || strlen(secret) > 256) {
        gr_log_error("AUTH_BOOTSTRAP_CLIENT_ID must be 3..64 of a-z 0-9 . _ - and "
                     "AUTH_BOOTSTRAP_CLIENT_SECRET 32..256 bytes");
        return GR_ECONFIG;
    }
    auth_sha256_hex(secret, strlen(secret), hash);
    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_conn(app->ctx->db, &db);
    if (rc == 0)
        rc = gr_db_begin(db);
    /* The secret may change between runs (gravity up makes a new one each time). */
    if (rc == 0)
        rc = gr_db_exec(db,
                        "INSERT INTO service_clients (client_id, secret_hash, roles, created_at)"
                        " VALUES ($1, $2, '[\"service\"]', $3) ON CONFLICT (client_id) DO UPDATE"
                        " SET secret_hash = excluded.secret_hash",
                        (struct gr_db_val[]){ GR_DB_TEXT(cid), GR_DB_TEXT(hash), GR_DB_TEXT(now) },
                        3, NULL);
    if (rc == 0)
        rc = gr_db_commit(db);
    else
        (void)gr_db_rollback(db);
    if (rc == 0)
        gr_log_info("service client ready", "client_id", cid);
    return rc;
}
