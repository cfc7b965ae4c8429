/*
 * service.c - api-gateway (SERVICES §03, ARCHITECTURE §4) on :8000. The gr server (control plane:
 * admin API under /api/v1/gateway and the platform routes) moves to an ephemeral loopback port;
 * the data plane (front.c) takes the public HOST/PORT in the started hook and forwards the
 * gateway's own paths to that internal port. The init hook reads the static upstreams
 * (GATEWAY_UPSTREAMS) or starts the registry watcher (DISCOVERY_URL) and publishes the first
 * routing table (gw_table_load).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "gr/confwatch.h"
#include "gr/log.h"
#include "h1.h"

/* The public address the data plane takes; gr's own server moves to an internal port. */
static const char *pub_host;
static int pub_port;
static bool front_started;

static void app_free(struct gw_app *a)
{
    gw_svcs_free(a);
    pthread_cond_destroy(&a->stop_cond);
    pthread_mutex_destroy(&a->stop_mu);
    pthread_mutex_destroy(&a->rebuild_mu);
    pthread_mutex_destroy(&a->mu);
    gr_free(a);
}

static struct gw_rate parse_rate(const char *s)
{
    struct gw_rate r = { 0, 0 };
    char *end = NULL;

    if (!s || !*s)
        return r;
    r.per_s = strtod(s, &end);
    if (end && *end == ':')
        r.burst = (int)strtol(end + 1, NULL, 10);
    if (r.per_s < 0)
        r.per_s = 0;
    if (r.burst < 1)
        r.burst = r.per_s >= 1 ? (int)r.per_s : 1;
    return r;
}

/*
 * Hot reload (SERVICES §04 whitelisted keys, gr/confwatch.h): GATEWAY_RATE_IP and
 * GATEWAY_RATE_USER set for api-gateway in the config service replace the environment's values
 * while the data plane runs; removing the key restores the environment's. A value that does
 * not parse ("per_s[:burst]") is ignored with a warning. The mutex orders a reload against the
 * data plane's start (the watcher may answer before it).
 */
static pthread_mutex_t rates_mu = PTHREAD_MUTEX_INITIALIZER;
static bool rate_set[2];
static struct gw_rate rate_over[2];

static bool rate_parse_strict(const char *v, struct gw_rate *out)
{
    char *end = NULL;
    double per = strtod(v, &end);
    long burst = 0;

    if (end == v || per < 0 || per > 4000000.0)
        return false;
    if (*end == ':') {
        const char *b = end + 1;
        burst = strtol(b, &end, 10);
        if (end == b || burst < 1 || burst > 100000000)
            return false;
    }
    if (*end != '\0')
        return false;
    *out = parse_rate(v);
    return true;
}

static void on_rate(const char *value, void *arg)
{
    int which = (int)(intptr_t)arg; /* 0: per IP, 1: per user */
    const char *key = which ? "GATEWAY_RATE_USER" : "GATEWAY_RATE_IP";
    struct gw_rate r;

    if (value == NULL) {
        r = parse_rate(getenv(key));
    } else if (!rate_parse_strict(value, &r)) {
        gr_log_warn("ignored a rate limit that does not parse (per_s[:burst])", "key", key);
        return;
    }
    pthread_mutex_lock(&rates_mu);
    rate_set[which] = value != NULL;
    rate_over[which] = r;
    gw_front_set_rates(which ? NULL : &r, which ? &r : NULL);
    pthread_mutex_unlock(&rates_mu);
    gr_log_info("rate limit reloaded", "key", key);
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
    pub_host = ctx->cfg.host;
    pub_port = ctx->cfg.port;
    ctx->cfg.host = "127.0.0.1";
    ctx->cfg.port = 0;
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
    {
        /* Test builds shorten the breaker's open period (SERVICES §03: 30 s). */
        const char *om = getenv("GATEWAY_BREAKER_OPEN_MS");
        if (om != NULL && *om) {
            char *end = NULL;
            long v = strtol(om, &end, 10);
            if (end == om || *end != '\0' || v < 1 || v > 3600000) {
                fprintf(stderr, "%s: GATEWAY_BREAKER_OPEN_MS must be 1..3600000 (milliseconds)\n",
                        ctx->svc->id);
                app_free(a);
                return GR_ECONFIG;
            }
            gw_breaker_set_open_ms(v);
        }
    }
    if (ctx->db != NULL) {
        rc = gr_db_conn(ctx->db, &c);
        if (rc == 0)
            rc = gw_rebuild(a, c);
        if (rc == 0)
            rc = gw_apikeys_reload(c);
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
    rc = gw_sync_start(a);
    if (rc < 0) {
        gw_registry_stop(a);
        app_free(a);
        return rc;
    }
    rc = gw_docs_start(ctx->svc->version);
    if (rc < 0) {
        gw_sync_stop(a);
        gw_registry_stop(a);
        app_free(a);
        return rc;
    }
    if (gr_confwatch_on("GATEWAY_RATE_IP", on_rate, (void *)(intptr_t)0) < 0 ||
        gr_confwatch_on("GATEWAY_RATE_USER", on_rate, (void *)(intptr_t)1) < 0)
        gr_log_warn("rate limits will not hot-reload");
    *app = a;
    return 0;
}

static void gw_started(struct gr_ctx *ctx, void *app, int port)
{
    struct gw_front_cfg fc = { 0 };
    const char *th = getenv("GATEWAY_THREADS");
    char err[256] = "";
    int rc;

    (void)app;
    struct gw_table *t = gw_table_get();

    if (t == NULL) {
        char e2[64];
        (void)gw_table_load("{\"routes\":[]}", 13, e2, sizeof(e2));
    } else {
        gw_table_put(t);
    }
    fc.host = pub_host;
    fc.port = pub_port;
    fc.threads = th ? (int)strtol(th, NULL, 10) : 0;
    fc.self_port = port;
    fc.auth = ctx->auth;
    fc.metrics = ctx->metrics;
    fc.redis_url = ctx->cfg.redis_url;
    fc.cors_origins = getenv("GATEWAY_CORS_ORIGINS");
    pthread_mutex_lock(&rates_mu);
    fc.rate_ip = rate_set[0] ? rate_over[0] : parse_rate(getenv("GATEWAY_RATE_IP"));
    fc.rate_user = rate_set[1] ? rate_over[1] : parse_rate(getenv("GATEWAY_RATE_USER"));
    rc = gw_front_start(&fc, err, sizeof(err));
    pthread_mutex_unlock(&rates_mu);
    if (rc < 0) {
        gr_log_error("cannot start the data plane", "error", err);
        exit(1);
    }
    front_started = true;
    {
        char ps[16];
        snprintf(ps, sizeof(ps), "%d", gw_front_port());
        gr_log_info("data plane listening", "host", pub_host, "port", ps);
    }
    /* The port clients use: gr registers it with discovery and writes it to GR_PORT_FILE. */
    ctx->public_port = gw_front_port();
}

static void gw_draining(struct gr_ctx *ctx, void *app)
{
    (void)app;
    if (front_started)
        gw_front_drain(ctx->cfg.drain_timeout_s * 1000);
}

static void gw_fini(struct gr_ctx *ctx, void *app)
{
    struct gw_app *a = app;

    (void)ctx;
    gw_docs_stop();
    if (front_started)
        gw_front_stop();
    front_started = false;
    gw_sync_stop(a);
    gw_registry_stop(a);
    gw_apikeys_clear();
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
    .subs = gw_subs,
    .nsubs = GW_NSUBS,
    .init = gw_init,
    .fini = gw_fini,
    .started = gw_started,
    .draining = gw_draining,
};

int main(int argc, char **argv)
{
    return gr_main(&gw_service, argc, argv);
}
