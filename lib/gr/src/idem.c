/*
 * idem.c - Idempotency-Key: the `idempotency_keys` store and the request hooks that http.c calls
 * around a GR_R_IK route's handler (see idem_int.h for the whole flow).
 *
 * Concurrency: the reservation reads the row and inserts or replaces it in one transaction.
 * SQLite runs transactions one at a time; PostgreSQL runs them SERIALIZABLE, so two requests
 * racing for one key end with one owner and the other seeing a unique violation (GR_ECONFLICT)
 * or a serialization failure (GR_EBUSY); both are retried on a fresh transaction, which then
 * sees the winner's pending row and answers 409. The owner column (a fresh UUIDv7 per
 * reservation) makes completion and release touch only the caller's own reservation, never a
 * row another request took over after it was abandoned.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h> /* strtol */
#include <string.h>
#include <unistd.h>

#include "gr/auth.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/router.h"
#include "gr/time.h"
#include "idem_int.h"

#define ATTEMPTS    12  /* reservation / write retries on GR_EBUSY and GR_ECONFLICT */
#define PURGE_EVERY 64  /* about one reservation in this many purges expired rows */
#define PURGE_BATCH 100 /* rows deleted per purge at most */
#define REPLAY_HDR  "Idempotent-Replayed"
#define PK_WHERE    "caller = $1 AND method = $2 AND path = $3 AND idem_key = $4"

/* clang-format off */
#define TABLE_SQL(BIGINT)                                                                          \
    "CREATE TABLE idempotency_keys ("                                                              \
    " caller TEXT NOT NULL,"                                                                       \
    " method TEXT NOT NULL,"                                                                       \
    " path TEXT NOT NULL,"                                                                         \
    " idem_key TEXT NOT NULL,"                                                                     \
    " body_hash TEXT NOT NULL,"                                                                    \
    " state TEXT NOT NULL CHECK (state IN ('pending', 'done')),"                                   \
    " owner TEXT NOT NULL,"                                                                        \
    " status INTEGER,"                                                                             \
    " content_type TEXT,"                                                                          \
    " headers TEXT,"                                                                               \
    " body TEXT,"                                                                                  \
    " created_at " BIGINT " NOT NULL,"                                                             \
    " expires_at " BIGINT " NOT NULL,"                                                             \
    " PRIMARY KEY (caller, method, path, idem_key));"                                              \
    "CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);"
/* clang-format on */

const struct gr_migration gr_idem_migrations[] = {
    { "0001_idempotency_keys", TABLE_SQL("INTEGER"), TABLE_SQL("BIGINT") },
    { NULL, NULL, NULL },
};

/* ---- store ---------------------------------------------------------------------------------- */

/* A short jittered pause before retry @attempt (1-based), growing exponentially. */
static void backoff(int attempt)
{
    unsigned window = 1000u << (attempt < 7 ? attempt : 7); /* microseconds */
    unsigned jitter = (unsigned)((uint64_t)gr_time_mono_ns() / 1000 % (window / 2));

    usleep((useconds_t)(window / 2 + jitter));
}

static bool retryable(int rc)
{
    return rc == GR_EBUSY || rc == GR_ECONFLICT;
}

/* One attempt of gr_idem__reserve: a transaction that must be rolled back on error. */
static int reserve_once(struct gr_db_conn *c, struct gr_arena *a, const struct gr_db_val *pk,
                        const char *hash, const char *owner, long long now_ms, int *outcome,
                        struct gr_idem_resp *stored)
{
    struct gr_db_val p[8];
    struct gr_db_rows *r;
    const char *state, *old_hash;
    long long created, expires;
    long long changes = 0;
    int rc;

    rc = gr_db_begin(c);
    if (rc < 0)
        return rc;
    rc = gr_db_query(c, a,
                     "SELECT state, body_hash, status, content_type, headers, body, created_at,"
                     " expires_at FROM idempotency_keys WHERE " PK_WHERE,
                     pk, 4, &r);
    if (rc < 0)
        return rc;
    memcpy(p, pk, 4 * sizeof(*pk));
    p[4] = GR_DB_TEXT(hash);
    p[5] = GR_DB_TEXT(owner);
    p[6] = GR_DB_INT(now_ms);
    p[7] = GR_DB_INT(now_ms + GR_IDEM_TTL_MS);
    if (gr_db_nrows(r) == 0) {
        rc = gr_db_exec(c,
                        "INSERT INTO idempotency_keys (caller, method, path, idem_key, body_hash,"
                        " state, owner, created_at, expires_at)"
                        " VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
                        p, 8, &changes);
        *outcome = GR_IDEM_OWNED;
        goto commit;
    }
    state = gr_db_text(r, 0, 0);
    old_hash = gr_db_text(r, 0, 1);
    created = gr_db_int(r, 0, 6);
    expires = gr_db_int(r, 0, 7);
    if (expires <= now_ms ||
        (strcmp(state, "pending") == 0 && created <= now_ms - GR_IDEM_ABANDON_MS)) {
        /* Expired, or abandoned by a process that died: the key is free again. */
        rc = gr_db_exec(c,
                        "UPDATE idempotency_keys SET body_hash = $5, state = 'pending',"
                        " owner = $6, status = NULL, content_type = NULL, headers = NULL,"
                        " body = NULL, created_at = $7, expires_at = $8 WHERE " PK_WHERE,
                        p, 8, &changes);
        *outcome = GR_IDEM_OWNED;
        goto commit;
    }
    if (!old_hash || strcmp(old_hash, hash) != 0) {
        *outcome = GR_IDEM_REUSE;
    } else if (strcmp(state, "pending") == 0) {
        *outcome = GR_IDEM_IN_FLIGHT;
    } else {
        *outcome = GR_IDEM_REPLAY;
        stored->status = (int)gr_db_int(r, 0, 2);
        stored->content_type = gr_db_text(r, 0, 3);
        stored->headers = gr_db_text(r, 0, 4);
        stored->body = gr_db_text(r, 0, 5);
    }
commit:
    if (rc < 0)
        return rc;
    return gr_db_commit(c);
}

int gr_idem__reserve(struct gr_db_conn *c, struct gr_arena *a, const char *caller,
                     const char *method, const char *path, const char *key, const char *hash,
                     const char *owner, long long now_ms, int *outcome, struct gr_idem_resp *stored)
{
    struct gr_db_val pk[4] = { GR_DB_TEXT(caller), GR_DB_TEXT(method), GR_DB_TEXT(path),
                               GR_DB_TEXT(key) };
    int rc;

    memset(stored, 0, sizeof(*stored));
    for (int attempt = 1;; attempt++) {
        rc = reserve_once(c, a, pk, hash, owner, now_ms, outcome, stored);
        if (gr_db_in_tx(c))
            (void)gr_db_rollback(c);
        if (!retryable(rc) || attempt == ATTEMPTS)
            break;
        backoff(attempt);
    }
    return rc;
}

/* Runs one write statement in its own transaction (unless one is open), retried when busy. */
static int exec_write(struct gr_db_conn *c, const char *sql, const struct gr_db_val *p, size_t n,
                      long long *changes)
{
    int rc;

    if (gr_db_in_tx(c))
        return gr_db_exec(c, sql, p, n, changes);
    for (int attempt = 1;; attempt++) {
        rc = gr_db_begin(c);
        if (rc == 0)
            rc = gr_db_exec(c, sql, p, n, changes);
        if (rc == 0)
            rc = gr_db_commit(c);
        if (gr_db_in_tx(c))
            (void)gr_db_rollback(c);
        if (!retryable(rc) || attempt == ATTEMPTS)
            break;
        backoff(attempt);
    }
    return rc;
}

int gr_idem__complete(struct gr_db_conn *c, const char *caller, const char *method,
                      const char *path, const char *key, const char *owner,
                      const struct gr_idem_resp *r)
{
    struct gr_db_val p[9] = { GR_DB_TEXT(caller),
                              GR_DB_TEXT(method),
                              GR_DB_TEXT(path),
                              GR_DB_TEXT(key),
                              GR_DB_TEXT(owner),
                              GR_DB_INT(r->status),
                              GR_DB_TEXT(r->content_type),
                              GR_DB_TEXT(r->headers),
                              GR_DB_TEXT(r->body) };
    long long changes = 0;
    int rc;

    rc = exec_write(c,
                    "UPDATE idempotency_keys SET state = 'done', status = $6, content_type = $7,"
                    " headers = $8, body = $9 WHERE " PK_WHERE " AND owner = $5"
                    " AND state = 'pending'",
                    p, 9, &changes);
    if (rc == 0 && changes != 1)
        rc = GR_ECONFLICT;
    return rc;
}

void gr_idem__release(struct gr_db_conn *c, const char *caller, const char *method,
                      const char *path, const char *key, const char *owner)
{
    struct gr_db_val p[5] = { GR_DB_TEXT(caller), GR_DB_TEXT(method), GR_DB_TEXT(path),
                              GR_DB_TEXT(key), GR_DB_TEXT(owner) };
    int rc;

    if (gr_db_in_tx(c))
        (void)gr_db_rollback(c);
    rc =
        exec_write(c, "DELETE FROM idempotency_keys WHERE " PK_WHERE " AND owner = $5", p, 5, NULL);
    if (rc < 0)
        gr_log_warn("idempotency key not released", "code", gr_err_name(rc));
}

int gr_idem__purge(struct gr_db_conn *c, long long now_ms, int max, long long *deleted)
{
    struct gr_db_val p[2] = { GR_DB_INT(now_ms), GR_DB_INT(max) };

    return exec_write(c,
                      "DELETE FROM idempotency_keys WHERE (caller, method, path, idem_key) IN"
                      " (SELECT caller, method, path, idem_key FROM idempotency_keys"
                      " WHERE expires_at <= $1 LIMIT $2)",
                      p, 2, deleted);
}

/* ---- request hooks -------------------------------------------------------------------------- */

static bool key_ok(const char *k)
{
    size_t n = 0;

    for (; k[n]; n++) {
        if (n >= GR_IDEM_KEY_MAX || (unsigned char)k[n] < 0x20 || (unsigned char)k[n] > 0x7e)
            return false;
    }
    return n > 0;
}

static const char *sha256_hex(struct gr_arena *a, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    char *out;

    if (!EVP_Digest(p ? p : "", n, md, &len, EVP_sha256(), NULL) || len != 32)
        GR_BUG("sha-256 failed");
    out = gr_arena_alloc(a, 65);
    for (unsigned i = 0; i < len; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return out;
}

/* Puts a stored response into @resp, marked as a replay. */
static void replay(struct gr_req *req, struct gr_resp *resp, const struct gr_idem_resp *s)
{
    json_t *hs = s->headers ? json_loads(s->headers, 0, NULL) : NULL;
    size_t i;
    json_t *h;

    resp->status = s->status;
    resp->content_type = s->content_type;
    resp->body = s->body;
    resp->body_len = s->body ? strlen(s->body) : 0;
    json_array_foreach(hs, i, h)
    {
        const char *name = json_string_value(json_array_get(h, 0));
        const char *value = json_string_value(json_array_get(h, 1));

        if (name && value && resp->nheaders < GR_RESP_MAX_HEADERS - 1)
            gr_resp_header(req, resp, name, value);
    }
    json_decref(hs);
    gr_resp_header(req, resp, REPLAY_HDR, "true");
}

int gr_idem__begin(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik)
{
    unsigned flags = req->route->flags;
    const char *key;
    char owner[GR_ID_LEN];
    struct gr_idem_resp stored;
    int outcome = GR_IDEM_OWNED, rc;
    long long now = gr_time_now_ms();

    memset(ik, 0, sizeof(*ik));
    if (!(flags & (GR_R_IK | GR_R_IK_REQUIRED)))
        return 0;
    key = gr_req_header(req, "Idempotency-Key");
    if (!key) {
        if (flags & GR_R_IK_REQUIRED)
            return gr_resp_problem(req, resp, GR_EINVAL, "idempotency_key_required",
                                   "this operation requires an Idempotency-Key header");
        return 0;
    }
    if (!key_ok(key))
        return gr_resp_problem(req, resp, GR_EINVAL, NULL,
                               "Idempotency-Key must be 1..%d printable ASCII characters",
                               GR_IDEM_KEY_MAX);
    if (!req->db)
        return 0; /* a service without a database cannot keep keys */
    ik->caller = req->principal ? req->principal->sub : "anonymous";
    ik->key = key;
    ik->hash = sha256_hex(req->arena, req->body.ptr, req->body.len);
    gr_id_new(owner);
    ik->owner = gr_arena_strdup(req->arena, owner);
    rc = gr_idem__reserve(req->db, req->arena, ik->caller, req->method, req->path, key, ik->hash,
                          ik->owner, now, &outcome, &stored);
    if (rc < 0)
        return rc;
    switch (outcome) {
    case GR_IDEM_OWNED:
        ik->active = true;
        /* The UUIDv7's last character is random: purge about once per PURGE_EVERY keys. */
        if (strtol(owner + 34, NULL, 16) % PURGE_EVERY == 0 &&
            gr_idem__purge(req->db, now, PURGE_BATCH, NULL) < 0)
            gr_log_warn("idempotency purge failed");
        return 0;
    case GR_IDEM_REPLAY:
        gr_log_debug("idempotent replay", "route", req->route->pattern, "request_id",
                     req->request_id);
        replay(req, resp, &stored);
        return 1;
    case GR_IDEM_IN_FLIGHT:
        return gr_resp_problem(req, resp, GR_ECONFLICT, "idempotency_in_flight",
                               "a request with this Idempotency-Key is still in progress");
    default:
        return gr_resp_problem(req, resp, GR_EVALID, "idempotency_key_reuse",
                               "this Idempotency-Key was used with a different request body");
    }
}

/* True when @p (@n bytes) is UTF-8 text without NUL, as a TEXT column needs. */
static bool utf8_text(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;

    while (i < n) {
        unsigned char b = s[i];
        size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;

        if (b == 0 || len == 0 || i + len > n || (len == 2 && b < 0xc2) || (len == 4 && b > 0xf4))
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        }
        if ((len == 3 && b == 0xe0 && s[i + 1] < 0xa0) ||
            (len == 3 && b == 0xed && s[i + 1] > 0x9f) ||
            (len == 4 && b == 0xf0 && s[i + 1] < 0x90) ||
            (len == 4 && b == 0xf4 && s[i + 1] > 0x8f))
            return false;
        i += len;
    }
    return true;
}

/*
 * Renders @resp's JSON body into resp->body (what reply() would send) and fills @out.
 * Returns false when the response cannot be stored.
 */
/* @j rendered as reply() renders it, into the arena; *@len (may be NULL) its length. */
static char *dump(struct gr_arena *a, const json_t *j, size_t *len)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    char *txt;

    if (n == 0)
        GR_BUG("json_dumpb failed");
    txt = gr_arena_alloc(a, n + 1);
    if (json_dumpb(j, txt, n, JSON_COMPACT) != n)
        GR_BUG("json_dumpb failed");
    txt[n] = '\0';
    if (len)
        *len = n;
    return txt;
}

static bool capture(struct gr_req *req, struct gr_resp *resp, struct gr_idem_resp *out)
{
    json_t *hs;

    if (resp->json) {
        resp->body = dump(req->arena, resp->json, &resp->body_len);
        json_decref(resp->json);
        resp->json = NULL;
        if (!resp->content_type)
            resp->content_type = "application/json";
    }
    if (resp->body_len > GR_IDEM_MAX_BODY || (resp->body && !utf8_text(resp->body, resp->body_len)))
        return false;
    out->status = resp->status ? resp->status : 200;
    out->content_type = resp->body_len ? resp->content_type : NULL;
    out->body = resp->body ? gr_arena_strndup(req->arena, resp->body, resp->body_len) : NULL;
    hs = json_array();
    for (size_t i = 0; i < resp->nheaders; i++)
        json_array_append_new(hs, json_pack("[ss]", resp->headers[i].name, resp->headers[i].value));
    out->headers = dump(req->arena, hs, NULL);
    json_decref(hs);
    return true;
}

static bool success(const struct gr_resp *resp)
{
    int status = resp->status ? resp->status : 200;

    return status >= 200 && status < 300;
}

int gr_idem__store(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik)
{
    struct gr_idem_resp r;
    int rc;

    ik->stored = false;
    if (!ik->active || !success(resp))
        return 0;
    if (!capture(req, resp, &r))
        return 0; /* gr_idem__end releases the key */
    rc = gr_idem__complete(req->db, ik->caller, req->method, req->path, ik->key, ik->owner, &r);
    if (rc == GR_ECONFLICT)
        return gr_resp_problem(req, resp, GR_ECONFLICT, "idempotency_in_flight",
                               "the Idempotency-Key was taken over by another request");
    if (rc == 0)
        ik->stored = true;
    return rc;
}

void gr_idem__end(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int rc)
{
    if (!ik->active)
        return;
    if (rc == 0 && success(resp) && !ik->stored) {
        if (gr_idem__store(req, resp, ik) < 0)
            gr_log_warn("idempotent response not stored", "route", req->route->pattern,
                        "request_id", req->request_id);
        else if (!ik->stored)
            gr_log_warn("idempotent response too large or not text: key released", "route",
                        req->route->pattern, "request_id", req->request_id);
    }
    if (rc < 0 || !ik->stored)
        gr_idem__release(req->db, ik->caller, req->method, req->path, ik->key, ik->owner);
    ik->active = false;
}
