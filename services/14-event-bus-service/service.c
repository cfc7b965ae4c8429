/*
 * service.c - event-bus-service (SERVICES §14) on :8019: the durable event log for installs
 * without NATS, with pull and push subscriptions, replay, dead letters and schemas, under
 * /api/v1/events, /api/v1/event-subscriptions and /api/v1/event-schemas. Everything shared is
 * gr_main's; the init hook builds the wake-up state and starts the push thread (push.c).
 */
#include <time.h>

#include "eventbus.h"
#include "gr/arena.h"
#include "gr/service.h"

static int eb_init(struct gr_ctx *ctx, void **app)
{
    struct eb_app *a = gr_xcalloc(1, sizeof(*a));
    pthread_condattr_t attr;
    int rc;

    a->ctx = ctx;
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &attr);
    pthread_condattr_destroy(&attr);
    a->wq = gr_waitq_new();
    *app = a;
    if (ctx->db == NULL)
        return 0;
    rc = eb_push_start(a);
    return rc;
}

static void eb_fini(struct gr_ctx *ctx, void *app)
{
    struct eb_app *a = app;

    (void)ctx;
    eb_push_stop(a);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->mu);
    gr_waitq_free(a->wq);
    gr_free(a);
}

static const struct gr_service eb_service = {
    .name = "event-bus-service",
    .id = "14-event-bus-service",
    .version = "0.1.0",
    .port = 8019,
    .routes = eb_routes,
    .nroutes = EB_NROUTES,
    .migrations = gr_svc_migrations,
    .openapi_json = gr_svc_openapi_json,
    .sqlite_sync_full = false,
    .init = eb_init,
    .fini = eb_fini,
};

int main(int argc, char **argv)
{
    return gr_main(&eb_service, argc, argv);
}
