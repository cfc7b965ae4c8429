/*
 * gr/service.h - a service is one const struct gr_service, and main() is
 *   int main(int argc, char **argv) { return gr_main(&product_service, argc, argv); }
 *
 * gr_main does the shared work (STYLE R18): configuration, logging, metrics, database and
 * migrations, JWT keys, signals, the HTTP server with the platform routes (/health,
 * /health/detailed, /ready, /metrics, /openapi.json) and graceful drain. `--describe` prints
 * {"name","id","version","port"} for `gravity up`.
 */
#ifndef GR_SERVICE_H
#define GR_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/bus.h"
#include "gr/config.h"
#include "gr/cursor.h"
#include "gr/db.h"
#include "gr/router.h"

struct gr_db;
struct gr_auth;
struct gr_metrics;

struct gr_service {
    const char *name;    /* "product-service" */
    const char *id;      /* "17-product-service": folder, binary and data dir name */
    const char *version; /* "0.1.0" */
    int port;            /* seed port */
    const struct gr_route *routes;
    size_t nroutes;
    const struct gr_migration *migrations; /* usually gr_svc_migrations (embedded) */
    const char *openapi_json;              /* usually gr_svc_openapi_json (embedded) */
    bool sqlite_sync_full;                 /* money, stock and order data */
    /* Events this service consumes (gr/bus.h): its durable subscription, named after it. */
    const struct gr_sub *subs;
    size_t nsubs;
    struct gr_sub_opts sub_opts;
    /** Optional: builds the service state reached through req->app. */
    int (*init)(struct gr_ctx *ctx, void **app);
    /** Optional: releases it after the server stopped. */
    void (*fini)(struct gr_ctx *ctx, void *app);
    /** Optional: called once the HTTP server listens on @port (the bound one, PORT=0 too). */
    void (*started)(struct gr_ctx *ctx, void *app, int port);
    /** Optional: called when a drain begins (SIGTERM/SIGINT), before the server stops. */
    void (*draining)(struct gr_ctx *ctx, void *app);
};

/* The running service, shared by all request threads (read-only after start-up). */
struct gr_ctx {
    const struct gr_service *svc;
    struct gr_config cfg;
    struct gr_db *db;
    struct gr_auth *auth;
    struct gr_metrics *metrics;
    struct gr_cursor_key cursor_key;
    void *app;
    /* The port clients reach the service on when it is not the HTTP server's own (the
     * gateway's data plane listens in front of it): set by the `started` hook; 0 = the
     * server's port. Registered with discovery and written to GR_PORT_FILE. */
    int public_port;
    /* The dependencies added with gr_health_add (gr/health.h); gr's. */
    struct gr_health *health;
};

/* Embedded by scripts/embed.py from the service's migrations/ and openapi.json. */
extern const struct gr_migration gr_svc_migrations[];
extern const char gr_svc_openapi_json[];

/** Runs the service until SIGTERM/SIGINT; returns the process exit status. */
int gr_main(const struct gr_service *svc, int argc, char **argv);

/**
 * Begins a DB transaction on req->db and registers a rollback on the arena, for handlers that
 * need one without GR_R_TX. Commit with gr_db_commit(req->db).
 */
GR_MUST_CHECK int gr_req_begin(struct gr_req *req);
/**
 * Runs @fn(@req, @arg) in a transaction of its own on req->db and commits it when @fn returns
 * 0 (else rolls it back and returns @fn's code). A serialization failure or lock timeout
 * (GR_EBUSY) runs it again after the same jittered pauses the core uses for GR_R_TX routes:
 * for a handler that must not be re-run whole (e.g. work before the transaction that must
 * count once). @fn must not commit or roll back itself.
 */
GR_MUST_CHECK int gr_req_tx(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg),
                            void *arg);
/**
 * For a handler of an Idempotency-Key route that is not GR_R_TX: stores @resp, the complete
 * response it is about to return (status, JSON or body, headers), as the key's answer inside
 * the transaction open on req->db, so the answer commits with the handler's last writes
 * instead of in a transaction of its own after the handler. The handler must then return that
 * response unchanged. If the transaction does not commit, the answer is stored afterwards as
 * usual. 0 when there is nothing to do (no key held, no transaction open, a GR_R_TX route, or
 * a non-2xx @resp); an error (e.g. 409 when the key was taken over) must fail the transaction.
 */
GR_MUST_CHECK int gr_req_idem_store(struct gr_req *req, struct gr_resp *resp);
/**
 * Runs @fn(@req, @arg) inside a read snapshot on req->db (gr_db_read_begin) and ends it: for a
 * handler that renders one object from several reads and must not show a concurrent write
 * half-applied. Inside a transaction or snapshot already open, @fn simply runs in it. @fn must
 * only read. Returns @fn's code (or the snapshot's error).
 */
GR_MUST_CHECK int gr_req_read(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg),
                              void *arg);
/** gr_req_tx at READ COMMITTED on PostgreSQL (see gr_db_begin_read_committed). */
GR_MUST_CHECK int gr_req_tx_read_committed(struct gr_req *req,
                                           int (*fn)(struct gr_req *req, void *arg), void *arg);

#endif
