/*
 * eventbus.h - the event-bus service's own declarations: the route table, the handlers of
 * events.c, subscriptions.c, deliveries.c and schemas.c, the shared validation helpers
 * (validate.c), the delivery engine (deliveries.c) and the push thread (push.c).
 *
 * Delivery model: publishing an event fans it out, in the publish transaction, into one
 * `deliveries` row per subscription whose filters match (state pending, due at once). Every
 * further state change is computed when a subscription is pulled, pushed or its dead letters
 * are listed (eb_expire): nothing runs in the background for pull subscriptions. Waiters (long
 * polls, the push thread) sleep on one condition variable that every publish, nak and replay
 * broadcasts after its commit.
 *
 * Every json_t these helpers hand out is owned by the request arena unless stated otherwise;
 * strings are arena memory or borrowed from a JSON document.
 */
#ifndef EVENTBUS_H
#define EVENTBUS_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/db.h"
#include "gr/http.h"
#include "gr/json.h"
#include "gr/router.h"
#include "gr/time.h"

#define EB_SOURCE          "/gravity/event-bus-service"
#define EB_ID_MAX          255
#define EB_SOURCE_MAX      255
#define EB_TYPE_MAX        128
#define EB_SUBJECT_MAX     255
#define EB_DATA_MAX        (256 * 1024) /* bytes of one event's data, compact JSON */
#define EB_BATCH_MAX       1000
#define EB_FILTERS_MAX     50
#define EB_PULL_MAX        1000
#define EB_WAIT_MAX_MS     30000
#define EB_SEQS_MAX        1000
#define EB_NAK_DELAY_MAX   3600000
#define EB_BODY_MAX        ((size_t)64 << 20) /* a full batch of large events */
#define EB_URL_MAX         2048
#define EB_PUSH_BATCH      100  /* deliveries one push round claims per subscription */
#define EB_PUSH_TIMEOUT_MS 5000 /* per POST to a push_url */

/* The service state (req->app): the wake-up of waiters and the push thread. */
struct eb_app {
    struct gr_ctx *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    uint64_t gen;        /* bumped by eb_wake */
    struct gr_waitq *wq; /* parked pulls (gr_req_wait), notified by eb_wake */
    _Atomic bool stop;   /* set by fini: the push thread exits */
    pthread_t push_thread;
    bool push_started;
};

/* The route table (routes.c). */
#define EB_NROUTES 14
extern const struct gr_route eb_routes[EB_NROUTES];

/* ---- handlers ---------------------------------------------------------------------------- */

int eb_events_publish(struct gr_req *req, struct gr_resp *resp);
int eb_events_list(struct gr_req *req, struct gr_resp *resp);
int eb_events_get(struct gr_req *req, struct gr_resp *resp);

int eb_subs_create(struct gr_req *req, struct gr_resp *resp);
int eb_subs_list(struct gr_req *req, struct gr_resp *resp);
int eb_subs_get(struct gr_req *req, struct gr_resp *resp);
int eb_subs_delete(struct gr_req *req, struct gr_resp *resp);

int eb_subs_pull(struct gr_req *req, struct gr_resp *resp);
int eb_subs_ack(struct gr_req *req, struct gr_resp *resp);
int eb_subs_nak(struct gr_req *req, struct gr_resp *resp);
int eb_subs_replay(struct gr_req *req, struct gr_resp *resp);
int eb_subs_dead_letters(struct gr_req *req, struct gr_resp *resp);

int eb_schemas_put(struct gr_req *req, struct gr_resp *resp);
int eb_schemas_get(struct gr_req *req, struct gr_resp *resp);

/* ---- validation (validate.c) ------------------------------------------------------------- */

/** True for an event type: ^[a-z0-9]+(\.[a-z0-9_]+)+$, at most EB_TYPE_MAX characters. */
bool eb_type_valid(const char *s);

/**
 * True for a type filter: a type, or a prefix followed by '*' ("product.*", "product*", "*")
 * whose prefix is made of [a-z0-9._] and starts with [a-z0-9] when not empty. *@prefix is
 * true for the '*' form and @pattern_len the length of the part before it.
 */
bool eb_filter_valid(const char *s, bool *prefix, size_t *pattern_len);

/** Makes @v owned by @a (json_decref deferred) and returns it. */
json_t *eb_own(struct gr_arena *a, json_t *v);

/** The current library time as RFC 3339 with milliseconds. */
void eb_now(char out[GR_TIME_STR_LEN]);

/** A reader context that accumulates field errors into the response's problem. */
struct gr_json_rd eb_rd(struct gr_req *req, struct gr_resp *resp);

/** Number of Unicode code points of the UTF-8 string @s. */
size_t eb_utf8_chars(const char *s);

/* ---- events (events.c) ------------------------------------------------------------------- */

/* A validated event about to be stored. */
struct eb_event {
    const char *id, *source, *type, *subject, *time; /* borrowed or arena */
    const char *data;                                /* compact JSON text or NULL */
    const char *envelope;                            /* compact JSON text */
};

/**
 * Stores @ev (deduplicated on source and id) and fans it out to the matching subscriptions,
 * inside the caller's transaction on @db. *@seq is its seq (the original one for a duplicate,
 * with *@dup true).
 */
GR_MUST_CHECK int eb_event_store(struct gr_db_conn *db, struct gr_arena *a,
                                 const struct eb_event *ev, long long *seq, bool *dup);

/**
 * Publishes the service's own event of @type with @data (an object, borrowed) and @subject
 * inside the caller's transaction.
 */
GR_MUST_CHECK int eb_event_emit(struct gr_db_conn *db, struct gr_arena *a, const char *type,
                                const char *subject, json_t *data);

/** {"seq": @seq, "event": <envelope>} for a stored envelope text (arena-owned). */
json_t *eb_event_item(struct gr_arena *a, long long seq, const char *envelope);

/* ---- schemas (schemas.c) ----------------------------------------------------------------- */

/**
 * Validates @data against the registered schema of @type, if any, adding errors under @ptr
 * (e.g. "/data" or "/3/data"). Returns 0 (also when there is no schema), GR_EVALID, or a DB
 * error.
 */
GR_MUST_CHECK int eb_schema_check(struct gr_db_conn *db, struct gr_arena *a, struct gr_errs *errs,
                                  const char *type, json_t *data, const char *ptr);

/* ---- delivery engine (deliveries.c) ------------------------------------------------------ */

/* A subscription row as the engine needs it. */
struct eb_sub {
    const char *id, *name, *mode, *push_url;
    bool ordered;
    long long ack_wait_s, max_deliver;
};

/** Loads subscription @id into *@out (strings arena). GR_ENOTFOUND when absent. */
GR_MUST_CHECK int eb_sub_load(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                              struct eb_sub *out);

/**
 * Expires @sub's in-flight deliveries whose ack deadline passed at @now_ms: due again while
 * attempts < max_deliver, dead (with an eventbus.dead_lettered event) otherwise. Inside the
 * caller's transaction.
 */
GR_MUST_CHECK int eb_expire(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub,
                            int64_t now_ms);

/**
 * Claims up to @max due deliveries of @sub (after eb_expire): each becomes in flight with
 * attempts + 1 and a deadline of now + ack_wait. *@rows has columns seq, attempts, envelope
 * (arena). Inside the caller's transaction.
 */
GR_MUST_CHECK int eb_claim(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub,
                           long long max, int64_t now_ms, struct gr_db_rows **rows);

/**
 * Records a failed attempt of @seq: pending again after @delay_ms, or dead (with its event)
 * when attempts reached max_deliver. *@changed is 1 when an in-flight delivery was found.
 */
GR_MUST_CHECK int eb_fail(struct gr_db_conn *db, struct gr_arena *a, const struct eb_sub *sub,
                          long long seq, int64_t delay_ms, int64_t now_ms, long long *changed);

/**
 * The earliest deliver_after (ms) of @sub's pending and in-flight deliveries in *@due, or -1
 * when it has none.
 */
GR_MUST_CHECK int eb_next_due(struct gr_db_conn *db, struct gr_arena *a, const char *sub_id,
                              int64_t *due);

/** Wakes every waiter (long polls and the push thread). Call after a commit. */
void eb_wake(struct eb_app *app);

/** The current wake generation. */
uint64_t eb_gen(struct eb_app *app);

/**
 * Waits until the generation differs from @gen, @until_mono_ms (monotonic) passes, or the
 * service stops.
 */
void eb_wait(struct eb_app *app, uint64_t gen, int64_t until_mono_ms);

/* ---- push (push.c) ----------------------------------------------------------------------- */

/** Starts the push thread; 0 or GR_EINTERNAL. */
GR_MUST_CHECK int eb_push_start(struct eb_app *app);
/** Stops and joins it (after setting app->stop and waking). */
void eb_push_stop(struct eb_app *app);

#endif
