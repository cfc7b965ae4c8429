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
#include <stddef.h>
#include <stdint.h>

#include "docs.h"
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
    /* replica sync and breaker events (events.c) */
    pthread_t sync_thread;
    bool sync_started;
    atomic_bool sync_stop;
    int sync_ms; /* GATEWAY_SYNC_MS: how often the shared tables are polled */
};

/* front.c: the public port the data plane bound (after gw_front_start). */
int gw_front_port(void);

/* routes.c */
#define GW_NROUTES (9 + GW_DOCS_NROUTES)
extern const struct gr_route gw_routes[GW_NROUTES];

/* gw_routes.c: admin handlers (gateway:admin) */
int gw_routes_list(struct gr_req *req, struct gr_resp *resp);
int gw_routes_create(struct gr_req *req, struct gr_resp *resp);
int gw_routes_get(struct gr_req *req, struct gr_resp *resp);
int gw_routes_put(struct gr_req *req, struct gr_resp *resp);
int gw_routes_delete(struct gr_req *req, struct gr_resp *resp);
int gw_upstreams_list(struct gr_req *req, struct gr_resp *resp);

/* keys.c: API keys (gateway:admin) and the data plane's key snapshot */
#define GW_KEY_HASH_LEN 64  /* SHA-256, hex */
#define GW_KEY_MAX      128 /* bytes of a presented X-Api-Key; longer ones are unknown */
int gw_apikeys_create(struct gr_req *req, struct gr_resp *resp);
int gw_apikeys_list(struct gr_req *req, struct gr_resp *resp);
int gw_apikeys_delete(struct gr_req *req, struct gr_resp *resp);
/** SHA-256 of @key (@len bytes) as lowercase hex. */
void gw_key_hash(const char *key, size_t len, char out[GW_KEY_HASH_LEN + 1]);
/**
 * Data plane: true when @key (@len bytes, need not be NUL-terminated) is a live API key; its
 * owner id is copied to @owner (@owner_len bytes, "" when unknown). Thread-safe, never blocks
 * on I/O (a read lock around a binary search).
 */
bool gw_apikey_lookup(const char *key, size_t len, char *owner, size_t owner_len);
/** Re-reads every key hash on @c and publishes the new snapshot. 0 or a gr code. */
int gw_apikeys_reload(struct gr_db_conn *c);
size_t gw_apikeys_count(void);
/** Frees the snapshot (at shutdown, and between tests). */
void gw_apikeys_clear(void);

/* events.c: breaker events, subscriptions, replica sync */
#define GW_NSUBS 3
extern const struct gr_sub gw_subs[GW_NSUBS];
/**
 * Starts the control-plane thread that writes gateway.circuit.opened|closed (queued by the
 * data plane's breaker callback) to the outbox and polls the shared tables every a->sync_ms:
 * route changes (rebuild), API key changes (reload), revoked token ids (deny set) and the
 * JWKS epoch (refetch). A no-op without a database.
 */
int gw_sync_start(struct gw_app *a);
void gw_sync_stop(struct gw_app *a);
/** Makes the edge verifier fetch the JWKS again now (auth.keys.rotated). */
void gw_jwks_refetch(struct gw_app *a);

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
