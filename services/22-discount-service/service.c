/*
 * service.c - discount-service (SERVICES §22): coupons, the discount they give a cart and
 * their redemption limits, on :8012 under /api/v1/coupons and /api/v1/coupon-redemptions.
 * Everything shared (config, DB and migrations, JWT, HTTP, platform routes, outbox and
 * subscriptions) is gr_main's; the init hook reads the reservation lifetime.
 */
#include <stdio.h>

#include "discount.h"
#include "gr/arena.h"
#include "gr/config.h"
#include "gr/service.h"

/* DISCOUNT_RESERVATION_TTL_S: how long a reservation holds its slot (seconds, 1..86400). */
static int read_ttl(long long *ttl)
{
    char err[256];

    if (gr_config_int("DISCOUNT_RESERVATION_TTL_S", DISCOUNT_TTL_DEFAULT, 1, 86400, ttl, err,
                      sizeof(err)) < 0) {
        fprintf(stderr, "22-discount-service: %s\n", err);
        return GR_ECONFIG;
    }
    return 0;
}

static int init_app(struct gr_ctx *ctx, void **app)
{
    struct discount_app *st;
    long long ttl = DISCOUNT_TTL_DEFAULT;

    (void)ctx;
    if (read_ttl(&ttl) < 0)
        return GR_ECONFIG;
    st = gr_xcalloc(1, sizeof(*st));
    st->reservation_ttl_s = ttl;
    *app = st;
    return 0;
}

static void fini_app(struct gr_ctx *ctx, void *app)
{
    (void)ctx;
    gr_free(app);
}

static const struct gr_service discount_service = {
    .name = "discount-service",
    .id = "22-discount-service",
    .version = "0.1.0",
    .port = 8012,
    .routes = discount_routes,
    .nroutes = DISCOUNT_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    /* Redemptions are order data (ARCHITECTURE §6): synchronous=FULL on SQLite. */
    .sqlite_sync_full = true,
    .init = init_app,
    .fini = fini_app,
    .subs = discount_subs,
    .nsubs = DISCOUNT_NSUBS,
};

int main(int argc, char **argv)
{
    long long ttl;

    /* A bad value stops the service before anything else runs: exit 2, one line. */
    if (read_ttl(&ttl) < 0)
        return 2;
    return gr_main(&discount_service, argc, argv);
}
