/*
 * tokens.c - access and refresh tokens.
 *
 * Access tokens are JWTs with the claims of decision 10, signed by the current key (keys.c).
 * Refresh tokens are 32 random bytes (base64url); only their SHA-256 is stored. Each refresh
 * rotates: the presented token is marked used and a child in the same family (one login's
 * session) is issued; the child is also kept sealed in the parent's row so that, for
 * AUTH_GRACE_MS, presenting the parent again returns that same child (two tabs refreshing at
 * once both succeed, decision 20). Later reuse of a used token revokes the whole family.
 */
#include <string.h>

#include "auth.h"
#include "gr/bus.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/time.h"

int auth_user_grants(struct gr_db_conn *db, struct gr_arena *a, const char *user_id, json_t **roles,
                     json_t **perms)
{
    struct gr_db_rows *r = NULL, *p = NULL;
    int rc;

    *roles = NULL;
    *perms = NULL;
    rc = gr_db_query(db, a, "SELECT role_name FROM user_roles WHERE user_id = $1 ORDER BY 1",
                     (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, &r);
    if (rc == 0)
        rc = gr_db_query(db, a,
                         "SELECT DISTINCT p.permission FROM user_roles u JOIN permissions p"
                         " ON p.role_name = u.role_name WHERE u.user_id = $1 ORDER BY 1",
                         (struct gr_db_val[]){ GR_DB_TEXT(user_id) }, 1, &p);
    if (rc < 0)
        return rc;
    *roles = json_array();
    *perms = json_array();
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        json_array_append_new(*roles, json_string(gr_db_text(r, i, 0)));
    for (size_t i = 0; i < gr_db_nrows(p); i++) {
        if (strcmp(gr_db_text(p, i, 0), "*") == 0) {
            json_array_clear(*perms);
            json_array_append_new(*perms, json_string("*"));
            break;
        }
        json_array_append_new(*perms, json_string(gr_db_text(p, i, 0)));
    }
    return 0;
}

int auth_access_token(struct auth_app *app, struct gr_arena *a, const char *sub, json_t *roles,
                      json_t *perms, char **token, const char **jti)
{
    char id[GR_ID_LEN];
    int64_t now = gr_time_now_s();
    json_t *claims;
    char *t = NULL;
    int rc;

    gr_id_new(id);
    claims = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:O,s:O}", "iss", app->ctx->cfg.jwt_issuer,
                       "aud", app->ctx->cfg.jwt_audience, "sub", sub, "iat", (json_int_t)now, "nbf",
                       (json_int_t)now, "exp", (json_int_t)(now + AUTH_ACCESS_TTL_S), "jti", id,
                       "roles", roles, "permissions", perms);
    if (!claims)
        return GR_EINTERNAL;
    rc = auth_keys_sign(app, claims, &t);
    json_decref(claims);
    if (rc < 0)
        return rc;
    *token = gr_arena_strdup(a, t);
    gr_free(t);
    if (jti)
        *jti = gr_arena_strdup(a, id);
    return 0;
}

int auth_refresh_new(struct gr_req *req, const char *user_id, const char *family_id,
                     const char *parent_id, const char **token, const char **id_out)
{
    char tok[AUTH_TOKEN_B64 + 1], hash[AUTH_SHA256_HEX], id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    const char *ua = gr_req_header(req, "User-Agent");
    int rc = auth_random_token(tok);

    if (rc < 0)
        return rc;
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    auth_sha256_hex(tok, AUTH_TOKEN_B64, hash);
    rc = gr_db_exec(
        req->db,
        "INSERT INTO refresh_tokens (id, family_id, parent_id, user_id, token_hash,"
        " expires_at, created_at, user_agent, ip)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(family_id ? family_id : id),
                              GR_DB_TEXT(parent_id), GR_DB_TEXT(user_id), GR_DB_TEXT(hash),
                              GR_DB_INT(gr_time_now_s() + AUTH_REFRESH_TTL_S), GR_DB_TEXT(now),
                              GR_DB_TEXT(ua ? gr_arena_strndup(req->arena, ua, 200) : NULL),
                              GR_DB_TEXT(gr_req_client_ip(req)) },
        9, NULL);
    if (rc < 0)
        return rc;
    *token = gr_arena_strdup(req->arena, tok);
    if (id_out)
        *id_out = gr_arena_strdup(req->arena, id);
    return 0;
}

json_t *auth_token_body(const char *access, const char *refresh)
{
    return json_pack("{s:s,s:s,s:s,s:i}", "access_token", access, "refresh_token", refresh,
                     "token_type", "Bearer", "expires_in", AUTH_ACCESS_TTL_S);
}

int auth_family_revoke(struct gr_req *req, const char *family_id, const char *user_id,
                       const char *reason)
{
    char data[256];
    long long changes = 0;
    int rc = gr_db_exec(req->db,
                        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2"
                        " AND revoked_at IS NULL",
                        (struct gr_db_val[]){ GR_DB_INT(gr_time_now_ms()), GR_DB_TEXT(family_id) },
                        2, &changes);

    if (rc < 0 || changes == 0)
        return rc;
    snprintf(data, sizeof(data),
             "{\"user_id\":\"%s\",\"family_id\":\"%s\",\"jti\":null,\"reason\":\"%s\"}", user_id,
             family_id, reason);
    return gr_req_emit(req, "auth.token.revoked", user_id, data);
}

bool auth_jti_revoked(struct gr_req *req, const char *jti)
{
    struct gr_db_rows *r = NULL;

    if (!jti)
        return false;
    if (gr_db_query(req->db, req->arena, "SELECT 1 FROM revoked_tokens WHERE jti = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(jti) }, 1, &r) < 0)
        return true; /* fail closed */
    return gr_db_nrows(r) > 0;
}
