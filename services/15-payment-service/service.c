/*
 * service.c - payment-service (SERVICES §15): authorises, captures, cancels and refunds
 * payments through a provider, on :8005 under /api/v1/payments, /api/v1/payment-methods and
 * /api/v1/refunds. Everything shared (config, DB and migrations, JWT, HTTP, idempotency keys,
 * outbox and inbox, platform routes) is gr_main's; the init hook picks the provider adapter
 * and starts the sweeper (sweeper.c).
 *
 * Configuration (besides ARCHITECTURE §1's):
 *   PAYMENT_PROVIDER        test (default: the built-in simulator, livemode false) | stripe
 *   STRIPE_API_KEY          required with stripe (never logged)
 *   STRIPE_API_BASE         default https://api.stripe.com (a double in tests)
 *   STRIPE_WEBHOOK_SECRET   webhook signing secret (stripe); PAYMENT_WEBHOOK_SECRET (test)
 *   PAYMENT_AUTH_TTL_S      uncaptured authorisations are cancelled after this (604800 = 7 d)
 *   PAYMENT_SWEEP_MS        how often the sweeper runs (default 60000)
 *   PAYMENT_RECONCILE_AFTER_MS  a payment in `processing` (a refund `pending`) this long was
 *                           left by a crash: the sweeper reconciles it with the provider
 *                           (reconcile.c; default 30000, above a provider call's 13 s limit)
 *   PAYMENT_TEST_KILL_AT    TESTS ONLY: SIGKILL the process at a point around a provider call
 *                           (create|create_unsent|capture|capture_unsent|cancel|confirm|
 *                           refund|refund_unsent; `_unsent`: before the call, else after it)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gr/health.h"
#include "gr/log.h"
#include "gr/service.h"
#include "pay.h"

static int provider_check(void *arg, char *detail, size_t len)
{
    const struct pay_app *app = arg;

    if (strcmp(app->provider.name, "test") == 0)
        snprintf(detail, len, "test mode: built-in simulator, livemode false");
    else
        snprintf(detail, len, "stripe, livemode %s", app->provider.livemode ? "true" : "false");
    return 0;
}

static int cfg_fail(const char *err)
{
    fprintf(stderr, "15-payment-service: %s\n", err);
    return GR_ECONFIG;
}

static int init(struct gr_ctx *ctx, void **out)
{
    static const char *const providers[] = { "test", "stripe", NULL };
    static const char *const schemes[] = { "http", "https", NULL };
    struct pay_app *app;
    const char *provider, *key = NULL, *base = NULL, *secret = NULL;
    static const char *const kill_points[] = { "create",         "create_unsent", "capture",
                                               "capture_unsent", "cancel",        "confirm",
                                               "refund",         "refund_unsent", NULL };
    const char *kill_at = NULL;
    long long ttl, sweep, reconcile;
    char err[256];
    int rc;

    *out = NULL;
    if (gr_config_str("PAYMENT_PROVIDER", "test", providers, &provider, err, sizeof(err)) < 0 ||
        gr_config_int("PAYMENT_AUTH_TTL_S", 7LL * 24 * 3600, 1, 90LL * 24 * 3600, &ttl, err,
                      sizeof(err)) < 0 ||
        gr_config_int("PAYMENT_SWEEP_MS", 60000, 10, 3600000, &sweep, err, sizeof(err)) < 0 ||
        gr_config_int("PAYMENT_RECONCILE_AFTER_MS", 30000, 10, 24LL * 3600 * 1000, &reconcile, err,
                      sizeof(err)) < 0 ||
        gr_config_str("PAYMENT_TEST_KILL_AT", NULL, kill_points, &kill_at, err, sizeof(err)) < 0)
        return cfg_fail(err);
    if (strcmp(provider, "stripe") == 0) {
        if (gr_config_str("STRIPE_API_KEY", NULL, NULL, &key, err, sizeof(err)) < 0 ||
            gr_config_url("STRIPE_API_BASE", "https://api.stripe.com", schemes, &base, err,
                          sizeof(err)) < 0 ||
            gr_config_str("STRIPE_WEBHOOK_SECRET", NULL, NULL, &secret, err, sizeof(err)) < 0)
            return cfg_fail(err);
        if (!key || strlen(key) < 8 || strlen(key) > 200)
            return cfg_fail("STRIPE_API_KEY: required with PAYMENT_PROVIDER=stripe");
        if (strlen(base) > 200)
            return cfg_fail("STRIPE_API_BASE: at most 200 characters");
    } else if (gr_config_str("PAYMENT_WEBHOOK_SECRET", NULL, NULL, &secret, err, sizeof(err)) < 0) {
        return cfg_fail(err);
    }
    if (!ctx->db)
        return cfg_fail("DATABASE_URL: payment-service needs a database");
    app = gr_xcalloc(1, sizeof(*app));
    if (key)
        pay_provider_stripe(&app->provider, base, key);
    else
        pay_provider_test(&app->provider);
    app->webhook_secret = secret && secret[0] ? secret : NULL;
    app->auth_ttl_ms = ttl * 1000;
    app->sweep_ms = sweep;
    app->reconcile_ms = reconcile;
    app->kill_at = kill_at;
    app->db = ctx->db;
    pthread_mutex_init(&app->mu, NULL);
    pthread_cond_init(&app->cv, NULL);
    gr_health_add(ctx, "payment_provider", provider_check, app);
    rc = pay_sweeper_start(app);
    if (rc < 0) {
        gr_free(app);
        return rc;
    }
    if (kill_at)
        gr_log_warn("PAYMENT_TEST_KILL_AT is set: this process kills itself (tests only)", "point",
                    kill_at);
    gr_log_info("payment provider ready", "provider", app->provider.name, "livemode",
                app->provider.livemode ? "true" : "false");
    *out = app;
    return 0;
}

static void fini(struct gr_ctx *ctx, void *arg)
{
    struct pay_app *app = arg;

    (void)ctx;
    if (!app)
        return;
    pay_sweeper_stop(app);
    pthread_mutex_destroy(&app->mu);
    pthread_cond_destroy(&app->cv);
    gr_free(app);
}

static const struct gr_service payment_service = {
    .name = "payment-service",
    .id = "15-payment-service",
    .version = "0.1.0",
    .port = 8005,
    .routes = pay_routes,
    .nroutes = PAY_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    .sqlite_sync_full = true, /* money */
    .init = init,
    .fini = fini,
    .subs = pay_subs,
    .nsubs = PAY_NSUBS,
};

int main(int argc, char **argv)
{
    return gr_main(&payment_service, argc, argv);
}
