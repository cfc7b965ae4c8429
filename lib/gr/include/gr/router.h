/*
 * gr/router.h - the static route table of a service (STYLE R19) and its matcher.
 *
 * Patterns are literal segments and `{name}` parameters: "/api/v1/products/{id}/variants/{vid}".
 * A literal segment wins over a parameter (SERVICES §0). The core enforces a route's flags
 * before the handler runs: authentication, permission, allowed query parameters, body limit,
 * content type and JSON parsing, and the transaction.
 */
#ifndef GR_ROUTER_H
#define GR_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/http.h"

enum gr_route_flags {
    GR_R_PUBLIC = 0,               /* no token needed; a token that is sent must still be valid */
    GR_R_AUTH = 1u << 0,           /* a valid bearer token is required (401 otherwise) */
    GR_R_JSON = 1u << 1,           /* the body is JSON: 415 on other types, parsed into req->json */
    GR_R_TX = 1u << 2,             /* run the handler inside a DB transaction (commit on success) */
    GR_R_IK = 1u << 3,             /* honours Idempotency-Key (events issue) */
    GR_R_IK_REQUIRED = 1u << 4,    /* requires Idempotency-Key (events issue) */
    GR_R_INTERNAL = 1u << 5,       /* platform route (/health, /metrics): no access log at info */
    GR_R_OWN_AUTHZ = 1u << 6,      /* public route whose handler reads a non-Bearer Authorization
                                    * itself (Basic client authentication of an OAuth token
                                    * endpoint); elsewhere another scheme is a 401 */
    GR_R_READ_COMMITTED = 1u << 7, /* with GR_R_TX: the transaction is READ COMMITTED on
                                    * PostgreSQL (gr_db_begin_read_committed) */
    /*
     * With GR_R_IK(_REQUIRED), without GR_R_TX: on SQLite a key that has no row yet is reserved
     * in the handler's first gr_req_tx (one commit less); PostgreSQL reserves it before the
     * handler, as without the flag. A twin request may then run the handler's start at the same
     * time: before that transaction the handler must change nothing, here or at another
     * service, on any path — also not on one that finds work a twin committed meanwhile (15's
     * create resumes a payment found under its key with a provider call: not lazy).
     */
    GR_R_IK_LAZY = 1u << 8,
};

struct gr_route {
    const char *method;  /* "GET", "POST", "PUT", "PATCH", "DELETE" */
    const char *pattern; /* see file comment */
    gr_handler_fn handler;
    unsigned flags;    /* enum gr_route_flags */
    const char *perm;  /* permission required (implies GR_R_AUTH), or NULL */
    const char *query; /* allowed query parameters, comma-separated; NULL = none */
    size_t body_max;   /* body limit in bytes; 0 = HTTP_MAX_BODY */
};

struct gr_router; /* compiled table */

/** Compiles @routes; GR_EINVAL (with a log line) on a malformed pattern. Caller frees. */
GR_MUST_CHECK int gr_router_new(const struct gr_route *const *tables, const size_t *counts,
                                size_t ntables, struct gr_router **out);
void gr_router_free(struct gr_router *r);

/**
 * Matches @method and @path. On success *route is set and path parameters are decoded into
 * @params (arena). GR_ENOTFOUND when no pattern matches the path; GR_EMETHOD when the path
 * matches but not the method, with @allow set to "GET, HEAD, POST" (arena); GR_EINVAL when a
 * segment has bad percent-encoding, an encoded '/' or NUL, or is "." or "..".
 */
GR_MUST_CHECK int gr_router_match(const struct gr_router *r, struct gr_arena *a, const char *method,
                                  const char *path, const struct gr_route **route,
                                  struct gr_kv *params, size_t *nparams, const char **allow);

/** Percent-decodes @s (len @n) into the arena; '+' stays '+'. GR_EINVAL on bad escapes or NUL. */
GR_MUST_CHECK int gr_url_decode(struct gr_arena *a, const char *s, size_t n, bool plus_space,
                                const char **out);

#endif
