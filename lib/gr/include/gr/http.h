/*
 * gr/http.h - requests, responses and handlers.
 *
 * A handler is `int h(struct gr_req *, struct gr_resp *)`. It fills the response with
 * gr_resp_json() and returns 0, or returns a negative GR_E* code: the core then writes the
 * RFC 9457 problem+json body itself from the code, resp->errs, resp->detail and resp->type
 * (STYLE R10). Everything a request allocates lives in req->arena.
 */
#ifndef GR_HTTP_H
#define GR_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/status.h"

struct gr_ctx;
struct gr_route;
struct gr_principal;
struct gr_db_conn;

#define GR_ROUTE_MAX_PARAMS 8
#define GR_REQ_MAX_QUERY    32
#define GR_RESP_MAX_HEADERS 16

struct gr_kv {
    const char *key;   /* arena */
    const char *value; /* arena, percent-decoded */
};

struct gr_req {
    struct gr_arena *arena;
    struct gr_ctx *ctx; /* the running service (gr/service.h) */
    void *app;          /* the service's own state, from its init hook */
    const char *method; /* "GET", ... (borrowed) */
    const char *path;   /* raw path, without the query string */
    struct gr_str body; /* raw body bytes (arena) */
    json_t *json;       /* parsed body on routes with a JSON body (arena-owned ref) */
    const struct gr_route *route;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS]; /* path parameters, decoded */
    size_t nparams;
    struct gr_kv query[GR_REQ_MAX_QUERY]; /* query parameters, decoded */
    size_t nquery;
    const char *request_id;               /* X-Request-Id (validated) or a new UUIDv7 */
    const struct gr_principal *principal; /* verified bearer token, NULL when anonymous */
    struct gr_db_conn *db;                /* this thread's DB connection (NULL if no DB) */
    void *conn;                           /* internal: the libmicrohttpd connection */
};

struct gr_hdr {
    const char *name;
    const char *value;
};

struct gr_resp {
    int status;       /* default 200 */
    json_t *json;     /* body; owned by the response (decref'd with the arena) */
    const char *body; /* raw body alternative (arena or static) */
    size_t body_len;
    const char *content_type;
    struct gr_hdr headers[GR_RESP_MAX_HEADERS];
    size_t nheaders;
    struct gr_errs errs; /* field errors of a problem response */
    const char *detail;  /* problem detail (arena or static) */
    const char *type;    /* problem slug override, e.g. "slug_taken" (static) */
};

/** A route handler; see the file comment. */
typedef int (*gr_handler_fn)(struct gr_req *req, struct gr_resp *resp);

/** Path parameter by name (NULL if absent). Borrowed from the arena. */
const char *gr_req_param(const struct gr_req *req, const char *name);
/**
 * The client's IP address as text ("127.0.0.1", "::1"; "" when unknown), in the arena: the TCP
 * peer, or, when the peer is one of TRUSTED_PROXIES (the gateway), the right-most address of
 * X-Forwarded-For that is not a trusted proxy.
 */
const char *gr_req_client_ip(struct gr_req *req);
/** Query parameter by name (NULL if absent). */
const char *gr_req_query(const struct gr_req *req, const char *name);
/** Request header by name, case-insensitive (NULL if absent). Borrowed. */
const char *gr_req_header(const struct gr_req *req, const char *name);
/**
 * Integer query parameter in [min, max]. Absent: 0 and *present = false. Not an integer or
 * out of range: adds a "query.<name>" error to @resp and returns GR_EVALID.
 */
GR_MUST_CHECK int gr_req_query_int(struct gr_req *req, struct gr_resp *resp, const char *name,
                                   long long min, long long max, long long *out, bool *present);
/** `limit` per SERVICES §0: 1..100, default 20; GR_EVALID otherwise. */
GR_MUST_CHECK int gr_req_limit(struct gr_req *req, struct gr_resp *resp, int *limit);
/** True when the caller's token grants @perm (gr_principal_can); false when anonymous. */
bool gr_req_can(const struct gr_req *req, const char *perm);

/** Sets status and JSON body; takes ownership of @body (may be NULL for no body). */
void gr_resp_json(struct gr_resp *resp, int status, json_t *body);
/**
 * A 200 with the list shape of SERVICES §0, {"data","has_more","next_cursor"}: when @has_more,
 * next_cursor is a signed cursor (gr/cursor.h) of @last_key bound to @scope, else null. Takes
 * ownership of @data (a JSON array). GR_EINTERNAL if the cursor cannot be made.
 */
GR_MUST_CHECK int gr_resp_list(struct gr_req *req, struct gr_resp *resp, json_t *data,
                               bool has_more, const char *scope, const char *last_key);
/** Adds a response header; @name and @value are copied into @req's arena. */
void gr_resp_header(struct gr_req *req, struct gr_resp *resp, const char *name, const char *value);
/**
 * Sets a problem's slug (static string or NULL) and formatted detail, and returns @code so a
 * handler can `return gr_resp_problem(req, resp, GR_ECONFLICT, "sku_taken", "sku '%s' ...", s);`.
 */
int gr_resp_problem(struct gr_req *req, struct gr_resp *resp, int code, const char *type,
                    const char *fmt, ...) GR_PRINTF(5, 6);
/** Adds a field error (JSON Pointer or "query.x") to the response's problem. */
void gr_resp_field_error(struct gr_req *req, struct gr_resp *resp, const char *field,
                         const char *fmt, ...) GR_PRINTF(4, 5);

#endif
