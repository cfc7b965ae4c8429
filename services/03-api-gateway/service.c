/*
 * service.c - api-gateway (SERVICES §03, ARCHITECTURE §4) on :8000. This binary is, for now,
 * the control plane only: a gr service whose server owns the `routes` and `api_keys` tables,
 * the admin API under /api/v1/gateway and the platform routes. The init hook reads the static
 * upstreams (GATEWAY_UPSTREAMS) or starts the registry watcher (DISCOVERY_URL), and publishes
 * the first routing table (gw_table_load); the data plane (front.c) is started later through
 * the started/draining hooks.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gateway.h"
#include "gr/log.h"

static void app_free(struct gw_app *a)
{
    gw_svcs_free(a);
    pthread_cond_destroy(&a->stop_cond);
    pthread_mutex_destroy(&a->stop_mu);
    pthread_mutex_destroy(&a->rebuild_mu);
    pthread_mutex_destroy(&a->mu);
    gr_free(a);
}

static int gw_init(struct gr_ctx *ctx, void **app)
{
    struct gw_app *a = gr_xcalloc(1, sizeof(*a));
    struct gr_db_conn *c = NULL;
    char err[512] = "";
    int rc;

    a->ctx = ctx;
    a->source = "none";
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->rebuild_mu, NULL);
    pthread_mutex_init(&a->stop_mu, NULL);
    pthread_cond_init(&a->stop_cond, NULL);
    atomic_init(&a->stop, false);
    atomic_init(&a->refresh, false);
    *app = NULL;
    /* Validated even when DISCOVERY_URL wins, so a typo never waits for the day it matters. */
    rc = gw_static_upstreams(a, getenv("GATEWAY_UPSTREAMS"), err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", ctx->svc->id, err);
        app_free(a);
        return GR_ECONFIG;
    }
    if (ctx->cfg.discovery_url != NULL) {
        gw_svcs_free(a); /* the registry is the source of truth */
        a->source = "registry";
    }
    if (ctx->db != NULL) {
        rc = gr_db_conn(ctx->db, &c);
        if (rc == 0)
            rc = gw_rebuild(a, c);
        if (rc < 0) {
            gr_log_error("cannot build the routing table", "code", gr_err_name(rc));
            app_free(a);
            return rc;
        }
    }
    rc = gw_registry_start(a);
    if (rc < 0) {
        app_free(a);
        return rc;
    }
    *app = a;
    return 0;
}

static void gw_fini(struct gr_ctx *ctx, void *app)
{
    struct gw_app *a = app;

    (void)ctx;
    gw_registry_stop(a);
    app_free(a);
}

static const struct gr_service gw_service = {
    .name = "api-gateway",
    .id = "03-api-gateway",
    .version = "0.1.0",
    .port = 8000,
    .routes = gw_routes,
    .nroutes = GW_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    .sqlite_sync_full = false,
    .init = gw_init,
    .fini = gw_fini,
};

int main(int argc, char **argv)
{
    return gr_main(&gw_service, argc, argv);
}
