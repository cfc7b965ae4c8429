/*
 * gr-bus-probe - a gr_main service used only by the bus chaos test (tests/bus/chaos.py) and the
 * bus bench (bench/bus.sh). PROBE_MODE chooses the role:
 *
 *   producer  ("probe-producer")  POST /emit {"n": 1..10000, "per_tx": 1..1000} emits n events
 *             of type probe.tick in transactions of per_tx events; data {"k", "t_ms"} where k
 *             is a gap-free sequence kept in the table probe_counter and advanced in the same
 *             transaction as the outbox rows, so k survives restarts and an interrupted call
 *             either emitted its batch (counter advanced) or did not. Returns
 *             {"emitted", "first_k", "last_k"}. GET /stats → {"emitted": counter, "outbox":
 *             rows still waiting}.
 *   consumer  ("probe-consumer")  subscribes to probe.*; the handler upserts applied(k) and
 *             increments n, so an event applied twice shows as n = 2. GET /stats[?from_k=K] →
 *             {"applied", "max_n", "twice", "max_k", "missing", "lat_p50_ms", "lat_p99_ms",
 *             "lat_max_ms"} (latency t_apply - t_emit over the rows with k >= from_k).
 *             PROBE_ACK_WAIT_S sets the subscription's ack wait (default the library's 30 s),
 *             PROBE_MAX_DELIVER its max_deliver; PROBE_POISON_K=k makes the handler fail on
 *             the event with that k every time (a poison event, for the dead-letter test).
 *
 * Routes are public: this is a test tool bound to HOST (127.0.0.1 by default). Everything else
 * (EVENT_BUS, EVENT_BUS_URL, NATS_URL, SERVICE_TOKEN, DATA_DIR, DATABASE_URL, PORT) is gr_main's.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/time.h"

#define SOURCE_PRODUCER "/gravity/probe-producer"
#define EMIT_N_MAX      10000
#define PER_TX_MAX      1000
#define BUSY_RETRIES    50

/* ---- producer ------------------------------------------------------------------------------ */

static const struct gr_migration producer_migrations[] = {
    { "0001_probe_counter",
      "CREATE TABLE probe_counter (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);\n"
      "INSERT INTO probe_counter (id, k) VALUES (1, 0);\n",
      "CREATE TABLE probe_counter (id INTEGER PRIMARY KEY, k BIGINT NOT NULL);\n"
      "INSERT INTO probe_counter (id, k) VALUES (1, 0);\n" },
    { NULL, NULL, NULL },
};

/* One transaction: advances the counter by @m and emits events first..first+m-1. */
static int emit_tx(struct gr_req *req, long long m, long long *first)
{
    struct gr_db_rows *rows = NULL;
    long long last;
    int rc = gr_req_begin(req);

    if (rc == 0)
        rc = gr_db_exec(req->db, "UPDATE probe_counter SET k = k + $1 WHERE id = 1",
                        (struct gr_db_val[]){ GR_DB_INT(m) }, 1, NULL);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT k FROM probe_counter WHERE id = 1", NULL, 0,
                         &rows);
    if (rc < 0)
        goto fail;
    last = gr_db_int(rows, 0, 0);
    *first = last - m + 1;
    for (long long k = *first; k <= last; k++) {
        char subject[32], data[96];

        snprintf(subject, sizeof(subject), "%lld", k);
        snprintf(data, sizeof(data), "{\"k\":%lld,\"t_ms\":%lld}", k, (long long)gr_time_now_ms());
        rc = gr_bus_emit(req->db, SOURCE_PRODUCER, "probe.tick", subject, data, NULL, NULL);
        if (rc < 0)
            goto fail;
    }
    return gr_db_commit(req->db);
fail:
    (void)gr_db_rollback(req->db);
    return rc;
}

static int producer_emit(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "n", "per_tx", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    long long n = 0, per_tx = 100, first_k = 0, last_k = 0, done = 0;
    json_t *out;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "n", GR_JSON_REQUIRED, 1, EMIT_N_MAX, &n, NULL);
    (void)gr_json_int(&r, req->json, "", "per_tx", GR_JSON_OPTIONAL, 1, PER_TX_MAX, &per_tx, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    while (done < n) {
        long long m = n - done < per_tx ? n - done : per_tx, first = 0;
        int rc = GR_EBUSY;

        /* PostgreSQL SERIALIZABLE: concurrent emits on the counter row retry. */
        for (int attempt = 0; rc == GR_EBUSY && attempt < BUSY_RETRIES; attempt++) {
            rc = emit_tx(req, m, &first);
            if (rc == GR_EBUSY)
                usleep((useconds_t)(1000 + (attempt % 10) * 1000));
        }
        if (rc < 0)
            return rc;
        if (done == 0)
            first_k = first;
        last_k = first + m - 1;
        done += m;
    }
    out = json_pack("{sIsIsI}", "emitted", (json_int_t)n, "first_k", (json_int_t)first_k, "last_k",
                    (json_int_t)last_k);
    gr_resp_json(resp, 200, out);
    return 0;
}

/* One event probe.once with subject @n, and the answer {"emitted": 1}, stored as the key's
 * answer (gr_req_idem_store) in the same transaction; rolled back instead when @roll_back. */
static int store_tx(struct gr_req *req, struct gr_resp *resp, long long n, bool roll_back)
{
    char subject[32];
    int rc = gr_db_begin(req->db);

    snprintf(subject, sizeof(subject), "%lld", n);
    if (rc == 0)
        rc = gr_bus_emit(req->db, SOURCE_PRODUCER, "probe.once", subject, "{}", NULL, NULL);
    if (rc == 0) {
        if (resp->json != NULL)
            json_decref(resp->json);
        gr_resp_json(resp, 201, json_pack("{sI}", "emitted", (json_int_t)1));
        rc = gr_req_idem_store(req, resp);
    }
    if (rc == 0 && !roll_back)
        return gr_db_commit(req->db);
    (void)gr_db_rollback(req->db);
    return rc;
}

/*
 * POST /emit-once {"n": N, "roll_back_first": bool}: emits one event in a transaction that
 * also stores the request's answer (gr_req_idem_store); with roll_back_first, a first such
 * transaction is rolled back after the store, and a second one, without the store, commits:
 * gr must then store the answer itself. lib/gr/tests/http/probe/ tests both.
 */
static int producer_emit_once(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "n", "roll_back_first", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    long long n = 0;
    bool back = false;
    int rc;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "n", GR_JSON_REQUIRED, 1, EMIT_N_MAX, &n, NULL);
    (void)gr_json_bool(&r, req->json, "", "roll_back_first", GR_JSON_OPTIONAL, &back, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    rc = store_tx(req, resp, n, back);
    if (rc == 0 && back) {
        rc = gr_db_begin(req->db);
        if (rc == 0)
            rc = gr_bus_emit(req->db, SOURCE_PRODUCER, "probe.once", "again", "{}", NULL, NULL);
        if (rc == 0)
            rc = gr_db_commit(req->db);
        else
            (void)gr_db_rollback(req->db);
    }
    return rc;
}

struct once {
    struct gr_resp *resp;
    long long n;
};

static int once_tx(struct gr_req *req, void *arg)
{
    struct once *o = arg;
    char subject[32];
    int rc;

    snprintf(subject, sizeof(subject), "%lld", o->n);
    rc = gr_bus_emit(req->db, SOURCE_PRODUCER, "probe.once", subject, "{}", NULL, NULL);
    if (rc < 0)
        return rc;
    if (o->resp->json != NULL)
        json_decref(o->resp->json);
    gr_resp_json(o->resp, 201, json_pack("{sI}", "emitted", (json_int_t)1));
    return gr_req_idem_store(req, o->resp);
}

/*
 * POST /emit-once-tx {"n": N} (GR_R_IK_LAZY): emits one event in a gr_req_tx that also stores
 * the answer; on SQLite the key is reserved in that same transaction. Racing twins: one event.
 */
static int producer_emit_once_tx(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "n", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    struct once o = { .resp = resp };

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "n", GR_JSON_REQUIRED, 1, EMIT_N_MAX, &o.n, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    return gr_req_tx(req, once_tx, &o);
}

static int producer_stats(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *c = NULL, *o = NULL;
    int rc =
        gr_db_query(req->db, req->arena, "SELECT k FROM probe_counter WHERE id = 1", NULL, 0, &c);

    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT COUNT(*) FROM outbox", NULL, 0, &o);
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200,
                 json_pack("{sIsI}", "emitted", (json_int_t)gr_db_int(c, 0, 0), "outbox",
                           (json_int_t)gr_db_int(o, 0, 0)));
    return 0;
}

static const struct gr_route producer_routes[] = {
    { "POST", "/emit", producer_emit, GR_R_PUBLIC | GR_R_JSON, NULL, NULL, 0 },
    /* The same with a required Idempotency-Key ([IK!]): lib/gr/tests/http/probe/ tests it. */
    { "POST", "/emit-keyed", producer_emit, GR_R_PUBLIC | GR_R_JSON | GR_R_IK_REQUIRED, NULL, NULL,
      0 },
    { "POST", "/emit-once", producer_emit_once, GR_R_PUBLIC | GR_R_JSON | GR_R_IK_REQUIRED, NULL,
      NULL, 0 },
    /* The same two with GR_R_IK_LAZY: /emit-once-lazy never uses gr_req_tx (gr reserves and
     * stores the key after it), /emit-once-tx does. */
    { "POST", "/emit-once-lazy", producer_emit_once,
      GR_R_PUBLIC | GR_R_JSON | GR_R_IK_REQUIRED | GR_R_IK_LAZY, NULL, NULL, 0 },
    { "POST", "/emit-once-tx", producer_emit_once_tx,
      GR_R_PUBLIC | GR_R_JSON | GR_R_IK_REQUIRED | GR_R_IK_LAZY, NULL, NULL, 0 },
    { "GET", "/stats", producer_stats, GR_R_PUBLIC, NULL, NULL, 0 },
};

/* ---- consumer ------------------------------------------------------------------------------ */

#define APPLIED_COLS                                                                               \
    " n INTEGER NOT NULL,"                                                                         \
    " event_id TEXT NOT NULL,"                                                                     \
    " t_emit_ms BIGINT NOT NULL,"                                                                  \
    " t_apply_ms BIGINT NOT NULL);\n"

static const struct gr_migration consumer_migrations[] = {
    { "0001_applied", "CREATE TABLE applied (k INTEGER PRIMARY KEY," APPLIED_COLS,
      "CREATE TABLE applied (k BIGINT PRIMARY KEY," APPLIED_COLS },
    { NULL, NULL, NULL },
};

static long long poison_k = -1; /* PROBE_POISON_K; set before gr_main starts any thread */

static int on_tick(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev, void *app)
{
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    json_t *k = json_object_get(d, "k"), *t = json_object_get(d, "t_ms");
    long long kv, tv;

    (void)a;
    (void)app;
    if (!json_is_integer(k) || !json_is_integer(t)) {
        json_decref(d);
        gr_log_warn("probe.tick without integer k and t_ms, ignored", "event_id", ev->id);
        return 0;
    }
    kv = (long long)json_integer_value(k);
    tv = (long long)json_integer_value(t);
    json_decref(d);
    if (kv == poison_k)
        return GR_EVALID; /* a poison event: fails on every delivery */
    return gr_db_exec(db,
                      "INSERT INTO applied (k, n, event_id, t_emit_ms, t_apply_ms)"
                      " VALUES ($1, 1, $2, $3, $4)"
                      " ON CONFLICT (k) DO UPDATE SET n = applied.n + 1",
                      (struct gr_db_val[]){ GR_DB_INT(kv), GR_DB_TEXT(ev->id), GR_DB_INT(tv),
                                            GR_DB_INT((long long)gr_time_now_ms()) },
                      4, NULL);
}

static const struct gr_sub consumer_subs[] = {
    { "probe.*", on_tick },
};

/* The latency at quantile @q (0..1) over rows with k >= @from_k; -1 when there is none. */
static int latency_at(struct gr_req *req, long long from_k, long long count, double q,
                      long long *out)
{
    struct gr_db_rows *r = NULL;
    long long off = (long long)(q * (double)(count - 1) + 0.5);
    int rc;

    *out = -1;
    if (count <= 0)
        return 0;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT t_apply_ms - t_emit_ms AS d FROM applied WHERE k >= $1"
                     " ORDER BY d LIMIT 1 OFFSET $2",
                     (struct gr_db_val[]){ GR_DB_INT(from_k), GR_DB_INT(off) }, 2, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) > 0)
        *out = gr_db_int(r, 0, 0);
    return 0;
}

static int consumer_stats(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_db_rows *all = NULL, *win = NULL;
    long long from_k = 0, p50, p99, pmax, applied, max_k;
    bool present = false;
    int rc = gr_req_query_int(req, resp, "from_k", 0, GR_JSON_MAX_INT, &from_k, &present);

    if (rc < 0)
        return rc;
    rc = gr_db_query(req->db, req->arena,
                     "SELECT COUNT(*), COALESCE(MAX(n), 0), COALESCE(MAX(k), 0),"
                     " COALESCE(SUM(CASE WHEN n > 1 THEN 1 ELSE 0 END), 0) FROM applied",
                     NULL, 0, &all);
    if (rc == 0)
        rc = gr_db_query(req->db, req->arena, "SELECT COUNT(*) FROM applied WHERE k >= $1",
                         (struct gr_db_val[]){ GR_DB_INT(from_k) }, 1, &win);
    if (rc < 0)
        return rc;
    rc = latency_at(req, from_k, gr_db_int(win, 0, 0), 0.50, &p50);
    if (rc == 0)
        rc = latency_at(req, from_k, gr_db_int(win, 0, 0), 0.99, &p99);
    if (rc == 0)
        rc = latency_at(req, from_k, gr_db_int(win, 0, 0), 1.0, &pmax);
    if (rc < 0)
        return rc;
    applied = gr_db_int(all, 0, 0);
    max_k = gr_db_int(all, 0, 2);
    gr_resp_json(resp, 200,
                 json_pack("{sIsIsIsIsIsIsIsIsI}", "applied", (json_int_t)applied, "max_n",
                           (json_int_t)gr_db_int(all, 0, 1), "twice",
                           (json_int_t)gr_db_int(all, 0, 3), "max_k", (json_int_t)max_k, "missing",
                           (json_int_t)(max_k - applied), "window",
                           (json_int_t)gr_db_int(win, 0, 0), "lat_p50_ms", (json_int_t)p50,
                           "lat_p99_ms", (json_int_t)p99, "lat_max_ms", (json_int_t)pmax));
    return 0;
}

/* POST /replay {"after_seq": n}: gr_bus_replay, done by the consumer thread. */
static int consumer_replay(struct gr_req *req, struct gr_resp *resp)
{
    static const char *const keys[] = { "after_seq", NULL };
    struct gr_json_rd r = { .a = req->arena, .errs = &resp->errs };
    long long after = 0;

    (void)gr_json_only(&r, req->json, "", keys);
    (void)gr_json_int(&r, req->json, "", "after_seq", GR_JSON_REQUIRED, 0, INT64_MAX, &after, NULL);
    if (resp->errs.n > 0)
        return GR_EVALID;
    if (gr_bus_replay((uint64_t)after) < 0)
        return GR_EUNAVAIL;
    gr_resp_json(resp, 202, json_pack("{s:I}", "after_seq", (json_int_t)after));
    return 0;
}

static const struct gr_route consumer_routes[] = {
    { "GET", "/stats", consumer_stats, GR_R_PUBLIC, NULL, "from_k", 0 },
    { "POST", "/replay", consumer_replay, GR_R_PUBLIC | GR_R_JSON, NULL, NULL, 0 },
};

/* ---- the two services ---------------------------------------------------------------------- */

static const char probe_openapi[] =
    "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"gr-bus-probe\",\"version\":\"0.1.0\"},"
    "\"paths\":{}}";

static const struct gr_service producer_service = {
    .name = "probe-producer",
    .id = "gr-bus-probe",
    .version = "0.1.0",
    .port = 0,
    .routes = producer_routes,
    .nroutes = sizeof(producer_routes) / sizeof(producer_routes[0]),
    .migrations = producer_migrations,
    .openapi_json = probe_openapi,
};

static struct gr_service consumer_service = {
    /* sub_opts from PROBE_ACK_WAIT_S */
    .name = "probe-consumer",
    .id = "gr-bus-probe",
    .version = "0.1.0",
    .port = 0,
    .routes = consumer_routes,
    .nroutes = sizeof(consumer_routes) / sizeof(consumer_routes[0]),
    .migrations = consumer_migrations,
    .openapi_json = probe_openapi,
    .subs = consumer_subs,
    .nsubs = sizeof(consumer_subs) / sizeof(consumer_subs[0]),
};

int main(int argc, char **argv)
{
    const char *mode = getenv("PROBE_MODE");

    if (mode && strcmp(mode, "producer") == 0)
        return gr_main(&producer_service, argc, argv);
    if (mode && strcmp(mode, "consumer") == 0) {
        const char *aw = getenv("PROBE_ACK_WAIT_S");
        long v = aw ? strtol(aw, NULL, 10) : 0;

        /* Chaos runs shorten the ack wait so a delivery lost with a killed consumer comes back
         * in seconds; 0 or unset keeps the library default. */
        consumer_service.sub_opts.ack_wait_s = v > 0 && v <= 3600 ? (int)v : 0;
        aw = getenv("PROBE_MAX_DELIVER");
        v = aw ? strtol(aw, NULL, 10) : 0;
        consumer_service.sub_opts.max_deliver = v > 0 && v <= 100 ? (int)v : 0;
        aw = getenv("PROBE_POISON_K");
        poison_k = aw ? strtoll(aw, NULL, 10) : -1;
        return gr_main(&consumer_service, argc, argv);
    }
    fprintf(stderr, "gr-bus-probe: set PROBE_MODE=producer or PROBE_MODE=consumer\n");
    return 2;
}
