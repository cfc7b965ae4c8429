/*
 * service.c - config-service (SERVICES §04) on :8762 under /api/v1/configs: versioned
 * configuration and AES-256-GCM sealed secrets per service and environment, a merged view
 * with long-poll watch, history and rollback. Everything shared is gr_main's; the init hook
 * loads the master key (CONFIG_MASTER_KEY, else a 0600 key file in DATA_DIR) and the current
 * config index; the draining hook wakes the long-polls so a drain never waits for them.
 */
#include <stdio.h>
#include <time.h>

#include "cfgsvc.h"
#include "gr/db.h"
#include "gr/log.h"

static struct cfg_app the_app;

static int init(struct gr_ctx *ctx, void **out)
{
    struct cfg_app *app = &the_app;
    pthread_condattr_t ca;
    struct gr_arena a;
    struct gr_db_conn *c;
    struct gr_db_rows *rows = NULL;
    int rc;

    *out = NULL;
    rc = cfg_key_load(app, ctx->cfg.data_dir);
    if (rc < 0)
        return rc;
    if (!ctx->db) {
        gr_log_error("config-service needs a database");
        return GR_ECONFIG;
    }
    rc = gr_db_conn(ctx->db, &c);
    if (rc < 0)
        return rc;
    gr_arena_init(&a);
    rc = gr_db_query(c, &a, "SELECT value FROM config_index WHERE id = 1", NULL, 0, &rows);
    app->index = rc == 0 ? gr_db_int(rows, 0, 0) : 0;
    gr_arena_release(&a);
    if (rc < 0)
        return rc;
    pthread_mutex_init(&app->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&app->cv, &ca);
    pthread_condattr_destroy(&ca);
    app->max_waiters = ctx->cfg.http_threads / 2 > 0 ? ctx->cfg.http_threads / 2 : 1;
    app->waiters = 0;
    app->draining = false;
    *out = app;
    return 0;
}

static void draining(struct gr_ctx *ctx, void *p)
{
    struct cfg_app *app = p;

    (void)ctx;
    if (!app)
        return;
    pthread_mutex_lock(&app->mu);
    app->draining = true;
    pthread_cond_broadcast(&app->cv);
    pthread_mutex_unlock(&app->mu);
}

static void fini(struct gr_ctx *ctx, void *p)
{
    struct cfg_app *app = p;

    (void)ctx;
    if (!app)
        return;
    pthread_cond_destroy(&app->cv);
    pthread_mutex_destroy(&app->mu);
}

static const struct gr_service config_service = {
    .name = "config-service",
    .id = "04-config-service",
    .version = "0.1.0",
    .port = 8762,
    .routes = cfg_routes,
    .nroutes = CFG_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Configuration and secrets: a write acknowledged to an operator must survive a power cut. */
    .sqlite_sync_full = true,
    .init = init,
    .fini = fini,
    .draining = draining,
};

int main(int argc, char **argv)
{
    return gr_main(&config_service, argc, argv);
}
