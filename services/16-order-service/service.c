/*
 * service.c - order-service (SERVICES §16) on :8006 under /api/v1/orders: orders, the
 * checkout saga (saga.c) and the fulfilment state machine. Everything shared (config, DB and
 * migrations, JWT, HTTP, outbox, inbox, platform routes, drain) is gr_main's; the init hook
 * reads the service's own variables, the started hook starts the saga resumer and the
 * draining hook stops it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gr/config.h"
#include "gr/id.h"
#include "gr/service.h"
#include "order.h"

static const char *const url_schemes[] = { "http", "https", NULL };

static int read_url(const char *name, const char *def, const char **out)
{
    char err[256];

    if (gr_config_url(name, def, url_schemes, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "16-order-service: %s\n", err);
        return GR_ECONFIG;
    }
    return 0;
}

static int read_int(const char *name, long long def, long long min, long long max, long long *out)
{
    char err[256];

    if (gr_config_int(name, def, min, max, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "16-order-service: %s\n", err);
        return GR_ECONFIG;
    }
    return 0;
}

static int order_init(struct gr_ctx *ctx, void **out)
{
    struct order_app *app = gr_xcalloc(1, sizeof(*app));
    const char *invoice = getenv("INVOICE_URL");
    int rc;

    rc = read_url("PRODUCT_URL", "http://127.0.0.1:8007", &app->product_url);
    if (rc == 0)
        rc = read_url("INVENTORY_URL", "http://127.0.0.1:8008", &app->inventory_url);
    if (rc == 0)
        rc = read_url(getenv("TAX_URL") == NULL && invoice != NULL ? "INVOICE_URL" : "TAX_URL",
                      "http://127.0.0.1:8011", &app->tax_url);
    if (rc == 0)
        rc = read_url("DISCOUNT_URL", "http://127.0.0.1:8012", &app->discount_url);
    if (rc == 0)
        rc = read_url("PAYMENT_URL", "http://127.0.0.1:8005", &app->payment_url);
    if (rc == 0)
        rc = read_int("ORDER_CALL_TIMEOUT_MS", 5000, 100, 60000, &app->timeout_ms);
    if (rc == 0)
        rc = read_int("ORDER_TAX_REFRESH_S", 300, 0, 86400, &app->tax_fresh_s);
    if (rc == 0)
        rc = read_int("ORDER_TAX_MAX_AGE_S", 86400, 0, 7 * 86400, &app->tax_max_age_s);
    if (rc == 0)
        rc = read_int("ORDER_SAGA_LEASE_MS", 30000, 100, 3600000, &app->lease_ms);
    if (rc == 0)
        rc = read_int("ORDER_RESUME_INTERVAL_MS", 1000, 10, 3600000, &app->resume_ms);
    if (rc == 0)
        rc = read_int("ORDER_RESERVATION_TTL_S", 900, 1, 86400, &app->reserve_ttl_s);
    if (rc == 0)
        rc = read_int("ORDER_SAGA_GIVE_UP_S", 300, 1, 7 * 86400, &app->give_up_s);
    if (rc == 0) {
        static const char *const points[] = { "created", "coupon",    "reserve", "pay",
                                              "confirm", "cancelled", "refund",  NULL };
        char err[256];

        if (gr_config_str("ORDER_TEST_KILL_AT", NULL, points, &app->kill_at, err, sizeof(err)) <
            0) {
            fprintf(stderr, "16-order-service: %s\n", err);
            rc = GR_ECONFIG;
        }
    }
    if (rc == 0)
        rc = up_peers_make(app, getenv("TAX_URL") == NULL && invoice != NULL ? "INVOICE_URL"
                                                                             : "TAX_URL");
    if (rc < 0) {
        up_peers_free(app);
        gr_free(app);
        return rc;
    }
    app->db = ctx->db;
    gr_id_new(app->instance);
    pthread_mutex_init(&app->mu, NULL);
    pthread_cond_init(&app->cv, NULL);
    pthread_mutex_init(&app->tax_mu, NULL);
    *out = app;
    return 0;
}

static void order_started(struct gr_ctx *ctx, void *app, int port)
{
    (void)ctx;
    (void)port;
    if (saga_resumer_start(app) < 0)
        fprintf(stderr, "16-order-service: the saga resumer did not start\n");
}

static void order_draining(struct gr_ctx *ctx, void *app)
{
    (void)ctx;
    saga_resumer_stop(app);
}

static void order_fini(struct gr_ctx *ctx, void *p)
{
    struct order_app *app = p;

    (void)ctx;
    saga_resumer_stop(app); /* before the client goes (gr frees it after fini) */
    up_peers_free(app);
    pthread_cond_destroy(&app->cv);
    pthread_mutex_destroy(&app->mu);
    pthread_mutex_destroy(&app->tax_mu);
    gr_free(app);
}

static const struct gr_service order_service = {
    .name = "order-service",
    .id = "16-order-service",
    .version = "0.1.0",
    .port = 8006,
    .routes = order_routes,
    .nroutes = ORDER_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Orders are money and order data (ARCHITECTURE §6). */
    .sqlite_sync_full = true,
    .init = order_init,
    .started = order_started,
    .draining = order_draining,
    .fini = order_fini,
    .subs = order_subs,
    .nsubs = ORDER_NSUBS,
};

int main(int argc, char **argv)
{
    return gr_main(&order_service, argc, argv);
}
