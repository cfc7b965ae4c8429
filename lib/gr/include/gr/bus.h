/*
 * gr/bus.h - events between services (SERVICES §0 Events, ARCHITECTURE §3 bus).
 *
 * Publishing: gr_bus_emit writes a CloudEvents 1.0 envelope into the service's `outbox` table
 * inside the caller's open transaction, so a rollback publishes nothing. After the commit a
 * relay thread publishes outbox rows in order (per service, so per subject) through the
 * configured backend, with backoff while the backend is down; a row leaves the outbox only
 * once the backend has stored it, so a kill -9 anywhere still publishes after restart.
 * Backends dedupe on the event id, so a row published twice is stored once.
 *
 * Consuming: a service lists its subscriptions in struct gr_service. A consumer thread pulls
 * from the backend's durable subscription named after the service and runs each handler in a
 * transaction that also inserts the event id into `inbox`: a redelivered event finds its id
 * there and is acknowledged without running the handler again. A handler error rolls back
 * and the event is redelivered after a delay; after max_deliver attempts the backend parks it
 * as a dead letter and the consumer goes on with the rest.
 *
 * Backends (EVENT_BUS): `http` = 14-event-bus-service at EVENT_BUS_URL, `nats` = NATS
 * JetStream at NATS_URL (stream GRAVITY, subjects gravity.<type>, Nats-Msg-Id = event id).
 */
#ifndef GR_BUS_H
#define GR_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/arena.h"
#include "gr/db.h"

#define GR_EVENT_TYPE_MAX    128 /* characters of a type: ^[a-z0-9]+(\.[a-z0-9_]+)+$ */
#define GR_EVENT_SUBJECT_MAX 255
#define GR_EVENT_DATA_MAX    (256 * 1024) /* bytes of the JSON text of data */

/* An event as a consumer receives it. Strings are arena memory (or borrowed for the call). */
struct gr_event {
    const char *id;          /* UUIDv7 */
    const char *source;      /* "/gravity/<service name>" */
    const char *type;        /* "product.created" */
    const char *subject;     /* aggregate id, may be NULL */
    const char *time;        /* RFC 3339 */
    const char *traceparent; /* may be NULL */
    const char *data;        /* JSON text of data ("null" when absent) */
    size_t data_len;
    uint64_t seq;     /* the backend's sequence number */
    unsigned attempt; /* delivery attempt, from 1 */
};

/*
 * A subscription of a service: events whose type equals @type, or starts with the prefix
 * before a trailing '*' ("product.*"). The handler runs inside a transaction on @db (its inbox
 * row included); it returns 0 to commit, or a negative GR_E* code to roll back and have the
 * event redelivered. Handlers must only touch the database through @db.
 */
struct gr_sub {
    const char *type;
    int (*handler)(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev, void *app);
};

/* Subscription settings of a service's durable consumer (0 = default). */
struct gr_sub_opts {
    int ack_wait_s;  /* default 30 */
    int max_deliver; /* default 5 */
};

/**
 * Adds an event to the outbox inside the open transaction on @db (GR_EINTERNAL without one).
 * @source is "/gravity/<service name>", @type must match ^[a-z0-9]+(\.[a-z0-9_]+)+$, @subject
 * may be NULL, @data is JSON text (NULL = null) of at most GR_EVENT_DATA_MAX bytes, and
 * @traceparent may be NULL. The new event id is written to @id_out when non-NULL.
 */
GR_MUST_CHECK int gr_bus_emit(struct gr_db_conn *db, const char *source, const char *type,
                              const char *subject, const char *data, const char *traceparent,
                              char id_out[37]);

struct gr_req;
/**
 * gr_bus_emit for a request handler: on req->db's open transaction (a GR_R_TX route or
 * gr_req_begin), with source "/gravity/<service name>".
 */
GR_MUST_CHECK int gr_req_emit(struct gr_req *req, const char *type, const char *subject,
                              const char *data);

/**
 * Asks for a replay of this service's subscription: every event with a backend seq above
 * @after_seq is delivered again (the inbox makes those already applied no-ops, so a replay
 * re-applies only what the inbox no longer remembers, e.g. after a restore). Done by the
 * consumer thread before its next pull; GR_EUNAVAIL when the service has no subscriptions.
 */
GR_MUST_CHECK int gr_bus_replay(uint64_t after_seq);

/** True for a valid event type: ^[a-z0-9]+(\.[a-z0-9_]+)+$ and at most GR_EVENT_TYPE_MAX. */
bool gr_bus_type_valid(const char *type);

/** The migrations of the standard tables outbox and inbox (run by gr_main as "gr.bus"). */
extern const struct gr_migration gr_bus_migrations[];

#endif
