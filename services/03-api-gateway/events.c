/*
 * events.c - the gateway's events (SERVICES §03 Events) and the sync between replicas.
 *
 * Publishing: breaker transitions happen on data-plane threads, which must not wait for the
 * database. The breaker callback copies the transition into a bounded queue and signals the
 * sync thread, which writes gateway.circuit.opened|closed to the outbox, one transaction each
 * (the gr relay publishes it). A full queue drops the newest transition (counted, logged).
 *
 * Consuming (gw_subs): replicas of the gateway share one durable subscription, so each event
 * reaches one replica. Its effect therefore goes to the database in the handler's transaction,
 * and every replica's sync thread picks it up from there:
 *   - auth.token.revoked: the jti goes to `revoked_jtis` (and at once to this replica's deny
 *     set); the others load rows newer than their watermark.
 *   - auth.keys.rotated: the `jwks` epoch is bumped (and this replica refetches at once); a
 *     replica that sees the epoch move refetches.
 *   - registry.instance.status_changed: the registry watcher re-reads now (every replica runs
 *     its own watcher, so nothing is shared).
 * The sync thread also polls a fingerprint of `routes` and `api_keys`, so a change made on one
 * replica is applied by the others within GATEWAY_SYNC_MS (default 1000 ms).
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "gr/auth.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "h1.h"

#define SOURCE        "/gravity/api-gateway"
#define BRK_QUEUE     256
#define BRK_ERR_MAX   64
#define FP_MAX        160
#define OVERLAP_MS    10000 /* revoked rows re-read behind the watermark (commit lag) */
#define SWEEP_MS      60000 /* expired revoked rows deleted this often */
#define DEF_EXP_S     3630  /* a revoked jti without exp: 05's access TTL + leeway */
#define SYNC_MS_DEF   1000
#define EMIT_RETRY_MS 1000

struct brk_ev {
    char host[GW_HOST_MAX];
    int port;
    bool opened;
    char err[BRK_ERR_MAX];
    int64_t at_ms;
};

static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static struct brk_ev q[BRK_QUEUE];
static size_t q_head, q_n;
static atomic_ulong q_dropped;

/* Data plane: never touches the database, holds q_mu only for a copy. */
static void on_breaker(const char *host, int port, bool opened, const char *last_error)
{
    pthread_mutex_lock(&q_mu);
    if (q_n == BRK_QUEUE) {
        atomic_fetch_add(&q_dropped, 1);
    } else {
        struct brk_ev *e = &q[(q_head + q_n) % BRK_QUEUE];
        snprintf(e->host, sizeof(e->host), "%s", host);
        e->port = port;
        e->opened = opened;
        snprintf(e->err, sizeof(e->err), "%s", last_error ? last_error : "");
        e->at_ms = gr_time_now_ms();
        q_n++;
        pthread_cond_signal(&q_cond);
    }
    pthread_mutex_unlock(&q_mu);
}

/* The service whose instance @host:@port is, or NULL (copied into @out). */
static const char *service_of(struct gw_app *a, const char *host, int port, char *out, size_t n)
{
    const char *found = NULL;

    pthread_mutex_lock(&a->mu);
    for (size_t i = 0; i < a->nsvcs && !found; i++)
        for (size_t k = 0; k < a->svcs[i].n; k++)
            if (a->svcs[i].inst[k].port == port && strcmp(a->svcs[i].inst[k].host, host) == 0) {
                snprintf(out, n, "%s", a->svcs[i].name);
                found = out;
                break;
            }
    pthread_mutex_unlock(&a->mu);
    return found;
}

/* 0 when written, 1 when the event cannot be encoded (dropped), or a gr error (retried). */
static int emit_breaker(struct gw_app *a, struct gr_db_conn *c, const struct brk_ev *e)
{
    char svc[GW_NAME_MAX], at[GR_TIME_STR_LEN], subject[GW_HOST_MAX + 16];
    const char *s = service_of(a, e->host, e->port, svc, sizeof(svc));
    struct gr_arena ar;
    struct gr_str txt = { 0 };
    json_t *d;
    int rc;

    gr_time_format(e->at_ms, at);
    snprintf(subject, sizeof(subject), "%s:%d", e->host, e->port);
    d = json_pack("{s:o,s:s,s:i,s:s,s:o,s:s,s:I}", "service", s ? json_string(s) : json_null(),
                  "host", e->host, "port", e->port, "state", e->opened ? "open" : "closed",
                  "last_error", e->err[0] ? json_string(e->err) : json_null(), "at", at, "version",
                  (json_int_t)e->at_ms);
    if (d == NULL)
        return 1; /* not encodable (never for numeric hosts): dropped, not retried */
    gr_arena_init(&ar);
    rc = gr_json_dump(&ar, d, &txt);
    json_decref(d);
    if (rc == 0)
        rc = gr_db_begin(c);
    if (rc == 0)
        rc = gr_bus_emit(c, SOURCE, e->opened ? "gateway.circuit.opened" : "gateway.circuit.closed",
                         subject, txt.ptr, NULL, NULL);
    if (rc == 0)
        rc = gr_db_commit(c);
    if (rc < 0)
        (void)gr_db_rollback(c);
    gr_arena_release(&ar);
    return rc;
}

/* Writes every queued transition; stops at the first failure (kept for the next round). */
static void drain_queue(struct gw_app *a, struct gr_db_conn *c)
{
    for (;;) {
        struct brk_ev e;
        int rc;

        pthread_mutex_lock(&q_mu);
        if (q_n == 0) {
            pthread_mutex_unlock(&q_mu);
            break;
        }
        e = q[q_head];
        pthread_mutex_unlock(&q_mu);
        rc = emit_breaker(a, c, &e);
        if (rc < 0) {
            gr_log_warn("circuit event not written, retrying", "code", gr_err_name(rc));
            break;
        }
        if (rc > 0)
            gr_log_warn("circuit event not encodable, dropped", "host", e.host);
        pthread_mutex_lock(&q_mu);
        q_head = (q_head + 1) % BRK_QUEUE;
        q_n--;
        pthread_mutex_unlock(&q_mu);
    }
    {
        unsigned long d = atomic_exchange(&q_dropped, 0);
        if (d > 0) {
            char n[24];
            snprintf(n, sizeof(n), "%lu", d);
            gr_log_warn("circuit events dropped (queue full)", "count", n);
        }
    }
}

/* ---- JWKS --------------------------------------------------------------------------------- */

void gw_jwks_refetch(struct gw_app *a)
{
    if (a == NULL || a->ctx == NULL || a->ctx->auth == NULL)
        return;
    gr_auth_refetch(a->ctx->auth);
    gr_log_info("jwks refetched (keys rotated)");
}

/* ---- subscriptions ------------------------------------------------------------------------ */

static int on_token_revoked(struct gr_db_conn *db, struct gr_arena *ar, const struct gr_event *ev,
                            void *app)
{
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    const char *jti = json_string_value(json_object_get(d, "jti"));
    json_t *exp = json_object_get(d, "exp");
    int64_t exp_s =
        json_is_integer(exp) ? (int64_t)json_integer_value(exp) : gr_time_now_s() + DEF_EXP_S;
    int rc = 0;

    (void)ar;
    (void)app;
    /* Without a jti (a refresh-token family), access tokens run until they expire (05). */
    if (jti != NULL && jti[0] != '\0') {
        if (strlen(jti) > GW_DENY_JTI_MAX) {
            gr_log_warn("auth.token.revoked with an oversized jti, ignored", "event_id", ev->id);
        } else {
            /* The verifier accepts a token up to GR_AUTH_LEEWAY_S after its exp. */
            exp_s += GR_AUTH_LEEWAY_S;
            rc = gr_db_exec(db,
                            "INSERT INTO revoked_jtis (jti, exp_s, created_ms) VALUES ($1, $2, $3)"
                            " ON CONFLICT (jti) DO NOTHING",
                            (struct gr_db_val[]){ GR_DB_TEXT(jti), GR_DB_INT(exp_s),
                                                  GR_DB_INT(gr_time_now_ms()) },
                            3, NULL);
            if (rc == 0)
                gw_deny_add(jti, exp_s);
        }
    }
    json_decref(d);
    return rc;
}

static int on_keys_rotated(struct gr_db_conn *db, struct gr_arena *ar, const struct gr_event *ev,
                           void *app)
{
    int rc;

    (void)ar;
    (void)ev;
    rc =
        gr_db_exec(db, "UPDATE gw_epochs SET value = value + 1 WHERE name = 'jwks'", NULL, 0, NULL);
    if (rc == 0)
        gw_jwks_refetch(app);
    return rc;
}

static int on_status_changed(struct gr_db_conn *db, struct gr_arena *ar, const struct gr_event *ev,
                             void *app)
{
    (void)db;
    (void)ar;
    (void)ev;
    if (app != NULL)
        gw_registry_refresh(app);
    return 0;
}

const struct gr_sub gw_subs[GW_NSUBS] = {
    { "auth.token.revoked", on_token_revoked },
    { "auth.keys.rotated", on_keys_rotated },
    { "registry.instance.status_changed", on_status_changed },
};

/* ---- replica sync ------------------------------------------------------------------------- */

struct sync_state {
    char routes_fp[FP_MAX];
    char keys_fp[FP_MAX];
    int64_t revoked_mark;
    long long jwks_epoch;
    bool jwks_known;
    int64_t next_sweep;
};

static int fingerprint(struct gr_db_conn *c, struct gr_arena *ar, const char *sql, char *out,
                       size_t n)
{
    struct gr_db_rows *rows = NULL;
    int rc = gr_db_query(c, ar, sql, NULL, 0, &rows);

    if (rc < 0)
        return rc;
    snprintf(out, n, "%s|%s|%s", gr_db_text(rows, 0, 0) ? gr_db_text(rows, 0, 0) : "",
             gr_db_text(rows, 0, 1) ? gr_db_text(rows, 0, 1) : "",
             gr_db_text(rows, 0, 2) ? gr_db_text(rows, 0, 2) : "");
    return 0;
}

static void poll_shared(struct gw_app *a, struct gr_db_conn *c, struct sync_state *st)
{
    struct gr_arena ar;
    struct gr_db_rows *rows = NULL;
    char fp[FP_MAX];
    int64_t now_ms = gr_time_now_ms();
    int rc;

    gr_arena_init(&ar);
    /* routes: created/deleted (count), edited (sum of versions), replaced (newest update) */
    rc = fingerprint(c, &ar,
                     "SELECT CAST(COUNT(*) AS TEXT), COALESCE(MAX(updated_at), ''),"
                     " CAST(COALESCE(SUM(version), 0) AS TEXT) FROM routes",
                     fp, sizeof(fp));
    if (rc == 0 && strcmp(fp, st->routes_fp) != 0) {
        rc = gw_rebuild(a, c);
        if (rc == 0) {
            snprintf(st->routes_fp, sizeof(st->routes_fp), "%s", fp);
            gw_registry_refresh(a);
        }
    }
    /* api keys: created (newest id), deleted (count) */
    if (rc == 0)
        rc = fingerprint(c, &ar,
                         "SELECT CAST(COUNT(*) AS TEXT), COALESCE(MAX(id), ''),"
                         " COALESCE(MAX(created_at), '') FROM api_keys",
                         fp, sizeof(fp));
    if (rc == 0 && strcmp(fp, st->keys_fp) != 0) {
        rc = gw_apikeys_reload(c);
        if (rc == 0)
            snprintf(st->keys_fp, sizeof(st->keys_fp), "%s", fp);
    }
    /* revoked token ids written by any replica */
    if (rc == 0)
        rc = gr_db_query(c, &ar,
                         "SELECT jti, exp_s, created_ms FROM revoked_jtis WHERE created_ms >= $1"
                         " AND exp_s > $2",
                         (struct gr_db_val[]){ GR_DB_INT(st->revoked_mark - OVERLAP_MS),
                                               GR_DB_INT(gr_time_now_s()) },
                         2, &rows);
    if (rc == 0) {
        for (size_t i = 0; i < gr_db_nrows(rows); i++) {
            int64_t created = gr_db_int(rows, i, 2);
            gw_deny_add(gr_db_text(rows, i, 0), gr_db_int(rows, i, 1));
            if (created > st->revoked_mark)
                st->revoked_mark = created;
        }
    }
    if (rc == 0 && now_ms >= st->next_sweep) {
        rc = gr_db_exec(c, "DELETE FROM revoked_jtis WHERE exp_s < $1",
                        (struct gr_db_val[]){ GR_DB_INT(gr_time_now_s()) }, 1, NULL);
        st->next_sweep = now_ms + SWEEP_MS;
    }
    /* the JWKS epoch (auth.keys.rotated consumed by any replica) */
    if (rc == 0)
        rc = gr_db_query(c, &ar, "SELECT value FROM gw_epochs WHERE name = 'jwks'", NULL, 0, &rows);
    if (rc == 0 && gr_db_nrows(rows) == 1) {
        long long e = gr_db_int(rows, 0, 0);
        if (st->jwks_known && e != st->jwks_epoch)
            gw_jwks_refetch(a);
        st->jwks_epoch = e;
        st->jwks_known = true;
    }
    if (rc < 0)
        gr_log_warn("replica sync poll failed", "code", gr_err_name(rc));
    gr_arena_release(&ar);
}

static void *sync_main(void *arg)
{
    struct gw_app *a = arg;
    struct sync_state st = { .revoked_mark = 0 };
    struct gr_db_conn *c = NULL;
    int64_t next_poll = 0, next_emit = 0;

    while (!atomic_load(&a->sync_stop)) {
        int64_t now = gr_time_mono_ms();
        bool pending;

        /* each round: a broken PostgreSQL connection is replaced here */
        if (gr_db_conn(a->ctx->db, &c) < 0) {
            c = NULL;
            next_poll = now + a->sync_ms; /* the database is down: try again later */
            next_emit = now + EMIT_RETRY_MS;
        }
        if (c != NULL && now >= next_emit) {
            drain_queue(a, c);
            pthread_mutex_lock(&q_mu);
            pending = q_n > 0;
            pthread_mutex_unlock(&q_mu);
            next_emit = pending ? now + EMIT_RETRY_MS : 0;
        }
        if (c != NULL && now >= next_poll) {
            poll_shared(a, c, &st);
            next_poll = gr_time_mono_ms() + a->sync_ms;
        }
        /* sleep until the next poll, a queued transition or the stop */
        pthread_mutex_lock(&q_mu);
        if (!atomic_load(&a->sync_stop) && (q_n == 0 || next_emit > 0)) {
            struct timespec ts;
            int64_t wait = next_poll - gr_time_mono_ms();
            if (next_emit > 0 && next_emit - gr_time_mono_ms() < wait)
                wait = next_emit - gr_time_mono_ms();
            if (wait > 0) {
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += wait / 1000;
                ts.tv_nsec += (long)(wait % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                (void)pthread_cond_timedwait(&q_cond, &q_mu, &ts);
            }
        }
        pthread_mutex_unlock(&q_mu);
    }
    /* last transitions before exit (a drain) */
    if (c != NULL)
        drain_queue(a, c);
    return NULL;
}

int gw_sync_start(struct gw_app *a)
{
    const char *ms = getenv("GATEWAY_SYNC_MS");

    a->sync_ms = SYNC_MS_DEF;
    if (ms != NULL && *ms) {
        char *end = NULL;
        long v = strtol(ms, &end, 10);
        if (end == ms || *end != '\0' || v < 10 || v > 600000) {
            fprintf(stderr, "%s: GATEWAY_SYNC_MS must be 10..600000 (milliseconds)\n",
                    a->ctx->svc->id);
            return GR_ECONFIG;
        }
        a->sync_ms = (int)v;
    }
    atomic_init(&a->sync_stop, false);
    if (a->ctx->db == NULL)
        return 0;
    gw_breaker_on_change(on_breaker);
    if (pthread_create(&a->sync_thread, NULL, sync_main, a) != 0)
        return GR_EINTERNAL;
    a->sync_started = true;
    return 0;
}

void gw_sync_stop(struct gw_app *a)
{
    if (!a->sync_started)
        return;
    gw_breaker_on_change(NULL);
    pthread_mutex_lock(&q_mu);
    atomic_store(&a->sync_stop, true);
    pthread_cond_broadcast(&q_cond);
    pthread_mutex_unlock(&q_mu);
    pthread_join(a->sync_thread, NULL);
    a->sync_started = false;
}
