/*
 * gw.h - api-gateway (SERVICES §03, ARCHITECTURE §4) internals, private to this folder.
 *
 * Two planes share this header:
 *   - the data plane (front.c, h1.c, upstream.c, table.c, breaker.c, deny.c): an epoll event
 *     loop per worker thread on the public PORT (SO_REUSEPORT), a strict HTTP/1.1 parser,
 *     keep-alive pools to the upstream instances, edge JWT checks, rate limits, retries and
 *     circuit breakers. Handlers never block on another client's upstream.
 *   - the control plane (service.c, routes.c, registry.c, openapi.c, events.c): a normal gr
 *     service whose libmicrohttpd server listens on an internal loopback port. It owns the
 *     `routes` and `api_keys` tables, the admin API (/api/v1/gateway/…), the platform routes
 *     (/health, /ready, /metrics, /openapi.json) and /docs; it watches the registry (02) and
 *     publishes the routing table to the data plane as one JSON document (gw_table_load).
 *
 * The data plane forwards every request for the gateway's own paths (GW_SELF_PREFIXES) to the
 * control plane's port like to any upstream, so there is one proxy code path.
 */
#ifndef GW_H
#define GW_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gr_ctx;
struct gr_auth;
struct gr_metrics;

/* ---- routing table (table.c) -------------------------------------------------------------- */

#define GW_PREFIX_MAX 256
#define GW_NAME_MAX   64
#define GW_HOST_MAX   256
#define GW_MAX_ROUTES 1024
#define GW_MAX_INST   256 /* per route */
#define GW_POLICY_MAX 32

enum gw_auth_mode {
    GW_AUTH_PUBLIC = 0, /* no token needed; a token that is sent is verified (bad → 401) */
    GW_AUTH_JWT,        /* a valid bearer token is required */
};

struct gw_instance {
    char id[GW_NAME_MAX];   /* registry instance id ("" for static instances) */
    char host[GW_HOST_MAX]; /* numeric address or host name */
    int port;
    struct gw_breaker *breaker; /* shared by every table naming host:port (breaker.c) */
};

/* A rate policy: a token bucket of @burst tokens refilled at @per_s tokens per second. */
struct gw_rate {
    double per_s; /* 0: no limit */
    int burst;
};

struct gw_route {
    char prefix[GW_PREFIX_MAX]; /* "/api/v1/products" (a path prefix on segment boundaries) */
    size_t prefix_len;
    char service[GW_NAME_MAX]; /* "product-service" */
    enum gw_auth_mode auth;
    int timeout_ms;  /* upstream deadline per attempt → 504 */
    int retries;     /* extra attempts on another instance (SERVICES §03 retry rule) */
    size_t max_body; /* → 413 before any byte goes upstream */
    char rate_policy[GW_POLICY_MAX]; /* "" = default */
    struct gw_rate rate;             /* per client IP on this route */
    struct gw_instance *inst;        /* passing instances, owned by the table */
    size_t ninst;
    atomic_uint rr; /* round robin */
};

/*
 * An immutable snapshot: routes sorted by prefix length, longest first. Readers hold a
 * reference while they use it; the control plane swaps in a new one at any time.
 */
struct gw_table {
    atomic_int refs;
    struct gw_route *routes;
    size_t n;
    uint64_t generation;
};

/*
 * Parses the table document and publishes it (the previous one is released when its last
 * reader is done). The document:
 *   {"routes":[{"prefix":"/api/v1/products","service":"product-service","auth":"public|jwt",
 *               "timeout_ms":5000,"retries":2,"max_body":1048576,"rate_policy":"",
 *               "rate":{"per_s":100,"burst":200},
 *               "instances":[{"id":"…","host":"127.0.0.1","port":8007}]}]}
 * Missing fields take the defaults (auth jwt, 5000 ms, 2 retries, 1 MiB, no route rate).
 * Returns 0, or GR_EINVAL with a message in @err (the current table stays).
 */
int gw_table_load(const char *json, size_t len, char *err, size_t errlen);
/** The current table with a reference taken (never NULL after gw_front_start). */
struct gw_table *gw_table_get(void);
void gw_table_put(struct gw_table *t);
/** Longest-prefix match on segment boundaries; NULL when no route matches. */
const struct gw_route *gw_table_match(const struct gw_table *t, const char *path, size_t len);

/* ---- circuit breakers (breaker.c) ----------------------------------------------------------- */

/*
 * Per upstream instance (host:port), shared across tables and threads. Opens after 5 straight
 * failures, or when more than 50 % of the last 20 calls failed; answers "skip" for 30 s, then
 * lets one probe through (half-open); the probe's success closes it.
 */
enum gw_breaker_state { GW_BREAKER_CLOSED, GW_BREAKER_OPEN, GW_BREAKER_HALF_OPEN };

struct gw_breaker *gw_breaker_for(const char *host, int port);
/** True when a call may go to the instance now (claims the probe when half-open). */
bool gw_breaker_allow(struct gw_breaker *b);
/** Records a call's outcome; @err is a short reason ("connect refused", "timeout", "502"). */
void gw_breaker_result(struct gw_breaker *b, bool ok, const char *err);
/*
 * Called (from the data plane thread that caused it) on each opened/closed transition, so
 * that the control plane can write gateway.circuit.opened|closed to its outbox. Set once at
 * start-up; NULL = none.
 */
typedef void (*gw_breaker_cb)(const char *host, int port, bool opened, const char *last_error);
void gw_breaker_on_change(gw_breaker_cb cb);
/** Fills @out (a jansson array) with {host, port, state, failures, last_error, opened_at}. */
void gw_breakers_json(void *json_array_out);

/* ---- revoked tokens (deny.c) ------------------------------------------------------------------
 */

/** Denies the token id @jti until @exp_s (unix seconds); bounded, expired entries dropped. */
void gw_deny_add(const char *jti, int64_t exp_s);
bool gw_deny_has(const char *jti);

/* ---- the data plane (front.c) ---------------------------------------------------------------- */

/* Paths the data plane sends to the control plane's own port. */
#define GW_SELF_PREFIXES                                                                           \
    {                                                                                              \
        "/api/v1/gateway", "/health", "/ready", "/metrics", "/openapi.json", "/docs"               \
    }

struct gw_front_cfg {
    const char *host;     /* public listen address (HOST) */
    int port;             /* public port (the PORT the service was given) */
    int threads;          /* GATEWAY_THREADS, default the number of cores */
    int self_port;        /* the control plane's loopback port */
    struct gr_auth *auth; /* edge JWT verification (the service's verifier) */
    struct gr_metrics *metrics;
    const char *redis_url;    /* rate limits on Redis when set */
    const char *cors_origins; /* GATEWAY_CORS_ORIGINS, comma-separated or "*" */
    struct gw_rate rate_ip;   /* GATEWAY_RATE_IP: per client IP, all routes */
    struct gw_rate rate_user; /* GATEWAY_RATE_USER: per token subject, all routes */
    size_t max_header;        /* request head limit, default 16 KiB → 431 */
    int client_timeout_ms;    /* idle/slow client limit (slowloris), default 10 s */
};

/** Binds and starts the workers. Returns 0 or a gr status; @err names what failed. */
int gw_front_start(const struct gw_front_cfg *cfg, char *err, size_t errlen);
/**
 * Replaces the per-IP and per-user limits while the workers run (hot reload of
 * GATEWAY_RATE_IP / GATEWAY_RATE_USER from the config service); NULL keeps one. per_s 0 = none.
 */
void gw_front_set_rates(const struct gw_rate *ip, const struct gw_rate *user);
/** Stops accepting and waits up to @timeout_ms for in-flight requests to finish. */
void gw_front_drain(int timeout_ms);
/** Stops the workers and frees everything (after drain). */
void gw_front_stop(void);

#endif
