/*
 * test_svctoken.c - unit tests for gr/svctoken.h, the service token provider, against a tiny
 * in-test HTTP server that plays the auth service's POST /api/v1/auth/token: the request a
 * provider sends (form body, escaped credentials), renewal at 80 % of expires_in while other
 * threads read the token, an auth that starts late, early renewal on a refusal and its rate
 * limit, answers that must be rejected, expiry, a fast free while auth hangs, the static
 * SERVICE_TOKEN mode, configuration errors that name the variable without echoing secrets,
 * and a log that never shows the secret. Waits are on the provider's generation (or on a
 * counter with a deadline), never fixed sleeps.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
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

#include "gr/arena.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define CLIENT "gravity-platform"
/* 40 bytes, with characters that must be form-encoded. */
#define SECRET     "s3cr+t&x=y%z/AAAAAAAAAAAAAAAAAAAAAAAAAAA"
#define SECRET_ENC "s3cr%2Bt%26x%3Dy%25z%2FAAAAAAAAAAAAAAAAAAAAAAAAAAA"
#define SEQ_MAX    12

/* ---- the auth stub ----------------------------------------------------------------------- */

struct answer {
    int status;
    const char *body; /* NULL: accept the request and never answer */
};

struct stub {
    int fd;
    int port;
    int wake[2]; /* written by stub_stop */
    pthread_t th;
    bool running;
    pthread_mutex_t mu;
    struct answer seq[SEQ_MAX]; /* answers in order; the last one repeats */
    int nseq;
    int served;          /* requests read */
    char last[8192 + 1]; /* the last request, head and body */
};

/* Reads one request (head, then Content-Length bytes of body) into s->last. */
static void read_request(struct stub *s, int c)
{
    char buf[8192 + 1];
    size_t got = 0, need = 0;
    char *end = NULL;

    while (got < sizeof(buf) - 1) {
        ssize_t n = read(c, buf + got, sizeof(buf) - 1 - got);

        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (!end && (end = strstr(buf, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(buf, "Content-Length:");

            need = (size_t)(end - buf) + 4 + (cl ? strtoul(cl + 15, NULL, 10) : 0);
        }
        if (end && got >= need)
            break;
    }
    buf[got] = '\0';
    pthread_mutex_lock(&s->mu);
    memcpy(s->last, buf, got + 1);
    pthread_mutex_unlock(&s->mu);
}

static void *stub_main(void *arg)
{
    struct stub *s = arg;

    for (;;) {
        struct pollfd pf[2] = { { .fd = s->fd, .events = POLLIN },
                                { .fd = s->wake[0], .events = POLLIN } };
        struct answer a;
        char head[256];
        int c, hn;

        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (!(pf[0].revents & POLLIN))
            continue;
        c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        read_request(s, c);
        pthread_mutex_lock(&s->mu);
        a = s->seq[s->served < s->nseq ? s->served : s->nseq - 1];
        s->served++;
        pthread_mutex_unlock(&s->mu);
        if (!a.body) {
            /* Hang: hold the connection until the test stops the stub. */
            struct pollfd w = { .fd = s->wake[0], .events = POLLIN };

            (void)poll(&w, 1, 10000);
            close(c);
            break;
        }
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\nConnection: close\r\n\r\n",
                      a.status, strlen(a.body));
        /* MSG_NOSIGNAL: a client that gave up on a large answer must not kill the test. */
        if (send(c, head, (size_t)hn, MSG_NOSIGNAL) == hn)
            (void)!send(c, a.body, strlen(a.body), MSG_NOSIGNAL);
        close(c);
    }
    return NULL;
}

/* Binds a port; connections are refused until stub_listen. */
static void stub_init(struct stub *s)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof(sa);

    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    assert_int_equal(pipe2(s->wake, O_CLOEXEC), 0);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &sl), 0);
    s->port = ntohs(sa.sin_port);
}

static void stub_answer(struct stub *s, int status, const char *body)
{
    assert_true(s->nseq < SEQ_MAX);
    s->seq[s->nseq].status = status;
    s->seq[s->nseq].body = body;
    s->nseq++;
}

static void stub_listen(struct stub *s)
{
    assert_int_equal(listen(s->fd, 16), 0);
    assert_int_equal(pthread_create(&s->th, NULL, stub_main, s), 0);
    s->running = true;
}

static int stub_served(struct stub *s)
{
    int n;

    pthread_mutex_lock(&s->mu);
    n = s->served;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void stub_stop(struct stub *s)
{
    if (s->running) {
        assert_int_equal(write(s->wake[1], "x", 1), 1);
        assert_int_equal(pthread_join(s->th, NULL), 0);
    }
    close(s->fd);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
}

static void opts_for(struct gr_svctoken_opts *o, const struct stub *s, char *url, size_t n)
{
    memset(o, 0, sizeof(*o));
    snprintf(url, n, "http://127.0.0.1:%d/", s->port); /* the trailing slash is dropped */
    o->auth_url = url;
    o->client_id = CLIENT;
    o->client_secret = SECRET;
    o->retry_min_ms = 10;
    o->retry_max_ms = 40;
}

static struct gr_svctoken *start(const struct gr_svctoken_opts *o)
{
    struct gr_svctoken *t = NULL;
    char err[256] = "";

    assert_int_equal(gr_svctoken_new(o, &t, err, sizeof(err)), 0);
    assert_non_null(t);
    return t;
}

static void assert_token(struct gr_svctoken *t, const char *want)
{
    char buf[GR_SVCTOKEN_MAX + 1];

    assert_int_equal(gr_svctoken_copy(t, buf, sizeof(buf)), (int)strlen(want));
    assert_string_equal(buf, want);
}

/* Polls @t's request counter until it reaches @n (the provider has no event for a failure). */
static bool requests_reach(struct gr_svctoken *t, unsigned n, int timeout_ms)
{
    int64_t end = gr_time_mono_ms() + timeout_ms;
    struct timespec ts = { 0, 2 * 1000 * 1000 };

    while (gr_svctoken_requests(t) < n) {
        if (gr_time_mono_ms() > end)
            return false;
        nanosleep(&ts, NULL);
    }
    return true;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_static(void **state)
{
    struct gr_svctoken_opts o = { .token = "header.payload.sig" };
    struct gr_svctoken *t = start(&o);
    struct gr_arena a = GR_ARENA_INIT;
    char small[4];
    uint64_t gen = 0;

    (void)state;
    assert_token(t, "header.payload.sig");
    assert_int_equal(gr_svctoken_copy(t, small, sizeof(small)), GR_ETOOBIG);
    assert_string_equal(gr_svctoken_get(t, &a), "header.payload.sig");
    assert_int_equal(gr_svctoken_wait(t, 0, 0, &gen), 0);
    assert_int_equal(gen, 1);
    assert_int_equal(gr_svctoken_wait(t, 1, 10, &gen), GR_ETIMEOUT);
    gr_svctoken_refused(t, "header.payload.sig"); /* nothing to renew */
    assert_token(t, "header.payload.sig");
    assert_int_equal(gr_svctoken_requests(t), 0);
    gr_svctoken_set_default(t);
    assert_ptr_equal(gr_svctoken_default(), t);
    gr_svctoken_set_default(NULL);
    assert_null(gr_svctoken_default());
    gr_arena_release(&a);
    gr_svctoken_free(t);
    gr_svctoken_free(NULL);
}

/* gr_svctoken_new must fail with GR_ECONFIG, a message naming @var, and never @hidden. */
static void expect_config_error(const struct gr_svctoken_opts *o, const char *var,
                                const char *hidden)
{
    struct gr_svctoken *t = (struct gr_svctoken *)&t;
    char err[256] = "";

    assert_int_equal(gr_svctoken_new(o, &t, err, sizeof(err)), GR_ECONFIG);
    assert_null(t);
    assert_non_null(strstr(err, var));
    assert_null(strchr(err, '\n'));
    if (hidden)
        assert_null(strstr(err, hidden));
}

static void test_config_errors(void **state)
{
    struct gr_svctoken_opts o;

    (void)state;
    o = (struct gr_svctoken_opts){ .token = "has space" };
    expect_config_error(&o, "SERVICE_TOKEN", "has space");
    o = (struct gr_svctoken_opts){ .token = "bad\r\nX-Injected: 1" };
    expect_config_error(&o, "SERVICE_TOKEN", "Injected");
    o = (struct gr_svctoken_opts){ .auth_url = "http://a",
                                   .client_id = "Bad!",
                                   .client_secret = SECRET };
    expect_config_error(&o, "SERVICE_CLIENT_ID", SECRET);
    o = (struct gr_svctoken_opts){ .auth_url = "http://a",
                                   .client_id = "ab",
                                   .client_secret = SECRET };
    expect_config_error(&o, "SERVICE_CLIENT_ID", NULL);
    o = (struct gr_svctoken_opts){ .auth_url = "http://a",
                                   .client_id = CLIENT,
                                   .client_secret = "tooshort-secret" };
    expect_config_error(&o, "SERVICE_CLIENT_SECRET", "tooshort");
    o = (struct gr_svctoken_opts){ .auth_url = "http://a", .client_id = CLIENT };
    expect_config_error(&o, "SERVICE_CLIENT_SECRET", NULL);
    o = (struct gr_svctoken_opts){ .auth_url = "http://a", .client_secret = SECRET };
    expect_config_error(&o, "SERVICE_CLIENT_ID", SECRET);
    o = (struct gr_svctoken_opts){ .auth_url = "ftp://a",
                                   .client_id = CLIENT,
                                   .client_secret = SECRET };
    expect_config_error(&o, "AUTH_URL", SECRET);
    o = (struct gr_svctoken_opts){ .auth_url = "http://",
                                   .client_id = CLIENT,
                                   .client_secret = SECRET };
    expect_config_error(&o, "AUTH_URL", NULL);
    o = (struct gr_svctoken_opts){ .auth_url = "http://a b",
                                   .client_id = CLIENT,
                                   .client_secret = SECRET };
    expect_config_error(&o, "AUTH_URL", NULL);
}

static void clear_env(void)
{
    unsetenv("SERVICE_TOKEN");
    unsetenv("SERVICE_CLIENT_ID");
    unsetenv("SERVICE_CLIENT_SECRET");
    unsetenv("AUTH_URL");
}

static void test_from_env(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t = NULL;
    char err[256] = "";

    (void)state;
    clear_env();
    assert_int_equal(gr_svctoken_from_env(&t, err, sizeof(err)), 0);
    assert_null(t);
    assert_int_equal(gr_svctoken_opts_from_env(&o, err, sizeof(err)), 0);
    assert_string_equal(o.auth_url, GR_SVCTOKEN_AUTH_URL);

    setenv("SERVICE_CLIENT_ID", CLIENT, 1);
    assert_int_equal(gr_svctoken_from_env(&t, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "SERVICE_CLIENT_SECRET"));
    setenv("SERVICE_CLIENT_SECRET", SECRET, 1);
    setenv("AUTH_URL", "mailto:x", 1);
    assert_int_equal(gr_svctoken_from_env(&t, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "AUTH_URL"));
    assert_null(strstr(err, SECRET));
    setenv("AUTH_URL", "http://127.0.0.1:9/auth", 1);
    assert_int_equal(gr_svctoken_opts_from_env(&o, err, sizeof(err)), 0);
    assert_string_equal(o.client_id, CLIENT);
    assert_string_equal(o.auth_url, "http://127.0.0.1:9/auth");

    /* SERVICE_TOKEN wins over the client pair, and nothing is fetched. */
    setenv("SERVICE_TOKEN", "static.token", 1);
    assert_int_equal(gr_svctoken_from_env(&t, err, sizeof(err)), 0);
    assert_non_null(t);
    assert_token(t, "static.token");
    assert_int_equal(gr_svctoken_requests(t), 0);
    gr_svctoken_free(t);
    clear_env();
}

static void test_fetch(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct gr_arena a = GR_ARENA_INIT;
    struct stub s;
    char url[64];
    uint64_t gen = 0;

    (void)state;
    stub_init(&s);
    stub_answer(&s, 200,
                "{\"access_token\":\"tok-1\",\"token_type\":\"Bearer\",\"expires_in\":3600}");
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));
    t = start(&o);
    assert_int_equal(gr_svctoken_wait(t, 0, 5000, &gen), 0);
    assert_int_equal(gen, 1);
    assert_token(t, "tok-1");
    assert_string_equal(gr_svctoken_get(t, &a), "tok-1");
    assert_int_equal(gr_svctoken_requests(t), 1);
    pthread_mutex_lock(&s.mu);
    assert_non_null(strstr(s.last, "POST /api/v1/auth/token HTTP/1.1\r\n"));
    assert_non_null(strcasestr(s.last, "\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
    assert_non_null(strstr(s.last, "grant_type=client_credentials"));
    assert_non_null(strstr(s.last, "client_id=" CLIENT));
    assert_non_null(strstr(s.last, "client_secret=" SECRET_ENC));
    assert_null(strcasestr(s.last, "\r\nAuthorization:"));
    pthread_mutex_unlock(&s.mu);
    gr_svctoken_free(t);
    stub_stop(&s);
    assert_int_equal(s.served, 1);
    gr_arena_release(&a);
}

struct reader {
    struct gr_svctoken *t;
    atomic_bool *stop;
    unsigned reads, torn;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    char buf[GR_SVCTOKEN_MAX + 1];
    struct gr_arena a = GR_ARENA_INIT;

    while (!atomic_load(r->stop)) {
        int n = gr_svctoken_copy(r->t, buf, sizeof(buf));
        const char *s = gr_svctoken_get(r->t, &a);

        if (n > 0 && strcmp(buf, "tok-1") != 0 && strcmp(buf, "tok-2") != 0)
            r->torn++;
        if (s && strcmp(s, "tok-1") != 0 && strcmp(s, "tok-2") != 0)
            r->torn++;
        r->reads++;
        gr_arena_release(&a);
    }
    return NULL;
}

static void test_renew_at_80_percent(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct reader r[4];
    pthread_t th[4];
    atomic_bool stop;
    struct stub s;
    char url[64];
    uint64_t gen1 = 0, gen2 = 0;
    int rc1, rc2;
    int64_t t0, t2;

    (void)state;
    atomic_init(&stop, false);
    stub_init(&s);
    stub_answer(&s, 200, "{\"access_token\":\"tok-1\",\"token_type\":\"bearer\",\"expires_in\":1}");
    stub_answer(&s, 200,
                "{\"access_token\":\"tok-2\",\"token_type\":\"Bearer\",\"expires_in\":60}");
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));
    t0 = gr_time_mono_ms(); /* the first request is sent after this */
    t = start(&o);
    for (int i = 0; i < 4; i++) {
        r[i] = (struct reader){ .t = t, .stop = &stop };
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
    }
    rc1 = gr_svctoken_wait(t, 0, 5000, &gen1);
    rc2 = gr_svctoken_wait(t, 1, 5000, &gen2);
    t2 = gr_time_mono_ms();
    /* The readers stop before any assertion can leave this function. */
    atomic_store(&stop, true);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(rc1, 0);
    assert_int_equal(gen1, 1);
    /* expires_in 1 s: renewed 0.8 s after the first request, not before. */
    assert_int_equal(rc2, 0);
    assert_int_equal(gen2, 2);
    assert_true(t2 - t0 >= 800);
    assert_token(t, "tok-2");
    for (int i = 0; i < 4; i++) {
        assert_true(r[i].reads > 0);
        assert_int_equal(r[i].torn, 0);
    }
    /* 60 s: no third request now. */
    assert_int_equal(gr_svctoken_requests(t), 2);
    gr_svctoken_free(t);
    stub_stop(&s);
}

static void test_auth_starts_late(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct gr_arena a = GR_ARENA_INIT;
    char buf[64];
    struct stub s;
    char url[64];

    (void)state;
    stub_init(&s); /* bound, not listening: connections are refused */
    stub_answer(&s, 200, "{\"access_token\":\"late\",\"token_type\":\"Bearer\",\"expires_in\":60}");
    opts_for(&o, &s, url, sizeof(url));
    t = start(&o);
    assert_true(requests_reach(t, 3, 5000)); /* retried with backoff */
    assert_int_equal(gr_svctoken_copy(t, buf, sizeof(buf)), GR_EUNAVAIL);
    assert_null(gr_svctoken_get(t, &a));
    assert_int_equal(gr_svctoken_wait(t, 0, 1, NULL), GR_ETIMEOUT);
    stub_listen(&s);
    assert_int_equal(gr_svctoken_wait(t, 0, 5000, NULL), 0);
    assert_token(t, "late");
    gr_svctoken_free(t);
    stub_stop(&s);
    assert_int_equal(s.served, 1);
    gr_arena_release(&a);
}

static void test_refused_renews_early(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct stub s;
    char url[64];
    uint64_t gen = 0;
    int64_t t1;

    (void)state;
    stub_init(&s);
    stub_answer(&s, 200,
                "{\"access_token\":\"tok-1\",\"token_type\":\"Bearer\",\"expires_in\":3600}");
    stub_answer(&s, 200,
                "{\"access_token\":\"tok-2\",\"token_type\":\"Bearer\",\"expires_in\":3600}");
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));
    o.refused_ms = 1000; /* a slow first request (sanitizers, load) stays well inside */
    t = start(&o);
    assert_int_equal(gr_svctoken_wait(t, 0, 5000, &gen), 0);
    t1 = gr_time_mono_ms(); /* the first request started before this */
    /* Another token, or a refusal right after the request: ignored (rate limit). */
    gr_svctoken_refused(t, "someone-elses");
    gr_svctoken_refused(t, "tok-1");
    assert_int_equal(gr_svctoken_wait(t, 1, 150, &gen), GR_ETIMEOUT);
    assert_int_equal(gr_svctoken_requests(t), 1);
    /* Once refused_ms passed since the request, a refusal renews at once. */
    if (gr_time_mono_ms() < t1 + 1050)
        assert_int_equal(gr_svctoken_wait(t, 1, (int)(t1 + 1050 - gr_time_mono_ms()), NULL),
                         GR_ETIMEOUT);
    gr_svctoken_refused(t, "tok-1");
    assert_int_equal(gr_svctoken_wait(t, 1, 5000, &gen), 0);
    assert_int_equal(gen, 2);
    assert_token(t, "tok-2");
    /* The stale token is not the current one any more; the new one was just fetched. */
    gr_svctoken_refused(t, "tok-1");
    gr_svctoken_refused(t, "tok-2");
    assert_int_equal(gr_svctoken_wait(t, 2, 150, NULL), GR_ETIMEOUT);
    assert_int_equal(gr_svctoken_requests(t), 2);
    gr_svctoken_free(t);
    stub_stop(&s);
}

static void test_bad_answers_then_good(void **state)
{
    static char big[GR_SVCTOKEN_RESP_MAX + 2048];
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct stub s;
    char url[64], log[65536];
    char path[] = "/tmp/test_svctoken.XXXXXX";
    int fd, saved, level = gr_log_get_level();
    const char *head = "{\"access_token\":\"x\",\"expires_in\":60,\"pad\":\"";
    ssize_t n;

    (void)state;
    memset(big, ' ', sizeof(big) - 1);
    memcpy(big, head, strlen(head));
    memcpy(big + sizeof(big) - 3, "\"}", 2); /* a valid token, in an answer over the limit */
    stub_init(&s);
    stub_answer(&s, 401, "{\"type\":\"urn:gravity:problem:unauthorized\",\"status\":401}");
    stub_answer(&s, 503, "{}");
    stub_answer(&s, 200, "not json");
    stub_answer(&s, 200, "{\"token_type\":\"Bearer\",\"expires_in\":60}");
    stub_answer(&s, 200, "{\"access_token\":\"has space\",\"expires_in\":60}");
    stub_answer(&s, 200, "{\"access_token\":\"\",\"expires_in\":60}");
    stub_answer(&s, 200, "{\"access_token\":\"a\",\"token_type\":\"mac\",\"expires_in\":60}");
    stub_answer(&s, 200, "{\"access_token\":\"a\",\"expires_in\":\"60\"}");
    stub_answer(&s, 200, "{\"access_token\":\"a\",\"expires_in\":0}");
    stub_answer(&s, 200, "{\"access_token\":\"a\",\"access_token\":\"b\",\"expires_in\":60}");
    stub_answer(&s, 200, big);
    stub_answer(&s, 200, "{\"access_token\":\"good\",\"expires_in\":60}");
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));

    /* Everything the provider logs meanwhile goes to a file, to look for the secret. */
    fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    gr_log_set_level(GR_LOG_DEBUG);
    t = start(&o);
    assert_int_equal(gr_svctoken_wait(t, 0, 10000, NULL), 0);
    gr_svctoken_free(t);
    gr_log_set_level(level);
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);

    assert_int_equal(stub_served(&s), 12);
    stub_stop(&s);
    n = pread(fd, log, sizeof(log) - 1, 0);
    close(fd);
    unlink(path);
    assert_true(n > 0);
    log[n] = '\0';
    assert_non_null(strstr(log, "service token unavailable")); /* the 401 is warned at once */
    assert_non_null(strstr(log, "service token obtained"));
    assert_null(strstr(log, SECRET));
    assert_null(strstr(log, SECRET_ENC));
    assert_null(strstr(log, "s3cr"));
}

static void test_expiry_without_auth(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct stub s;
    char url[64], buf[64];
    int64_t end;

    (void)state;
    stub_init(&s);
    stub_answer(&s, 200, "{\"access_token\":\"short\",\"expires_in\":1}");
    stub_answer(&s, 503, "{}");
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));
    t = start(&o);
    assert_int_equal(gr_svctoken_wait(t, 0, 5000, NULL), 0);
    assert_token(t, "short");
    /* Renewal fails from 0.8 s on; the token stops being handed out before it expires. */
    end = gr_time_mono_ms() + 5000;
    while (gr_svctoken_copy(t, buf, sizeof(buf)) > 0 && gr_time_mono_ms() < end)
        assert_int_equal(gr_svctoken_wait(t, 1, 20, NULL), GR_ETIMEOUT);
    assert_int_equal(gr_svctoken_copy(t, buf, sizeof(buf)), GR_EUNAVAIL);
    assert_true(gr_svctoken_requests(t) >= 2);
    gr_svctoken_free(t);
    stub_stop(&s);
}

static void test_free_while_auth_hangs(void **state)
{
    struct gr_svctoken_opts o;
    struct gr_svctoken *t;
    struct stub s;
    char url[64];
    int64_t end, t0;

    (void)state;
    stub_init(&s);
    stub_answer(&s, 200, NULL);
    stub_listen(&s);
    opts_for(&o, &s, url, sizeof(url));
    t = start(&o);
    end = gr_time_mono_ms() + 5000;
    while (stub_served(&s) < 1 && gr_time_mono_ms() < end)
        (void)!gr_svctoken_wait(t, 0, 5, NULL);
    assert_int_equal(stub_served(&s), 1);
    /* A request in flight is aborted: no waiting for its GR_SVCTOKEN_FETCH_MS limit. */
    t0 = gr_time_mono_ms();
    gr_svctoken_free(t);
    assert_true(gr_time_mono_ms() - t0 < GR_SVCTOKEN_FETCH_MS / 2);
    stub_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_static),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_from_env),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_renew_at_80_percent),
        cmocka_unit_test(test_auth_starts_late),
        cmocka_unit_test(test_refused_renews_early),
        cmocka_unit_test(test_bad_answers_then_good),
        cmocka_unit_test(test_expiry_without_auth),
        cmocka_unit_test(test_free_while_auth_hangs),
    };
    const char *lvl = getenv("GR_TEST_LOG");

    gr_log_setup("test_svctoken", lvl ? gr_log_level_parse(lvl) : GR_LOG_OFF, true);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
