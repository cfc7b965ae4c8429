/*
 * service.c - service-discovery (SERVICES §02): the registry of running instances with TTL and
 * HTTP health checks, blocking queries and Prometheus HTTP SD, on :8761 under
 * /api/v1/registry. Shared work (config, DB, migrations, JWT, platform routes) is gr_main's;
 * this file holds the service state and starts/stops the checker thread (checker.c).
 */
#include <string.h>

#include "gr/log.h"
#include "gr/service.h"
#include "registry.h"

static void cond_init_mono(pthread_cond_t *c)
{
    pthread_condattr_t at;

    pthread_condattr_init(&at);
    pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
    pthread_cond_init(c, &at);
    pthread_condattr_destroy(&at);
}

static int init(struct gr_ctx *ctx, void **app)
{
    struct registry *r = gr_xcalloc(1, sizeof(*r));

    r->db = ctx->db;
    pthread_mutex_init(&r->mu, NULL);
    cond_init_mono(&r->tick);
    r->changed = gr_waitq_new();
    atomic_init(&r->seen_idx, 0);
    atomic_init(&r->polled_ms, 0);
    *app = r;
    return 0;
}

static void started(struct gr_ctx *ctx, void *app, int port)
{
    struct registry *r = app;

    (void)ctx;
    (void)port;
    if (r->db != NULL && checker_start(r) < 0)
        gr_log_error("registry checker did not start");
}

/* A drain stops the checker (gr itself answers the parked blocking queries at once). */
static void draining(struct gr_ctx *ctx, void *app)
{
    (void)ctx;
    checker_stop(app);
}

static void fini(struct gr_ctx *ctx, void *app)
{
    struct registry *r = app;

    (void)ctx;
    if (r == NULL)
        return;
    checker_stop(r);
    gr_waitq_free(r->changed);
    pthread_cond_destroy(&r->tick);
    pthread_mutex_destroy(&r->mu);
    gr_free(r);
}

static const struct gr_service registry_service = {
    .name = "service-discovery",
    .id = "02-service-discovery",
    .version = "0.1.0",
    .port = 8761,
    .routes = registry_routes,
    .nroutes = REGISTRY_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    .sqlite_sync_full = false,
    .init = init,
    .fini = fini,
    .started = started,
    .draining = draining,
};

int main(int argc, char **argv)
{
    return gr_main(&registry_service, argc, argv);
}
