/*
 * checker.c - the health checker thread. Every 250 ms it runs one round:
 *  1. HTTP checks that are due (every ttl_s) call GET http://address:port/ready (2 s limit),
 *     outside any transaction;
 *  2. one transaction applies the results, marks TTL instances without a heartbeat for ttl_s
 *     critical and removes instances critical for longer than deregister_after_s.
 * On PostgreSQL the transaction first takes pg_try_advisory_xact_lock(REG_CHECK_LOCK): the
 * replica that takes it is the leader for this round, the others skip it. Every transition is a
 * conditional UPDATE/DELETE (WHERE status = old), and emits its event only when it changed a
 * row, so a transition is published exactly once.
 */
#include <curl/curl.h>
#include <string.h>
#include <time.h>

#include "gr/log.h"
#include "gr/time.h"
#include "registry.h"

#define ROUND_MS   250
#define HTTP_MAX   64 /* HTTP checks per round */
#define FAILS_CRIT 2

struct http_result {
    const char *id;
    bool ok;
};

static size_t discard(char *p, size_t sz, size_t n, void *u)
{
    (void)p;
    (void)u;
    return sz * n;
}

static bool http_ready(struct gr_arena *a, const char *addr, long long port)
{
    CURL *c = curl_easy_init();
    const char *url = strchr(addr, ':') ? gr_arena_printf(a, "http://[%s]:%lld/ready", addr, port)
                                        : gr_arena_printf(a, "http://%s:%lld/ready", addr, port);
    long status = 0;
    CURLcode cc;

    if (c == NULL)
        return false;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)REG_HTTP_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)REG_HTTP_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return cc == CURLE_OK && status >= 200 && status < 300;
}

static int64_t ms_of(const char *t)
{
    int64_t ms = 0;

    if (t == NULL || gr_time_parse(t, &ms) < 0)
        return 0;
    return ms;
}

/* HTTP checks that are due: GETs outside the transaction. */
static int run_http(struct gr_db_conn *db, struct gr_arena *a, int64_t now, struct http_result *res,
                    size_t *nres)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    *nres = 0;
    rc = gr_db_query(db, a,
                     "SELECT i.id, i.address, i.port, i.checked_at, c.ttl_s FROM instances i"
                     " JOIN checks c ON c.instance_id = i.id WHERE c.kind = 'http'"
                     " ORDER BY i.checked_at, i.id",
                     NULL, 0, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows) && *nres < HTTP_MAX; i++) {
        const char *checked = gr_db_text(rows, i, 3);

        if (checked != NULL && ms_of(checked) + gr_db_int(rows, i, 4) * 1000 > now)
            continue;
        res[*nres].id = gr_db_text(rows, i, 0);
        res[*nres].ok = http_ready(a, gr_db_text(rows, i, 1), gr_db_int(rows, i, 2));
        (*nres)++;
    }
    return 0;
}

/* Sets @id's status from @from to @to (conditional); emits once when it changed. */
static int transition(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *from,
                      const char *to, const char *now, bool *changed)
{
    long long n = 0;
    int rc = gr_db_exec(
        db,
        "UPDATE instances SET status = $3, status_since = $4, updated_at = $4"
        " WHERE id = $1 AND status = $2",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(from), GR_DB_TEXT(to), GR_DB_TEXT(now) },
        4, &n);

    if (rc < 0 || n != 1)
        return rc;
    *changed = true;
    rc = registry_bump(db);
    if (rc == 0)
        rc = registry_emit(db, a, "registry.instance.status_changed", id, from);
    return rc;
}

static int apply_http(struct gr_db_conn *db, struct gr_arena *a, const struct http_result *res,
                      size_t nres, const char *now, bool *changed)
{
    for (size_t i = 0; i < nres; i++) {
        struct gr_db_rows *rows = NULL;
        int rc;

        if (res[i].ok) {
            rc =
                gr_db_exec(db,
                           "UPDATE instances SET failures = 0, checked_at = $2,"
                           " last_heartbeat_at = $2 WHERE id = $1",
                           (struct gr_db_val[]){ GR_DB_TEXT(res[i].id), GR_DB_TEXT(now) }, 2, NULL);
            if (rc == 0)
                rc = transition(db, a, res[i].id, "critical", "passing", now, changed);
            if (rc < 0)
                return rc;
            continue;
        }
        rc = gr_db_exec(db,
                        "UPDATE instances SET failures = failures + 1, checked_at = $2"
                        " WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(res[i].id), GR_DB_TEXT(now) }, 2, NULL);
        if (rc == 0)
            rc = gr_db_query(db, a, "SELECT failures FROM instances WHERE id = $1",
                             (struct gr_db_val[]){ GR_DB_TEXT(res[i].id) }, 1, &rows);
        if (rc == 0 && gr_db_nrows(rows) == 1 && gr_db_int(rows, 0, 0) >= FAILS_CRIT)
            rc = transition(db, a, res[i].id, "passing", "critical", now, changed);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * TTL expiry and deregistration of long-critical instances. With @dry nothing is written:
 * *@changed tells whether anything is due (read outside a transaction, so an idle round takes
 * no write lock).
 */
static int apply_ttl(struct gr_db_conn *db, struct gr_arena *a, int64_t now_ms, const char *now,
                     bool dry, bool *changed)
{
    struct gr_db_rows *rows = NULL;
    int rc;

    rc = gr_db_query(db, a,
                     "SELECT i.id, i.status, i.last_heartbeat_at, i.status_since, c.kind, c.ttl_s,"
                     " c.deregister_after_s FROM instances i JOIN checks c"
                     " ON c.instance_id = i.id ORDER BY i.id",
                     NULL, 0, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *id = gr_db_text(rows, i, 0);
        bool passing = strcmp(gr_db_text(rows, i, 1), "passing") == 0;
        bool ttl = strcmp(gr_db_text(rows, i, 4), "ttl") == 0;

        bool expired =
            passing && ttl && ms_of(gr_db_text(rows, i, 2)) + gr_db_int(rows, i, 5) * 1000 < now_ms;
        bool dead =
            !passing && ms_of(gr_db_text(rows, i, 3)) + gr_db_int(rows, i, 6) * 1000 < now_ms;

        if (dry) {
            if (expired || dead)
                *changed = true;
            continue;
        }
        if (expired) {
            rc = transition(db, a, id, "passing", "critical", now, changed);
        } else if (dead) {
            long long n = 0;

            rc = registry_emit(db, a, "registry.instance.deregistered", id, NULL);
            if (rc == 0)
                rc = gr_db_exec(db, "DELETE FROM checks WHERE instance_id = $1",
                                (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, NULL);
            if (rc == 0)
                rc = gr_db_exec(db, "DELETE FROM instances WHERE id = $1 AND status = 'critical'",
                                (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &n);
            if (rc == 0 && n != 1)
                rc = GR_EBUSY; /* changed under us: undo the event, next round decides */
            if (rc == 0)
                rc = registry_bump(db);
            if (rc == 0) {
                *changed = true;
                gr_log_info("instance deregistered", "instance_id", id, "reason", "critical");
            }
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int round_once(struct registry *r, struct gr_arena *a)
{
    struct http_result res[HTTP_MAX];
    struct gr_db_conn *db = NULL;
    struct gr_db_rows *rows = NULL;
    char now[GR_TIME_STR_LEN];
    bool changed = false;
    int64_t now_ms;
    size_t nres = 0;
    int rc;

    rc = gr_db_conn(r->db, &db);
    if (rc < 0)
        return rc;
    rc = run_http(db, a, gr_time_now_ms(), res, &nres);
    if (rc < 0)
        return rc;
    if (nres == 0) {
        bool due = false;

        now_ms = gr_time_now_ms();
        gr_time_format(now_ms, now);
        rc = apply_ttl(db, a, now_ms, now, true, &due);
        if (rc < 0 || !due)
            return rc;
    }
    rc = gr_db_begin(db);
    if (rc < 0)
        return rc;
    if (gr_db_engine(r->db) == GR_DB_PG) {
        rc = gr_db_query(db, a, "SELECT pg_try_advisory_xact_lock(CAST($1 AS BIGINT))",
                         (struct gr_db_val[]){ GR_DB_INT(REG_CHECK_LOCK) }, 1, &rows);
        if (rc < 0 || gr_db_nrows(rows) != 1 || gr_db_int(rows, 0, 0) != 1) {
            (void)gr_db_rollback(db);
            return rc; /* another replica leads this round */
        }
    }
    now_ms = gr_time_now_ms();
    gr_time_format(now_ms, now);
    rc = apply_http(db, a, res, nres, now, &changed);
    if (rc == 0)
        rc = apply_ttl(db, a, now_ms, now, false, &changed);
    if (rc < 0) {
        (void)gr_db_rollback(db);
        return rc;
    }
    rc = gr_db_commit(db);
    if (rc == 0 && changed)
        registry_notify(r);
    return rc;
}

static void *checker_main(void *arg)
{
    struct registry *r = arg;
    struct gr_arena a;

    gr_arena_init(&a);
    for (;;) {
        struct timespec ts;
        bool stop;
        int rc;

        rc = round_once(r, &a);
        gr_arena_release(&a);
        if (rc < 0 && rc != GR_EBUSY)
            gr_log_warn("registry check round failed", "error", gr_strerror(rc));
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += ROUND_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->mu);
        while (!r->stop)
            if (pthread_cond_timedwait(&r->tick, &r->mu, &ts) != 0)
                break;
        stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;
    }
    return NULL;
}

int checker_start(struct registry *r)
{
    if (pthread_create(&r->checker, NULL, checker_main, r) != 0)
        return GR_EINTERNAL;
    r->running = true;
    return 0;
}

void checker_stop(struct registry *r)
{
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->tick);
    pthread_mutex_unlock(&r->mu);
    if (r->running)
        pthread_join(r->checker, NULL);
    r->running = false;
}
