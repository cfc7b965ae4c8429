/*
 * service.c - cart-service (SERVICES §19) on :8009 under /api/v1/carts: anonymous and
 * signed-in carts with live prices from 17, a coupon preview from 22, merge at sign-in and
 * checkout into 16. Everything shared (config, DB and migrations, JWT, HTTP, outbox, platform
 * routes, drain, the event subscriptions of events.c) is gr_main's; the init hook reads the
 * service's own variables and the started hook starts the sweeper that marks idle carts
 * abandoned.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cart.h"
#include "gr/config.h"
#include "gr/service.h"

static const char *const url_schemes[] = { "http", "https", NULL };

/* Reads one base URL variable; "off" (DISCOUNT_URL only) gives NULL. */
static int read_url(const char *name, const char *def, bool may_be_off, const char **out)
{
    char err[256];
    const char *raw = getenv(name);

    if (may_be_off && raw != NULL && strcmp(raw, "off") == 0) {
        *out = NULL;
        return 0;
    }
    if (gr_config_url(name, def, url_schemes, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "19-cart-service: %s\n", err);
        return GR_ECONFIG;
    }
    return 0;
}

static int read_int(const char *name, long long def, long long min, long long max, long long *out)
{
    char err[256];

    if (gr_config_int(name, def, min, max, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "19-cart-service: %s\n", err);
        return GR_ECONFIG;
    }
    return 0;
}

static int cart_init(struct gr_ctx *ctx, void **out)
{
    struct cart_app *app = gr_xcalloc(1, sizeof(*app));
    int rc;

    rc = read_url("PRODUCT_URL", "http://127.0.0.1:8007", false, &app->product_url);
    if (rc == 0)
        rc = read_url("DISCOUNT_URL", "http://127.0.0.1:8012", true, &app->discount_url);
    if (rc == 0)
        rc = read_url("ORDER_URL", "http://127.0.0.1:8006", false, &app->order_url);
    if (rc == 0)
        rc = read_int("CART_UPSTREAM_TIMEOUT_MS", 5000, 100, 60000, &app->timeout_ms);
    if (rc == 0)
        rc = read_int("CART_ABANDON_AFTER_S", 86400, 1, 365LL * 86400, &app->abandon_after_s);
    if (rc == 0)
        rc = read_int("CART_SWEEP_INTERVAL_MS", 60000, 10, 86400000, &app->sweep_interval_ms);
    if (rc < 0) {
        gr_free(app);
        return rc;
    }
    app->db = ctx->db;
    pthread_mutex_init(&app->mu, NULL);
    pthread_cond_init(&app->cv, NULL);
    *out = app;
    return 0;
}

static void cart_started(struct gr_ctx *ctx, void *app, int port)
{
    (void)ctx;
    (void)port;
    if (cart_sweeper_start(app) < 0)
        fprintf(stderr, "19-cart-service: the abandoned-cart sweeper did not start\n");
}

static void cart_draining(struct gr_ctx *ctx, void *app)
{
    (void)ctx;
    cart_sweeper_stop(app);
}

static void cart_fini(struct gr_ctx *ctx, void *p)
{
    struct cart_app *app = p;

    (void)ctx;
    cart_sweeper_stop(app);
    cart_upstream_fini();
    pthread_cond_destroy(&app->cv);
    pthread_mutex_destroy(&app->mu);
    gr_free(app);
}

static const struct gr_service cart_service = {
    .name = "cart-service",
    .id = "19-cart-service",
    .version = "0.1.0",
    .port = 8009,
    .routes = cart_routes,
    .nroutes = CART_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* product.price_changed|deleted, inventory.out_of_stock|stock_changed, user.deleted. */
    .subs = cart_subs,
    .nsubs = CART_NSUBS,
    /* Checkout links a cart to its order: a committed checkout must survive a power cut. */
    .sqlite_sync_full = true,
    .init = cart_init,
    .started = cart_started,
    .draining = cart_draining,
    .fini = cart_fini,
};

int main(int argc, char **argv)
{
    return gr_main(&cart_service, argc, argv);
}
