/*
 * gr/client.h - calls from one service to another (SERVICES §0 decision 6: directly, service to
 * service, found through 02-service-discovery, with client-credentials JWTs).
 *
 * A struct gr_client is shared by every thread of the process. Each thread that calls keeps
 * one libcurl easy handle of its own (a pthread key), so its connections to every peer stay
 * open between calls (HTTP keep-alive, up to GR_CLIENT_MAXCONNS per thread); the handle is
 * freed when the thread exits and, for threads still alive, by gr_client_free.
 *
 * A peer is a logical service ("product-service") with its base URL(s), resolved in this
 * order when the peer is made (gr_client_peer):
 *   1. the environment variable the caller names (e.g. PRODUCT_URL), when set: that URL only;
 *   2. else, when the client has a discovery URL (DISCOVERY_URL), the passing instances from
 *      GET <discovery>/api/v1/registry/services/<name>/instances, cached for refresh_ms
 *      (default 2 s) and refreshed by the first call that finds the list stale (the others
 *      keep using the old list meanwhile); calls go round robin; an instance that refused a
 *      connection is skipped until the next refresh. While the registry cannot be reached or
 *      lists no passing instance, the default URL is used;
 *   3. else the default URL.
 *
 * A call carries Accept: application/json, the JSON body if any, the bearer token (the
 * process's service token by default, gr_svctoken_default), Idempotency-Key, X-Request-Id and
 * traceparent. A connection that could not be made is tried once more on another instance
 * (nothing was sent); any other connection failure is retried likewise only for idempotent
 * requests (GET, HEAD, PUT, DELETE, or with an Idempotency-Key). Retries stay inside the one
 * deadline. A 401 answered to the service token makes the provider renew it early. Tokens and
 * bodies are never logged.
 *
 * Metrics (when the client has a registry): upstream_requests_total{peer,outcome} with outcome
 * 2xx, 3xx, 4xx, 5xx, timeout, unavailable or too_large.
 */
#ifndef GR_CLIENT_H
#define GR_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/status.h"

struct gr_req;
struct gr_metrics;
struct gr_client;
struct gr_peer;

#define GR_CLIENT_TIMEOUT_MS   5000          /* default deadline of a call (the seed's 5 s) */
#define GR_CLIENT_CONNECT_MS   2000          /* at most this of it for one connection */
#define GR_CLIENT_RESP_MAX     (1024 * 1024) /* default cap of an answer */
#define GR_CLIENT_REFRESH_MS   2000          /* default lifetime of a discovery answer */
#define GR_CLIENT_MAXCONNS     32            /* open connections kept per thread */
#define GR_CLIENT_PEERS_MAX    32            /* peers per client */
#define GR_CLIENT_INSTANCES    16            /* instances of a peer used */
#define GR_CLIENT_URL_MAX      512           /* bytes of a base URL */
#define GR_CLIENT_DISCOVERY_MS 1000          /* limit of one registry lookup */

struct gr_client_opts {
    const char *discovery_url;  /* 02's base URL (ctx->cfg.discovery_url); NULL: no lookup */
    struct gr_metrics *metrics; /* NULL: no metrics (borrowed; must outlive the client) */
    const char *user_agent;     /* NULL: "gravity" (copied) */
    int refresh_ms;             /* 0: GR_CLIENT_REFRESH_MS */
};

/** Creates a client into *@out (caller frees with gr_client_free). GR_ECONFIG for a bad
 * discovery_url. */
GR_MUST_CHECK int gr_client_new(const struct gr_client_opts *o, struct gr_client **out);

/**
 * Frees @c, its peers and the curl handles of every thread (also of threads still alive).
 * No call may be running and no thread that called may exit concurrently. NULL is a no-op.
 */
void gr_client_free(struct gr_client *c);

/** The process's client (borrowed), or NULL; gr_client_set_default makes @c it. */
struct gr_client *gr_client_default(void);
void gr_client_set_default(struct gr_client *c);

/**
 * The peer @service ([a-z0-9-]{1,63}) into *@out, made on the first call and the same pointer
 * afterwards (thread-safe; usually called once, from an init hook). @env names the variable
 * that overrides the URL (NULL: none), @def_url is the URL when neither the variable nor the
 * registry gives one (NULL: none; then calls fail GR_EUNAVAIL). URLs are http(s)://host[:port]
 * [/prefix], without a trailing slash needed. The peer lives as long as @c.
 * Errors: GR_ECONFIG (one line in @err naming the variable) for a bad URL; GR_EINVAL for a bad
 * name; GR_ETOOBIG when the client has GR_CLIENT_PEERS_MAX peers already.
 */
GR_MUST_CHECK int gr_client_peer(struct gr_client *c, const char *service, const char *env,
                                 const char *def_url, struct gr_peer **out, char *err,
                                 size_t errlen);

/** True when the peer's URL came from its environment variable. */
bool gr_peer_overridden(const struct gr_peer *p);
/** The peer's logical name (borrowed). */
const char *gr_peer_name(const struct gr_peer *p);

enum gr_call_auth {
    GR_CALL_SERVICE = 0, /* the process's service token, when it has one (else none) */
    GR_CALL_BEARER = 1,  /* .bearer (NULL: no Authorization header) */
};

/* One call. Everything is borrowed for the duration of the call. */
struct gr_call {
    const char *method;   /* "GET", "POST", ... */
    const char *path;     /* "/api/v1/...", query included (already encoded) */
    const json_t *json;   /* the JSON body, or NULL; or: */
    const char *body;     /* JSON text (body_len bytes; 0 = strlen) */
    size_t body_len;      /*   used when json is NULL */
    const char *idem_key; /* Idempotency-Key, or NULL */
    enum gr_call_auth auth;
    const char *bearer;      /* GR_CALL_BEARER's token */
    struct gr_req *req;      /* passes its X-Request-Id and traceparent on; may be NULL, then: */
    const char *request_id;  /*   X-Request-Id to send, or NULL */
    const char *traceparent; /*   traceparent to send, or NULL */
    int timeout_ms;          /* whole call, retry included; 0: GR_CLIENT_TIMEOUT_MS */
    size_t resp_max;         /* 0: GR_CLIENT_RESP_MAX */
    const char *what;        /* what the call is, for the log ("product prices"); may be NULL */
};

/* What came back (strings and JSON in the caller's arena). */
struct gr_call_res {
    long status;         /* HTTP status */
    json_t *json;        /* the body parsed as JSON (arena-owned), NULL when empty or not JSON */
    const char *problem; /* status >= 400 with a problem "type": its slug ("cart_merged") */
};

/**
 * Performs @call on peer @p; strings and JSON of *@res live in @a. 0 whenever the peer answered
 * with any status (the caller looks at res->status). Errors (logged at warn with the call's
 * what, the peer and the reason, never a token or a body): GR_ETIMEOUT when the deadline
 * passed; GR_EUNAVAIL when no instance could be reached, the connection broke, or the answer
 * was larger than resp_max; GR_EINVAL for a call without method or path.
 */
GR_MUST_CHECK int gr_client_call(struct gr_peer *p, struct gr_arena *a, const struct gr_call *call,
                                 struct gr_call_res *res);

/** Connections libcurl opened for this thread's handle so far (tests, diagnostics). */
long gr_client_thread_connects(struct gr_client *c);

#endif
