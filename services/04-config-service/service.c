/*
 * service.c - config-service (SERVICES §04) on :8762 under /api/v1/configs: versioned
 * configuration and AES-256-GCM sealed secrets per service and environment, a merged view
 * with long-poll watch, history and rollback. Everything shared is gr_main's; the init hook
 * loads the master key (CONFIG_MASTER_KEY, else a 0600 key file in DATA_DIR) and the current
 * config index. Long-polls park without a thread (gr_req_wait); a drain answers them at once.
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
    atomic_init(&app->index, rc == 0 ? gr_db_int(rows, 0, 0) : 0);
    gr_arena_release(&a);
    if (rc < 0)
        return rc;
    app->changed = gr_waitq_new();
    atomic_init(&app->polled_ms, 0);
    *out = app;
    return 0;
}

static void fini(struct gr_ctx *ctx, void *p)
{
    struct cfg_app *app = p;

    (void)ctx;
    if (!app)
        return;
    gr_seal_key_wipe(&app->key);
    gr_waitq_free(app->changed);
    app->changed = NULL;
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
};

int main(int argc, char **argv)
{
    return gr_main(&config_service, argc, argv);
}
