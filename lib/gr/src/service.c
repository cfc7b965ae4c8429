/*
 * service.c - gr_main(): the life of every service process (STYLE R18). Configuration and
 * logging, metrics, the database and its migrations, the JWT verifier, the service's init
 * hook, the HTTP server with the platform routes (/health, /health/detailed, /ready,
 * /metrics, /openapi.json), then a wait for SIGTERM/SIGINT and a graceful drain: stop
 * accepting, finish in-flight requests up to DRAIN_TIMEOUT, release everything, exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus_int.h"
#include "gr/auth.h"
#include "gr/client.h"
#include "gr/confwatch.h"
#include "gr/db.h"
#include "gr/discovery.h"
#include "gr/health.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/metrics.h"
#include "gr/svctoken.h"
#include "gr/time.h"
#include "http_int.h"
#include "idem_int.h"
#include "wait_int.h"

/* The one server of this process: platform handlers reach it through req->ctx. */
struct platform {
    struct gr_ctx ctx;
    struct gr_server srv;
    int64_t started_ms;
    struct gr_bus_cfg bus_cfg;
    struct gr_bus *bus;
    struct gr_svctoken *svctoken;   /* SERVICE_TOKEN or client credentials; NULL: none */
    struct gr_discovery *discovery; /* registration with 02 (DISCOVERY_URL); NULL: none */
    struct gr_client *client;       /* calls to other services (gr_client_default) */
};

static struct platform *plat_of(struct gr_req *req)
{
    return (struct platform *)(void *)req->ctx; /* ctx is the first member */
}

static int h_health(struct gr_req *req, struct gr_resp *resp)
{
    struct platform *p = plat_of(req);
    char now[GR_TIME_STR_LEN];
    json_t *o;

    gr_time_format(gr_time_now_ms(), now);
    o = json_pack("{s:s, s:s, s:s, s:s, s:I}", "status", "healthy", "service", p->ctx.svc->name,
                  "version", p->ctx.svc->version, "timestamp", now, "uptime_seconds",
                  (json_int_t)((gr_time_mono_ms() - p->started_ms) / 1000));
    gr_resp_json(resp, 200, o);
    return 0;
}

static json_t *check_db(struct platform *p, bool *ok)
{
    int64_t t0 = gr_time_mono_ns();
    int rc = p->ctx.db ? gr_db_ping(p->ctx.db) : 0;
    json_t *o = json_object();

    json_object_set_new(o, "status", json_string(rc == 0 ? "up" : "down"));
    json_object_set_new(o, "engine",
                        json_string(!p->ctx.db                            ? "none"
                                    : gr_db_engine(p->ctx.db) == GR_DB_PG ? "postgres"
                                                                          : "sqlite"));
    /* Microsecond precision: 0.352, not 0.35189399999999998. */
    json_object_set_new(o, "latency_ms",
                        json_real((double)((gr_time_mono_ns() - t0) / 1000) / 1000.0));
    if (rc < 0)
        *ok = false;
    return o;
}

static int h_health_detailed(struct gr_req *req, struct gr_resp *resp)
{
    struct platform *p = plat_of(req);
    bool ok = true, jwks = p->ctx.auth && gr_auth_ready(p->ctx.auth);
    json_t *checks = json_object(), *o;

    json_object_set_new(checks, "database", check_db(p, &ok));
    json_object_set_new(checks, "jwks", json_pack("{s:s}", "status", jwks ? "up" : "down"));
    if (p->bus)
        json_object_set_new(checks, "bus", gr_bus__health(p->bus, &ok));
    gr_health__run(&p->ctx, checks, &ok); /* redis (REDIS_URL) and the service's own */
    if (!jwks)
        ok = false;
    o = json_pack("{s:s, s:s, s:s, s:o}", "status", ok ? "healthy" : "degraded", "service",
                  p->ctx.svc->name, "version", p->ctx.svc->version, "checks", checks);
    gr_resp_json(resp, 200, o);
    return 0;
}

static int h_ready(struct gr_req *req, struct gr_resp *resp)
{
    struct platform *p = plat_of(req);

    if (!atomic_load(&p->srv.ready))
        return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL,
                               atomic_load(&p->srv.draining) ? "draining" : "starting");
    if (p->ctx.db && gr_db_ping(p->ctx.db) < 0)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL, "database unreachable");
    gr_resp_json(resp, 200, json_pack("{s:s}", "status", "ready"));
    return 0;
}

static int h_metrics(struct gr_req *req, struct gr_resp *resp)
{
    struct platform *p = plat_of(req);
    struct gr_buf b = GR_BUF_INIT;
    char *s;
    size_t len;
    int rc;

    gr_buf_init(&b, (size_t)16 << 20);
    gr_gauge_set(p->srv.inflight_gauge, (double)atomic_load(&p->srv.inflight));
    gr_gauge_set(p->srv.waiting_gauge, (double)gr_wait__count());
    rc = gr_metrics_render(p->ctx.metrics, &b);
    if (rc < 0) {
        gr_buf_release(&b);
        return rc;
    }
    s = gr_buf_detach(&b, &len);
    resp->body = gr_arena_strndup(req->arena, s, len);
    resp->body_len = len;
    gr_free(s);
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return 0;
}

static int h_openapi(struct gr_req *req, struct gr_resp *resp)
{
    struct platform *p = plat_of(req);
    const char *doc = p->ctx.svc->openapi_json ? p->ctx.svc->openapi_json : "{}";

    (void)req;
    resp->body = doc;
    resp->body_len = strlen(doc);
    resp->content_type = "application/json";
    return 0;
}

static const struct gr_route platform_routes[] = {
    { "GET", "/health", h_health, GR_R_INTERNAL, NULL, NULL, 0 },
    { "GET", "/health/detailed", h_health_detailed, GR_R_INTERNAL, NULL, NULL, 0 },
    { "GET", "/ready", h_ready, GR_R_INTERNAL, NULL, NULL, 0 },
    { "GET", "/metrics", h_metrics, GR_R_INTERNAL, NULL, NULL, 0 },
    { "GET", "/openapi.json", h_openapi, GR_R_INTERNAL, NULL, NULL, 0 },
};

static void usage(const struct gr_service *svc)
{
    printf(
        "%s %s - Gravity service (default port %d)\n"
        "usage: %s [--describe | --routes | --openapi | --version | --help]\n"
        "Configuration comes from the environment (see README.md): PORT, HOST, DATA_DIR,\n"
        "DATABASE_URL, JWKS_URL, JWT_ISSUER, JWT_AUDIENCE, LOG_LEVEL, LOG_FORMAT, HTTP_THREADS,\n"
        "HTTP_MAX_BODY, HTTP_TIMEOUT, HTTP_MAX_WAITERS, DRAIN_TIMEOUT, CURSOR_SECRET.\n",
        svc->id, svc->version, svc->port, svc->id);
}

static int write_port_file(const char *path, int port)
{
    char tmp[4200];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f)
        return GR_EIO;
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return GR_EIO;
    return 0;
}

static int open_db(struct platform *p)
{
    const struct gr_service *svc = p->ctx.svc;
    struct gr_db_opts opts = { .sqlite_sync_full = svc->sqlite_sync_full, .busy_timeout_ms = 5000 };
    char err[512] = "", url[4200];
    const char *u = p->ctx.cfg.database_url;
    int64_t deadline;
    int rc;

    if (!svc->migrations || !svc->migrations[0].name)
        return 0; /* a service without tables needs no database */
    if (!u) {
        snprintf(url, sizeof(url), "sqlite://%s/%s.db", p->ctx.cfg.data_dir, svc->name);
        u = url;
    }
    rc = gr_db_open(u, &opts, &p->ctx.db, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", svc->id, err[0] ? err : "DATABASE_URL: cannot open");
        return rc;
    }
    /* A PostgreSQL that is still starting is waited for; anything else fails at once. */
    deadline = gr_time_mono_ms() + 30000;
    for (int attempt = 0;; attempt++) {
        rc = gr_db_migrate(p->ctx.db, svc->name, svc->migrations);
        if (rc != GR_EUNAVAIL || gr_time_mono_ms() > deadline)
            break;
        if (attempt % 10 == 0)
            gr_log_warn("database unreachable, retrying migrations for up to 30 s");
        usleep(500 * 1000);
    }
    if (rc == 0)
        rc = gr_db_migrate(p->ctx.db, "gr.bus", gr_bus_migrations);
    if (rc == 0)
        rc = gr_db_migrate(p->ctx.db, "gr.idem", gr_idem_migrations);
    if (rc < 0)
        gr_log_error("migrations failed", "code", gr_err_name(rc));
    return rc;
}

/* Starts the outbox relay (and the consumer of svc->subs) on the configured backend. */
static int start_bus(struct platform *p)
{
    const struct gr_service *svc = p->ctx.svc;
    struct gr_bus_cfg *c = &p->bus_cfg;
    const char *token = getenv("SERVICE_TOKEN");

    if (!p->ctx.db)
        return 0; /* no tables, no outbox: nothing to publish or apply */
    c->kind = p->ctx.cfg.event_bus;
    c->url = strcmp(c->kind, "nats") == 0 ? p->ctx.cfg.nats_url : p->ctx.cfg.event_bus_url;
    c->token = token && *token ? token : NULL;
    c->durable = svc->name;
    c->subs = svc->subs;
    c->nsubs = svc->nsubs;
    c->opts = svc->sub_opts;
    c->app = &p->ctx.app;
    return gr_bus__start(p->ctx.db, c, p->ctx.metrics, &p->bus);
}

static void release(struct platform *p)
{
    gr_confwatch_stop(); /* first: its callbacks may use the service's state */
    gr_bus__stop(p->bus);
    p->bus = NULL;
    if (p->ctx.svc->fini && p->ctx.app)
        p->ctx.svc->fini(&p->ctx, p->ctx.app);
    gr_health__release(&p->ctx);
    gr_router_free(p->srv.router);
    gr_http__release(&p->srv);
    gr_idem__lease_stop(); /* after the HTTP threads, before the database */
    if (p->ctx.db)
        gr_db_close(p->ctx.db);
    gr_auth_free(p->ctx.auth);
    /* After fini and the HTTP threads (their handles went at thread exit); before the metrics
     * its counters live in. */
    gr_client_set_default(NULL);
    gr_client_free(p->client);
    p->client = NULL;
    gr_metrics_free(p->ctx.metrics);
    /* Last: the bus threads and the request threads that use it have all stopped. */
    gr_svctoken_set_default(NULL);
    gr_svctoken_free(p->svctoken);
    p->svctoken = NULL;
}

int gr_main(const struct gr_service *svc, int argc, char **argv)
{
    static struct platform plat; /* one per process; reached via req->ctx */
    struct platform *p = &plat;
    const struct gr_route *tables[2] = { svc->routes, platform_routes };
    size_t counts[2] = { svc->nroutes, sizeof(platform_routes) / sizeof(platform_routes[0]) };
    char err[512] = "";
    sigset_t set;
    int rc, sig = 0;

    if (argc > 1 && strcmp(argv[1], "--describe") == 0) {
        printf("{\"name\":\"%s\",\"id\":\"%s\",\"version\":\"%s\",\"port\":%d}\n", svc->name,
               svc->id, svc->version, svc->port);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--routes") == 0) {
        for (size_t i = 0; i < svc->nroutes; i++)
            printf("%s %s\n", svc->routes[i].method, svc->routes[i].pattern);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--openapi") == 0) {
        fputs(svc->openapi_json ? svc->openapi_json : "{}", stdout);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("%s %s\n", svc->id, svc->version);
        return 0;
    }
    if (argc > 1) {
        usage(svc);
        return strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    memset(p, 0, sizeof(*p));
    p->ctx.svc = svc;
    p->srv.ctx = &p->ctx;
    p->started_ms = gr_time_mono_ms();
    rc = gr_config_load(&p->ctx.cfg, svc, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", svc->id, err);
        return 2;
    }
    gr_log_setup(svc->name, p->ctx.cfg.log_level, p->ctx.cfg.log_json);
    /* Block the signals before any thread starts, so only sigwait() below sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (p->ctx.cfg.cursor_secret)
        gr_cursor_key_from_secret(&p->ctx.cursor_key, p->ctx.cfg.cursor_secret,
                                  strlen(p->ctx.cfg.cursor_secret));
    else
        gr_cursor_key_random(&p->ctx.cursor_key);
    rc = gr_auth_new(p->ctx.cfg.jwks_url, p->ctx.cfg.jwt_issuer, p->ctx.cfg.jwt_audience,
                     &p->ctx.auth, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", svc->id, err);
        return 2;
    }
    if (gr_metrics_new(&p->ctx.metrics) < 0)
        return 1;
    /* The service token: fetching starts now, so it is usually there when the bus starts. */
    rc = gr_svctoken_from_env(&p->svctoken, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", svc->id, err);
        release(p);
        return 2;
    }
    gr_svctoken_set_default(p->svctoken);
    {
        char ua[96];
        struct gr_client_opts co = { .discovery_url = p->ctx.cfg.discovery_url,
                                     .metrics = p->ctx.metrics,
                                     .user_agent = ua };

        snprintf(ua, sizeof(ua), "gravity-%s", svc->name);
        if (gr_client_new(&co, &p->client) < 0) {
            fprintf(stderr, "%s: DISCOVERY_URL: not an http(s) URL\n", svc->id);
            release(p);
            return 2;
        }
        gr_client_set_default(p->client);
    }
    rc = open_db(p);
    if (rc < 0) {
        release(p);
        return rc == GR_ECONFIG ? 2 : 1;
    }
    if (p->ctx.cfg.redis_url &&
        gr_health__add_redis(&p->ctx, p->ctx.cfg.redis_url, err, sizeof(err)) < 0)
        gr_log_warn("no redis check in /health/detailed", "error", err);
    /* Load the keys now when they are reachable; otherwise the first token loads them. */
    (void)gr_auth_ready(p->ctx.auth);
    if (svc->init) {
        rc = svc->init(&p->ctx, &p->ctx.app);
        if (rc < 0) {
            /* GR_ECONFIG: the hook printed the one line naming the variable; exit 2 like
             * every other configuration error. */
            if (rc != GR_ECONFIG)
                gr_log_error("service init failed", "code", gr_err_name(rc));
            release(p);
            return rc == GR_ECONFIG ? 2 : 1;
        }
    }
    rc = start_bus(p);
    if (rc < 0) {
        release(p);
        return rc == GR_ECONFIG ? 2 : 1;
    }
    /* Hot reload (gr/confwatch.h): after init, so that its gr_confwatch_on calls are in. */
    rc = gr_confwatch_start(svc->name, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", svc->id, err);
        release(p);
        return rc == GR_ECONFIG ? 2 : 1;
    }
    rc = gr_router_new(tables, counts, 2, &p->srv.router);
    if (rc < 0) {
        release(p);
        return 1;
    }
    p->srv.tables = tables;
    p->srv.counts = counts;
    p->srv.ntables = 2;
    gr_http__init_metrics(&p->srv);
    p->srv.inflight_gauge =
        gr_metrics_gauge(p->ctx.metrics, "http_requests_in_flight", "Requests being served", NULL);
    p->srv.waiting_gauge =
        gr_metrics_gauge(p->ctx.metrics, "http_requests_waiting",
                         "Requests parked without a thread until a change (long-polls)", NULL);
    rc = p->ctx.db ? gr_idem__lease_start(p->ctx.db) : 0; /* idempotency-key leases */
    if (rc == 0)
        rc = gr_http__start(&p->srv);
    if (rc < 0) {
        release(p);
        return rc == GR_ECONFIG ? 2 : 1; /* HOST, HTTP_MAX_WAITERS or GR_IDEM_LEASE_MS */
    }
    atomic_store(&p->srv.ready, true);
    {
        char port[16];
        snprintf(port, sizeof(port), "%d", p->srv.port);
        gr_log_info(
            "listening", "host", p->ctx.cfg.host, "port", port, "version", svc->version, "database",
            p->ctx.db ? (gr_db_engine(p->ctx.db) == GR_DB_PG ? "postgres" : "sqlite") : "none");
    }
    if (svc->started)
        svc->started(&p->ctx, p->ctx.app, p->srv.port);
    if (p->ctx.public_port <= 0)
        p->ctx.public_port = p->srv.port;
    /* Register with the registry (02), which does not register with itself. */
    if (p->ctx.cfg.discovery_url && strcmp(svc->id, "02-service-discovery") != 0) {
        char derr[256];

        if (gr_discovery_start(p->ctx.cfg.discovery_url, svc->name, NULL, p->ctx.public_port,
                               &p->discovery, derr, sizeof(derr)) < 0)
            gr_log_warn("service discovery disabled", "error", derr);
    }
    if (p->ctx.cfg.port_file && write_port_file(p->ctx.cfg.port_file, p->ctx.public_port) < 0)
        gr_log_error("cannot write GR_PORT_FILE", "path", p->ctx.cfg.port_file);
    while (sigwait(&set, &sig) != 0)
        ;
    gr_log_info("draining", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* Leave the registry first, so that no new traffic is routed here (<= 2 s). */
    gr_discovery_stop(p->discovery);
    p->discovery = NULL;
    if (svc->draining)
        svc->draining(&p->ctx, p->ctx.app);
    gr_http__drain(&p->srv, p->ctx.cfg.drain_timeout_s * 1000);
    release(p);
    gr_log_info("stopped");
    return 0;
}
