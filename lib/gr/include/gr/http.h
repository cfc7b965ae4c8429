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
#include <stdint.h>

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

/* Why a handler runs again after gr_req_wait (req->wait.reason). */
enum gr_wake {
    GR_WAKE_NONE = 0, /* the first run */
    GR_WAKE_NOTIFY,   /* the queue was notified (gr_waitq_notify) */
    GR_WAKE_TIMEOUT,  /* the deadline passed */
    GR_WAKE_DRAIN,    /* the service drains: answer now with what there is */
};

/* A handler's runs across gr_req_wait (see below). */
struct gr_req_wait {
    int runs;            /* 0 on the first run, then one more per ended wait */
    enum gr_wake reason; /* why this run */
    int64_t start_ms;    /* gr_time_mono_ms() when the handler first ran */
    void *state;         /* the handler's own, kept across runs (allocate it in req->arena) */
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
    struct gr_req_wait wait;              /* runs of a handler that waits (gr_req_wait) */
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

/*
 * ---- waiting without a thread ---------------------------------------------------------------
 *
 * A handler that must wait for a change (a long-poll, a blocking query) does not block its
 * thread: it arms a wait and returns, its connection is suspended, and when the wait ends the
 * handler runs again, on a clean response and with req->wait telling why, to answer or to wait
 * again. The request's arena, query and principal are kept; req->db is the new thread's.
 *
 *   int h(struct gr_req *req, struct gr_resp *resp) {
 *       uint64_t seq = gr_waitq_seq(app->changed);  // before looking at the state
 *       if (changed_since(app, after) || req->wait.reason == GR_WAKE_DRAIN ||
 *           req->wait.reason == GR_WAKE_TIMEOUT)
 *           return answer(req, resp);
 *       return gr_req_wait(req, resp, app->changed, seq, req->wait.start_ms + wait_ms);
 *   }
 *
 * A writer changes the state, then calls gr_waitq_notify(). Reading the sequence number
 * before the state closes the race: a notify in between ends the wait at once. Waits are for
 * routes without GR_R_TX and outside a transaction. At most HTTP_MAX_WAITERS (default 4096)
 * requests wait at a time; a drain ends every wait (GR_WAKE_DRAIN) so it never waits for them.
 */
struct gr_waitq;

/** gr_req_wait's answer, for the handler to return: the request waits. */
#define GR_HTTP_WAIT 2

/** A new queue; free it with gr_waitq_free after the server stopped (the service's fini). */
struct gr_waitq *gr_waitq_new(void);
void gr_waitq_free(struct gr_waitq *q);
/** The queue's sequence number: moves on every gr_waitq_notify. */
uint64_t gr_waitq_seq(struct gr_waitq *q);
/** Ends every wait on @q (its handlers run again, GR_WAKE_NOTIFY). Any thread; never blocks
 *  on a request. */
void gr_waitq_notify(struct gr_waitq *q);
/**
 * Arms a wait on @q until @deadline_ms (gr_time_mono_ms()); @seq is what gr_waitq_seq gave
 * before the handler looked at its state. Returns GR_HTTP_WAIT, which the handler returns.
 * When HTTP_MAX_WAITERS requests already wait: GR_ERATE with a "too_many_waiters" problem and
 * Retry-After: 1 (the handler may return gr_resp_problem(..., GR_ERATE, its own slug, ...)).
 * While the service drains: GR_EUNAVAIL (503, Retry-After: 1) — a handler woken by the drain
 * (GR_WAKE_DRAIN) answers with what it has instead. On a GR_R_TX route or inside a
 * transaction: GR_EINTERNAL.
 */
GR_MUST_CHECK int gr_req_wait(struct gr_req *req, struct gr_resp *resp, struct gr_waitq *q,
                              uint64_t seq, int64_t deadline_ms);

#endif
