/*
 * idem.c - Idempotency-Key: the `idempotency_keys` store and the request hooks that http.c calls
 * around a GR_R_IK route's handler (see idem_int.h for the whole flow).
 *
 * Concurrency: a new key is reserved by one INSERT … ON CONFLICT DO NOTHING (alone on
 * PostgreSQL, in a group-committed transaction on SQLite): the unique key gives it one owner.
 * A key that exists is read and, when expired or abandoned, replaced in one transaction.
 * SQLite runs transactions one at a time; PostgreSQL runs them SERIALIZABLE, so two requests
 * racing for one key end with one owner and the other seeing a unique violation (GR_ECONFLICT)
 * or a serialization failure (GR_EBUSY); both are retried on a fresh transaction, which then
 * sees the winner's pending row and answers 409. Single-statement writes (completion, release,
 * purge, renewal) run alone on PostgreSQL: one round trip, no BEGIN/COMMIT. The owner column (a
 * fresh UUIDv7 per reservation) makes completion and release touch only the caller's own
 * reservation, never a row another request took over after it was abandoned.
 *
 * Leases: while gr_idem__lease_start's thread runs, a reservation carries lease_until (library
 * time, now + the lease) and the process keeps its owner token in an in-memory set until
 * gr_idem__end; every lease/3 the thread pushes lease_until forward for the tokens held since
 * the previous tick (younger ones are still inside their first lease; skipping them keeps
 * short requests' rows untouched). A pending row whose lease ran out belongs to a process that
 * died or lost its database for a whole lease: it is replaced at once. Rows without a lease
 * (written before the column existed, or by a process without the thread) keep the old rule:
 * abandoned GR_IDEM_ABANDON_MS after created_at.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h> /* strtol */
#include <string.h>
#include <unistd.h>

#include "db_int.h"
#include "gr/auth.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/router.h"
#include "gr/time.h"
#include "idem_int.h"

#define ATTEMPTS    12  /* reservation / write retries on GR_EBUSY and GR_ECONFLICT */
#define PURGE_EVERY 64  /* about one reservation in this many purges expired rows */
#define PURGE_BATCH 100 /* rows deleted per purge at most */
#define REPLAY_HDR  "Idempotent-Replayed"
#define PK_WHERE    "caller = $1 AND method = $2 AND path = $3 AND idem_key = $4"
#define INSERT_SQL                                                                                 \
    "INSERT INTO idempotency_keys (caller, method, path, idem_key, body_hash, state, owner,"       \
    " created_at, expires_at, lease_until) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9)" \
    " ON CONFLICT (caller, method, path, idem_key) DO NOTHING"

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
#define LEASE_SQL(BIGINT)                                                                          \
    "ALTER TABLE idempotency_keys ADD COLUMN lease_until " BIGINT ";"                               \
    "CREATE INDEX idempotency_keys_owner ON idempotency_keys (owner);"
/* clang-format on */

const struct gr_migration gr_idem_migrations[] = {
    { "0001_idempotency_keys", TABLE_SQL("INTEGER"), TABLE_SQL("BIGINT") },
    { "0002_idempotency_leases", LEASE_SQL("INTEGER"), LEASE_SQL("BIGINT") },
    { NULL, NULL, NULL },
};

/* The lease of new reservations, ms; 0 while no renewal thread runs (rows get no lease). */
static atomic_llong lease_active_ms;

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

static void reserve_params(struct gr_db_val p[9], const struct gr_db_val *pk, const char *hash,
                           const char *owner, long long now_ms, long long lease_ms)
{
    memcpy(p, pk, 4 * sizeof(*pk));
    p[4] = GR_DB_TEXT(hash);
    p[5] = GR_DB_TEXT(owner);
    p[6] = GR_DB_INT(now_ms);
    p[7] = GR_DB_INT(now_ms + GR_IDEM_TTL_MS);
    p[8] = lease_ms > 0 ? GR_DB_INT(now_ms + lease_ms) : GR_DB_NULL;
}

/*
 * The key exists (the insert did nothing): reads it, inside the open transaction, and takes it
 * over when expired or abandoned, or reports it. GR_EBUSY when the row is not visible (deleted
 * since, or committed after this transaction's snapshot): a fresh attempt sees it.
 */
static int reserve_existing(struct gr_db_conn *c, struct gr_arena *a, const struct gr_db_val *p,
                            long long now_ms, int *outcome, struct gr_idem_resp *stored)
{
    struct gr_db_rows *r;
    const char *state, *old_hash;
    long long created, expires, until;
    int rc;

    rc = gr_db_query(c, a,
                     "SELECT state, body_hash, status, content_type, headers, body, created_at,"
                     " expires_at, lease_until FROM idempotency_keys WHERE " PK_WHERE,
                     p, 4, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) == 0)
        return GR_EBUSY;
    state = gr_db_text(r, 0, 0);
    old_hash = gr_db_text(r, 0, 1);
    created = gr_db_int(r, 0, 6);
    expires = gr_db_int(r, 0, 7);
    until = gr_db_isnull(r, 0, 8) ? created + GR_IDEM_ABANDON_MS : gr_db_int(r, 0, 8);
    if (expires <= now_ms || (strcmp(state, "pending") == 0 && until <= now_ms)) {
        /* Expired, or abandoned by a process that died (its lease ran out): the key is free. */
        *outcome = GR_IDEM_OWNED;
        return gr_db_exec(c,
                          "UPDATE idempotency_keys SET body_hash = $5, state = 'pending',"
                          " owner = $6, status = NULL, content_type = NULL, headers = NULL,"
                          " body = NULL, created_at = $7, expires_at = $8, lease_until = $9"
                          " WHERE " PK_WHERE,
                          p, 9, NULL);
    }
    if (!old_hash || strcmp(old_hash, p[4].s) != 0) {
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
    return 0;
}

/* One attempt of gr_idem__reserve: a transaction that must be rolled back on error. */
static int reserve_once(struct gr_db_conn *c, struct gr_arena *a, const struct gr_db_val *pk,
                        const char *hash, const char *owner, long long now_ms, int *outcome,
                        struct gr_idem_resp *stored)
{
    struct gr_db_val p[9];
    long long changes = 0;
    bool pg_alone;
    int rc;

    reserve_params(p, pk, hash, owner, now_ms, atomic_load(&lease_active_ms));
    /*
     * A new key, the usual case, is one statement: the insert that does nothing when the key
     * exists. PostgreSQL runs it alone (autocommit: one round trip instead of four), SQLite
     * in the shared writer's transaction (group commit). Only an existing key reads the row.
     */
    pg_alone = c->db->engine == GR_DB_PG && !gr_db_in_tx(c);
    if (!pg_alone) {
        rc = gr_db_begin(c);
        if (rc < 0)
            return rc;
    }
    rc = gr_db_exec(c, INSERT_SQL, p, 9, &changes);
    *outcome = GR_IDEM_OWNED;
    if (rc == 0 && changes != 1) {
        if (pg_alone)
            rc = gr_db_begin(c);
        if (rc == 0)
            rc = reserve_existing(c, a, p, now_ms, outcome, stored);
    }
    if (rc < 0 || !gr_db_in_tx(c))
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

/*
 * Runs one write statement in its own transaction (unless one is open), retried when busy:
 * on PostgreSQL the statement alone (autocommit, one round trip), on SQLite inside a
 * transaction of the shared writer (group commit).
 */
static int exec_write(struct gr_db_conn *c, const char *sql, const struct gr_db_val *p, size_t n,
                      long long *changes)
{
    bool pg = c->db->engine == GR_DB_PG;
    int rc;

    if (gr_db_in_tx(c))
        return gr_db_exec(c, sql, p, n, changes);
    for (int attempt = 1;; attempt++) {
        rc = pg ? 0 : gr_db_begin(c);
        if (rc == 0)
            rc = gr_db_exec(c, sql, p, n, changes);
        if (rc == 0 && !pg)
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

/* ---- leases --------------------------------------------------------------------------------- */

#define OWNER_MAX   64 /* bytes of an owner token, NUL included */
#define RENEW_BATCH 16 /* owners per renewal statement */
#define RETRY_MS    500

struct held {
    char owner[OWNER_MAX];
    long long since; /* monotonic ms */
};

/* The renewal thread and the owner tokens this process holds; all under mu. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool on, stop;
    struct gr_db *db;
    long long lease, every; /* ms */
    struct held *v;
    size_t n, cap;
} L = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* "$2, $3, ..., $(RENEW_BATCH + 1)" built once: one constant statement per connection. */
static char renew_sql[512];
static pthread_once_t renew_once = PTHREAD_ONCE_INIT;

static void build_renew_sql(void)
{
    size_t off = (size_t)snprintf(renew_sql, sizeof(renew_sql),
                                  "UPDATE idempotency_keys SET lease_until = $1"
                                  " WHERE state = 'pending' AND owner IN (");

    for (int i = 0; i < RENEW_BATCH && off < sizeof(renew_sql); i++)
        off += (size_t)snprintf(renew_sql + off, sizeof(renew_sql) - off, "%s$%d", i ? ", " : "",
                                i + 2);
    if (off + 2 >= sizeof(renew_sql))
        GR_BUG("renewal statement too long");
    snprintf(renew_sql + off, sizeof(renew_sql) - off, ")");
}

void gr_idem__hold(const char *owner)
{
    if (strlen(owner) >= OWNER_MAX)
        return; /* cannot happen with gr_id_new tokens; the row keeps its first lease */
    pthread_mutex_lock(&L.mu);
    if (L.on) {
        if (L.n == L.cap) {
            L.cap = L.cap ? 2 * L.cap : 16;
            L.v = gr_xrealloc(L.v, L.cap * sizeof(*L.v));
        }
        snprintf(L.v[L.n].owner, OWNER_MAX, "%s", owner);
        L.v[L.n].since = gr_time_mono_ms();
        L.n++;
    }
    pthread_mutex_unlock(&L.mu);
}

void gr_idem__unhold(const char *owner)
{
    pthread_mutex_lock(&L.mu);
    for (size_t i = 0; i < L.n; i++) {
        if (strcmp(L.v[i].owner, owner) == 0) {
            L.v[i] = L.v[--L.n];
            break;
        }
    }
    pthread_mutex_unlock(&L.mu);
}

int gr_idem__renew(struct gr_db_conn *c, const char *const *owners, size_t n, long long now_ms,
                   long long lease_ms)
{
    struct gr_db_val p[RENEW_BATCH + 1];
    int rc = 0;

    pthread_once(&renew_once, build_renew_sql);
    for (size_t i = 0; i < n && rc == 0; i += RENEW_BATCH) {
        p[0] = GR_DB_INT(now_ms + lease_ms);
        for (size_t k = 0; k < RENEW_BATCH; k++) /* a short batch repeats its last owner */
            p[k + 1] = GR_DB_TEXT(owners[i + k < n ? i + k : n - 1]);
        rc = exec_write(c, renew_sql, p, RENEW_BATCH + 1, NULL);
    }
    return rc;
}

/* One tick: renews the owners held since before @cut (monotonic ms). */
static int renew_tick(struct gr_db_conn **c, long long cut)
{
    const char **owners;
    char(*buf)[OWNER_MAX];
    size_t n = 0;
    long long lease;
    int rc;

    pthread_mutex_lock(&L.mu);
    lease = L.lease;
    buf = gr_xmalloc((L.n ? L.n : 1) * sizeof(*buf));
    for (size_t i = 0; i < L.n; i++) {
        if (L.v[i].since <= cut)
            memcpy(buf[n++], L.v[i].owner, OWNER_MAX);
    }
    pthread_mutex_unlock(&L.mu);
    owners = gr_xmalloc((n ? n : 1) * sizeof(*owners));
    for (size_t i = 0; i < n; i++)
        owners[i] = buf[i];
    rc = n == 0 ? 0 : *c ? 0 : gr_db_conn(L.db, c);
    if (rc == 0 && n > 0)
        rc = gr_idem__renew(*c, owners, n, gr_time_now_ms(), lease);
    gr_free(owners);
    gr_free(buf);
    return rc;
}

static void *lease_main(void *arg)
{
    struct gr_db_conn *c = NULL;
    long long next, now;
    bool failing = false;
    struct timespec ts;

    (void)arg;
    pthread_mutex_lock(&L.mu);
    next = gr_time_mono_ms() + L.every;
    while (!L.stop) {
        now = gr_time_mono_ms();
        if (now < next) {
            ts.tv_sec = (time_t)(next / 1000);
            ts.tv_nsec = (long)(next % 1000) * 1000000L;
            pthread_cond_timedwait(&L.cv, &L.mu, &ts);
            continue;
        }
        long long cut = now - L.every;

        pthread_mutex_unlock(&L.mu);
        int rc = renew_tick(&c, cut);
        if (rc < 0 && !failing)
            gr_log_warn("idempotency lease renewal failed, retrying", "code", gr_err_name(rc));
        else if (rc == 0 && failing)
            gr_log_info("idempotency lease renewal recovered");
        failing = rc < 0;
        pthread_mutex_lock(&L.mu);
        next = gr_time_mono_ms() + (failing ? RETRY_MS : L.every);
    }
    pthread_mutex_unlock(&L.mu);
    return NULL;
}

int gr_idem__lease_start(struct gr_db *db)
{
    const char *env = getenv("GR_IDEM_LEASE_MS");
    long long lease = GR_IDEM_LEASE_MS;
    pthread_condattr_t ca;

    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);

        if (*end || v < 30 || v > 3600 * 1000) {
            gr_log_error("GR_IDEM_LEASE_MS must be 30..3600000");
            return GR_ECONFIG;
        }
        lease = v;
    }
    pthread_mutex_lock(&L.mu);
    if (L.on) {
        pthread_mutex_unlock(&L.mu);
        return GR_EINTERNAL; /* one per process */
    }
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&L.cv, &ca);
    pthread_condattr_destroy(&ca);
    L.db = db;
    L.lease = lease;
    L.every = lease / 3 > 0 ? lease / 3 : 1;
    L.stop = false;
    if (pthread_create(&L.th, NULL, lease_main, NULL) != 0) {
        pthread_cond_destroy(&L.cv);
        pthread_mutex_unlock(&L.mu);
        return GR_EINTERNAL;
    }
    L.on = true;
    atomic_store(&lease_active_ms, lease);
    pthread_mutex_unlock(&L.mu);
    return 0;
}

void gr_idem__lease_stop(void)
{
    pthread_mutex_lock(&L.mu);
    if (!L.on) {
        pthread_mutex_unlock(&L.mu);
        return;
    }
    atomic_store(&lease_active_ms, 0);
    L.stop = true;
    pthread_cond_broadcast(&L.cv);
    pthread_mutex_unlock(&L.mu);
    pthread_join(L.th, NULL);
    pthread_mutex_lock(&L.mu);
    L.on = false;
    pthread_cond_destroy(&L.cv);
    gr_free(L.v);
    L.v = NULL;
    L.n = L.cap = 0;
    L.db = NULL;
    pthread_mutex_unlock(&L.mu);
}

long long gr_idem__lease_ms(void)
{
    return atomic_load(&lease_active_ms);
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

static int outcome_answer(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int outcome,
                          const struct gr_idem_resp *stored);

/* The key's primary key parameters ($1..$4 of PK_WHERE), and its owner as $5. */
static void key_params(struct gr_db_val p[5], const struct gr_req *req, const struct gr_idem *ik)
{
    p[0] = GR_DB_TEXT(ik->caller);
    p[1] = GR_DB_TEXT(req->method);
    p[2] = GR_DB_TEXT(req->path);
    p[3] = GR_DB_TEXT(ik->key);
    p[4] = GR_DB_TEXT(ik->owner);
}

/*
 * Reserves @ik's key inside the transaction open on req->db (lease @lease_ms, 0 for none):
 * the insert, or, when the key exists, its takeover or *@outcome telling what it is.
 */
static int reserve_in_tx(struct gr_req *req, const struct gr_idem *ik, long long lease_ms,
                         int *outcome, struct gr_idem_resp *stored)
{
    struct gr_db_val pk[5], p[9];
    long long now = gr_time_now_ms(), changes = 0;
    int rc;

    *outcome = GR_IDEM_OWNED;
    memset(stored, 0, sizeof(*stored));
    key_params(pk, req, ik);
    reserve_params(p, pk, ik->hash, ik->owner, now, lease_ms);
    rc = gr_db_exec(req->db, INSERT_SQL, p, 9, &changes);
    if (rc == 0 && changes != 1)
        rc = reserve_existing(req->db, req->arena, p, now, outcome, stored);
    return rc;
}

/* Whether the key of @ik has a row (one read, no transaction). */
static int key_exists(struct gr_req *req, const struct gr_idem *ik, bool *exists)
{
    struct gr_db_val pk[5];
    struct gr_db_rows *r = NULL;
    int rc;

    key_params(pk, req, ik);
    rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM idempotency_keys WHERE " PK_WHERE, pk, 4,
                     &r);

    *exists = rc == 0 && gr_db_nrows(r) > 0;
    return rc;
}

int gr_idem__begin_lazy(struct gr_req *req, struct gr_idem *ik, bool *now)
{
    struct gr_idem_resp stored;
    int outcome, rc;

    *now = false;
    if (!ik->lazy || ik->active)
        return 0;
    rc = reserve_in_tx(req, ik, atomic_load(&lease_active_ms), &outcome, &stored);
    if (rc < 0)
        return rc;
    ik->lazy = false;
    if (outcome == GR_IDEM_OWNED) {
        ik->active = true;
        gr_idem__hold(ik->owner);
        *now = true;
        return 0;
    }
    ik->lost = outcome; /* another request has the key: its answer replaces the handler's */
    ik->lost_resp = stored;
    return GR_ECONFLICT;
}

void gr_idem__unreserve(struct gr_idem *ik)
{
    gr_idem__unhold(ik->owner);
    ik->active = false;
    ik->lazy = true;
}

int gr_idem__lost_answer(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int rc)
{
    int out;

    if (ik->lost == GR_IDEM_OWNED)
        return rc;
    out = outcome_answer(req, resp, ik, ik->lost, &ik->lost_resp);
    ik->lost = GR_IDEM_OWNED;
    return out > 0 ? 0 : out;
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
    if ((flags & GR_R_IK_LAZY) && !(flags & GR_R_TX) && req->db->db->engine == GR_DB_SQLITE) {
        bool exists = false;

        rc = key_exists(req, ik, &exists);
        if (rc < 0)
            return rc;
        if (!exists) {
            ik->lazy = true; /* reserved in the handler's first gr_req_tx */
            if (strtol(owner + 34, NULL, 16) % PURGE_EVERY == 0 &&
                gr_idem__purge(req->db, now, PURGE_BATCH, NULL) < 0)
                gr_log_warn("idempotency purge failed");
            return 0;
        }
    }
    if (flags & GR_R_TX) {
        /* Reserved by gr_idem__begin_tx, in the handler's own transaction. */
        ik->in_tx = true;
        if (strtol(owner + 34, NULL, 16) % PURGE_EVERY == 0 &&
            gr_idem__purge(req->db, now, PURGE_BATCH, NULL) < 0)
            gr_log_warn("idempotency purge failed");
        return 0;
    }
    rc = gr_idem__reserve(req->db, req->arena, ik->caller, req->method, req->path, key, ik->hash,
                          ik->owner, now, &outcome, &stored);
    if (rc < 0)
        return rc;
    if (outcome == GR_IDEM_OWNED) {
        gr_idem__hold(ik->owner);
        /* The UUIDv7's last character is random: purge about once per PURGE_EVERY keys. */
        if (strtol(owner + 34, NULL, 16) % PURGE_EVERY == 0 &&
            gr_idem__purge(req->db, now, PURGE_BATCH, NULL) < 0)
            gr_log_warn("idempotency purge failed");
    }
    return outcome_answer(req, resp, ik, outcome, &stored);
}

/* The request's answer to the reservation's @outcome: 0 (run the handler), 1 (a replay in
 * @resp) or a problem's code. */
static int outcome_answer(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int outcome,
                          const struct gr_idem_resp *stored)
{
    switch (outcome) {
    case GR_IDEM_OWNED:
        ik->active = true;
        return 0;
    case GR_IDEM_REPLAY:
        gr_log_debug("idempotent replay", "route", req->route->pattern, "request_id",
                     req->request_id);
        replay(req, resp, stored);
        return 1;
    case GR_IDEM_IN_FLIGHT:
        return gr_resp_problem(req, resp, GR_ECONFLICT, "idempotency_in_flight",
                               "a request with this Idempotency-Key is still in progress");
    default:
        return gr_resp_problem(req, resp, GR_EVALID, "idempotency_key_reuse",
                               "this Idempotency-Key was used with a different request body");
    }
}

int gr_idem__begin_tx(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik)
{
    struct gr_idem_resp stored;
    int outcome, rc;

    ik->active = ik->stored = false;
    if (!ik->in_tx)
        return 0;
    /* No lease: the pending row is never seen outside this transaction, which commits it done
     * (or not at all). A twin request waits for it at the insert (its unique key). */
    rc = reserve_in_tx(req, ik, 0, &outcome, &stored);
    if (rc < 0)
        return rc;
    return outcome_answer(req, resp, ik, outcome, &stored);
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
    size_t n = 0;
    char *txt = gr_json_dumpb(a, j, JSON_COMPACT, &n);

    if (!txt)
        GR_BUG("json_dumpb failed");
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

int gr_idem__store_in_tx(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik)
{
    int rc;

    if (!ik->active || ik->in_tx || !req->db || !gr_db_in_tx(req->db))
        return 0;
    rc = gr_idem__store(req, resp, ik);
    if (rc == 0 && ik->stored) {
        ik->stored = false; /* until its transaction is known to have committed */
        ik->tx_stored = true;
        ik->tx_committed = false;
        gr_db__flag_commit(req->db, &ik->tx_committed); /* whoever commits it tells us */
    }
    return rc;
}

/* True when the key's row is @ik's and done: a gr_idem__store_in_tx write that committed. */
static bool stored_done(struct gr_req *req, struct gr_idem *ik)
{
    struct gr_db_val p[5];
    struct gr_db_rows *r = NULL;

    key_params(p, req, ik);
    if (gr_db_in_tx(req->db) ||
        gr_db_query(req->db, req->arena,
                    "SELECT state FROM idempotency_keys WHERE " PK_WHERE " AND owner = $5", p, 5,
                    &r) < 0)
        return false;
    return gr_db_nrows(r) == 1 && strcmp(gr_db_text(r, 0, 0), "done") == 0;
}

void gr_idem__end(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik, int rc)
{
    if (ik->lazy && !ik->active) {
        /* The handler answered without a gr_req_tx: the key is reserved now, to be stored. */
        struct gr_idem_resp stored;
        int outcome = GR_IDEM_OWNED;

        ik->lazy = false;
        if (rc != 0 || !success(resp))
            return;
        if (gr_idem__reserve(req->db, req->arena, ik->caller, req->method, req->path, ik->key,
                             ik->hash, ik->owner, gr_time_now_ms(), &outcome, &stored) < 0 ||
            outcome != GR_IDEM_OWNED) {
            gr_log_warn("idempotent response not stored: the key is taken", "route",
                        req->route->pattern, "request_id", req->request_id);
            return;
        }
        ik->active = true;
        gr_idem__hold(ik->owner);
    }
    if (!ik->active)
        return;
    /* Seen committed (gr_db__flag_commit): known. Else (e.g. a failed commit) ask. */
    if (rc == 0 && success(resp) && !ik->stored && ik->tx_stored)
        ik->stored = ik->tx_committed || stored_done(req, ik);
    if (rc == 0 && success(resp) && !ik->stored) {
        if (gr_idem__store(req, resp, ik) < 0)
            gr_log_warn("idempotent response not stored", "route", req->route->pattern,
                        "request_id", req->request_id);
        else if (!ik->stored)
            gr_log_warn("idempotent response too large or not text: key released", "route",
                        req->route->pattern, "request_id", req->request_id);
    }
    if (req->db && gr_db__commit_flag(req->db) == &ik->tx_committed)
        gr_db__flag_commit(req->db, NULL); /* a transaction left open: the flag dies with us */
    /* A failed GR_R_TX attempt rolled its reservation back with its writes. */
    if ((rc < 0 || !ik->stored) && !(ik->in_tx && rc < 0))
        gr_idem__release(req->db, ik->caller, req->method, req->path, ik->key, ik->owner);
    gr_idem__unhold(ik->owner);
    ik->active = false;
}
