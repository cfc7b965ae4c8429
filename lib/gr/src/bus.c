/*
 * bus.c - gr bus: the outbox and inbox tables, gr_bus_emit, the relay thread that publishes
 * the outbox through a backend, and the consumer thread that applies subscribed events once
 * (see gr/bus.h for the guarantees). Backends: bus_http.c, bus_nats.c (bus_int.h).
 *
 * Relay: reads the oldest outbox rows (by seq), publishes them in order, then deletes the rows
 * the backend confirmed, in one statement. A crash between publish and delete publishes
 * those rows again after restart, which the backends dedupe by event id. Backend down: jittered
 * exponential backoff from 100 ms to 5 s. A commit that emitted wakes the relay at once (a
 * gr_db commit hook); otherwise it polls every RELAY_POLL_MS as a safety net. An event the
 * backend refuses for good (malformed) is marked failed and skipped, never retried forever.
 *
 * Consumer: pulls up to CONSUMER_BATCH deliveries and applies them in one transaction: per
 * event an inbox insert (ON CONFLICT DO NOTHING: a row already there means applied before, so
 * the handler is skipped) and the handler of the first matching subscription. One commit, then
 * one ack call for the batch. When a handler fails, the batch is rolled back and run again with
 * a savepoint around each event, so only the failing events are undone and nak'ed, with a
 * growing delay; the backend dead-letters an event after max_deliver attempts. A batch holds
 * the SQLite write lock while it is applied (about 10 µs per event for a light handler).
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_int.h"
#include "gr/http.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/metrics.h"
#include "gr/service.h"
#include "gr/status.h"
#include "gr/time.h"

#define RELAY_BATCH       1000
#define RELAY_POLL_MS     1000
#define BACKOFF_MIN_MS    100
#define BACKOFF_MAX_MS    5000
#define PUBLISH_TIMEOUT   5000
#define CONSUMER_BATCH    1000
#define CONSUMER_WAIT_MS  1000
#define NAK_DELAY_MAX_MS  30000
#define INBOX_KEEP_DAYS   7
#define INBOX_PURGE_EVERY 1000
#define PENDING_EVERY_MS  1000

/* ---- tables ------------------------------------------------------------------------------ */

#define OUTBOX_COMMON                                                                              \
    " id TEXT NOT NULL UNIQUE,"                                                                    \
    " type TEXT NOT NULL,"                                                                         \
    " subject TEXT,"                                                                               \
    " envelope TEXT NOT NULL,"                                                                     \
    " created_at TEXT NOT NULL,"                                                                   \
    " failed_at TEXT,"                                                                             \
    " last_error TEXT"                                                                             \
    ");\n"
#define INBOX_SQL                                                                                  \
    "CREATE TABLE inbox ("                                                                         \
    " event_id TEXT PRIMARY KEY,"                                                                  \
    " source TEXT NOT NULL,"                                                                       \
    " type TEXT NOT NULL,"                                                                         \
    " received_at TEXT NOT NULL"                                                                   \
    ");\n"                                                                                         \
    "CREATE INDEX inbox_received_idx ON inbox (received_at);\n"

const struct gr_migration gr_bus_migrations[] = {
    { "0001_outbox_inbox",
      "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT," OUTBOX_COMMON INBOX_SQL,
      "CREATE TABLE outbox (seq BIGSERIAL PRIMARY KEY," OUTBOX_COMMON INBOX_SQL },
    { NULL, NULL, NULL },
};

/* ---- the running bus (one per process, set up by gr_main) -------------------------------- */

struct gr_bus {
    struct gr_db *db;
    const struct gr_bus_cfg *cfg;
    struct gr_bus_backend *pub, *sub; /* one per thread */
    pthread_t relay_t, consumer_t;
    bool relay_on, consumer_on;
    pthread_mutex_t mu; /* guards kick, stop */
    pthread_cond_t cv;
    bool kick, stop;
    struct gr_gauge *pending;
    struct gr_counter *published, *applied, *failed, *naked;
    uint64_t rnd; /* seed of the threads' own backoff jitter; set before they start */
    atomic_int relay_state, consumer_state; /* 0 not tried yet, 1 last call worked, -1 failed */
    atomic_llong pending_n;                 /* outbox rows at the last count */
    atomic_llong replay_after;              /* a replay asked for: after this seq; -1 none */
    int64_t pending_at; /* relay thread: when outbox_pending was last refreshed */
};

static struct gr_bus *the_bus;

bool gr_bus_type_valid(const char *t)
{
    size_t n = 0, seg = 0, dots = 0;

    if (!t)
        return false;
    for (const char *p = t; *p; p++, n++) {
        char c = *p;

        if (c == '.') {
            if (seg == 0)
                return false;
            dots++;
            seg = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '_' && dots > 0)))
            return false;
        seg++;
    }
    return n > 0 && n <= GR_EVENT_TYPE_MAX && dots > 0 && seg > 0;
}

static void kick_relay(void *arg)
{
    struct gr_bus *b = arg;

    pthread_mutex_lock(&b->mu);
    b->kick = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* Appends @s to the JSON text in @out as a JSON string (NULL: null). */
static int put_str(json_t *o, const char *key, const char *s)
{
    if (!s)
        return 0;
    return json_object_set_new(o, key, json_string(s)) == 0 ? 0 : GR_EINVAL;
}

int gr_bus_emit(struct gr_db_conn *db, const char *source, const char *type, const char *subject,
                const char *data, const char *traceparent, char id_out[37])
{
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];
    json_t *head;
    char *head_txt = NULL, *env = NULL;
    size_t hlen, dlen, elen;
    int rc;

    if (!gr_db_in_tx(db)) {
        gr_log_error("gr_bus_emit outside a transaction", "type", type);
        return GR_EINTERNAL;
    }
    if (!source || !*source || !gr_bus_type_valid(type) ||
        (subject && strlen(subject) > GR_EVENT_SUBJECT_MAX))
        return GR_EINVAL;
    if (!data)
        data = "null";
    dlen = strlen(data);
    if (dlen == 0 || dlen > GR_EVENT_DATA_MAX)
        return GR_ETOOBIG;
    gr_id_new(id);
    gr_time_format(gr_time_now_ms(), now);
    /* The envelope: attributes rendered by jansson, data spliced in as the caller's text. */
    head = json_object();
    if (!head)
        return GR_EINTERNAL;
    rc = put_str(head, "specversion", "1.0");
    rc = rc ? rc : put_str(head, "id", id);
    rc = rc ? rc : put_str(head, "source", source);
    rc = rc ? rc : put_str(head, "type", type);
    rc = rc ? rc : put_str(head, "subject", subject);
    rc = rc ? rc : put_str(head, "time", now);
    rc = rc ? rc : put_str(head, "datacontenttype", "application/json");
    rc = rc ? rc : put_str(head, "traceparent", traceparent);
    if (rc == 0)
        head_txt = json_dumps(head, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(head);
    if (!head_txt)
        return rc ? rc : GR_EINTERNAL;
    hlen = strlen(head_txt); /* "{...}": replace the closing brace by ,"data":<data>} */
    elen = hlen - 1 + strlen(",\"data\":") + dlen + 1;
    env = gr_xmalloc(elen + 1);
    if (!env) {
        gr_free(head_txt);
        return GR_EINTERNAL;
    }
    memcpy(env, head_txt, hlen - 1);
    memcpy(env + hlen - 1, ",\"data\":", 8);
    memcpy(env + hlen - 1 + 8, data, dlen);
    env[elen - 1] = '}';
    env[elen] = '\0';
    gr_free(head_txt);
    rc = gr_db_exec(db,
                    "INSERT INTO outbox (id, type, subject, envelope, created_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(type), GR_DB_TEXT(subject),
                                          GR_DB_TEXT(env), GR_DB_TEXT(now) },
                    5, NULL);
    gr_free(env);
    if (rc < 0)
        return rc;
    if (the_bus)
        gr_db_on_commit(db, kick_relay, the_bus);
    if (id_out)
        memcpy(id_out, id, GR_ID_LEN);
    return 0;
}

int gr_req_emit(struct gr_req *req, const char *type, const char *subject, const char *data)
{
    char source[160];

    if (!req->db)
        return GR_EUNAVAIL;
    snprintf(source, sizeof(source), "/gravity/%s", req->ctx->svc->name);
    return gr_bus_emit(req->db, source, type, subject, data, NULL, NULL);
}

/* ---- parsing deliveries -------------------------------------------------------------------- */

static const char *str_of(struct gr_arena *a, json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_string(v) ? gr_arena_strdup(a, json_string_value(v)) : NULL;
}

int gr_bus_parse_event(struct gr_arena *a, const char *json, size_t len, struct gr_event *ev)
{
    json_error_t jerr;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *spec, *data;
    char *dtxt;
    int rc = GR_EVALID;

    memset(ev, 0, sizeof(*ev));
    if (!json_is_object(o))
        goto out;
    spec = json_object_get(o, "specversion");
    if (!json_is_string(spec) || strcmp(json_string_value(spec), "1.0") != 0)
        goto out;
    ev->id = str_of(a, o, "id");
    ev->source = str_of(a, o, "source");
    ev->type = str_of(a, o, "type");
    ev->subject = str_of(a, o, "subject");
    ev->time = str_of(a, o, "time");
    ev->traceparent = str_of(a, o, "traceparent");
    if (!ev->id || !*ev->id || !ev->source || !*ev->source || !gr_bus_type_valid(ev->type))
        goto out;
    data = json_object_get(o, "data");
    dtxt = data ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER) : NULL;
    ev->data = gr_arena_strdup(a, dtxt ? dtxt : "null");
    ev->data_len = strlen(ev->data);
    gr_free(dtxt);
    rc = 0;
out:
    json_decref(o);
    return rc;
}

/* ---- relay --------------------------------------------------------------------------------- */

/*
 * Waits @ms, or less when @kickable and a commit kicks the relay; returns true when stopping.
 * Backoff waits are not kickable: under load every commit kicks, and a broker that is down
 * must not be retried once per commit.
 */
static bool bus_wait(struct gr_bus *b, int ms, bool kickable)
{
    struct timespec ts;
    bool stop;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    while (!(kickable && b->kick) && !b->stop)
        if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) == ETIMEDOUT)
            break;
    b->kick = false;
    stop = b->stop;
    pthread_mutex_unlock(&b->mu);
    return stop;
}

static bool stopping(struct gr_bus *b)
{
    bool s;

    pthread_mutex_lock(&b->mu);
    s = b->stop;
    pthread_mutex_unlock(&b->mu);
    return s;
}

/* The next jittered backoff pause after *@cur; @rnd is the calling thread's own state. */
static int backoff_ms(uint64_t *rnd, int *cur)
{
    *cur = *cur ? *cur * 2 : BACKOFF_MIN_MS;
    if (*cur > BACKOFF_MAX_MS)
        *cur = BACKOFF_MAX_MS;
    *rnd ^= *rnd << 13;
    *rnd ^= *rnd >> 7;
    *rnd ^= *rnd << 17;
    return *cur / 2 + (int)(*rnd % (uint64_t)(*cur / 2 + 1));
}

/* Refreshes the outbox_pending gauge, at most once per PENDING_EVERY_MS. */
static void update_pending(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a)
{
    struct gr_db_rows *r = NULL;
    int64_t now = gr_time_mono_ms();

    if (!c || now - b->pending_at < PENDING_EVERY_MS)
        return;
    b->pending_at = now;
    if (gr_db_query(c, a, "SELECT COUNT(*) FROM outbox WHERE failed_at IS NULL", NULL, 0, &r) ==
        0) {
        atomic_store(&b->pending_n, gr_db_int(r, 0, 0));
        if (b->pending)
            gr_gauge_set(b->pending, (double)gr_db_int(r, 0, 0));
    }
}

/*
 * Deletes the @n published rows @rows[0..n) (seq ascending) in one statement. SQLite: the seq
 * range, since seqs are handed out in commit order there (one writer, AUTOINCREMENT never reuses
 * one), so no row can have joined the range unseen. PostgreSQL hands sequence values out
 * before commit, so a late commit can fill a gap: the exact list, as one array parameter.
 */
static int relay_delete(struct gr_db *db, struct gr_db_conn *c, struct gr_arena *a,
                        const struct gr_db_rows *rows, size_t n)
{
    if (gr_db_engine(db) == GR_DB_SQLITE)
        return gr_db_exec(c,
                          "DELETE FROM outbox WHERE seq >= $1 AND seq <= $2 AND failed_at IS NULL",
                          (struct gr_db_val[]){ GR_DB_INT(gr_db_int(rows, 0, 0)),
                                                GR_DB_INT(gr_db_int(rows, n - 1, 0)) },
                          2, NULL);
    {
        size_t cap = n * 21 + 3, len = 0;
        char *list = gr_arena_alloc(a, cap);

        list[len++] = '{';
        for (size_t i = 0; i < n; i++)
            len += (size_t)snprintf(list + len, cap - len, "%s%lld", i ? "," : "",
                                    gr_db_int(rows, i, 0));
        list[len++] = '}';
        list[len] = '\0';
        return gr_db_exec(c, "DELETE FROM outbox WHERE seq = ANY(CAST($1 AS BIGINT[]))",
                          (struct gr_db_val[]){ GR_DB_TEXT(list) }, 1, NULL);
    }
}

static void relay_mark_failed(struct gr_db_conn *c, const char *seq_id, long long seq, int code)
{
    char now[GR_TIME_STR_LEN];

    gr_time_format(gr_time_now_ms(), now);
    gr_log_error("event refused by the bus, left in the outbox as failed", "event_id", seq_id,
                 "code", gr_err_name(code));
    if (gr_db_exec(
            c, "UPDATE outbox SET failed_at = $2, last_error = $3 WHERE seq = $1",
            (struct gr_db_val[]){ GR_DB_INT(seq), GR_DB_TEXT(now), GR_DB_TEXT(gr_err_name(code)) },
            3, NULL) < 0)
        gr_log_warn("cannot mark an outbox row failed");
}

/* One pass: publishes up to RELAY_BATCH rows; returns rows published or a negative code. */
static int relay_once(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a)
{
    struct gr_db_rows *rows = NULL;
    struct gr_bus_out *out;
    size_t n;
    int rc;

    rc = gr_db_query(c, a,
                     "SELECT seq, id, type, envelope FROM outbox WHERE failed_at IS NULL"
                     " ORDER BY seq LIMIT $1",
                     (struct gr_db_val[]){ GR_DB_INT(RELAY_BATCH) }, 1, &rows);
    if (rc < 0)
        return rc;
    n = gr_db_nrows(rows);
    if (n == 0)
        return 0;
    out = gr_arena_calloc(a, n * sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        out[i].id = gr_db_text(rows, i, 1);
        out[i].type = gr_db_text(rows, i, 2);
        out[i].json = gr_db_text(rows, i, 3);
        out[i].json_len = strlen(out[i].json);
    }
    rc = b->pub->ops->publish(b->pub, out, n, PUBLISH_TIMEOUT);
    if (rc == GR_EVALID || rc == GR_EINVAL || rc == GR_ETOOBIG) {
        /* The head row is malformed for the broker: park it, go on with the rest. */
        relay_mark_failed(c, out[0].id, gr_db_int(rows, 0, 0), rc);
        if (b->failed)
            gr_counter_add(b->failed, 1);
        return 1;
    }
    if (rc < 0)
        return rc;
    if (rc == 0)
        return GR_EUNAVAIL;
    if (b->published)
        gr_counter_add(b->published, (uint64_t)rc);
    {
        int drc = relay_delete(b->db, c, a, rows, (size_t)rc);

        if (drc < 0)
            return drc; /* published again next pass: the broker dedupes */
    }
    return rc;
}

static void *relay_main(void *arg)
{
    struct gr_bus *b = arg;
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_db_conn *c = NULL;
    uint64_t rnd = b->rnd;
    int back = 0;

    while (!stopping(b)) {
        int rc = c ? 0 : gr_db_conn(b->db, &c);

        if (rc == 0)
            rc = relay_once(b, c, &a);
        update_pending(b, c, &a);
        gr_arena_release(&a);
        if (rc != 0)
            atomic_store(&b->relay_state, rc > 0 ? 1 : -1);
        if (rc > 0) {
            back = 0;
            continue; /* maybe more */
        }
        if (rc < 0) {
            int ms = backoff_ms(&rnd, &back);

            if (back >= BACKOFF_MAX_MS || back == BACKOFF_MIN_MS)
                gr_log_warn("event relay cannot publish, retrying", "code", gr_err_name(rc));
            if (bus_wait(b, ms, false))
                break;
            continue;
        }
        back = 0;
        if (bus_wait(b, RELAY_POLL_MS, true))
            break;
    }
    gr_arena_release(&a);
    return NULL;
}

/* ---- consumer ------------------------------------------------------------------------------ */

static bool sub_matches(const char *pattern, const char *type)
{
    size_t n = strlen(pattern);

    if (n > 0 && pattern[n - 1] == '*')
        return strncmp(pattern, type, n - 1) == 0;
    return strcmp(pattern, type) == 0;
}

/* The subscription whose handler takes @type, or NULL (then only the inbox row is written). */
static const struct gr_sub *sub_for(const struct gr_bus_cfg *cfg, const char *type)
{
    for (size_t i = 0; i < cfg->nsubs; i++)
        if (sub_matches(cfg->subs[i].type, type))
            return &cfg->subs[i];
    return NULL;
}

/*
 * Records @ev in the inbox and runs its handler, in the open transaction: 0 done (or found in
 * the inbox: applied before, nothing run), < 0 the insert or the handler failed.
 */
static int apply_one(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a,
                     const struct gr_event *ev, const char *now)
{
    const struct gr_sub *sub = sub_for(b->cfg, ev->type);
    long long added = 0;
    int rc;

    rc = gr_db_exec(c,
                    "INSERT INTO inbox (event_id, source, type, received_at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
                    (struct gr_db_val[]){ GR_DB_TEXT(ev->id), GR_DB_TEXT(ev->source),
                                          GR_DB_TEXT(ev->type), GR_DB_TEXT(now) },
                    4, &added);
    if (rc < 0 || added == 0 || !sub)
        return rc;
    return sub->handler(c, a, ev, b->cfg->app ? *b->cfg->app : NULL);
}

/* apply_one behind a savepoint, so that a failure undoes only this event's work. */
static int apply_one_sp(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a,
                        const struct gr_event *ev, const char *now, bool *broken)
{
    int rc = gr_db_savepoint(c);

    if (rc < 0) {
        *broken = true;
        return rc;
    }
    rc = apply_one(b, c, a, ev, now);
    if (rc == 0) {
        rc = gr_db_savepoint_release(c);
        if (rc < 0)
            *broken = true;
        return rc;
    }
    if (gr_db_savepoint_rollback(c) < 0)
        *broken = true;
    return rc;
}

/*
 * Applies the @n deliveries @in in one transaction (one commit for the batch), writing each
 * one's result to @res: 0 to ack, < 0 to nak. The fast path runs them one after the other;
 * when one fails, the batch is rolled back and run again with a savepoint around each event,
 * so that only the failing ones are undone. A failed commit naks them all.
 */
static void apply_batch(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a,
                        struct gr_bus_in *in, int n, int *res)
{
    char now[GR_TIME_STR_LEN];
    bool broken = false;
    int rc, i;

    gr_time_format(gr_time_now_ms(), now);
    rc = gr_db_begin(c);
    for (i = 0; rc == 0 && i < n; i++)
        rc = apply_one(b, c, a, &in[i].ev, now);
    if (rc == 0) {
        rc = gr_db_commit(c);
        for (i = 0; i < n; i++)
            res[i] = rc;
        return;
    }
    (void)gr_db_rollback(c);
    rc = gr_db_begin(c);
    for (i = 0; i < n; i++) {
        if (rc < 0 || broken) {
            res[i] = rc < 0 ? rc : GR_EDB;
            continue;
        }
        res[i] = apply_one_sp(b, c, a, &in[i].ev, now, &broken);
    }
    if (rc < 0)
        return;
    if (broken) {
        (void)gr_db_rollback(c);
        rc = GR_EDB;
    } else {
        rc = gr_db_commit(c);
    }
    if (rc < 0)
        for (i = 0; i < n; i++)
            res[i] = res[i] < 0 ? res[i] : rc;
}

static void inbox_purge(struct gr_db_conn *c)
{
    char cut[GR_TIME_STR_LEN];

    gr_time_format(gr_time_now_ms() - (int64_t)INBOX_KEEP_DAYS * 86400000, cut);
    if (gr_db_exec(c, "DELETE FROM inbox WHERE received_at < $1",
                   (struct gr_db_val[]){ GR_DB_TEXT(cut) }, 1, NULL) < 0)
        gr_log_warn("cannot purge the inbox");
}

/* Applies a pulled batch, then acks (in one call when the backend can) and naks. */
static void consume(struct gr_bus *b, struct gr_db_conn *c, struct gr_arena *a,
                    struct gr_bus_in *in, int n)
{
    const struct gr_bus_backend_ops *ops = b->sub->ops;
    int *res = gr_arena_calloc(a, (size_t)n * sizeof(*res));
    struct gr_bus_in **acks = gr_arena_calloc(a, (size_t)n * sizeof(*acks));
    size_t nack = 0;

    apply_batch(b, c, a, in, n, res);
    for (int i = 0; i < n; i++)
        if (res[i] == 0)
            acks[nack++] = &in[i];
    if (ops->ack_many && nack > 0) {
        (void)ops->ack_many(b->sub, acks, nack);
    } else {
        for (size_t i = 0; i < nack; i++)
            (void)ops->ack(b->sub, acks[i]);
    }
    if (b->applied && nack > 0)
        gr_counter_add(b->applied, nack);
    for (int i = 0; i < n; i++) {
        if (res[i] < 0) {
            int delay = BACKOFF_MIN_MS << (in[i].ev.attempt < 9 ? in[i].ev.attempt : 9);

            if (delay > NAK_DELAY_MAX_MS)
                delay = NAK_DELAY_MAX_MS;
            gr_log_warn("event handler failed, redelivery asked", "event_id", in[i].ev.id, "type",
                        in[i].ev.type, "code", gr_err_name(res[i]));
            (void)ops->nak(b->sub, &in[i], delay);
            if (b->naked)
                gr_counter_add(b->naked, 1);
        }
        if (ops->release)
            ops->release(b->sub, &in[i]);
    }
}

static void *consumer_main(void *arg)
{
    struct gr_bus *b = arg;
    const struct gr_bus_cfg *cfg = b->cfg;
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_db_conn *c = NULL;
    bool bound = false;
    uint64_t rnd = b->rnd * 0x9e3779b97f4a7c15ULL | 1;
    int back = 0;
    unsigned long done = 0;

    while (!stopping(b)) {
        struct gr_bus_in *in = NULL;
        int rc = c ? 0 : gr_db_conn(b->db, &c);

        if (rc == 0 && !bound) {
            rc = b->sub->ops->subscribe(b->sub, cfg->durable, cfg->subs, cfg->nsubs, &cfg->opts,
                                        PUBLISH_TIMEOUT);
            bound = rc == 0;
        }
        if (rc == 0 && atomic_load(&b->replay_after) >= 0) {
            long long after = atomic_exchange(&b->replay_after, -1);

            rc = b->sub->ops->replay ? b->sub->ops->replay(b->sub, (uint64_t)after, PUBLISH_TIMEOUT)
                                     : GR_EUNAVAIL;
            if (rc < 0) {
                gr_log_warn("event replay failed, asking again", "code", gr_err_name(rc));
                atomic_store(&b->replay_after, after);
            } else {
                char s[24];

                snprintf(s, sizeof(s), "%lld", after);
                gr_log_info("event replay started", "after_seq", s);
            }
        }
        if (rc == 0)
            rc = b->sub->ops->pull(b->sub, &a, CONSUMER_BATCH, CONSUMER_WAIT_MS, &in);
        atomic_store(&b->consumer_state, rc < 0 ? -1 : 1);
        if (rc < 0) {
            int ms = backoff_ms(&rnd, &back);

            if (back >= BACKOFF_MAX_MS || back == BACKOFF_MIN_MS)
                gr_log_warn("event consumer cannot pull, retrying", "code", gr_err_name(rc));
            gr_arena_release(&a);
            if (bus_wait(b, ms, false))
                break;
            continue;
        }
        back = 0;
        if (rc > 0)
            consume(b, c, &a, in, rc);
        if (rc > 0 && (done += (unsigned long)rc) >= INBOX_PURGE_EVERY) {
            done = 0;
            inbox_purge(c);
        }
        gr_arena_release(&a);
    }
    gr_arena_release(&a);
    return NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static int open_backend(const struct gr_bus_cfg *cfg, struct gr_bus_backend **out)
{
    char err[256] = "";
    int rc;

    if (strcmp(cfg->kind, "nats") == 0)
        rc = gr_bus_nats_open(cfg->url, out, err, sizeof(err));
    else
        rc = gr_bus_http_open(cfg->url, cfg->token, out, err, sizeof(err));
    if (rc < 0)
        gr_log_error("event bus backend unusable", "backend", cfg->kind, "error", err);
    return rc;
}

int gr_bus__start(struct gr_db *db, const struct gr_bus_cfg *cfg, struct gr_metrics *m,
                  struct gr_bus **out)
{
    struct gr_bus *b = gr_xcalloc(1, sizeof(*b));
    pthread_condattr_t ca;
    int rc;

    *out = NULL;
    b->db = db;
    b->cfg = cfg;
    b->rnd = ((uint64_t)(uintptr_t)b ^ (uint64_t)time(NULL)) | 1;
    atomic_store(&b->replay_after, -1);
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (m) {
        b->pending =
            gr_metrics_gauge(m, "outbox_pending", "Events in the outbox not yet published", NULL);
        b->published =
            gr_metrics_counter(m, "outbox_published_total", "Events the relay published", NULL);
        b->failed = gr_metrics_counter(
            m, "outbox_failed_total", "Events the bus refused for good (left in the outbox)", NULL);
        b->applied = gr_metrics_counter(m, "inbox_applied_total",
                                        "Events consumed (applied or found in the inbox)", NULL);
        b->naked = gr_metrics_counter(m, "inbox_failed_total",
                                      "Deliveries whose handler failed (redelivery asked)", NULL);
    }
    rc = open_backend(cfg, &b->pub);
    if (rc == 0 && cfg->nsubs > 0)
        rc = open_backend(cfg, &b->sub);
    if (rc < 0)
        goto fail;
    the_bus = b;
    if (pthread_create(&b->relay_t, NULL, relay_main, b) != 0) {
        rc = GR_EINTERNAL;
        goto fail;
    }
    b->relay_on = true;
    if (cfg->nsubs > 0) {
        if (pthread_create(&b->consumer_t, NULL, consumer_main, b) != 0) {
            rc = GR_EINTERNAL;
            goto fail;
        }
        b->consumer_on = true;
    }
    *out = b;
    return 0;
fail:
    gr_bus__stop(b);
    return rc;
}

void gr_bus__stop(struct gr_bus *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (b->relay_on)
        pthread_join(b->relay_t, NULL);
    if (b->consumer_on)
        pthread_join(b->consumer_t, NULL);
    if (the_bus == b)
        the_bus = NULL;
    if (b->pub)
        b->pub->ops->close(b->pub);
    if (b->sub)
        b->sub->ops->close(b->sub);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    gr_free(b);
}

int gr_bus_replay(uint64_t after_seq)
{
    struct gr_bus *b = the_bus;

    if (!b || !b->consumer_on || after_seq > (uint64_t)INT64_MAX)
        return GR_EUNAVAIL;
    atomic_store(&b->replay_after, (long long)after_seq);
    return 0;
}

json_t *gr_bus__health(struct gr_bus *b, bool *ok)
{
    int relay, consumer;
    bool up;

    if (!b)
        return json_pack("{s:s}", "status", "none");
    relay = atomic_load(&b->relay_state);
    consumer = atomic_load(&b->consumer_state);
    /* Down when the last attempt to publish or to pull failed; an outbox that waits for a
     * broker that is down keeps the events, so the service stays ready but degraded. */
    up = relay >= 0 && consumer >= 0;
    if (!up)
        *ok = false;
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "status", up ? "up" : "down", "backend",
                     b->cfg->kind, "outbox_pending", (json_int_t)atomic_load(&b->pending_n),
                     "relay",
                     relay > 0   ? "ok"
                     : relay < 0 ? "failing"
                                 : "idle",
                     "consumer",
                     !b->cfg->nsubs ? "none"
                     : consumer > 0 ? "ok"
                     : consumer < 0 ? "failing"
                                    : "starting");
}

void gr_bus__kick(struct gr_bus *b)
{
    if (b)
        kick_relay(b);
}
