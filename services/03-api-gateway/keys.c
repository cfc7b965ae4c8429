/*
 * keys.c - API keys (SERVICES §03 `api_keys`): the admin API (gateway:admin) that creates,
 * lists and deletes keys, and the snapshot the data plane looks keys up in.
 *
 * A key is "gwk_" + 64 hex digits of randomness (256 bits), shown once at creation; the table
 * keeps only its SHA-256 (hex), which is enough for a key of that entropy. The control plane
 * loads every key hash with its owner into an immutable sorted array and swaps it in under a
 * write lock (after each change here, and when the sync thread sees another replica's change);
 * data-plane threads hash the presented key and binary-search the array under the read lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gateway.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"

#define KEY_PREFIX     "gwk_"
#define KEY_RAND_BYTES 32
#define NAME_MAX_CHARS 100
#define SCOPES_MAX     64
#define SCOPE_MAX      128
#define LIST_SCOPE     "GET " GW_ROUTES_PREFIX "/api-keys"
#define KEY_COLS       "id, owner_id, scopes, name, created_at"

struct key_ent {
    char hash[GW_KEY_HASH_LEN + 1];
    char owner[GW_NAME_MAX];
};

static pthread_rwlock_t keys_mu = PTHREAD_RWLOCK_INITIALIZER;
static pthread_mutex_t reload_mu = PTHREAD_MUTEX_INITIALIZER; /* a newer read is never undone */
static struct key_ent *keys_v;                                /* sorted by hash */
static size_t keys_n;

void gw_key_hash(const char *key, size_t len, char out[GW_KEY_HASH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    unsigned int mdlen = 0;

    if (EVP_Digest(key, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != sizeof(md))
        GR_BUG("SHA-256 failed");
    for (size_t i = 0; i < sizeof(md); i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[GW_KEY_HASH_LEN] = '\0';
}

static int ent_cmp(const void *x, const void *y)
{
    const struct key_ent *a = x, *b = y;

    return strcmp(a->hash, b->hash);
}

bool gw_apikey_lookup(const char *key, size_t len, char *owner, size_t owner_len)
{
    struct key_ent probe = { .hash = "" };
    const struct key_ent *e = NULL;

    if (owner_len > 0)
        owner[0] = '\0';
    if (key == NULL || len == 0 || len > GW_KEY_MAX)
        return false;
    gw_key_hash(key, len, probe.hash);
    pthread_rwlock_rdlock(&keys_mu);
    if (keys_n > 0)
        e = bsearch(&probe, keys_v, keys_n, sizeof(*keys_v), ent_cmp);
    if (e != NULL && owner_len > 0)
        snprintf(owner, owner_len, "%s", e->owner);
    pthread_rwlock_unlock(&keys_mu);
    return e != NULL;
}

size_t gw_apikeys_count(void)
{
    size_t n;

    pthread_rwlock_rdlock(&keys_mu);
    n = keys_n;
    pthread_rwlock_unlock(&keys_mu);
    return n;
}

int gw_apikeys_reload(struct gr_db_conn *c)
{
    struct gr_arena ar;
    struct gr_db_rows *rows = NULL;
    struct key_ent *v = NULL, *old;
    size_t n = 0;
    int rc;

    pthread_mutex_lock(&reload_mu);
    gr_arena_init(&ar);
    rc = gr_db_query(c, &ar, "SELECT key_hash, owner_id FROM api_keys", NULL, 0, &rows);
    if (rc == 0) {
        n = gr_db_nrows(rows);
        v = gr_xcalloc(n ? n : 1, sizeof(*v));
        for (size_t i = 0; i < n; i++) {
            snprintf(v[i].hash, sizeof(v[i].hash), "%s", gr_db_text(rows, i, 0));
            snprintf(v[i].owner, sizeof(v[i].owner), "%s", gr_db_text(rows, i, 1));
        }
        qsort(v, n, sizeof(*v), ent_cmp);
        pthread_rwlock_wrlock(&keys_mu);
        old = keys_v;
        keys_v = v;
        keys_n = n;
        pthread_rwlock_unlock(&keys_mu);
        gr_free(old);
    }
    gr_arena_release(&ar);
    pthread_mutex_unlock(&reload_mu);
    return rc;
}

void gw_apikeys_clear(void)
{
    pthread_rwlock_wrlock(&keys_mu);
    gr_free(keys_v);
    keys_v = NULL;
    keys_n = 0;
    pthread_rwlock_unlock(&keys_mu);
}

/* ---- admin API ---------------------------------------------------------------------------- */

static bool scope_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > SCOPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ':' || c == '*' ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static json_t *key_json(const struct gr_db_rows *r, size_t i)
{
    json_t *scopes = json_loads(gr_db_text(r, i, 2), 0, NULL);

    if (!json_is_array(scopes)) {
        json_decref(scopes);
        scopes = json_array();
    }
    return json_pack("{s:s,s:s,s:o,s:s,s:s}", "id", gr_db_text(r, i, 0), "owner_id",
                     gr_db_text(r, i, 1), "scopes", scopes, "name", gr_db_text(r, i, 3),
                     "created_at", gr_db_text(r, i, 4));
}

int gw_apikeys_create(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const allowed[] = { "owner_id", "scopes", "name", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    const char *owner = NULL, *name = "";
    json_t *scopes = NULL, *body, *sv;
    unsigned char raw[KEY_RAND_BYTES];
    char key[sizeof(KEY_PREFIX) + 2 * KEY_RAND_BYTES], hash[GW_KEY_HASH_LEN + 1];
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    struct gr_str stext;
    struct gr_db_rows *rows = NULL;
    size_t i;
    int rc;

    (void)gr_json_only(&r, req->json, "", allowed);
    (void)gr_json_str(&r, req->json, "", "owner_id", GR_JSON_REQUIRED, 1, 64, &owner, NULL);
    (void)gr_json_arr(&r, req->json, "", "scopes", GR_JSON_REQUIRED, SCOPES_MAX, &scopes, NULL);
    (void)gr_json_str(&r, req->json, "", "name", GR_JSON_OPTIONAL, 0, NAME_MAX_CHARS, &name, NULL);
    if (owner != NULL && !gr_id_valid(owner, strlen(owner)))
        gr_resp_field_error(req, resp, "/owner_id", "must be a lowercase UUID");
    json_array_foreach(scopes, i, sv)
    {
        if (!json_is_string(sv) || !scope_ok(json_string_value(sv)))
            gr_resp_field_error(req, resp, gr_json_ptr_idx(req->arena, "/scopes", i),
                                "must be a permission of 1..128 characters [a-z0-9_:*.-]");
    }
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = gr_json_dump(req->arena, scopes, &stext);
    if (rc < 0)
        return rc;
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return GR_EINTERNAL;
    memcpy(key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    for (i = 0; i < sizeof(raw); i++) {
        static const char hex[] = "0123456789abcdef";
        key[sizeof(KEY_PREFIX) - 1 + 2 * i] = hex[raw[i] >> 4];
        key[sizeof(KEY_PREFIX) - 1 + 2 * i + 1] = hex[raw[i] & 15];
    }
    key[sizeof(key) - 1] = '\0';
    gw_key_hash(key, strlen(key), hash);
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    rc =
        gr_db_exec(req->db,
                   "INSERT INTO api_keys (id, key_hash, owner_id, scopes, name, created_at)"
                   " VALUES ($1, $2, $3, $4, $5, $6)",
                   (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(hash), GR_DB_TEXT(owner),
                                         GR_DB_TEXT(stext.ptr), GR_DB_TEXT(name), GR_DB_TEXT(now) },
                   6, NULL);
    if (rc < 0)
        return rc;
    rc = gw_apikeys_reload(req->db);
    if (rc < 0)
        gr_log_error("api key snapshot reload failed", "code", gr_err_name(rc));
    rc = gr_db_query(req->db, req->arena, "SELECT " KEY_COLS " FROM api_keys WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(rows) != 1)
        return GR_EINTERNAL;
    body = key_json(rows, 0);
    json_object_set_new(body, "key", json_string(key));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(raw, sizeof(raw));
    gr_resp_header(req, resp, "Location",
                   gr_arena_printf(req->arena, GW_ROUTES_PREFIX "/api-keys/%s", id));
    gr_resp_header(req, resp, "Cache-Control", "no-store");
    gr_resp_json(resp, 201, body);
    return 0;
}

int gw_apikeys_list(struct gr_req *req, struct gr_resp *resp)
{
    const char *cursor = gr_req_query(req, "cursor");
    const char *owner = gr_req_query(req, "owner_id");
    struct gr_db_val key = GR_DB_NULL, kid = GR_DB_NULL, own = GR_DB_NULL;
    struct gr_db_rows *rows = NULL;
    const char *payload = NULL, *next = NULL, *bar;
    size_t n, len = 0;
    bool has_more;
    int limit = 20, rc;
    json_t *data;

    if (gr_req_limit(req, resp, &limit) < 0)
        return GR_EVALID;
    if (owner != NULL) {
        if (!gr_id_valid(owner, strlen(owner))) {
            gr_resp_field_error(req, resp, "query.owner_id", "must be a lowercase UUID");
            return GR_EVALID;
        }
        own = GR_DB_TEXT(owner);
    }
    if (cursor != NULL) {
        /* payload: "<created_at>|<id>" */
        if (gr_cursor_decode(&req->ctx->cursor_key, req->arena, LIST_SCOPE, cursor, &payload,
                             &len) < 0 ||
            (bar = memchr(payload, '|', len)) == NULL ||
            !gr_id_valid(bar + 1, len - (size_t)(bar + 1 - payload)))
            return gr_resp_problem(req, resp, GR_EINVAL, "invalid_cursor",
                                   "the cursor is invalid for this list");
        key = GR_DB_TEXT(gr_arena_strndup(req->arena, payload, (size_t)(bar - payload)));
        kid = GR_DB_TEXT(bar + 1);
    }
    rc = gr_db_query(req->db, req->arena,
                     "SELECT " KEY_COLS " FROM api_keys WHERE (CAST($4 AS TEXT) IS NULL"
                     " OR owner_id = CAST($4 AS TEXT)) AND (CAST($1 AS TEXT) IS NULL"
                     " OR created_at < CAST($1 AS TEXT)"
                     " OR (created_at = CAST($1 AS TEXT) AND id < CAST($2 AS TEXT)))"
                     " ORDER BY created_at DESC, id DESC LIMIT CAST($3 AS INTEGER)",
                     (struct gr_db_val[]){ key, kid, GR_DB_INT(limit + 1), own }, 4, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    has_more = n > (size_t)limit;
    if (has_more)
        n = (size_t)limit;
    data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, key_json(rows, i));
    if (has_more)
        next = gr_arena_printf(req->arena, "%s|%s", gr_db_text(rows, n - 1, 4),
                               gr_db_text(rows, n - 1, 0));
    return gr_resp_list(req, resp, data, has_more, LIST_SCOPE, next);
}

int gw_apikeys_delete(struct gr_req *req, struct gr_resp *resp)
{
    const char *id = gr_req_param(req, "id");
    long long changes = 0;
    int rc;

    if (id == NULL || !gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_exec(req->db, "DELETE FROM api_keys WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &changes);
    if (rc < 0)
        return rc;
    if (changes != 1)
        return GR_ENOTFOUND;
    rc = gw_apikeys_reload(req->db);
    if (rc < 0)
        gr_log_error("api key snapshot reload failed", "code", gr_err_name(rc));
    gr_resp_json(resp, 204, NULL);
    return 0;
}
