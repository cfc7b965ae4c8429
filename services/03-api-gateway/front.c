/*
 * front.c - the gateway's data plane (SERVICES §03, ARCHITECTURE §4): GATEWAY_THREADS workers,
 * each with its own epoll and its own SO_REUSEPORT listening socket on the public port. A client
 * connection goes through: head (h1, strict) → checks (path, CORS preflight, route, rate, edge
 * JWT, body limit) → body (buffered up to the route's max_body, chunked decoded) → upstream
 * attempt(s) over a per-worker keep-alive pool → response relayed back with its own framing.
 * Nothing blocks on another client's upstream; deadlines are checked by each worker's loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"
#include "gr/arena.h"
#include "gr/auth.h"
#include "gr/id.h"
#include "gr/log.h"
#include "gr/metrics.h"
#include "gr/ratelimit.h"
#include "gr/redis.h"
#include "gr/status.h"
#include "gr/time.h"
#include "gw.h"
#include "h1.h"

#define MAX_WORKERS   64
#define MAX_HEADERS   128
#define RESP_HEAD_MAX (16 * 1024)
#define RELAY_CAP     (64 * 1024)
#define POOL_MAX      64    /* idle upstream connections per worker */
#define POOL_IDLE_MS  30000 /* an idle pooled connection older than this is not reused */
#define TOKCACHE_N    256   /* verified tokens cached per worker */
#define IP_MAX        64
#define LOOP_TICK_MS  50

enum hkind { H_LISTEN, H_WAKE, H_CLIENT, H_UP };

struct handle {
    enum hkind kind;
    struct conn *c;
};

enum cstate {
    ST_HEAD,    /* reading a request head */
    ST_BODY,    /* reading its body */
    ST_UP,      /* connecting / writing the request upstream */
    ST_UP_HEAD, /* reading the upstream response head */
    ST_RELAY,   /* passing the response body through */
    ST_ERRWRITE /* writing a locally made response */
};

struct pooled {
    char host[GW_HOST_MAX];
    int port;
    int fd;
    int64_t since;
};

struct tokent {
    uint64_t h;
    char *tok;
    char *sub;
    char *roles;
    char *jti;
    long long exp;
};

struct worker {
    int idx;
    int ep;
    int lfd;
    int wfd;
    pthread_t thread;
    struct handle hl, hw;
    struct conn *conns; /* doubly linked */
    atomic_size_t nconns;
    struct pooled pool[POOL_MAX];
    size_t npool;
    struct tokent tok[TOKCACHE_N];
    bool listening;
};

struct conn {
    struct worker *w;
    struct conn *prev, *next;
    struct handle hc, hu;
    int fd;
    char ip[IP_MAX];
    enum cstate st;
    int64_t last_active;
    /* when the tick first saw a partial request head (0: none): a head must be complete within
     * client_timeout_ms however slowly it trickles in (slowloris) */
    int64_t head_since;
    /* request input */
    char *in;
    size_t in_len, in_cap;
    size_t consumed; /* bytes of @in used by the current request (head + raw body) */
    /* request being handled */
    char method[16];
    char path[256]; /* for problem documents (safe paths only) */
    bool is_head;
    bool client_close; /* close after this response */
    char reqid[GR_ID_LEN];
    char origin_ok[256]; /* the allowed Origin to echo, "" when none */
    const struct gw_route *route;
    struct gw_route self_route;
    bool self;
    struct gw_table *table;
    bool idempotent;
    int64_t cl;
    bool chunked;
    struct h1_chunked ch;
    char *body;
    size_t body_len;
    size_t body_raw; /* raw bytes of the body consumed from the input */
    /* upstream request */
    char *out;
    size_t out_len, out_off, out_cap;
    /* upstream attempt */
    int ufd;
    const struct gw_instance *inst;
    struct gw_instance self_inst;
    bool reused;
    bool fresh_retry_done;
    bool connecting;
    int attempts;
    bool tried[GW_MAX_INST];
    int64_t deadline;
    int64_t started;
    /* response */
    char *rb; /* relay buffer */
    size_t rb_len, rb_off;
    struct h1_body body_track;
    bool up_done;
    bool up_reusable;
    bool sent_any;
    int status;
};

static struct {
    struct gw_front_cfg cfg;
    char host[GW_HOST_MAX];
    char cors[1024];
    struct worker *w;
    int nw;
    int port;
    atomic_bool draining;
    atomic_bool stop;
    struct gr_tb *tb;
    struct gr_redis *redis;
    /* GATEWAY_RATE_IP / _USER, replaced at run time by gw_front_set_rates (hot reload from
     * 04): per_s in thousandths << 32 | burst, so a reader sees one consistent pair. */
    atomic_uint_fast64_t rate_ip, rate_user;
} F;

#define RATE_PER_S_MAX 4000000.0

static uint64_t rate_pack(struct gw_rate r)
{
    double per = r.per_s < 0 ? 0 : r.per_s > RATE_PER_S_MAX ? RATE_PER_S_MAX : r.per_s;
    uint64_t milli = (uint64_t)(per * 1000.0 + 0.5);

    if (per > 0 && milli == 0)
        milli = 1;
    return milli << 32 | (uint32_t)(r.burst < 0 ? 0 : r.burst);
}

static struct gw_rate rate_load(atomic_uint_fast64_t *v)
{
    uint64_t x = atomic_load_explicit(v, memory_order_relaxed);

    return (struct gw_rate){ .per_s = (double)(x >> 32) / 1000.0, .burst = (int)(x & 0xffffffffu) };
}

void gw_front_set_rates(const struct gw_rate *ip, const struct gw_rate *user)
{
    if (ip)
        atomic_store_explicit(&F.rate_ip, rate_pack(*ip), memory_order_relaxed);
    if (user)
        atomic_store_explicit(&F.rate_user, rate_pack(*user), memory_order_relaxed);
}

/* ---- small helpers ----------------------------------------------------------------------------
 */

static bool ieq(const char *a, size_t alen, const char *b)
{
    size_t bl = strlen(b);
    return alen == bl && strncasecmp(a, b, bl) == 0;
}

static bool iprefix(const char *a, size_t alen, const char *b)
{
    size_t bl = strlen(b);
    return alen >= bl && strncasecmp(a, b, bl) == 0;
}

static void out_put(struct conn *c, const char *s, size_t n)
{
    if (c->out_len + n + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n + 1)
            cap *= 2;
        c->out = gr_xrealloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

static void out_str(struct conn *c, const char *s)
{
    out_put(c, s, strlen(s));
}

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void ep_set(struct conn *c, int fd, struct handle *h, uint32_t ev, bool add)
{
    struct epoll_event e = { .events = ev, .data.ptr = h };
    (void)c;
    (void)epoll_ctl(c->w->ep, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &e);
}

static const char *method_label(const char *m)
{
    static const char *const known[] = {
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(m, known[i]) == 0)
            return known[i];
    return "OTHER";
}

static void count(struct conn *c, int status)
{
    char sb[8];
    const char *route = c->route ? c->route->prefix : "unmatched";
    struct gr_counter *ctr;

    /* The control plane's own server counts what the front forwards to it (c->self). */
    if (!F.cfg.metrics || c->self)
        return;
    snprintf(sb, sizeof(sb), "%d", status);
    ctr = gr_metrics_counter(F.cfg.metrics, "http_requests_total", "HTTP requests",
                             (const char *const[]){ "method", method_label(c->method), "route",
                                                    route, "status", sb, NULL });
    gr_counter_add(ctr, 1);
    if (c->started)
        gr_histogram_observe(gr_metrics_histogram(F.cfg.metrics, "http_request_duration_seconds",
                                                  "HTTP request latency",
                                                  (const char *const[]){ "route", route, NULL },
                                                  NULL, 0),
                             (double)(gr_time_mono_ms() - c->started) / 1000.0);
}

/* ---- connection life ------------------------------------------------------------------------ */

static void up_close(struct conn *c)
{
    if (c->ufd >= 0) {
        (void)epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->ufd, NULL);
        close(c->ufd);
        c->ufd = -1;
    }
}

static void req_reset(struct conn *c)
{
    if (c->table) {
        gw_table_put(c->table);
        c->table = NULL;
    }
    c->route = NULL;
    c->self = false;
    gr_free(c->body);
    c->body = NULL;
    c->body_len = c->body_raw = 0;
    c->out_len = c->out_off = 0;
    c->rb_len = c->rb_off = 0;
    c->attempts = 0;
    memset(c->tried, 0, sizeof(c->tried));
    c->inst = NULL;
    c->reused = c->fresh_retry_done = c->connecting = false;
    c->sent_any = c->up_done = c->up_reusable = false;
    c->status = 0;
    c->started = 0;
    c->origin_ok[0] = '\0';
    c->method[0] = '\0';
    c->path[0] = '\0';
}

static void conn_close(struct conn *c)
{
    struct worker *w = c->w;

    up_close(c);
    req_reset(c);
    (void)epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    gr_free(c->in);
    gr_free(c->out);
    gr_free(c->rb);
    gr_free(c);
}

/* Writes c->rb to the client; returns -1 when the connection was closed, 1 when blocked, 0 done. */
static int client_flush(struct conn *c)
{
    while (c->rb_off < c->rb_len) {
        ssize_t n = send(c->fd, c->rb + c->rb_off, c->rb_len - c->rb_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->rb_off += (size_t)n;
            c->sent_any = true;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_set(c, c->fd, &c->hc, EPOLLOUT, false);
            return 1;
        }
        conn_close(c);
        return -1;
    }
    c->rb_off = c->rb_len = 0;
    return 0;
}

static void next_request(struct conn *c);

/* The response to the client is complete and flushed. */
static void response_done(struct conn *c)
{
    if (c->client_close || atomic_load(&F.draining)) {
        conn_close(c);
        return;
    }
    /* keep the pipelined bytes that follow this request */
    if (c->consumed < c->in_len)
        memmove(c->in, c->in + c->consumed, c->in_len - c->consumed);
    c->in_len -= c->consumed;
    c->consumed = 0;
    req_reset(c);
    c->st = ST_HEAD;
    c->last_active = gr_time_mono_ms();
    ep_set(c, c->fd, &c->hc, EPOLLIN | EPOLLRDHUP, false);
    if (c->in_len > 0)
        next_request(c);
}

static void rb_put(struct conn *c, const char *s, size_t n)
{
    if (c->rb_len + n > RELAY_CAP + RESP_HEAD_MAX + 4096)
        n = RELAY_CAP + RESP_HEAD_MAX + 4096 - c->rb_len; /* never happens for local answers */
    memcpy(c->rb + c->rb_len, s, n);
    c->rb_len += n;
}

static void rb_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rb_printf(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    size_t room = RELAY_CAP + RESP_HEAD_MAX + 4096 - c->rb_len;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(c->rb + c->rb_len, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->rb_len += (size_t)n < room ? (size_t)n : room - 1;
}

static void cors_headers(struct conn *c)
{
    if (c->origin_ok[0])
        rb_printf(c, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n", c->origin_ok);
}

static const char *reason(int st)
{
    switch (st) {
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

static const char *slug(int st)
{
    switch (st) {
    case 400:
        return "malformed_request";
    case 401:
        return "unauthorized";
    case 404:
        return "not_found";
    case 408:
        return "request_timeout";
    case 413:
        return "payload_too_large";
    case 429:
        return "rate_limited";
    case 431:
        return "headers_too_large";
    case 502:
        return "bad_gateway";
    case 503:
        return "unavailable";
    case 504:
        return "timeout";
    case 505:
        return "http_version_not_supported";
    default:
        return "internal_error";
    }
}

/* Answers a problem+json locally; @close ends the connection afterwards. */
static void problem(struct conn *c, int status, const char *detail, bool close_after,
                    int retry_after)
{
    char body[1024];
    int n;

    up_close(c);
    if (!c->reqid[0])
        gr_id_new(c->reqid);
    {
        char d[160];
        size_t dl = strnlen(detail, sizeof(d) - 1);
        for (size_t k = 0; k < dl; k++) {
            char ch = detail[k];
            d[k] = ch == '"' || ch == '\\' || (unsigned char)ch < 0x20 ? '\'' : ch;
        }
        d[dl] = '\0';
        n = snprintf(body, sizeof(body),
                     "{\"type\":\"urn:gravity:problem:%s\",\"title\":\"%s\",\"status\":%d,"
                     "\"detail\":\"%s\",\"instance\":\"%s\",\"request_id\":\"%s\",\"errors\":[]}",
                     slug(status), reason(status), status, d, c->path[0] ? c->path : "/", c->reqid);
    }
    if (n < 0 || (size_t)n >= sizeof(body))
        n = 0;
    if (close_after)
        c->client_close = true;
    c->rb_len = c->rb_off = 0;
    rb_printf(c,
              "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\n"
              "X-Request-Id: %s\r\n",
              status, reason(status), n, c->reqid);
    if (retry_after > 0)
        rb_printf(c, "Retry-After: %d\r\n", retry_after);
    cors_headers(c);
    rb_printf(c, "%s\r\n", c->client_close ? "Connection: close\r\n" : "");
    if (!c->is_head)
        rb_put(c, body, (size_t)n);
    c->status = status;
    count(c, status);
    c->st = ST_ERRWRITE;
    if (client_flush(c) == 0)
        response_done(c);
}

/* ---- edge auth ------------------------------------------------------------------------------- */

static struct tokent *tok_lookup(struct worker *w, const char *tok, size_t len)
{
    uint64_t h = fnv(tok, len);
    struct tokent *e = &w->tok[h % TOKCACHE_N];

    if (e->tok && e->h == h && strlen(e->tok) == len && memcmp(e->tok, tok, len) == 0) {
        if (e->exp > gr_time_now_s())
            return e;
    }
    return NULL;
}

static void tok_free(struct tokent *e)
{
    gr_free(e->tok);
    gr_free(e->sub);
    gr_free(e->roles);
    gr_free(e->jti);
    memset(e, 0, sizeof(*e));
}

static struct tokent *tok_verify(struct worker *w, const char *tok, size_t len)
{
    struct tokent *e = tok_lookup(w, tok, len);
    struct gr_arena a;
    struct gr_principal p;
    char roles[2048] = "";
    size_t rl = 0;
    uint64_t h;

    if (e)
        return e;
    gr_arena_init(&a);
    if (gr_auth_verify(F.cfg.auth, &a, tok, len, &p) < 0) {
        gr_arena_release(&a);
        return NULL;
    }
    for (size_t i = 0; i < p.nroles; i++) {
        int n = snprintf(roles + rl, sizeof(roles) - rl, "%s%s", i ? "," : "", p.roles[i]);
        if (n < 0 || (size_t)n >= sizeof(roles) - rl)
            break;
        rl += (size_t)n;
    }
    h = fnv(tok, len);
    e = &w->tok[h % TOKCACHE_N];
    tok_free(e);
    e->h = h;
    e->tok = gr_xmalloc(len + 1);
    memcpy(e->tok, tok, len);
    e->tok[len] = '\0';
    e->sub = gr_xstrdup(p.sub);
    e->roles = gr_xstrdup(roles);
    e->jti = p.jti ? gr_xstrdup(p.jti) : NULL;
    e->exp = p.exp;
    gr_arena_release(&a);
    return e;
}

/* ---- upstream ------------------------------------------------------------------------------ */

static void start_attempt(struct conn *c);

static int pool_take(struct worker *w, const char *host, int port, int64_t now)
{
    for (size_t i = w->npool; i-- > 0;) {
        struct pooled *p = &w->pool[i];
        if (p->port == port && strcmp(p->host, host) == 0) {
            int fd = p->fd;
            bool stale = now - p->since > POOL_IDLE_MS;
            w->pool[i] = w->pool[--w->npool];
            if (stale) {
                close(fd);
                continue;
            }
            return fd;
        }
    }
    return -1;
}

static void pool_put(struct worker *w, const char *host, int port, int fd)
{
    if (atomic_load(&F.draining)) {
        close(fd);
        return;
    }
    if (w->npool == POOL_MAX) {
        close(w->pool[0].fd);
        w->pool[0] = w->pool[--w->npool];
    }
    struct pooled *p = &w->pool[w->npool++];
    snprintf(p->host, sizeof(p->host), "%s", host);
    p->port = port;
    p->fd = fd;
    p->since = gr_time_mono_ms();
}

static int up_connect(const char *host, int port)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
    struct addrinfo *ai = NULL;
    char ps[16];
    int fd, one = 1;

    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0) {
        /* a host name: resolved synchronously (static upstreams and registry use addresses) */
        hints.ai_flags = AI_NUMERICSERV;
        if (getaddrinfo(host, ps, &hints, &ai) != 0)
            return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return -1;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static bool retry_allowed(struct conn *c)
{
    return c->idempotent && c->attempts <= c->route->retries;
}

/* The attempt failed at transport level or with 502/503/504 before anything reached the client. */
static void attempt_failed(struct conn *c, const char *why, int status_if_final)
{
    up_close(c);
    if (!c->self && c->inst && c->inst->breaker)
        gw_breaker_result(c->inst->breaker, false, why);
    if (retry_allowed(c) && gr_time_mono_ms() < c->deadline) {
        start_attempt(c);
        return;
    }
    problem(c, status_if_final, why, false, 0);
}

static void start_attempt(struct conn *c)
{
    const struct gw_route *r = c->route;
    const struct gw_instance *inst = NULL;
    int64_t now = gr_time_mono_ms();

    if (c->self) {
        inst = &c->self_inst;
    } else {
        /* One round-robin draw, then a scan from there: drawing again per candidate lets
         * other workers' draws in between, so a request could meet the same (open-circuit)
         * instance every time and never see the healthy one. */
        unsigned start = r->ninst ? atomic_fetch_add((atomic_uint *)(uintptr_t)&r->rr, 1u) : 0;
        for (size_t k = 0; k < r->ninst; k++) {
            size_t i = (start + k) % r->ninst;
            if (c->tried[i])
                continue;
            if (r->inst[i].breaker && !gw_breaker_allow(r->inst[i].breaker))
                continue;
            c->tried[i] = true;
            inst = &r->inst[i];
            break;
        }
        if (!inst) {
            problem(c, 503,
                    c->attempts ? "every upstream instance failed"
                                : "no upstream instance available",
                    false, 0);
            return;
        }
    }
    c->attempts++;
    c->inst = inst;
    c->fresh_retry_done = false;
    c->deadline = now + r->timeout_ms;
    c->ufd = pool_take(c->w, inst->host, inst->port, now);
    c->reused = c->ufd >= 0;
    c->connecting = !c->reused;
    if (c->ufd < 0)
        c->ufd = up_connect(inst->host, inst->port);
    if (c->ufd < 0) {
        attempt_failed(c, "connect failed", 503);
        return;
    }
    c->out_off = 0;
    c->rb_len = c->rb_off = 0;
    c->st = ST_UP;
    ep_set(c, c->ufd, &c->hu, EPOLLOUT | EPOLLIN | EPOLLRDHUP, true);
}

/* A reused connection died before any response byte: one fresh connection, same instance. */
static bool fresh_retry(struct conn *c)
{
    if (!c->reused || c->fresh_retry_done)
        return false;
    up_close(c);
    c->fresh_retry_done = true;
    c->reused = false;
    c->connecting = true;
    c->ufd = up_connect(c->inst->host, c->inst->port);
    if (c->ufd < 0)
        return false;
    c->out_off = 0;
    c->rb_len = c->rb_off = 0;
    c->st = ST_UP;
    ep_set(c, c->ufd, &c->hu, EPOLLOUT | EPOLLIN | EPOLLRDHUP, true);
    return true;
}

static void up_writable(struct conn *c)
{
    if (c->connecting) {
        int err = 0;
        socklen_t el = sizeof(err);
        (void)getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
            attempt_failed(c, "connect refused", 503);
            return;
        }
        c->connecting = false;
    }
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->ufd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (fresh_retry(c))
            return;
        attempt_failed(c, "upstream reset", 502);
        return;
    }
    c->st = ST_UP_HEAD;
    ep_set(c, c->ufd, &c->hu, EPOLLIN | EPOLLRDHUP, false);
}

static bool hop_by_hop(const struct h1_header *h)
{
    static const char *const hop[] = { "connection", "keep-alive",   "proxy-connection",
                                       "upgrade",    "x-request-id", "proxy-authenticate" };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (ieq(h->name, h->name_len, hop[i]))
            return true;
    return false;
}

static void relay_continue(struct conn *c);

static void up_readable_head(struct conn *c)
{
    struct h1_header hs[MAX_HEADERS];
    struct h1_response resp = { .headers = hs, .max_headers = MAX_HEADERS };
    char head[RESP_HEAD_MAX];
    size_t hl = 0;
    bool eof = false;
    int rc;

    for (;;) {
        ssize_t n = recv(c->ufd, c->rb + c->rb_len, RESP_HEAD_MAX - c->rb_len, 0);
        if (n > 0) {
            c->rb_len += (size_t)n;
            if (c->rb_len < RESP_HEAD_MAX)
                continue;
            break;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EOF or reset */
        if (c->rb_len == 0) {
            if (fresh_retry(c))
                return;
            attempt_failed(c, "upstream closed before responding", 502);
            return;
        }
        eof = true;
        break;
    }
    rc = h1_parse_response(c->rb, c->rb_len, RESP_HEAD_MAX, c->is_head, &resp);
    if (rc == H1_NEED_MORE) {
        if (c->rb_len >= RESP_HEAD_MAX || eof) {
            attempt_failed(c, eof ? "upstream closed mid-head" : "upstream response head too large",
                           502);
            return;
        }
        return;
    }
    if (rc != H1_OK) {
        attempt_failed(c, "bad upstream response", 502);
        return;
    }
    if ((resp.status == 502 || resp.status == 503 || resp.status == 504) && retry_allowed(c)) {
        char why[8];
        snprintf(why, sizeof(why), "%d", resp.status);
        attempt_failed(c, why, resp.status);
        return;
    }
    if (!c->self && c->inst->breaker) {
        bool bad = resp.status == 502 || resp.status == 503 || resp.status == 504;
        char why[8];
        snprintf(why, sizeof(why), "%d", resp.status);
        gw_breaker_result(c->inst->breaker, !bad, bad ? why : NULL);
    }
    c->status = resp.status;
    h1_body_init(&c->body_track, &resp);
    c->up_reusable = resp.keep_alive;
    if (resp.framing == H1_BODY_CLOSE)
        c->client_close = true;
        /* rebuild the head */
#define HP(...)                                                                                    \
    do {                                                                                           \
        int n_ = snprintf(head + hl, sizeof(head) - hl, __VA_ARGS__);                              \
        if (n_ < 0 || (size_t)n_ >= sizeof(head) - hl) {                                           \
            attempt_failed(c, "upstream response head too large", 502);                            \
            return;                                                                                \
        }                                                                                          \
        hl += (size_t)n_;                                                                          \
    } while (0)
    HP("HTTP/1.1 %d %.*s\r\n", resp.status, (int)resp.reason_len, resp.reason);
    for (size_t i = 0; i < resp.nheaders; i++) {
        if (hop_by_hop(&hs[i]))
            continue;
        if (c->origin_ok[0] && iprefix(hs[i].name, hs[i].name_len, "access-control-allow-origin"))
            continue;
        HP("%.*s: %.*s\r\n", (int)hs[i].name_len, hs[i].name, (int)hs[i].value_len, hs[i].value);
    }
    HP("X-Request-Id: %s\r\n", c->reqid);
    if (c->origin_ok[0])
        HP("Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n", c->origin_ok);
    if (c->client_close || atomic_load(&F.draining))
        HP("Connection: close\r\n");
    HP("\r\n");
#undef HP
    {
        size_t rest = c->rb_len - resp.head_len, used = 0;
        int brc;
        /* body bytes that came with the head: track and keep them after the new head */
        memmove(c->rb + hl, c->rb + resp.head_len, rest);
        memcpy(c->rb, head, hl);
        brc = rest ? h1_body_feed(&c->body_track, c->rb + hl, rest, &used)
                   : (c->body_track.done || resp.framing == H1_BODY_NONE ? H1_OK : H1_NEED_MORE);
        if (resp.framing == H1_BODY_NONE)
            brc = H1_OK, used = 0;
        if (brc < 0) {
            c->up_reusable = false;
            c->client_close = true;
            used = rest;
            brc = H1_OK;
        }
        c->rb_len = hl + used;
        if (brc == H1_OK) {
            c->up_done = true;
            if (used != rest)
                c->up_reusable = false;
        }
    }
    c->st = ST_RELAY;
    c->last_active = gr_time_mono_ms();
    count(c, c->status);
    relay_continue(c);
}

static void up_finish(struct conn *c)
{
    if (c->ufd < 0)
        return;
    if (c->up_reusable && !c->client_close) {
        (void)epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->ufd, NULL);
        pool_put(c->w, c->inst->host, c->inst->port, c->ufd);
        c->ufd = -1;
    } else {
        up_close(c);
    }
}

static void relay_continue(struct conn *c)
{
    for (;;) {
        int r = client_flush(c);
        if (r < 0)
            return;
        if (r > 0) {
            if (c->ufd >= 0)
                ep_set(c, c->ufd, &c->hu, 0, false);
            return;
        }
        if (c->up_done) {
            if (c->up_reusable)
                up_finish(c);
            else
                up_close(c);
            response_done(c);
            return;
        }
        ssize_t n = recv(c->ufd, c->rb, RELAY_CAP, 0);
        if (n > 0) {
            c->last_active = gr_time_mono_ms();
            size_t used = 0;
            int brc = h1_body_feed(&c->body_track, c->rb, (size_t)n, &used);
            c->rb_len = used;
            c->rb_off = 0;
            if (brc == H1_OK) {
                c->up_done = true;
                if (used != (size_t)n)
                    c->up_reusable = false;
            } else if (brc < 0) {
                c->up_reusable = false;
                c->client_close = true;
                c->up_done = true;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_set(c, c->fd, &c->hc, EPOLLRDHUP, false);
            ep_set(c, c->ufd, &c->hu, EPOLLIN | EPOLLRDHUP, false);
            return;
        }
        /* upstream EOF */
        c->up_reusable = false;
        if (h1_body_eof(&c->body_track) != H1_OK)
            c->client_close = true; /* truncated: the client must see the connection end */
        c->up_done = true;
    }
}

/* ---- request handling ------------------------------------------------------------------------ */

static bool traceparent_valid(const char *v, size_t n)
{
    /* 00-<32 hex>-<16 hex>-<2 hex> */
    static const char hex[] = "0123456789abcdef";
    if (n != 55 || v[0] != '0' || v[1] != '0' || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (i == 2 || i == 35 || i == 52)
            continue;
        if (!strchr(hex, v[i]) || v[i] == '\0')
            return false;
    }
    return true;
}

static void gen_traceparent(char out[64])
{
    char a[GR_ID_LEN], b[GR_ID_LEN], t[33];
    size_t k = 0;

    gr_id_new(a);
    gr_id_new(b);
    for (size_t i = 0; a[i] && k < 32; i++)
        if (a[i] != '-')
            t[k++] = a[i];
    t[k] = '\0';
    /* span id: the random tail of the second id */
    snprintf(out, 64, "00-%s-%.4s%.12s-01", t, b + 19, b + 24);
}

static bool origin_allowed(const char *o, size_t n)
{
    const char *p = F.cors;

    if (!p[0] || n == 0 || n >= 256)
        return false;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        while (l && *p == ' ')
            p++, l--;
        if ((l == 1 && *p == '*') || (l == n && strncmp(p, o, n) == 0))
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

static void body_ready(struct conn *c);

/*
 * The per-IP rate of a request on route @r (path @path of @len bytes, no query): the
 * route's "rate" from the table when it has one, else what its rate_policy names:
 *   "N-per-s", "N-per-min", "N-per-h"  N requests in that period on the whole route (a burst
 *                                      of N);
 *   "login"                            5 per minute on {prefix}/login[/] only (SERVICES §03:
 *                                      login is capped at 5/min per IP); the route's other
 *                                      paths are not limited by it.
 * Unknown names limit nothing. per_s 0 = no limit.
 */
static struct gw_rate route_rate(const struct gw_route *r, const char *path, size_t len)
{
    static const struct gw_rate none = { 0, 0 };
    struct gw_rate out = r->rate;
    const char *p = r->rate_policy;
    char *end = NULL;
    long n;

    if (out.per_s > 0 || !p[0])
        return out;
    if (strcmp(p, "login") == 0) {
        size_t pl = len;
        if (pl > r->prefix_len + 6 && path[pl - 1] == '/')
            pl--; /* "/login/" is the same endpoint to a lenient router */
        if (pl != r->prefix_len + 6 || memcmp(path, r->prefix, r->prefix_len) != 0 ||
            memcmp(path + r->prefix_len, "/login", 6) != 0)
            return none;
        p = "5-per-min";
    }
    if (p[0] < '1' || p[0] > '9')
        return none;
    n = strtol(p, &end, 10);
    if (n < 1 || n > 1000000000L || !end)
        return none;
    if (strcmp(end, "-per-s") == 0)
        out.per_s = (double)n;
    else if (strcmp(end, "-per-min") == 0)
        out.per_s = (double)n / 60.0;
    else if (strcmp(end, "-per-h") == 0)
        out.per_s = (double)n / 3600.0;
    else
        return none;
    out.burst = (int)n;
    return out;
}

static void handle_head(struct conn *c, struct h1_request *rq)
{
    static const char *const self_prefixes[] = GW_SELF_PREFIXES;
    const char *auth = NULL, *rid = NULL, *tp = NULL, *xff = NULL, *origin = NULL;
    size_t auth_len = 0, rid_len = 0, tp_len = 0, xff_len = 0, origin_len = 0;
    bool acr_method = false, idem_key = false, expect_continue = false;
    const char *apikey = NULL;
    size_t apikey_len = 0;
    char key_owner[GW_NAME_MAX] = "";
    struct tokent *tok = NULL;
    char tpbuf[64];
    int retry = 0;

    c->started = gr_time_mono_ms();
    /* The head is used whatever the answer: a local answer on a kept-alive connection must
     * not leave it in the input, or it would be parsed (and answered) again and again. */
    c->consumed = rq->head_len;
    snprintf(c->method, sizeof(c->method), "%.*s", (int)rq->method_len, rq->method);
    c->is_head = strcmp(c->method, "HEAD") == 0;
    c->client_close = !rq->keep_alive;
    for (size_t i = 0; i < rq->nheaders; i++) {
        const struct h1_header *h = &rq->headers[i];
        if (ieq(h->name, h->name_len, "authorization"))
            auth = h->value, auth_len = h->value_len;
        else if (ieq(h->name, h->name_len, "x-request-id"))
            rid = h->value, rid_len = h->value_len;
        else if (ieq(h->name, h->name_len, "traceparent"))
            tp = h->value, tp_len = h->value_len;
        else if (ieq(h->name, h->name_len, "x-forwarded-for"))
            xff = h->value, xff_len = h->value_len;
        else if (ieq(h->name, h->name_len, "origin"))
            origin = h->value, origin_len = h->value_len;
        else if (ieq(h->name, h->name_len, "access-control-request-method"))
            acr_method = true;
        else if (ieq(h->name, h->name_len, "idempotency-key"))
            idem_key = true;
        else if (ieq(h->name, h->name_len, "x-api-key"))
            apikey = h->value, apikey_len = h->value_len;
        else if (ieq(h->name, h->name_len, "expect") && ieq(h->value, h->value_len, "100-continue"))
            expect_continue = true;
    }
    if (rid && gr_id_valid(rid, rid_len))
        snprintf(c->reqid, sizeof(c->reqid), "%.*s", (int)rid_len, rid);
    else
        gr_id_new(c->reqid);
    if (origin && origin_allowed(origin, origin_len))
        snprintf(c->origin_ok, sizeof(c->origin_ok), "%.*s", (int)origin_len, origin);
    if (!h1_path_safe(rq->path, rq->path_len)) {
        problem(c, 400, "unsafe request path", true, 0);
        return;
    }
    if (rq->path_len < sizeof(c->path))
        snprintf(c->path, sizeof(c->path), "%.*s", (int)rq->path_len, rq->path);
    if (strcmp(c->method, "OPTIONS") == 0 && origin && acr_method) {
        c->rb_len = c->rb_off = 0;
        rb_printf(c, "HTTP/1.1 204 No Content\r\nX-Request-Id: %s\r\n", c->reqid);
        if (c->origin_ok[0])
            rb_printf(c,
                      "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n"
                      "Access-Control-Allow-Methods: GET, HEAD, POST, PUT, PATCH, DELETE\r\n"
                      "Access-Control-Allow-Headers: Authorization, Content-Type, "
                      "Idempotency-Key, X-Request-Id, If-Match, traceparent\r\n"
                      "Access-Control-Max-Age: 600\r\n",
                      c->origin_ok);
        rb_printf(c, "\r\n");
        c->status = 204;
        count(c, 204);
        c->st = ST_ERRWRITE;
        if (rq->content_length > 0 || rq->chunked)
            c->client_close = true;
        if (client_flush(c) == 0)
            response_done(c);
        return;
    }
    /* route */
    for (size_t i = 0; i < sizeof(self_prefixes) / sizeof(self_prefixes[0]); i++) {
        size_t pl = strlen(self_prefixes[i]);
        if (rq->path_len >= pl && memcmp(rq->path, self_prefixes[i], pl) == 0 &&
            (rq->path_len == pl || rq->path[pl] == '/')) {
            c->self = true;
            memset(&c->self_route, 0, sizeof(c->self_route));
            snprintf(c->self_route.prefix, sizeof(c->self_route.prefix), "%s", self_prefixes[i]);
            c->self_route.auth = GW_AUTH_PUBLIC;
            c->self_route.timeout_ms = 30000;
            c->self_route.retries = 0;
            c->self_route.max_body = 1024 * 1024;
            memset(&c->self_inst, 0, sizeof(c->self_inst));
            snprintf(c->self_inst.host, sizeof(c->self_inst.host), "127.0.0.1");
            c->self_inst.port = F.cfg.self_port;
            c->route = &c->self_route;
            break;
        }
    }
    if (!c->route) {
        c->table = gw_table_get();
        c->route = c->table ? gw_table_match(c->table, rq->path, rq->path_len) : NULL;
        if (!c->route) {
            problem(c, 404, "no route for this path", rq->content_length > 0 || rq->chunked, 0);
            return;
        }
    }
    /* rate limits: per client IP on every path, then per IP on the route (its own budget) */
    struct gw_rate rate_ip = rate_load(&F.rate_ip);
    if (rate_ip.per_s > 0 && F.tb) {
        char key[IP_MAX + 16];
        snprintf(key, sizeof(key), "gw|ip|%s", c->ip);
        if (!gr_tb_take(F.tb, key, rate_ip.per_s, rate_ip.burst, &retry)) {
            problem(c, 429, "rate limit exceeded", true, retry);
            return;
        }
    }
    if (!c->self && F.tb) {
        struct gw_rate rr = route_rate(c->route, rq->path, rq->path_len);
        if (rr.per_s > 0) {
            char key[IP_MAX + GW_PREFIX_MAX + 16];
            snprintf(key, sizeof(key), "gw|r|%s|%s", c->route->prefix, c->ip);
            if (!gr_tb_take(F.tb, key, rr.per_s, rr.burst, &retry)) {
                problem(c, 429, "rate limit exceeded", true, retry);
                return;
            }
        }
    }
    /* edge auth (the control plane checks its own tokens) */
    if (!c->self) {
        if (apikey && !gw_apikey_lookup(apikey, apikey_len, key_owner, sizeof(key_owner))) {
            problem(c, 401, "invalid or revoked API key", true, 0);
            return;
        }
        if (auth) {
            if (auth_len <= 7 || !iprefix(auth, auth_len, "bearer ") || !F.cfg.auth) {
                problem(c, 401, "a bearer token is required", true, 0);
                return;
            }
            tok = tok_verify(c->w, auth + 7, auth_len - 7);
            if (!tok || (tok->jti && gw_deny_has(tok->jti))) {
                problem(c, 401, "invalid or revoked token", true, 0);
                return;
            }
        } else if (c->route->auth == GW_AUTH_JWT) {
            problem(c, 401, "a bearer token is required", true, 0);
            return;
        }
    }
    /* per token subject, across every route; on the gateway's own paths a token the front can
     * verify counts too (a bad one is the control plane's to refuse) */
    struct gw_rate rate_user = rate_load(&F.rate_user);
    if (rate_user.per_s > 0 && F.tb) {
        const struct tokent *ut = tok;
        if (!ut && c->self && auth && auth_len > 7 && iprefix(auth, auth_len, "bearer ") &&
            F.cfg.auth) {
            ut = tok_verify(c->w, auth + 7, auth_len - 7);
            if (ut && ut->jti && gw_deny_has(ut->jti))
                ut = NULL;
        }
        /* without a token, a valid API key's owner is the caller */
        const char *who = ut && ut->sub && ut->sub[0] ? ut->sub : key_owner[0] ? key_owner : NULL;
        if (who) {
            char key[GR_RL_KEY_MAX];
            snprintf(key, sizeof(key), "gw|u|%s", who);
            if (!gr_tb_take(F.tb, key, rate_user.per_s, rate_user.burst, &retry)) {
                problem(c, 429, "rate limit exceeded", true, retry);
                return;
            }
        }
    }
    /* body limits */
    if (rq->content_length > 0 && (uint64_t)rq->content_length > c->route->max_body) {
        problem(c, 413, "request body too large", true, 0);
        return;
    }
    c->idempotent = strcmp(c->method, "GET") == 0 || c->is_head || strcmp(c->method, "PUT") == 0 ||
                    strcmp(c->method, "DELETE") == 0 ||
                    (strcmp(c->method, "POST") == 0 && idem_key);
    /* the upstream head */
    c->out_len = c->out_off = 0;
    out_put(c, rq->method, rq->method_len);
    out_str(c, " ");
    out_put(c, rq->target, rq->target_len);
    out_str(c, " HTTP/1.1\r\n");
    for (size_t i = 0; i < rq->nheaders; i++) {
        const struct h1_header *h = &rq->headers[i];
        if (ieq(h->name, h->name_len, "connection") || ieq(h->name, h->name_len, "keep-alive") ||
            ieq(h->name, h->name_len, "proxy-connection") || ieq(h->name, h->name_len, "te") ||
            ieq(h->name, h->name_len, "transfer-encoding") ||
            ieq(h->name, h->name_len, "content-length") || ieq(h->name, h->name_len, "upgrade") ||
            ieq(h->name, h->name_len, "trailer") || ieq(h->name, h->name_len, "expect") ||
            ieq(h->name, h->name_len, "x-request-id") || ieq(h->name, h->name_len, "traceparent") ||
            ieq(h->name, h->name_len, "x-forwarded-for") ||
            ieq(h->name, h->name_len, "x-api-key") || iprefix(h->name, h->name_len, "x-user-"))
            continue;
        out_put(c, h->name, h->name_len);
        out_str(c, ": ");
        out_put(c, h->value, h->value_len);
        out_str(c, "\r\n");
    }
    if (!rq->host)
        out_str(c, "Host: gateway\r\n");
    out_str(c, "X-Request-Id: ");
    out_str(c, c->reqid);
    out_str(c, "\r\ntraceparent: ");
    if (tp && traceparent_valid(tp, tp_len)) {
        out_put(c, tp, tp_len);
    } else {
        gen_traceparent(tpbuf);
        out_str(c, tpbuf);
    }
    out_str(c, "\r\nX-Forwarded-For: ");
    if (xff && xff_len) {
        out_put(c, xff, xff_len);
        out_str(c, ", ");
    }
    out_str(c, c->ip);
    out_str(c, "\r\n");
    if (tok) {
        out_str(c, "X-User-Id: ");
        out_str(c, tok->sub);
        out_str(c, "\r\n");
        if (tok->roles[0]) {
            out_str(c, "X-User-Roles: ");
            out_str(c, tok->roles);
            out_str(c, "\r\n");
        }
    } else if (key_owner[0]) {
        out_str(c, "X-User-Id: ");
        out_str(c, key_owner);
        out_str(c, "\r\n");
    }
    /* the body follows; Content-Length is added when it is complete */
    c->cl = rq->content_length;
    c->chunked = rq->chunked;
    c->consumed = rq->head_len;
    c->body_len = c->body_raw = 0;
    if (c->chunked)
        h1_chunked_init(&c->ch, c->route->max_body);
    if (c->chunked || c->cl > 0) {
        size_t cap = c->chunked ? 4096 : (size_t)c->cl;
        c->body = gr_xmalloc(cap ? cap : 1);
    }
    c->st = ST_BODY;
    /* the body is buffered here, so the gateway answers the client's Expect itself */
    if (expect_continue && rq->minor == 1 && (c->chunked || c->cl > 0) &&
        c->in_len == c->consumed) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        (void)!send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL);
    }
    body_ready(c);
}

/* Moves body bytes from the input buffer; sends the request when the body is complete. */
static void body_ready(struct conn *c)
{
    char *avail = c->in + c->consumed;
    size_t n = c->in_len - c->consumed;
    bool done = false;

    if (c->chunked) {
        for (;;) {
            size_t used = 0, cap = c->route->max_body + 1;
            size_t bcap = c->body_len + 4096;
            int rc;
            if (bcap > cap)
                bcap = cap;
            c->body = gr_xrealloc(c->body, bcap ? bcap : 1);
            rc = h1_chunked_feed(&c->ch, avail, n, &used, c->body, bcap, &c->body_len);
            c->consumed += used;
            avail += used;
            n -= used;
            if (rc == H1_OK) {
                done = true;
                break;
            }
            if (rc < 0) {
                problem(c, h1_err_status(rc), h1_strerror(rc), true, 0);
                return;
            }
            if (n == 0)
                break;
        }
    } else if (c->cl > 0) {
        size_t want = (size_t)c->cl - c->body_len;
        size_t take = n < want ? n : want;
        memcpy(c->body + c->body_len, avail, take);
        c->body_len += take;
        c->consumed += take;
        done = c->body_len == (size_t)c->cl;
    } else {
        done = true;
    }
    if (!done) {
        /* the input buffer is reused for the rest of the body */
        if (c->consumed == c->in_len) {
            c->in_len = 0;
            c->consumed = 0;
        }
        return;
    }
    {
        char cl[48];
        if (c->body_len > 0 || c->cl >= 0 || c->chunked) {
            snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", c->body_len);
            out_str(c, cl);
        }
        out_str(c, "\r\n");
        if (c->body_len)
            out_put(c, c->body, c->body_len);
    }
    ep_set(c, c->fd, &c->hc, EPOLLRDHUP, false);
    start_attempt(c);
}

static void next_request(struct conn *c)
{
    struct h1_header hs[MAX_HEADERS];
    struct h1_request rq = { .headers = hs, .max_headers = MAX_HEADERS };
    int rc = h1_parse_request(c->in, c->in_len, F.cfg.max_header, &rq);

    if (rc == H1_NEED_MORE) {
        if (c->in_len >= F.cfg.max_header)
            problem(c, 431, "request head too large", true, 0);
        return;
    }
    if (rc < 0) {
        int st = h1_err_status(rc);
        problem(c, st ? st : 400, h1_strerror(rc), true, 0);
        return;
    }
    handle_head(c, &rq);
}

static void client_readable(struct conn *c)
{
    for (;;) {
        size_t room;
        ssize_t n;
        if (c->st == ST_HEAD && c->in_len >= F.cfg.max_header)
            break;
        room = c->in_cap - c->in_len;
        if (room == 0)
            break;
        n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->last_active = gr_time_mono_ms();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_close(c);
        return;
    }
    if (c->st == ST_HEAD)
        next_request(c);
    else if (c->st == ST_BODY)
        body_ready(c);
}

/* ---- worker loop ------------------------------------------------------------------------------
 */

static void accept_all(struct worker *w)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int one = 1;
        int fd = accept4(w->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct conn *c;

        if (fd < 0)
            return;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = gr_xcalloc(1, sizeof(*c));
        c->w = w;
        c->fd = fd;
        c->ufd = -1;
        c->hc.kind = H_CLIENT;
        c->hc.c = c;
        c->hu.kind = H_UP;
        c->hu.c = c;
        c->in_cap = F.cfg.max_header + 4096;
        c->in = gr_xmalloc(c->in_cap);
        c->rb = gr_xmalloc(RELAY_CAP + RESP_HEAD_MAX + 4096);
        c->last_active = gr_time_mono_ms();
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip, sizeof(c->ip));
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->ip, sizeof(c->ip));
        else
            snprintf(c->ip, sizeof(c->ip), "unknown");
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        w->nconns++;
        ep_set(c, fd, &c->hc, EPOLLIN | EPOLLRDHUP, true);
    }
}

static void on_event(struct worker *w, struct handle *h, uint32_t ev)
{
    struct conn *c = h->c;

    if (h->kind == H_LISTEN) {
        accept_all(w);
        return;
    }
    if (h->kind == H_WAKE) {
        uint64_t v;
        (void)!read(w->wfd, &v, sizeof(v));
        return;
    }
    if (h->kind == H_CLIENT) {
        if (c->st == ST_HEAD || c->st == ST_BODY) {
            client_readable(c);
            return;
        }
        if (c->st == ST_ERRWRITE) {
            if (ev & (EPOLLERR | EPOLLHUP)) {
                conn_close(c);
                return;
            }
            if (client_flush(c) == 0)
                response_done(c);
            return;
        }
        if (c->st == ST_RELAY && (ev & EPOLLOUT)) {
            relay_continue(c);
            return;
        }
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            /* the client went away while we were waiting on the upstream */
            if (c->st == ST_RELAY || c->inst)
                c->up_reusable = false;
            conn_close(c);
        }
        return;
    }
    /* upstream */
    if (c->st == ST_UP) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            up_writable(c);
        else if (ev & (EPOLLIN | EPOLLRDHUP)) {
            /* data or EOF before we finished writing */
            if (c->connecting) {
                up_writable(c);
                return;
            }
            c->st = ST_UP_HEAD;
            up_readable_head(c);
        }
        return;
    }
    if (c->st == ST_UP_HEAD) {
        up_readable_head(c);
        return;
    }
    if (c->st == ST_RELAY)
        relay_continue(c);
}

static void tick(struct worker *w)
{
    int64_t now = gr_time_mono_ms();
    bool draining = atomic_load(&F.draining);

    if (draining && w->listening) {
        (void)epoll_ctl(w->ep, EPOLL_CTL_DEL, w->lfd, NULL);
        close(w->lfd);
        w->lfd = -1;
        w->listening = false;
    }
    for (struct conn *c = w->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->st != ST_HEAD || c->in_len == 0)
            c->head_since = 0;
        else if (c->head_since == 0)
            c->head_since = now;
        if (c->st == ST_HEAD) {
            if ((draining && c->in_len == 0) || now - c->last_active > F.cfg.client_timeout_ms ||
                (c->head_since != 0 && now - c->head_since > F.cfg.client_timeout_ms))
                conn_close(c);
        } else if (c->st == ST_BODY) {
            if (now - c->last_active > F.cfg.client_timeout_ms)
                problem(c, 408, "request body too slow", true, 0);
        } else if (c->st == ST_UP || c->st == ST_UP_HEAD) {
            if (now >= c->deadline) {
                if (!c->self && c->inst && c->inst->breaker)
                    gw_breaker_result(c->inst->breaker, false, "timeout");
                problem(c, 504, "upstream timed out", false, 0);
            }
        } else if (c->st == ST_RELAY) {
            /* a transfer stuck on either side (no upstream byte for that long) */
            if (now - c->last_active > c->route->timeout_ms + F.cfg.client_timeout_ms)
                conn_close(c);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[128];

    while (!atomic_load(&F.stop)) {
        int n = epoll_wait(w->ep, evs, 128, LOOP_TICK_MS);
        for (int i = 0; i < n; i++)
            on_event(w, evs[i].data.ptr, evs[i].events);
        tick(w);
    }
    while (w->conns)
        conn_close(w->conns);
    for (size_t i = 0; i < w->npool; i++)
        close(w->pool[i].fd);
    w->npool = 0;
    for (size_t i = 0; i < TOKCACHE_N; i++)
        tok_free(&w->tok[i]);
    return NULL;
}

static int listen_sock(const char *host, int port, int *bound, char *err, size_t errlen)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *ai = NULL;
    char ps[16];
    int fd, one = 1;

    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0) {
        snprintf(err, errlen, "HOST %s: cannot resolve", host);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "PORT %d: cannot listen: %s", port, strerror(errno));
        close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            *bound = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                   : ((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return fd;
}

int gw_front_start(const struct gw_front_cfg *cfg, char *err, size_t errlen)
{
    int port;

    struct rlimit nofile;

    /* Every client and upstream connection is a descriptor: allow as many as the hard limit
     * (1,024 by default is below what a slow-client flood holds open). */
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &nofile);
    }
    memset(&F, 0, sizeof(F));
    F.cfg = *cfg;
    gw_front_set_rates(&cfg->rate_ip, &cfg->rate_user);
    snprintf(F.host, sizeof(F.host), "%s", cfg->host ? cfg->host : "127.0.0.1");
    snprintf(F.cors, sizeof(F.cors), "%s", cfg->cors_origins ? cfg->cors_origins : "");
    F.cfg.host = F.host;
    F.cfg.cors_origins = F.cors;
    if (F.cfg.max_header == 0)
        F.cfg.max_header = 16 * 1024;
    if (F.cfg.client_timeout_ms <= 0)
        F.cfg.client_timeout_ms = 10000;
    F.nw = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (F.nw < 1)
        F.nw = 1;
    if (F.nw > MAX_WORKERS)
        F.nw = MAX_WORKERS;
    atomic_init(&F.draining, false);
    atomic_init(&F.stop, false);
    if (cfg->redis_url) {
        char rerr[256];
        if (gr_redis_new(cfg->redis_url, &F.redis, rerr, sizeof(rerr)) < 0) {
            snprintf(err, errlen, "%s", rerr);
            return GR_ECONFIG;
        }
    }
    F.tb = gr_tb_new(100000, F.redis);
    F.w = gr_xcalloc((size_t)F.nw, sizeof(*F.w));
    port = cfg->port;
    for (int i = 0; i < F.nw; i++) {
        struct worker *w = &F.w[i];
        struct epoll_event e = { .events = EPOLLIN };
        int bound = port;

        w->idx = i;
        w->lfd = listen_sock(F.host, port, &bound, err, errlen);
        if (w->lfd < 0) {
            for (int j = 0; j < i; j++) {
                close(F.w[j].lfd);
                close(F.w[j].ep);
                close(F.w[j].wfd);
            }
            gr_free(F.w);
            F.w = NULL;
            gr_tb_free(F.tb);
            return GR_EIO;
        }
        port = bound;
        w->listening = true;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->hl.kind = H_LISTEN;
        w->hw.kind = H_WAKE;
        e.data.ptr = &w->hl;
        (void)epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &e);
        e.data.ptr = &w->hw;
        (void)epoll_ctl(w->ep, EPOLL_CTL_ADD, w->wfd, &e);
    }
    F.port = port;
    for (int i = 0; i < F.nw; i++)
        pthread_create(&F.w[i].thread, NULL, worker_main, &F.w[i]);
    return 0;
}

int gw_front_port(void)
{
    return F.port;
}

static size_t live_conns(void)
{
    size_t n = 0;
    for (int i = 0; i < F.nw; i++)
        n += atomic_load(&F.w[i].nconns);
    return n;
}

void gw_front_drain(int timeout_ms)
{
    int64_t end = gr_time_mono_ms() + timeout_ms;

    if (!F.w)
        return;
    atomic_store(&F.draining, true);
    while (gr_time_mono_ms() < end && live_conns() > 0) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

void gw_front_stop(void)
{
    if (!F.w)
        return;
    atomic_store(&F.draining, true);
    atomic_store(&F.stop, true);
    for (int i = 0; i < F.nw; i++) {
        uint64_t one = 1;
        (void)!write(F.w[i].wfd, &one, sizeof(one));
    }
    for (int i = 0; i < F.nw; i++) {
        pthread_join(F.w[i].thread, NULL);
        if (F.w[i].lfd >= 0)
            close(F.w[i].lfd);
        close(F.w[i].ep);
        close(F.w[i].wfd);
    }
    gr_free(F.w);
    F.w = NULL;
    gr_tb_free(F.tb);
    F.tb = NULL;
    if (F.redis)
        gr_redis_free(F.redis);
    F.redis = NULL;
}
