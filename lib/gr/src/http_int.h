/*
 * http_int.h - the server object shared by http.c (request pipeline) and service.c (gr_main).
 * Never included from services.
 */
#ifndef GR_HTTP_INT_H
#define GR_HTTP_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "gr/metrics.h"
#include "gr/service.h"

struct MHD_Daemon;
struct gr_server_route;

struct gr_server {
    struct gr_ctx *ctx;
    struct gr_router *router;
    struct MHD_Daemon *daemon;
    int port; /* bound port */
    atomic_int inflight;
    atomic_uint started; /* requests begun, for the quiet period of a drain */
    atomic_bool draining;
    atomic_bool ready;
    pthread_mutex_t idle_mu;
    pthread_cond_t idle_cv;
    /* Route tables, for metrics: series are cached per route (index into `rm`). */
    const struct gr_route *const *tables;
    const size_t *counts;
    size_t ntables;
    struct gr_server_route *rm; /* one per route, plus one for unmatched requests */
    size_t nrm;
    struct gr_gauge *inflight_gauge;
    struct gr_gauge *waiting_gauge; /* requests parked in gr_req_wait (part of inflight) */
};

/** Starts listening on cfg host/port with the pool; fills srv->port. */
int gr_http__start(struct gr_server *srv);
/** Stops accepting, waits for in-flight requests up to @timeout_ms, closes everything. */
void gr_http__drain(struct gr_server *srv, int timeout_ms);
/** Sets up per-route metrics; call before gr_http__start. */
void gr_http__init_metrics(struct gr_server *srv);
void gr_http__release(struct gr_server *srv);

#endif
