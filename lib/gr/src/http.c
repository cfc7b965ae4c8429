/*
 * http.c - the request pipeline on libmicrohttpd (thread pool, synchronous handlers).
 *
 * libmicrohttpd calls on_request() at least twice per request: once when the headers are in
 * (we route, check the declared body size, the token, the permission and the content type,
 * and answer at once when any fails, so a refused body is never read), then with body chunks
 * (copied into a buffer bounded by the route's limit), then once more at the end (we parse,
 * run the handler, render). Requests without a body run on the first call. Everything a
 * request allocates lives in its arena, released in on_completed() after the response went
 * out, where the access log line and the metrics are written.
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gr/auth.h"
#include "gr/cursor.h"
#include "gr/db.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "http_int.h"
#include "idem_int.h"
#include "wait_int.h"

/*
 * libmicrohttpd keeps the request line and headers in a per-connection pool (mmap'd, so
 * untouched pages cost nothing). The pool is larger than the header limit we enforce, so an
 * oversized header still reaches begin() and is answered with a problem+json 431; only beyond the
 * pool does libmicrohttpd answer 431 by itself.
 */
#define POOL_LIMIT   (32 * 1024)
#define HEADER_LIMIT (24 * 1024)
#define MAX_TOKEN    8192

struct gr_server_route {
    const struct gr_route *route;
    const char *label;
    struct gr_histogram *duration;
    _Atomic(struct gr_counter *) by_status[600];
};

struct rstate {
    struct gr_arena arena;
    struct gr_req req;
    struct gr_resp resp;
    struct gr_principal principal;
    struct gr_buf body;
    size_t body_max;
    bool body_too_big;
    bool responded;
    int status;
    size_t bytes_out;
    int64_t start_ns;
    size_t rm_index;
    int early_rc; /* an error found with the headers, answered on the next call */
    struct gr_idem ik;
    /* GR_R_TX routes on SQLite: the connection is suspended while its commit waits for the
     * group commit batch (gr_db_commit_deferred), and answered when it is resumed. */
    struct gr_db_waiter waiter;
    bool deferred;
    atomic_int commit_rc;
    /* A handler that waits (gr_req_wait): the wait it asked for, then the parked waiter. */
    struct gr_waitq *wait_q;
    uint64_t wait_seq;
    int64_t wait_deadline_ms;
    bool wait_reserved; /* a place is taken for wait_q */
    bool waiting;       /* suspended in a wait; the handler runs again when resumed */
    struct gr_waiter parked;
};

/* ---- request accessors --------------------------------------------------------------------- */

const char *gr_req_param(const struct gr_req *req, const char *name)
{
    for (size_t i = 0; i < req->nparams; i++) {
        if (strcmp(req->params[i].key, name) == 0)
            return req->params[i].value;
    }
    return NULL;
}

const char *gr_req_query(const struct gr_req *req, const char *name)
{
    for (size_t i = 0; i < req->nquery; i++) {
        if (strcmp(req->query[i].key, name) == 0)
            return req->query[i].value;
    }
    return NULL;
}

const char *gr_req_header(const struct gr_req *req, const char *name)
{
    return req->conn ? MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name) : NULL;
}

/* True when @ip is one of the comma-separated addresses of TRUSTED_PROXIES (@list). */
static bool trusted(const char *list, const char *ip, size_t n)
{
    while (list && *list) {
        size_t len = strcspn(list, ",");

        if (len == n && memcmp(list, ip, n) == 0)
            return true;
        list += len;
        if (*list == ',')
            list++;
    }
    return false;
}

const char *gr_req_client_ip(struct gr_req *req)
{
    const union MHD_ConnectionInfo *ci;
    const char *list = req->ctx ? req->ctx->cfg.trusted_proxies : NULL, *xff, *end;
    char buf[INET6_ADDRSTRLEN] = "";
    const struct sockaddr *sa;

    if (!req->conn)
        return "";
    ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    sa = ci ? ci->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf,
                  sizeof(buf));
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf,
                  sizeof(buf));
    /*
     * From a trusted proxy, the client is the right-most X-Forwarded-For entry that is not a
     * trusted proxy itself (entries further left are the client's own claims). Anything that
     * is not an IP literal ends the walk: the last trusted hop is then the client.
     */
    xff = list && trusted(list, buf, strlen(buf)) ? gr_req_header(req, "X-Forwarded-For") : NULL;
    for (end = xff ? xff + strlen(xff) : NULL; xff && end > xff;) {
        const char *start = end;
        char ip[INET6_ADDRSTRLEN];
        unsigned char bin[sizeof(struct in6_addr)];
        size_t len;

        while (start > xff && start[-1] != ',')
            start--;
        end = start > xff ? start - 1 : xff;
        while (*start == ' ' || *start == '\t')
            start++;
        len = strcspn(start, ", \t");
        if (len == 0 || len >= sizeof(ip))
            break;
        memcpy(ip, start, len);
        ip[len] = '\0';
        if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, bin) != 1)
            break;
        memcpy(buf, ip, len + 1);
        if (!trusted(list, ip, len))
            break;
    }
    return gr_arena_strdup(req->arena, buf);
}

int gr_req_query_int(struct gr_req *req, struct gr_resp *resp, const char *name, long long min,
                     long long max, long long *out, bool *present)
{
    const char *v = gr_req_query(req, name);
    char field[80];
    long long x = 0;
    size_t i = 0;
    bool neg = false;

    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    snprintf(field, sizeof(field), "query.%s", name);
    if (v[0] == '-') {
        neg = true;
        i = 1;
    }
    if (v[i] == '\0' || strlen(v + i) > 18)
        goto bad;
    for (; v[i]; i++) {
        if (v[i] < '0' || v[i] > '9')
            goto bad;
        x = x * 10 + (v[i] - '0');
    }
    if (neg)
        x = -x;
    if (x < min || x > max)
        goto bad;
    *out = x;
    return 0;
bad:
    gr_resp_field_error(req, resp, field, "must be an integer in %lld..%lld", min, max);
    return GR_EVALID;
}

int gr_req_limit(struct gr_req *req, struct gr_resp *resp, int *limit)
{
    long long x = 20;
    int rc = gr_req_query_int(req, resp, "limit", 1, 100, &x, NULL);

    if (rc < 0)
        return rc;
    *limit = (int)x;
    return 0;
}

bool gr_req_can(const struct gr_req *req, const char *perm)
{
    return req->principal && gr_principal_can(req->principal, perm);
}

/* ---- response helpers ---------------------------------------------------------------------- */

void gr_resp_json(struct gr_resp *resp, int status, json_t *body)
{
    resp->status = status;
    resp->json = body;
}

int gr_resp_list(struct gr_req *req, struct gr_resp *resp, json_t *data, bool has_more,
                 const char *scope, const char *last_key)
{
    const char *next = NULL;

    if (has_more) {
        int rc = gr_cursor_encode(&req->ctx->cursor_key, req->arena, scope, last_key,
                                  strlen(last_key), &next);

        if (rc < 0) {
            json_decref(data);
            return rc;
        }
    }
    gr_resp_json(
        resp, 200,
        json_pack("{s:o,s:b,s:s?}", "data", data, "has_more", has_more, "next_cursor", next));
    return 0;
}

void gr_resp_header(struct gr_req *req, struct gr_resp *resp, const char *name, const char *value)
{
    if (resp->nheaders >= GR_RESP_MAX_HEADERS)
        GR_BUG("too many response headers");
    resp->headers[resp->nheaders].name = gr_arena_strdup(req->arena, name);
    resp->headers[resp->nheaders].value = gr_arena_strdup(req->arena, value);
    resp->nheaders++;
}

int gr_resp_problem(struct gr_req *req, struct gr_resp *resp, int code, const char *type,
                    const char *fmt, ...)
{
    va_list ap;

    resp->type = type;
    if (fmt) {
        va_start(ap, fmt);
        resp->detail = gr_arena_vprintf(req->arena, fmt, ap);
        va_end(ap);
    }
    return code;
}

void gr_resp_field_error(struct gr_req *req, struct gr_resp *resp, const char *field,
                         const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = gr_arena_vprintf(req->arena, fmt, ap);
    va_end(ap);
    gr_errs_add(&resp->errs, req->arena, field, "%s", msg);
}

/* ---- rendering ----------------------------------------------------------------------------- */

static json_t *problem_body(struct rstate *st, int code)
{
    struct gr_resp *resp = &st->resp;
    int status = gr_err_http_status(code);
    json_t *p = json_object(), *errs = json_array();
    char type[128];

    /* A 500 never says more than its name (it may come from anywhere); 4xx and the
     * unavailable family (502-504: a dependency down, a drain, a circuit open) keep what the
     * handler wrote, so a client can tell circuit_open from draining. */
    bool told = status < 500 || status >= 502;

    snprintf(type, sizeof(type), "urn:gravity:problem:%s",
             resp->type && told ? resp->type : gr_err_name(code));
    json_object_set_new(p, "type", json_string(type));
    json_object_set_new(p, "title", json_string(gr_strerror(code)));
    json_object_set_new(p, "status", json_integer(status));
    if (resp->detail && told)
        json_object_set_new(p, "detail", json_string(resp->detail));
    json_object_set_new(p, "instance", json_string(st->req.path ? st->req.path : "/"));
    if (st->req.request_id)
        json_object_set_new(p, "request_id", json_string(st->req.request_id));
    for (size_t i = 0; i < resp->errs.n && status < 500; i++) {
        json_t *e = json_object();

        json_object_set_new(e, "field", json_string(resp->errs.items[i].field));
        json_object_set_new(e, "message", json_string(resp->errs.items[i].message));
        json_array_append_new(errs, e);
    }
    json_object_set_new(p, "errors", errs);
    return p;
}

static enum MHD_Result reply(struct gr_server *srv, struct rstate *st, struct MHD_Connection *conn,
                             int code)
{
    struct gr_resp *resp = &st->resp;
    struct MHD_Response *r;
    const char *ctype = resp->content_type;
    char *body = NULL;
    size_t len = 0;
    int status;
    enum MHD_Result ret;

    if (code < 0) {
        status = gr_err_http_status(code);
        if (status == 500)
            gr_log(GR_LOG_ERROR, "request failed", "code", gr_err_name(code), "request_id",
                   st->req.request_id, "route", st->req.route ? st->req.route->pattern : NULL,
                   (char *)NULL);
        if (resp->json)
            json_decref(resp->json);
        resp->json = problem_body(st, code);
        ctype = "application/problem+json";
        resp->body = NULL;
    } else {
        status = resp->status ? resp->status : 200;
    }
    if (resp->json) {
        body = json_dumps(resp->json, JSON_COMPACT | JSON_REAL_PRECISION(12));
        if (!body)
            GR_BUG("json_dumps failed");
        len = strlen(body);
        json_decref(resp->json);
        resp->json = NULL;
        if (!ctype)
            ctype = "application/json";
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    } else if (resp->body) {
        len = resp->body_len;
        r = MHD_create_response_from_buffer(len, (void *)(uintptr_t)resp->body,
                                            MHD_RESPMEM_MUST_COPY);
    } else {
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    }
    if (!r)
        GR_BUG("cannot create response");
    if (ctype && len)
        MHD_add_response_header(r, "Content-Type", ctype);
    if (st->req.request_id)
        MHD_add_response_header(r, "X-Request-Id", st->req.request_id);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (code == GR_EUNAUTH)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    for (size_t i = 0; i < resp->nheaders; i++)
        MHD_add_response_header(r, resp->headers[i].name, resp->headers[i].value);
    /* While draining, requests on open connections are still served, then the client is
     * told to reconnect (to another instance). */
    if (st->body_too_big || (code < 0 && status == 413) || atomic_load(&srv->draining))
        MHD_add_response_header(r, "Connection", "close");
    ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    st->responded = true;
    st->status = status;
    st->bytes_out = len;
    return ret;
}

/* ---- pipeline stages ----------------------------------------------------------------------- */

static bool valid_request_id(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++) {
        char c = s[n];
        if (n >= 128 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return n > 0;
}

static size_t route_index(const struct gr_server *srv, const struct gr_route *rt)
{
    size_t base = 0;

    for (size_t t = 0; rt && t < srv->ntables; t++) {
        if (rt >= srv->tables[t] && rt < srv->tables[t] + srv->counts[t])
            return base + (size_t)(rt - srv->tables[t]);
        base += srv->counts[t];
    }
    return srv->nrm - 1;
}

static int authenticate(struct gr_server *srv, struct rstate *st)
{
    const struct gr_route *rt = st->req.route;
    const char *h = gr_req_header(&st->req, "Authorization");
    bool need = (rt->flags & GR_R_AUTH) || rt->perm;
    const char *tok;
    int rc;

    if (!h) {
        if (need)
            return gr_resp_problem(&st->req, &st->resp, GR_EUNAUTH, NULL,
                                   "a bearer token is required");
        return 0;
    }
    if (strncasecmp(h, "Bearer ", 7) != 0) {
        /* Another scheme is the handler's business on a GR_R_OWN_AUTHZ route (e.g. Basic
         * client authentication at an OAuth token endpoint); it never makes a principal. */
        if (!need && (rt->flags & GR_R_OWN_AUTHZ))
            return 0;
        return gr_resp_problem(&st->req, &st->resp, GR_EUNAUTH, NULL,
                               "the Authorization header must use the Bearer scheme");
    }
    tok = h + 7;
    while (*tok == ' ')
        tok++;
    if (!srv->ctx->auth || strlen(tok) > MAX_TOKEN)
        return gr_resp_problem(&st->req, &st->resp, GR_EUNAUTH, NULL, "invalid token");
    rc = gr_auth_verify(srv->ctx->auth, &st->arena, tok, strlen(tok), &st->principal);
    if (rc < 0) {
        /* An unreachable JWKS is still "we cannot trust this token": 401, never 5xx. */
        return gr_resp_problem(&st->req, &st->resp, GR_EUNAUTH, NULL, "invalid or expired token");
    }
    st->req.principal = &st->principal;
    if (rt->perm && !gr_principal_can(&st->principal, rt->perm))
        return gr_resp_problem(&st->req, &st->resp, GR_EFORBIDDEN, NULL,
                               "permission '%s' is required", rt->perm);
    return 0;
}

static bool media_ok(const char *ct, const char *method)
{
    size_t n;

    if (!ct)
        return false;
    n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return true;
    return strcmp(method, "PATCH") == 0 && n == 28 &&
           strncasecmp(ct, "application/merge-patch+json", 28) == 0;
}

struct qctx {
    struct rstate *st;
    int rc;
};

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct qctx *q = cls;
    struct gr_req *req = &q->st->req;
    const char *k, *v;

    (void)kind;
    if (q->rc < 0)
        return MHD_NO;
    if (req->nquery >= GR_REQ_MAX_QUERY) {
        q->rc = gr_resp_problem(req, &q->st->resp, GR_EINVAL, NULL, "too many query parameters");
        return MHD_NO;
    }
    if (gr_url_decode(req->arena, key, strlen(key), false, &k) < 0 ||
        gr_url_decode(req->arena, value ? value : "", value ? strlen(value) : 0, false, &v) < 0) {
        q->rc = gr_resp_problem(req, &q->st->resp, GR_EINVAL, NULL,
                                "malformed percent-encoding in the query string");
        return MHD_NO;
    }
    req->query[req->nquery].key = k;
    req->query[req->nquery].value = v;
    req->nquery++;
    return MHD_YES;
}

static bool query_allowed(const char *list, const char *key)
{
    size_t klen = strlen(key);

    while (list && *list) {
        size_t n = strcspn(list, ",");
        if (n == klen && strncmp(list, key, n) == 0)
            return true;
        list += n;
        if (*list == ',')
            list++;
    }
    return false;
}

static int check_query(struct rstate *st, struct MHD_Connection *conn)
{
    struct qctx q = { st, 0 };
    struct gr_req *req = &st->req;

    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, &q);
    if (q.rc < 0)
        return q.rc;
    for (size_t i = 0; i < req->nquery; i++) {
        char field[96];

        snprintf(field, sizeof(field), "query.%.80s", req->query[i].key);
        if (!query_allowed(req->route->query, req->query[i].key)) {
            gr_resp_field_error(req, &st->resp, field, "unknown query parameter");
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(req->query[j].key, req->query[i].key) == 0) {
                gr_resp_field_error(req, &st->resp, field, "given more than once");
                break;
            }
        }
    }
    return st->resp.errs.n ? GR_EVALID : 0;
}

static enum MHD_Result sum_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    size_t *n = cls;

    (void)kind;
    *n += strlen(key) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

/* Headers are in: route, size, auth, media type. Returns 0 to go on, or a code to answer. */
static int begin(struct gr_server *srv, struct rstate *st, struct MHD_Connection *conn,
                 const char *url, const char *method)
{
    struct gr_req *req = &st->req;
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    const char *cl, *allow = NULL, *te;
    char idbuf[GR_ID_LEN];
    size_t hdr_bytes = strlen(url);
    int rc;

    if (rid && valid_request_id(rid)) {
        req->request_id = rid;
    } else {
        gr_id_new(idbuf);
        req->request_id = gr_arena_strdup(&st->arena, idbuf);
    }
    MHD_get_connection_values(conn, MHD_HEADER_KIND, sum_header, &hdr_bytes);
    if (hdr_bytes > HEADER_LIMIT)
        return gr_resp_problem(req, &st->resp, GR_EHDRTOOBIG, NULL,
                               "the request line and headers exceed %d bytes", HEADER_LIMIT);
    rc = gr_router_match(srv->router, &st->arena, method, url, &req->route, req->params,
                         &req->nparams, &allow);
    if (rc == GR_EMETHOD) {
        gr_resp_header(req, &st->resp, "Allow", allow);
        return gr_resp_problem(req, &st->resp, rc, NULL, "method %s is not allowed here", method);
    }
    if (rc == GR_ENOTFOUND)
        return gr_resp_problem(req, &st->resp, rc, NULL, "no such resource");
    if (rc < 0)
        return gr_resp_problem(req, &st->resp, rc, NULL, "malformed path");
    st->rm_index = route_index(srv, req->route);
    st->body_max = req->route->body_max ? req->route->body_max : srv->ctx->cfg.http_max_body;
    cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);

        if (end == cl || *end != '\0')
            return gr_resp_problem(req, &st->resp, GR_EINVAL, NULL, "bad Content-Length");
        if (n > st->body_max)
            return gr_resp_problem(req, &st->resp, GR_ETOOBIG, NULL, "the body exceeds %zu bytes",
                                   st->body_max);
    }
    rc = authenticate(srv, st);
    if (rc < 0)
        return rc;
    te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
    if ((req->route->flags & GR_R_JSON) &&
        !media_ok(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type"), method))
        return gr_resp_problem(req, &st->resp, GR_EMEDIA, NULL,
                               strcmp(method, "PATCH") == 0
                                   ? "use application/json or application/merge-patch+json"
                                   : "use application/json");
    (void)te;
    return 0;
}

static void rollback_cb(void *p)
{
    struct gr_db_conn *c = p;

    if (gr_db_in_tx(c))
        (void)gr_db_rollback(c);
}

static int req_begin(struct gr_req *req, bool read_committed)
{
    int rc;

    if (!req->db)
        return GR_EUNAVAIL;
    rc = read_committed ? gr_db_begin_read_committed(req->db) : gr_db_begin(req->db);
    if (rc < 0)
        return rc;
    gr_arena_defer(req->arena, rollback_cb, req->db);
    return 0;
}

int gr_req_begin(struct gr_req *req)
{
    return req_begin(req, false);
}

#define BUSY_ATTEMPTS 8 /* with exponential backoff: at most ~130 ms of pauses in all */

/*
 * The pause before busy attempt @attempt (1..): half of an exponentially growing window, plus
 * a jitter from the clock's low bits, so retrying writers spread out instead of colliding again.
 */
static void busy_pause(int attempt)
{
    unsigned window = 1000u << (attempt < 7 ? attempt : 7); /* microseconds */
    unsigned jitter = (unsigned)((uint64_t)gr_time_mono_ns() / 1000 % (window / 2));

    usleep((useconds_t)(window / 2 + jitter));
}

static struct rstate *rstate_of(struct gr_req *req);

/* The request's Idempotency-Key state; NULL outside the server (unit tests). */
static struct gr_idem *ik_of(struct gr_req *req);

static int req_tx(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg), void *arg,
                  bool read_committed)
{
    struct gr_idem *ik = ik_of(req);
    int rc = GR_EBUSY;

    for (int attempt = 1; rc == GR_EBUSY && attempt <= BUSY_ATTEMPTS; attempt++) {
        bool reserved = false;

        if (attempt > 1)
            busy_pause(attempt - 1);
        rc = req_begin(req, read_committed);
        if (rc == 0 && ik != NULL) /* GR_R_IK_LAZY: the key joins the first transaction */
            rc = gr_idem__begin_lazy(req, ik, &reserved);
        if (rc == 0)
            rc = fn(req, arg);
        if (rc == 0)
            rc = gr_db_commit(req->db);
        else if (gr_db_in_tx(req->db))
            (void)gr_db_rollback(req->db);
        if (rc != 0 && reserved)
            gr_idem__unreserve(ik); /* rolled back with the transaction */
    }
    return rc;
}

int gr_req_idem_store(struct gr_req *req, struct gr_resp *resp)
{
    if (!req->conn)
        return 0; /* not a request of the server (unit tests) */
    return gr_idem__store_in_tx(req, resp, &rstate_of(req)->ik);
}

int gr_req_tx(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg), void *arg)
{
    return req_tx(req, fn, arg, false);
}

int gr_req_tx_read_committed(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg),
                             void *arg)
{
    return req_tx(req, fn, arg, true);
}

int gr_req_read(struct gr_req *req, int (*fn)(struct gr_req *req, void *arg), void *arg)
{
    int rc, end;

    if (!req->db)
        return GR_EUNAVAIL;
    if (gr_db_in_tx(req->db) || gr_db_in_read(req->db))
        return fn(req, arg); /* the open transaction or snapshot already holds */
    rc = gr_db_read_begin(req->db);
    if (rc < 0)
        return rc;
    rc = fn(req, arg);
    end = gr_db_read_end(req->db);
    if (rc >= 0 && end < 0)
        rc = end;
    return rc;
}

static void reset_response(struct gr_resp *resp)
{
    if (resp->json)
        json_decref(resp->json);
    memset(resp, 0, sizeof(*resp));
}

/* gr_db_waiter.arm: the commit waits for its batch; free the thread meanwhile. */
static void commit_arm(void *arg)
{
    struct rstate *st = arg;

    st->deferred = true;
    MHD_suspend_connection(st->req.conn);
}

/* gr_db_waiter.done, from the thread that ended the batch: answer on the request's thread. */
static void commit_done(void *arg, int rc)
{
    struct rstate *st = arg;

    atomic_store(&st->commit_rc, rc);
    MHD_resume_connection(st->req.conn);
}

/* ---- waits (gr_req_wait) ------------------------------------------------------------------ */

static struct rstate *rstate_of(struct gr_req *req)
{
    return (struct rstate *)(void *)((char *)req - offsetof(struct rstate, req));
}

static struct gr_idem *ik_of(struct gr_req *req)
{
    return req->conn ? &rstate_of(req)->ik : NULL;
}

int gr_req_wait(struct gr_req *req, struct gr_resp *resp, struct gr_waitq *q, uint64_t seq,
                int64_t deadline_ms)
{
    struct rstate *st;
    int rc;

    if (!req->conn || !q || (req->route && (req->route->flags & GR_R_TX)) ||
        (req->db && gr_db_in_tx(req->db))) {
        gr_log_error("gr_req_wait outside a plain request, on a GR_R_TX route or in a transaction");
        return GR_EINTERNAL;
    }
    st = rstate_of(req);
    if (st->wait_reserved)
        GR_BUG("gr_req_wait called twice in one run");
    rc = req->wait.reason == GR_WAKE_DRAIN ? GR_EUNAVAIL : gr_wait__reserve();
    if (rc < 0) {
        gr_resp_header(req, resp, "Retry-After", "1");
        if (rc == GR_ERATE)
            return gr_resp_problem(req, resp, GR_ERATE, "too_many_waiters",
                                   "too many requests are waiting; retry");
        /* Answered, not parked: a client that polls again goes to another instance. */
        return gr_resp_problem(req, resp, GR_EUNAVAIL, NULL, "the service is draining");
    }
    st->wait_reserved = true;
    st->wait_q = q;
    st->wait_seq = seq;
    st->wait_deadline_ms = deadline_ms;
    return GR_HTTP_WAIT;
}

/* gr_waiter.suspend, under the wait lock: free the thread until the wait ends. */
static void wait_suspend(void *arg)
{
    struct rstate *st = arg;

    st->waiting = true;
    MHD_suspend_connection(st->req.conn);
}

/* gr_waiter.wake, from the notifier, the timer thread or the drain: run the handler again. */
static void wait_wake(void *arg)
{
    struct rstate *st = arg;

    MHD_resume_connection(st->req.conn);
}

/*
 * The handler returned GR_HTTP_WAIT: park the request. GR_HTTP_WAIT when it is suspended; 0
 * when the wait ended at once (run the handler again now); a code when it cannot wait.
 */
static int wait_begin(struct rstate *st, int rc)
{
    if (!st->wait_reserved) {
        gr_log_error("a handler returned GR_HTTP_WAIT without gr_req_wait");
        return GR_EINTERNAL;
    }
    st->wait_reserved = false; /* gr_wait__arm takes the place over, or gives it back */
    st->parked = (struct gr_waiter){ .suspend = wait_suspend, .wake = wait_wake, .arg = st };
    if (gr_wait__arm(&st->parked, st->wait_q, st->wait_seq, st->wait_deadline_ms))
        return rc;
    return 0;
}

/* Before the handler runs again after a wait: a clean response and this thread's DB. */
static int wait_rerun(struct gr_server *srv, struct rstate *st)
{
    struct gr_req *req = &st->req;

    req->wait.runs++;
    req->wait.reason = (enum gr_wake)atomic_load(&st->parked.reason);
    reset_response(&st->resp);
    req->db = NULL;
    if (srv->ctx->db && !(req->route->flags & GR_R_INTERNAL))
        return gr_db_conn(srv->ctx->db, &req->db);
    return 0;
}

/*
 * The handler, inside a transaction on GR_R_TX routes (committed only on success). With @w,
 * the commit may be deferred: GR_DB_DEFERRED, and the answer comes through @w.
 */
static int run_handler(struct gr_req *req, struct gr_resp *resp, struct gr_idem *ik,
                       struct gr_db_waiter *w)
{
    int rc;

    if (req->route->flags & GR_R_TX) {
        rc = (req->route->flags & GR_R_READ_COMMITTED) ? gr_db_begin_read_committed(req->db)
                                                       : gr_db_begin(req->db);
        if (rc < 0)
            return rc;
        rc = gr_idem__begin_tx(req, resp, ik); /* the key, in this transaction */
        if (rc != 0) {
            (void)gr_db_rollback(req->db);
            return rc > 0 ? 0 : rc; /* 1: a stored response is replayed */
        }
    }
    rc = req->route->handler(req, resp);
    if (rc == 0 && resp->status >= 400)
        rc = gr_err_from_http_status(resp->status);
    if ((req->route->flags & GR_R_TX) && gr_db_in_tx(req->db)) {
        if (rc == 0 && ik->active)
            rc = gr_idem__store(req, resp, ik); /* with the handler's writes, or neither */
        if (rc == 0)
            rc = w ? gr_db_commit_deferred(req->db, w) : gr_db_commit(req->db);
        else
            (void)gr_db_rollback(req->db);
    }
    return rc;
}

static int dispatch(struct gr_server *srv, struct rstate *st);

/* Body is in: query, JSON, DB, transaction, handler. */
static int run(struct gr_server *srv, struct rstate *st, struct MHD_Connection *conn)
{
    struct gr_req *req = &st->req;
    struct gr_idem *ik = &st->ik;
    int rc;

    if (st->body_too_big)
        return gr_resp_problem(req, &st->resp, GR_ETOOBIG, NULL, "the body exceeds %zu bytes",
                               st->body_max);
    rc = check_query(st, conn);
    if (rc < 0)
        return rc;
    req->body.ptr = gr_buf_cstr(&st->body);
    req->body.len = st->body.len;
    if (req->route->flags & GR_R_JSON) {
        if (req->body.len == 0)
            return gr_resp_problem(req, &st->resp, GR_EINVAL, NULL, "a JSON body is required");
        rc = gr_json_parse(&st->arena, req->body.ptr, req->body.len, &req->json, &st->resp.errs);
        if (rc < 0)
            return gr_resp_problem(req, &st->resp, rc, NULL,
                                   rc == GR_EINVAL ? "the body is not valid JSON"
                                                   : "the body has invalid values");
    }
    if (srv->ctx->db && !(req->route->flags & GR_R_INTERNAL)) {
        rc = gr_db_conn(srv->ctx->db, &req->db);
        if (rc < 0)
            return rc;
    }
    rc = gr_idem__begin(req, &st->resp, ik);
    if (rc != 0)
        return rc > 0 ? 0 : rc; /* 1: a stored response is replayed */
    req->wait.start_ms = gr_time_mono_ms();
    return dispatch(srv, st);
}

/* The handler (again after a wait), with retries on GR_EBUSY; then the idempotency record. */
static int dispatch(struct gr_server *srv, struct rstate *st)
{
    struct gr_req *req = &st->req;
    struct gr_idem *ik = &st->ik;
    int rc;

    for (int attempt = 1;; attempt++) {
        st->waiter = (struct gr_db_waiter){ .arm = commit_arm, .done = commit_done, .arg = st };
        rc = run_handler(req, &st->resp, ik, &st->waiter);
        if (rc == GR_DB_DEFERRED)
            return rc; /* answered by finish_deferred */
        if (rc == GR_HTTP_WAIT) {
            rc = wait_begin(st, rc);
            if (rc == GR_HTTP_WAIT)
                return rc; /* suspended; on_request runs the handler again when woken */
            if (rc == 0)
                rc = wait_rerun(srv, st);
            if (rc < 0)
                break;
            attempt = 0;
            continue; /* the wait ended at once */
        }
        if (st->wait_reserved) { /* gr_req_wait, then not GR_HTTP_WAIT */
            st->wait_reserved = false;
            gr_wait__unreserve();
        }
        if (rc != GR_EBUSY || attempt == BUSY_ATTEMPTS)
            break;
        /*
         * A serialization failure or lock timeout: nothing was committed, so run the handler
         * again on a clean response after a short jittered pause.
         */
        if (req->db && gr_db_in_tx(req->db))
            (void)gr_db_rollback(req->db);
        reset_response(&st->resp);
        busy_pause(attempt);
    }
    if (ik->lost != GR_IDEM_OWNED) { /* a lazy reservation found the key taken */
        reset_response(&st->resp);
        rc = gr_idem__lost_answer(req, &st->resp, ik, rc);
    }
    gr_idem__end(req, &st->resp, ik, rc); /* stores a 2xx not stored yet, else releases */
    return rc;
}

/* The request's batch has ended (its connection was resumed): the rest of run. */
static int finish_deferred(struct rstate *st)
{
    int rc = atomic_load(&st->commit_rc);

    st->deferred = false;
    gr_idem__end(&st->req, &st->resp, &st->ik, rc);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct gr_server *srv = cls;
    struct rstate *st = *con_cls;
    int rc;

    (void)version;
    if (!st) {
        const char *cl, *te;

        st = gr_xcalloc(1, sizeof(*st));
        *con_cls = st;
        atomic_fetch_add(&srv->inflight, 1);
        atomic_fetch_add(&srv->started, 1);
        st->start_ns = gr_time_mono_ns();
        gr_arena_init(&st->arena);
        st->req.arena = &st->arena;
        st->req.ctx = srv->ctx;
        st->req.app = srv->ctx->app;
        st->req.method = method;
        st->req.path = gr_arena_strdup(&st->arena, url);
        st->req.conn = conn;
        st->rm_index = srv->nrm - 1;
        rc = begin(srv, st, conn, url, method);
        cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
        if (rc < 0 && ((cl && strcmp(cl, "0") != 0) || te))
            return reply(srv, st, conn, rc); /* refuse the body unread; the connection closes */
        /*
         * Otherwise answer on the next call: libmicrohttpd closes the connection after a
         * response queued on the first call, which would cost keep-alive to every GET.
         */
        st->early_rc = rc;
        if (rc == 0)
            gr_buf_init(&st->body, st->body_max);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!st->responded && !st->body_too_big && st->early_rc == 0 &&
            gr_buf_append(&st->body, upload_data, *upload_data_size) < 0) {
            st->body_too_big = true;
            gr_buf_release(&st->body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->responded)
        return MHD_YES;
    if (st->deferred)
        return reply(srv, st, conn, finish_deferred(st));
    if (st->waiting) { /* resumed after a wait */
        st->waiting = false;
        rc = wait_rerun(srv, st);
        if (rc == 0)
            rc = dispatch(srv, st);
        if (rc == GR_HTTP_WAIT)
            return MHD_YES;
        return reply(srv, st, conn, rc);
    }
    if (st->early_rc < 0)
        return reply(srv, st, conn, st->early_rc);
    rc = run(srv, st, conn);
    if (rc == GR_DB_DEFERRED || rc == GR_HTTP_WAIT)
        return MHD_YES; /* suspended by commit_arm or wait_suspend */
    return reply(srv, st, conn, rc);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct gr_server *srv = cls;
    struct rstate *st = *con_cls;
    struct gr_server_route *rm;
    double secs;
    int status;

    (void)conn;
    if (!st)
        return;
    *con_cls = NULL;
    if (st->waiting)
        gr_wait__cancel(&st->parked); /* only when the server stops with the request parked */
    if (st->wait_reserved)
        gr_wait__unreserve();
    status = st->responded ? st->status : 499; /* client went away before we answered */
    secs = (double)(gr_time_mono_ns() - st->start_ns) / 1e9;
    rm = &srv->rm[st->rm_index];
    if (status >= 100 && status < 600) {
        struct gr_counter *c = atomic_load(&rm->by_status[status]);

        if (!c) {
            char sbuf[8];
            snprintf(sbuf, sizeof(sbuf), "%d", status);
            c = gr_metrics_counter(
                srv->ctx->metrics, "http_requests_total",
                "HTTP requests by method, route and status",
                (const char *const[]){ "method", st->req.route ? st->req.route->method : "other",
                                       "route", rm->label, "status", sbuf, NULL });
            atomic_store(&rm->by_status[status], c);
        }
        gr_counter_add(c, 1);
    }
    if (rm->duration)
        gr_histogram_observe(rm->duration, secs);
    if (gr_log_enabled(st->req.route && (st->req.route->flags & GR_R_INTERNAL) ? GR_LOG_DEBUG
                                                                               : GR_LOG_INFO)) {
        struct gr_buf b = GR_BUF_INIT;

        gr_buf_init(&b, 4096);
        gr_buf_puts(&b, "\"method\":");
        gr_buf_json_str(&b, st->req.method, strlen(st->req.method));
        gr_buf_puts(&b, ",\"path\":");
        gr_buf_json_str(&b, st->req.path, strnlen(st->req.path, 512));
        gr_buf_printf(&b,
                      ",\"route\":\"%s\",\"status\":%d,\"duration_ms\":%.3f,\"bytes_in\":%zu,"
                      "\"bytes_out\":%zu,\"request_id\":",
                      rm->label, status, secs * 1000, st->req.body.len, st->bytes_out);
        gr_buf_json_str(&b, st->req.request_id ? st->req.request_id : "",
                        st->req.request_id ? strlen(st->req.request_id) : 0);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            gr_buf_printf(&b, ",\"terminated\":%d", (int)toe);
        gr_log_raw(st->req.route && (st->req.route->flags & GR_R_INTERNAL) ? GR_LOG_DEBUG
                                                                           : GR_LOG_INFO,
                   "request", gr_buf_cstr(&b));
        gr_buf_release(&b);
    }
    if (st->resp.json)
        json_decref(st->resp.json);
    gr_arena_release(&st->arena);
    gr_buf_release(&st->body);
    gr_free(st);
    if (atomic_fetch_sub(&srv->inflight, 1) == 1) {
        pthread_mutex_lock(&srv->idle_mu);
        pthread_cond_broadcast(&srv->idle_cv);
        pthread_mutex_unlock(&srv->idle_mu);
    }
}

/* Keep the raw path: the router decodes segments itself and rejects encoded separators. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) GR_PRINTF(2, 0);

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    gr_log(GR_LOG_DEBUG, "libmicrohttpd", "detail", msg, (char *)NULL);
}

void gr_http__init_metrics(struct gr_server *srv)
{
    size_t total = 0, k = 0;

    for (size_t t = 0; t < srv->ntables; t++)
        total += srv->counts[t];
    srv->nrm = total + 1;
    srv->rm = gr_xcalloc(srv->nrm, sizeof(*srv->rm));
    for (size_t t = 0; t < srv->ntables; t++) {
        for (size_t i = 0; i < srv->counts[t]; i++, k++) {
            srv->rm[k].route = &srv->tables[t][i];
            srv->rm[k].label = srv->tables[t][i].pattern;
        }
    }
    srv->rm[total].label = "unmatched";
    for (size_t i = 0; i < srv->nrm; i++) {
        srv->rm[i].duration = gr_metrics_histogram(
            srv->ctx->metrics, "http_request_duration_seconds", "HTTP request latency",
            (const char *const[]){ "route", srv->rm[i].label, NULL }, NULL, 0);
    }
    pthread_mutex_init(&srv->idle_mu, NULL);
    pthread_cond_init(&srv->idle_cv, NULL);
}

int gr_http__start(struct gr_server *srv)
{
    const struct gr_config *cfg = &srv->ctx->cfg;
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *info;
    const char *mw = getenv("HTTP_MAX_WAITERS");
    long max_waiters = 4096;

    if (mw && *mw) {
        char *end;

        max_waiters = strtol(mw, &end, 10);
        if (*end || max_waiters < 1 || max_waiters > 65536) {
            fprintf(stderr, "%s: HTTP_MAX_WAITERS: must be an integer in 1..65536\n",
                    srv->ctx->svc->id);
            return GR_ECONFIG;
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &sa.sin_addr) != 1) {
        gr_log_error("HOST is not an IPv4 address", "host", cfg->host);
        return GR_ECONFIG;
    }
    if (gr_wait__start((size_t)max_waiters) < 0)
        return GR_EINTERNAL;
    srv->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG |
            MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME,
        (uint16_t)cfg->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, &sa,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->http_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)POOL_LIMIT,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(4096 + max_waiters), MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned)1024, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_END);
    if (!srv->daemon) {
        gr_wait__stop();
        gr_log_error("cannot listen", "host", cfg->host);
        return GR_EIO;
    }
    info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : cfg->port;
    return 0;
}

/* Milliseconds on the real-time clock, as pthread_cond_timedwait wants. */
static struct timespec abs_after_ms(int ms)
{
    struct timespec t;

    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/*
 * Graceful drain. /ready answers 503 from now on, so registries and balancers stop sending;
 * every response carries "Connection: close". We wait until no request is in flight and none
 * has started for a quiet period (or the deadline passes), then stop the daemon.
 * MHD_quiesce_daemon() is not used: with an epoll thread pool it races the workers removing
 * the listen socket themselves and aborts ("Failed to remove listen FD from epoll set").
 */
void gr_http__drain(struct gr_server *srv, int timeout_ms)
{
    const int quiet_ms = 50;
    int64_t deadline_ms = gr_time_mono_ms() + timeout_ms;

    if (!srv->daemon)
        return;
    atomic_store(&srv->draining, true);
    atomic_store(&srv->ready, false);
    gr_wait__drain(); /* parked requests answer now (GR_WAKE_DRAIN), new waits end at once */
    for (;;) {
        unsigned seen;
        struct timespec until = abs_after_ms((int)(deadline_ms - gr_time_mono_ms()));

        pthread_mutex_lock(&srv->idle_mu);
        while (atomic_load(&srv->inflight) > 0 &&
               pthread_cond_timedwait(&srv->idle_cv, &srv->idle_mu, &until) == 0)
            ;
        pthread_mutex_unlock(&srv->idle_mu);
        if (gr_time_mono_ms() >= deadline_ms)
            break;
        seen = atomic_load(&srv->started);
        usleep(quiet_ms * 1000);
        if (atomic_load(&srv->inflight) == 0 && atomic_load(&srv->started) == seen)
            break;
    }
    if (atomic_load(&srv->inflight) > 0)
        gr_log_warn("drain deadline passed with requests in flight");
    MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
    gr_wait__stop();
}

void gr_http__release(struct gr_server *srv)
{
    gr_wait__stop();
    gr_free(srv->rm);
    srv->rm = NULL;
    pthread_mutex_destroy(&srv->idle_mu);
    pthread_cond_destroy(&srv->idle_cv);
}
