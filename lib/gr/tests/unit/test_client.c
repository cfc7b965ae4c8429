/*
 * test_client.c - gr/client.h against in-test HTTP servers (libmicrohttpd, 127.0.0.1, free
 * ports): two upstream instances that echo what they received and count the TCP connections
 * they accepted, and a registry double that plays 02's instance list. Covered: the env
 * override, the default URL, discovery with a dead instance (calls keep succeeding), round
 * robin, the deadline (GR_ETIMEOUT), an oversized answer, the one retry on another instance
 * (idempotent only, except for a refused connection), headers passed on (token, request id,
 * traceparent, Idempotency-Key), the problem slug, metrics, connection reuse (N sequential
 * calls = 1 accepted connection) and handles freed at thread exit. Prints a small bench:
 * calls/s over keep-alive vs a new connection each time (no timed assertion).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <microhttpd.h>

#include "gr/arena.h"
#include "gr/client.h"
#include "gr/metrics.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define BIG (2 * 1024 * 1024)

struct srv {
    struct MHD_Daemon *d;
    int port;
    char name[16];
    atomic_bool flaky;   /* POST/GET /flaky: drop the connection without an answer */
    atomic_int conns;    /* TCP connections accepted */
    atomic_int reqs;     /* requests answered or dropped */
    pthread_mutex_t mu;  /* registry double: its list */
    char list[1024];     /* JSON of GET .../instances */
    atomic_int lookups;  /* registry double: lookups */
    char last_auth[128]; /* under mu */
};

static struct srv A, B, R;
static char big[BIG];

static void on_conn(void *cls, struct MHD_Connection *c, void **socket_context,
                    enum MHD_ConnectionNotificationCode code)
{
    struct srv *s = cls;

    (void)c;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&s->conns, 1);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)(uintptr_t)body,
                                                             MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;

    MHD_add_response_header(r, "Content-Type", "application/json");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *hdr(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);

    return v != NULL ? v : "";
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    static int first;
    struct srv *s = cls;
    char body[2048];

    (void)version;
    (void)upload;
    if (*con_cls == NULL) {
        *con_cls = &first;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        *upload_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&s->reqs, 1);
    if (strncmp(url, "/api/v1/registry/services/", 26) == 0) {
        atomic_fetch_add(&s->lookups, 1);
        pthread_mutex_lock(&s->mu);
        snprintf(body, sizeof(body), "%s", s->list);
        pthread_mutex_unlock(&s->mu);
        return reply(c, 200, body);
    }
    if (strcmp(url, "/slow") == 0) {
        struct timespec ts = { 0, 600 * 1000000L };

        nanosleep(&ts, NULL);
    }
    if (strcmp(url, "/flaky") == 0 && atomic_load(&s->flaky))
        return MHD_NO; /* closes the connection: the client receives nothing */
    if (strcmp(url, "/big") == 0) {
        struct MHD_Response *r =
            MHD_create_response_from_buffer(sizeof(big), big, MHD_RESPMEM_PERSISTENT);
        enum MHD_Result ret = MHD_queue_response(c, 200, r);

        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(url, "/problem") == 0)
        return reply(c, 409, "{\"type\":\"urn:gravity:problem:cart_merged\",\"status\":409}");
    pthread_mutex_lock(&s->mu);
    snprintf(s->last_auth, sizeof(s->last_auth), "%s", hdr(c, "Authorization"));
    pthread_mutex_unlock(&s->mu);
    snprintf(body, sizeof(body),
             "{\"server\":\"%s\",\"method\":\"%s\",\"rid\":\"%s\",\"tp\":\"%s\",\"idem\":\"%s\","
             "\"ct\":\"%s\"}",
             s->name, method, hdr(c, "X-Request-Id"), hdr(c, "traceparent"),
             hdr(c, "Idempotency-Key"), hdr(c, "Content-Type"));
    return reply(c, 200, body);
}

static void srv_start(struct srv *s, const char *name)
{
    const union MHD_DaemonInfo *info;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->list, sizeof(s->list), "{\"data\":[]}");
    s->d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                         NULL, handle, s, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_CONNECTION,
                         on_conn, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    assert_non_null(s->d);
    info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(info);
    s->port = info->port;
}

static void srv_stop(struct srv *s)
{
    MHD_stop_daemon(s->d);
    pthread_mutex_destroy(&s->mu);
}

static char *url_of(const struct srv *s, char *buf, size_t n)
{
    snprintf(buf, n, "http://127.0.0.1:%d", s->port);
    return buf;
}

/* A port nothing listens on (bound, then closed). */
static int dead_port(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static void set_list(int p1, int p2)
{
    pthread_mutex_lock(&R.mu);
    if (p2 > 0)
        snprintf(R.list, sizeof(R.list),
                 "{\"data\":[{\"address\":\"127.0.0.1\",\"port\":%d,\"status\":\"passing\"},"
                 "{\"address\":\"127.0.0.1\",\"port\":%d,\"status\":\"passing\"}],"
                 "\"has_more\":false}",
                 p1, p2);
    else
        snprintf(R.list, sizeof(R.list),
                 "{\"data\":[{\"address\":\"127.0.0.1\",\"port\":%d}],\"has_more\":false}", p1);
    pthread_mutex_unlock(&R.mu);
}

static const char *server_of(const struct gr_call_res *res)
{
    return json_string_value(json_object_get(res->json, "server"));
}

static int setup(void **state)
{
    (void)state;
    srv_start(&A, "A");
    srv_start(&B, "B");
    srv_start(&R, "R");
    memset(big, 'x', sizeof(big));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    srv_stop(&A);
    srv_stop(&B);
    srv_stop(&R);
    return 0;
}

static struct gr_client *client_with(const char *discovery, struct gr_metrics *m)
{
    struct gr_client *c = NULL;
    struct gr_client_opts o = {
        .discovery_url = discovery, .metrics = m, .user_agent = "gravity-test", .refresh_ms = 60000
    };

    assert_int_equal(gr_client_new(&o, &c), 0);
    return c;
}

static void test_bad_config(void **state)
{
    struct gr_client *c = NULL;
    struct gr_client_opts o = { .discovery_url = "ftp://x" };
    struct gr_peer *p = NULL;
    char err[200];

    (void)state;
    assert_int_equal(gr_client_new(&o, &c), GR_ECONFIG);
    assert_null(c);
    c = client_with(NULL, NULL);
    setenv("GRT_BAD_URL", "not a url", 1);
    assert_int_equal(gr_client_peer(c, "svc", "GRT_BAD_URL", NULL, &p, err, sizeof(err)),
                     GR_ECONFIG);
    assert_non_null(strstr(err, "GRT_BAD_URL"));
    unsetenv("GRT_BAD_URL");
    setenv("GRT_BAD_URL", "http://", 1);
    assert_int_equal(gr_client_peer(c, "svc", "GRT_BAD_URL", NULL, &p, err, sizeof(err)),
                     GR_ECONFIG);
    unsetenv("GRT_BAD_URL");
    /* A one-letter host is a host; trailing slashes go. */
    setenv("GRT_SHORT_URL", "http://a/", 1);
    assert_int_equal(gr_client_peer(c, "short", "GRT_SHORT_URL", NULL, &p, err, sizeof(err)), 0);
    assert_true(gr_peer_overridden(p));
    unsetenv("GRT_SHORT_URL");
    assert_int_equal(gr_client_peer(c, "Bad_Name", NULL, NULL, &p, err, sizeof(err)), GR_EINVAL);
    /* No URL at all: unavailable. */
    assert_int_equal(gr_client_peer(c, "nowhere", NULL, NULL, &p, err, sizeof(err)), 0);
    {
        struct gr_arena a;
        struct gr_call_res res;

        gr_arena_init(&a);
        assert_int_equal(
            gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res),
            GR_EUNAVAIL);
        gr_arena_release(&a);
    }
    gr_client_free(c);
}

/* The variable wins over the registry; without both, the default URL. */
static void test_env_override_and_default(void **state)
{
    char ua[64], ub[64], ur[64], err[200];
    struct gr_client *c;
    struct gr_peer *p1 = NULL, *p2 = NULL, *again = NULL;
    struct gr_call_res res;
    struct gr_arena a;

    (void)state;
    gr_arena_init(&a);
    set_list(B.port, 0);
    setenv("GRT_PRODUCT_URL", url_of(&A, ua, sizeof(ua)), 1);
    c = client_with(url_of(&R, ur, sizeof(ur)), NULL);
    assert_int_equal(gr_client_peer(c, "product-service", "GRT_PRODUCT_URL",
                                    url_of(&B, ub, sizeof(ub)), &p1, err, sizeof(err)),
                     0);
    assert_true(gr_peer_overridden(p1));
    assert_int_equal(
        gr_client_peer(c, "product-service", "GRT_PRODUCT_URL", NULL, &again, err, sizeof(err)), 0);
    assert_ptr_equal(p1, again);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            gr_client_call(p1, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
        assert_int_equal(res.status, 200);
        assert_string_equal(server_of(&res), "A");
    }
    assert_int_equal(atomic_load(&R.lookups), 0); /* overridden: the registry is not asked */
    unsetenv("GRT_PRODUCT_URL");
    gr_client_free(c);

    /* No DISCOVERY_URL, no variable: the default. */
    c = client_with(NULL, NULL);
    assert_int_equal(gr_client_peer(c, "order-service", "GRT_ORDER_URL", url_of(&B, ub, sizeof(ub)),
                                    &p2, err, sizeof(err)),
                     0);
    assert_false(gr_peer_overridden(p2));
    assert_int_equal(
        gr_client_call(p2, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
    assert_string_equal(server_of(&res), "B");
    gr_client_free(c);
    gr_arena_release(&a);
}

/* Two instances from the registry, one of them dead: every call succeeds, round robin over the
 * live ones, and the registry is asked again only when the list is stale. */
static void test_discovery(void **state)
{
    char ur[64], err[200];
    struct gr_client *c;
    struct gr_client_opts o;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    int na = 0, nb = 0, lookups0;

    (void)state;
    gr_arena_init(&a);
    /* One dead, one live; POST without a key goes elsewhere after a refused connection. */
    set_list(dead_port(), A.port);
    c = client_with(url_of(&R, ur, sizeof(ur)), NULL);
    assert_int_equal(
        gr_client_peer(c, "inventory-service", "GRT_INVENTORY_URL", NULL, &p, err, sizeof(err)), 0);
    lookups0 = atomic_load(&R.lookups);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(
            gr_client_call(
                p, &a,
                &(struct gr_call){ .method = i % 2 ? "GET" : "POST", .path = "/x", .body = "{}" },
                &res),
            0);
        assert_int_equal(res.status, 200);
        assert_string_equal(server_of(&res), "A");
    }
    assert_int_equal(atomic_load(&R.lookups) - lookups0, 1); /* cached (refresh_ms 60 s) */
    gr_client_free(c);

    /* Two live: round robin; a short refresh_ms makes the client ask the registry again. */
    set_list(A.port, B.port);
    o = (struct gr_client_opts){ .discovery_url = ur, .refresh_ms = 50 };
    assert_int_equal(gr_client_new(&o, &c), 0);
    assert_int_equal(gr_client_peer(c, "inventory-service", NULL, NULL, &p, err, sizeof(err)), 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(
            gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
        na += strcmp(server_of(&res), "A") == 0;
        nb += strcmp(server_of(&res), "B") == 0;
    }
    assert_int_equal(na, 5);
    assert_int_equal(nb, 5);
    lookups0 = atomic_load(&R.lookups);
    set_list(B.port, 0);
    {
        int64_t end = gr_time_mono_ms() + 5000;
        bool only_b = false;

        while (!only_b && gr_time_mono_ms() < end) {
            assert_int_equal(
                gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
            only_b = atomic_load(&R.lookups) > lookups0 && strcmp(server_of(&res), "B") == 0;
        }
        assert_true(only_b);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(
                gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
            assert_string_equal(server_of(&res), "B");
        }
    }
    gr_client_free(c);
    gr_arena_release(&a);
}

/* A broken connection (no answer) is retried on the other instance only when idempotent. */
static void test_retry(void **state)
{
    char ur[64], err[200];
    struct gr_client *c;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    int fails = 0, ok = 0;

    (void)state;
    gr_arena_init(&a);
    atomic_store(&A.flaky, true);
    set_list(A.port, B.port);
    c = client_with(url_of(&R, ur, sizeof(ur)), NULL);
    assert_int_equal(gr_client_peer(c, "payment-service", NULL, NULL, &p, err, sizeof(err)), 0);
    for (int i = 0; i < 4; i++) {
        /* GET, PUT and POST with a key: each call succeeds (at B when A dropped it). */
        static const char *const m[] = { "GET", "PUT", "DELETE", "POST" };

        assert_int_equal(gr_client_call(p, &a,
                                        &(struct gr_call){ .method = m[i],
                                                           .path = "/flaky",
                                                           .idem_key = i == 3 ? "k-1" : NULL },
                                        &res),
                         0);
        assert_string_equal(server_of(&res), "B");
    }
    /* POST without a key: round robin sends one of two to A, which drops it: not retried. */
    for (int i = 0; i < 2; i++) {
        int rc = gr_client_call(
            p, &a, &(struct gr_call){ .method = "POST", .path = "/flaky", .body = "{}" }, &res);

        if (rc == GR_EUNAVAIL)
            fails++;
        else if (rc == 0 && strcmp(server_of(&res), "B") == 0)
            ok++;
    }
    assert_int_equal(fails, 1);
    assert_int_equal(ok, 1);
    atomic_store(&A.flaky, false);
    gr_client_free(c);
    gr_arena_release(&a);
}

static void test_deadline_and_cap(void **state)
{
    char ua[64], err[200];
    struct gr_client *c;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    struct gr_metrics *m = NULL;
    int64_t t0;

    (void)state;
    gr_arena_init(&a);
    assert_int_equal(gr_metrics_new(&m), 0);
    c = client_with(NULL, m);
    assert_int_equal(
        gr_client_peer(c, "tax-service", NULL, url_of(&A, ua, sizeof(ua)), &p, err, sizeof(err)),
        0);
    t0 = gr_time_mono_ms();
    assert_int_equal(
        gr_client_call(
            p, &a, &(struct gr_call){ .method = "GET", .path = "/slow", .timeout_ms = 150 }, &res),
        GR_ETIMEOUT);
    assert_true(gr_time_mono_ms() - t0 < 550);
    /* Over the default 1 MiB: refused; with a bigger cap: fine. */
    assert_int_equal(
        gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/big" }, &res),
        GR_EUNAVAIL);
    assert_int_equal(
        gr_client_call(
            p, &a,
            &(struct gr_call){ .method = "GET", .path = "/big", .resp_max = 4 * 1024 * 1024 },
            &res),
        0);
    assert_int_equal(res.status, 200);
    assert_null(res.json); /* not JSON */
    /* A problem answer: its slug. */
    assert_int_equal(
        gr_client_call(p, &a, &(struct gr_call){ .method = "POST", .path = "/problem" }, &res), 0);
    assert_int_equal(res.status, 409);
    assert_string_equal(res.problem, "cart_merged");
#define CNT(o)                                                                                     \
    gr_counter_get(                                                                                \
        gr_metrics_counter(m, "upstream_requests_total", NULL,                                     \
                           (const char *[]){ "peer", "tax-service", "outcome", o, NULL }))
    assert_int_equal(CNT("timeout"), 1);
    assert_int_equal(CNT("too_large"), 1);
    assert_int_equal(CNT("2xx"), 1);
    assert_int_equal(CNT("4xx"), 1);
#undef CNT
    gr_client_free(c);
    gr_metrics_free(m);
    gr_arena_release(&a);
}

/* What is sent: service token by default, a given bearer, request id, traceparent, key. */
static void test_headers(void **state)
{
    char ua[64], err[200], auth[128];
    struct gr_client *c;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    struct gr_svctoken *t = NULL;
    struct gr_svctoken_opts so = { .token = "svc-token-123" };
    json_t *body = json_pack("{s:i}", "n", 1);

    (void)state;
    gr_arena_init(&a);
    assert_int_equal(gr_svctoken_new(&so, &t, err, sizeof(err)), 0);
    gr_svctoken_set_default(t);
    c = client_with(NULL, NULL);
    assert_int_equal(gr_client_peer(c, "discount-service", NULL, url_of(&A, ua, sizeof(ua)), &p,
                                    err, sizeof(err)),
                     0);
    assert_int_equal(gr_client_call(p, &a,
                                    &(struct gr_call){ .method = "POST",
                                                       .path = "/x",
                                                       .json = body,
                                                       .idem_key = "key-7",
                                                       .request_id = "rid-1",
                                                       .traceparent = "00-aa-bb-01" },
                                    &res),
                     0);
    assert_string_equal(json_string_value(json_object_get(res.json, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(res.json, "rid")), "rid-1");
    assert_string_equal(json_string_value(json_object_get(res.json, "tp")), "00-aa-bb-01");
    assert_string_equal(json_string_value(json_object_get(res.json, "idem")), "key-7");
    assert_string_equal(json_string_value(json_object_get(res.json, "ct")), "application/json");
    pthread_mutex_lock(&A.mu);
    snprintf(auth, sizeof(auth), "%s", A.last_auth);
    pthread_mutex_unlock(&A.mu);
    assert_string_equal(auth, "Bearer svc-token-123");
    assert_int_equal(gr_client_call(p, &a,
                                    &(struct gr_call){ .method = "GET",
                                                       .path = "/x",
                                                       .auth = GR_CALL_BEARER,
                                                       .bearer = "user-t" },
                                    &res),
                     0);
    pthread_mutex_lock(&A.mu);
    snprintf(auth, sizeof(auth), "%s", A.last_auth);
    pthread_mutex_unlock(&A.mu);
    assert_string_equal(auth, "Bearer user-t");
    assert_int_equal(
        gr_client_call(p, &a,
                       &(struct gr_call){ .method = "GET", .path = "/x", .auth = GR_CALL_BEARER },
                       &res),
        0);
    pthread_mutex_lock(&A.mu);
    snprintf(auth, sizeof(auth), "%s", A.last_auth);
    pthread_mutex_unlock(&A.mu);
    assert_string_equal(auth, "");
    /* A key with a line break is refused before anything is sent. */
    assert_int_equal(
        gr_client_call(
            p, &a,
            &(struct gr_call){ .method = "POST", .path = "/x", .idem_key = "a\r\nX-Evil: 1" },
            &res),
        GR_EINVAL);
    gr_client_free(c);
    gr_svctoken_set_default(NULL);
    gr_svctoken_free(t);
    json_decref(body);
    gr_arena_release(&a);
}

struct worker {
    struct gr_client *c;
    struct gr_peer *p;
    int n, ok;
    long connects;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct gr_arena a;
    struct gr_call_res res;

    gr_arena_init(&a);
    for (int i = 0; i < w->n; i++)
        if (gr_client_call(w->p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res) ==
                0 &&
            res.status == 200)
            w->ok++;
    w->connects = gr_client_thread_connects(w->c);
    gr_arena_release(&a);
    return NULL; /* the thread's handle is freed by the key's destructor */
}

/* N sequential calls from one thread: one TCP connection; threads: one each, freed at exit. */
static void test_reuse(void **state)
{
    char ub[64], err[200];
    struct gr_client *c;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    struct worker w[4];
    pthread_t th[4];
    int c0;

    (void)state;
    gr_arena_init(&a);
    c = client_with(NULL, NULL);
    gr_client_set_default(c);
    assert_int_equal(
        gr_client_peer(c, "order-service", NULL, url_of(&B, ub, sizeof(ub)), &p, err, sizeof(err)),
        0);
    c0 = atomic_load(&B.conns);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(
            gr_client_call(
                p, &a,
                &(struct gr_call){ .method = i % 2 ? "GET" : "POST", .path = "/x", .body = "{}" },
                &res),
            0);
        assert_int_equal(res.status, 200);
    }
    assert_int_equal(atomic_load(&B.conns) - c0, 1);
    assert_int_equal(gr_client_thread_connects(c), 1);
    c0 = atomic_load(&B.conns);
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){ .c = gr_client_default(), .p = p, .n = 25 };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].ok, 25);
        assert_int_equal(w[i].connects, 1);
    }
    assert_int_equal(atomic_load(&B.conns) - c0, 4);
    gr_client_set_default(NULL);
    gr_client_free(c);
    gr_arena_release(&a);
}

static size_t discard(char *ptr, size_t size, size_t n, void *arg)
{
    (void)ptr;
    (void)arg;
    return size * n;
}

/* Not an assertion: prints calls/s with keep-alive and with a new handle per call. */
static void test_bench(void **state)
{
    char ub[64], url[96], err[200];
    struct gr_client *c;
    struct gr_peer *p = NULL;
    struct gr_call_res res;
    struct gr_arena a;
    int n = 2000, m = 300;
    int64_t t0, t1, t2;

    (void)state;
    c = client_with(NULL, NULL);
    assert_int_equal(
        gr_client_peer(c, "bench-service", NULL, url_of(&B, ub, sizeof(ub)), &p, err, sizeof(err)),
        0);
    t0 = gr_time_mono_ns();
    for (int i = 0; i < n; i++) {
        gr_arena_init(&a);
        assert_int_equal(
            gr_client_call(p, &a, &(struct gr_call){ .method = "GET", .path = "/x" }, &res), 0);
        gr_arena_release(&a);
    }
    t1 = gr_time_mono_ns();
    snprintf(url, sizeof(url), "%s/x", ub);
    for (int i = 0; i < m; i++) {
        CURL *h = curl_easy_init();

        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        assert_int_equal(curl_easy_perform(h), CURLE_OK);
        curl_easy_cleanup(h);
    }
    t2 = gr_time_mono_ns();
    printf("bench: gr_client keep-alive %.0f calls/s, new connection per call %.0f calls/s "
           "(one thread, in-test server)\n",
           n / ((double)(t1 - t0) / 1e9), m / ((double)(t2 - t1) / 1e9));
    gr_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_env_override_and_default),
        cmocka_unit_test(test_discovery),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_deadline_and_cap),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_bench),
    };

    curl_global_init(CURL_GLOBAL_DEFAULT);
    return cmocka_run_group_tests(tests, setup, teardown);
}
