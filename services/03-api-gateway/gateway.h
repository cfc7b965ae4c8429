/*
 * gateway.h - the api-gateway's control plane (SERVICES §03), private to this folder: the admin
 * API over the `routes` table (gw_routes.c), the registry watcher and the static upstreams
 * (registry.c), and the rebuild that turns routes + instances into the data plane's table
 * document (gw.h, gw_table_load).
 */
#ifndef GATEWAY_H
#define GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gr/service.h"
#include "gw.h"

#define GW_ROUTES_PREFIX "/api/v1/gateway"
#define GW_ERR_MAX       256
#define GW_MAX_SERVICES  GW_MAX_ROUTES /* services whose instances are known */

/* The known instances of one service (from the registry or GATEWAY_UPSTREAMS). */
struct gw_svc_inst {
    char name[GW_NAME_MAX];
    struct gw_instance *inst; /* id, host, port only; gr_xmalloc'd */
    size_t n;
};

struct gw_app {
    struct gr_ctx *ctx;
    pthread_mutex_t mu; /* guards the fields below down to reg_ok */
    struct gw_svc_inst *svcs;
    size_t nsvcs;
    const char *source;         /* "registry", "static" or "none" (static strings) */
    char reg_error[GW_ERR_MAX]; /* last registry error, "" when the last poll worked */
    unsigned long long reg_index;
    bool reg_ok;                /* the registry answered at least once */
    pthread_mutex_t rebuild_mu; /* serialises rebuilds, so a newer table is never replaced */
    /* registry watcher (registry.c) */
    void *multi; /* CURLM: its transfers, woken by curl_multi_wakeup */
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    atomic_bool refresh; /* a route changed: re-read the instances now (gw_registry_refresh) */
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cond;
};

/* front.c: the public port the data plane bound (after gw_front_start). */
int gw_front_port(void);

/* routes.c */
#define GW_NROUTES 6
extern const struct gr_route gw_routes[GW_NROUTES];

/* gw_routes.c: admin handlers (gateway:admin) */
int gw_routes_list(struct gr_req *req, struct gr_resp *resp);
int gw_routes_create(struct gr_req *req, struct gr_resp *resp);
int gw_routes_get(struct gr_req *req, struct gr_resp *resp);
int gw_routes_put(struct gr_req *req, struct gr_resp *resp);
int gw_routes_delete(struct gr_req *req, struct gr_resp *resp);
int gw_upstreams_list(struct gr_req *req, struct gr_resp *resp);

/**
 * Reads every route row on @c, joins the known instances of each route's service and
 * publishes the document with gw_table_load. Serialised by a->rebuild_mu. 0 or a gr code.
 */
int gw_rebuild(struct gw_app *a, struct gr_db_conn *c);

/* registry.c */
/**
 * Parses GATEWAY_UPSTREAMS ("svc=host:port,svc=host:port") into a->svcs. 0 when unset;
 * GR_ECONFIG with one line in @err naming the variable when malformed.
 */
int gw_static_upstreams(struct gw_app *a, const char *spec, char *err, size_t errlen);
/** Starts the watcher thread when DISCOVERY_URL is set (0 otherwise). */
int gw_registry_start(struct gw_app *a);
/**
 * Asks the watcher to re-read the instances of the services the routes name now (after a
 * route change), cutting its long poll short; a no-op without DISCOVERY_URL.
 */
void gw_registry_refresh(struct gw_app *a);
/** Stops and joins the watcher (returns within about a second). */
void gw_registry_stop(struct gw_app *a);
/** Frees a->svcs (call with no watcher running). */
void gw_svcs_free(struct gw_app *a);

#endif
