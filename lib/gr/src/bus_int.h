/*
 * bus_int.h - the backend interface of gr bus (bus.c: outbox, relay, consumer loop, inbox).
 * Backends: bus_http.c (14-event-bus-service over HTTP) and bus_nats.c (NATS JetStream via
 * libnats). Never included by services.
 *
 * A backend is used by at most two threads at once: the relay calls publish, the consumer
 * thread calls pull/ack/nak; each call may block (network) and must honour the deadline it is
 * given. Every function returns 0 (or a count) on success, or a negative GR_E* code:
 * GR_EUNAVAIL when the broker cannot be reached (the caller backs off and retries),
 * GR_EINVAL/GR_EVALID when the broker refused the input for good.
 */
#ifndef GR_BUS_INT_H
#define GR_BUS_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/arena.h"
#include "gr/bus.h"

/* One outbox row on its way out: the complete CloudEvents 1.0 structured JSON text. */
struct gr_bus_out {
    const char *id;   /* event id (dedupe key: Nats-Msg-Id, or (source, id) on 14) */
    const char *type; /* subject suffix for NATS: gravity.<type> */
    const char *json; /* {"specversion":"1.0","id":…,"source":…,"type":…,…,"data":…} */
    size_t json_len;
};

/* One delivery handed to the consumer; @token identifies it for ack/nak (backend memory). */
struct gr_bus_in {
    struct gr_event ev; /* parsed envelope, strings in the pull's arena */
    void *token;        /* backend's handle: a natsMsg*, or the seq on 14 */
};

struct gr_bus_backend;

struct gr_bus_backend_ops {
    const char *name; /* "http", "nats" */
    /*
     * Publishes @n events in order; returns how many leading events the broker has durably
     * stored (a duplicate id counts as stored), or a negative code when none was.
     */
    int (*publish)(struct gr_bus_backend *b, const struct gr_bus_out *ev, size_t n, int timeout_ms);
    /*
     * Creates or binds the durable subscription of this service (name = service name,
     * the types of @subs as filters, @opts). Called once by the consumer thread before pull.
     */
    int (*subscribe)(struct gr_bus_backend *b, const char *durable, const struct gr_sub *subs,
                     size_t nsubs, const struct gr_sub_opts *opts, int timeout_ms);
    /*
     * Waits up to @wait_ms for at most @max deliveries of the subscription; writes them to @out
     * (allocated in @a) and returns their number (0 on timeout).
     */
    int (*pull)(struct gr_bus_backend *b, struct gr_arena *a, size_t max, int wait_ms,
                struct gr_bus_in **out);
    /* Acknowledges one delivery (applied, or a duplicate already in the inbox). */
    int (*ack)(struct gr_bus_backend *b, struct gr_bus_in *in);
    /* Optional: acknowledges @n deliveries at once (one round trip). */
    int (*ack_many)(struct gr_bus_backend *b, struct gr_bus_in **in, size_t n);
    /* Asks for redelivery after @delay_ms; the broker dead-letters after max_deliver. */
    int (*nak)(struct gr_bus_backend *b, struct gr_bus_in *in, int delay_ms);
    /*
     * Replay: every event of the subscription with seq > @after_seq is delivered again, acked
     * ones included (consumers' inboxes make the ones already applied no-ops).
     */
    int (*replay)(struct gr_bus_backend *b, uint64_t after_seq, int timeout_ms);
    /* Releases what pull allocated outside the arena for this delivery (may be NULL). */
    void (*release)(struct gr_bus_backend *b, struct gr_bus_in *in);
    /* True when the broker answered recently; for /health/detailed and /ready. */
    int (*ping)(struct gr_bus_backend *b, int timeout_ms);
    void (*close)(struct gr_bus_backend *b);
};

struct gr_bus_backend {
    const struct gr_bus_backend_ops *ops;
    void *impl;
};

/*
 * Constructors. @url: EVENT_BUS_URL (http://host:port) or NATS_URL (nats://host:port);
 * @token: bearer token for 14 (SERVICE_TOKEN), may be NULL. Message into @err on failure.
 */
int gr_bus_http_open(const char *url, const char *token, struct gr_bus_backend **out, char *err,
                     size_t errlen);
int gr_bus_nats_open(const char *url, struct gr_bus_backend **out, char *err, size_t errlen);

/* What gr_main hands to the bus (borrowed for the bus's lifetime). */
struct gr_bus_cfg {
    const char *kind;    /* "http" | "nats" */
    const char *url;     /* EVENT_BUS_URL or NATS_URL */
    const char *token;   /* SERVICE_TOKEN for 14, may be NULL */
    const char *durable; /* the service's name: its durable subscription */
    const struct gr_sub *subs;
    size_t nsubs;
    struct gr_sub_opts opts;
    void *const *app; /* &ctx->app: handed to handlers (set after init) */
};

struct gr_bus;
struct gr_metrics;

/*
 * Starts the relay thread (and the consumer thread when there are subscriptions). Backends
 * connect lazily, so a bus that is down at start-up only delays publishing.
 */
int gr_bus__start(struct gr_db *db, const struct gr_bus_cfg *cfg, struct gr_metrics *m,
                  struct gr_bus **out);
/* Stops both threads (the consumer finishes its current event) and frees @b; NULL is fine. */
void gr_bus__stop(struct gr_bus *b);
/* The bus's entry of /health/detailed; sets *@ok to false when it is down. */
json_t *gr_bus__health(struct gr_bus *b, bool *ok);
/* Wakes the relay (after a commit that emitted). */
void gr_bus__kick(struct gr_bus *b);

/* Parses a CloudEvents 1.0 structured JSON text into @ev (strings in @a); GR_EVALID if bad. */
int gr_bus_parse_event(struct gr_arena *a, const char *json, size_t len, struct gr_event *ev);

#endif
