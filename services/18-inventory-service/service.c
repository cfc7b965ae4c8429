/*
 * service.c - inventory-service (SERVICES §18): stock per sku and warehouse, reservations and
 * the movement ledger, on :8008 under /api/v1/inventory and /api/v1/warehouses. Everything
 * shared (config, DB and migrations, JWT, HTTP, outbox relay, event consumer, platform routes)
 * is gr_main's; this file holds the service state and the expiry sweeper thread, which
 * releases active reservations past their expires_at every INVENTORY_SWEEP_MS (default 1000).
 * Expiry is a conditional UPDATE (reservations.c), so with several replicas each reservation
 * still expires, and publishes inventory.released, exactly once.
 */
#include <string.h>
#include <time.h>

#include "gr/log.h"
#include "gr/service.h"
#include "inventory.h"

static void *sweeper_main(void *arg)
{
    struct inv_app *app = arg;
    struct gr_arena a;

    gr_arena_init(&a);
    for (;;) {
        struct timespec ts;
        bool stop;
        int rc = inv_sweep_once(app, &a);

        gr_arena_release(&a);
        if (rc < 0 && rc != GR_EBUSY && rc != GR_EUNAVAIL)
            gr_log_warn("reservation sweep failed", "error", gr_strerror(rc));
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += app->sweep_ms / 1000;
        ts.tv_nsec += (app->sweep_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&app->mu);
        while (!app->stop)
            if (pthread_cond_timedwait(&app->tick, &app->mu, &ts) != 0)
                break;
        stop = app->stop;
        pthread_mutex_unlock(&app->mu);
        if (stop)
            break;
    }
    return NULL;
}

static void sweeper_stop(struct inv_app *app)
{
    bool running;

    pthread_mutex_lock(&app->mu);
    app->stop = true;
    running = app->running;
    app->running = false;
    pthread_cond_broadcast(&app->tick);
    pthread_mutex_unlock(&app->mu);
    if (running)
        pthread_join(app->sweeper, NULL);
}

static int init(struct gr_ctx *ctx, void **app_out)
{
    struct inv_app *app = gr_xcalloc(1, sizeof(*app));
    pthread_condattr_t at;
    char err[256];

    if (gr_config_int("INVENTORY_LOW_STOCK", 5, 0, 1000000000LL, &app->low_stock, err,
                      sizeof(err)) < 0 ||
        gr_config_int("INVENTORY_SWEEP_MS", 1000, 20, 3600000, &app->sweep_ms, err, sizeof(err)) <
            0) {
        gr_log_error("invalid configuration", "error", err);
        gr_free(app);
        return GR_ECONFIG;
    }
    app->db = ctx->db;
    pthread_mutex_init(&app->mu, NULL);
    pthread_condattr_init(&at);
    pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
    pthread_cond_init(&app->tick, &at);
    pthread_condattr_destroy(&at);
    *app_out = app;
    return 0;
}

static void started(struct gr_ctx *ctx, void *app_v, int port)
{
    struct inv_app *app = app_v;

    (void)ctx;
    (void)port;
    if (app->db == NULL)
        return;
    pthread_mutex_lock(&app->mu);
    if (!app->stop && pthread_create(&app->sweeper, NULL, sweeper_main, app) == 0)
        app->running = true;
    else if (!app->stop)
        gr_log_error("reservation sweeper did not start");
    pthread_mutex_unlock(&app->mu);
}

static void draining(struct gr_ctx *ctx, void *app)
{
    (void)ctx;
    sweeper_stop(app);
}

static void fini(struct gr_ctx *ctx, void *app_v)
{
    struct inv_app *app = app_v;

    (void)ctx;
    if (app == NULL)
        return;
    sweeper_stop(app);
    pthread_cond_destroy(&app->tick);
    pthread_mutex_destroy(&app->mu);
    gr_free(app);
}

static const struct gr_service inventory_service = {
    .name = "inventory-service",
    .id = "18-inventory-service",
    .version = "0.1.0",
    .port = 8008,
    .routes = inv_routes,
    .nroutes = INV_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    .sqlite_sync_full = true, /* stock (ARCHITECTURE §6) */
    .subs = inv_subs,
    .nsubs = INV_NSUBS,
    .init = init,
    .fini = fini,
    .started = started,
    .draining = draining,
};

int main(int argc, char **argv)
{
    return gr_main(&inventory_service, argc, argv);
}
