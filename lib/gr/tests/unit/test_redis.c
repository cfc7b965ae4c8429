/*
 * test_redis.c - gr/redis.h and the Redis rate limits of gr/ratelimit.h.
 *
 * Without a server: REDIS_URL parsing (accepted forms, rejects naming REDIS_URL and never the
 * password) and a client whose Redis is down (ping false, limits answered in-process, counted
 * as fallbacks, fast). Against a real redis-server on REDIS_URL (skipped with a message when
 * unset; GR_TEST_REDIS_URL is read first): PING, EVALSHA with NOSCRIPT loading, script errors,
 * fixed windows and token buckets on the library clock, one budget shared by two clients (two
 * gateways), exact budgets from 4 threads, and an outage: a private server (scripts/redis.sh, or
 * $GR_TEST_REDIS_SH) stopped mid-test - calls fall back without errors - then restarted - calls go
 * to Redis again.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/ratelimit.h"
#include "gr/redis.h"
#include "gr/time.h"

#define THREADS    4
#define PER_THREAD 300

static const char *redis_url; /* REDIS_URL */
static char prefix[64];       /* per run: keys of this run never meet an earlier run's */

static int reset_clock(void **state)
{
    (void)state;
    gr_time_set_offset_ms(0);
    return 0;
}

static const char *key(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s|%s", prefix, name);
    return buf;
}

static struct gr_redis *client(const char *url)
{
    struct gr_redis *r = NULL;
    char err[256];

    if (gr_redis_new(url, &r, err, sizeof(err)) != 0)
        fail_msg("gr_redis_new: %s", err);
    return r;
}

/* A 127.0.0.1 port that nothing listens on (bound then closed). */
static int dead_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* The PTTL of Redis key @k (ms; -1 none, -2 no key). */
static long long pttl(struct gr_redis *r, const char *k)
{
    static struct gr_redis_script s;
    long long out[1] = { -3 };

    if (!s.lua)
        gr_redis_script_init(&s, "return redis.call('PTTL', KEYS[1])");
    assert_int_equal(gr_redis_evalsha(r, &s, 1, 1, (const char *const[]){ k }, out, 1, NULL), 0);
    return out[0];
}

/* ---- without a server -------------------------------------------------------------------- */

static void test_url_good(void **state)
{
    static const char *const good[] = {
        "redis://127.0.0.1:6379",    "redis://localhost",          "redis://cache.internal:1/15",
        "redis://:s3cret@host:6380", "redis://user:s3cret@host/0", "redis://[::1]:6379/2",
        "unix:///run/redis.sock",    "unix://:pw@/tmp/r.sock",
    };
    struct gr_redis *r;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        r = NULL;
        if (gr_redis_new(good[i], &r, err, sizeof(err)) != 0)
            fail_msg("rejected %s: %s", good[i], err);
        gr_redis_free(r);
    }
    gr_redis_free(NULL);
}

static void test_url_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "rediss://host:6379",
        "redis://",
        "redis://:6379",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:63a9",
        "redis://host:",
        "redis://host/",
        "redis://host/x",
        "redis://host/10000",
        "redis://host:6379?db=1",
        "redis://host#f",
        "redis://ho st",
        "redis://ho$t",
        "redis://[::1",
        "redis://[]:1",
        "redis://[::1]x",
        "redis://:@host",
        "redis://nocolon@host",
        "unix://relative.sock",
        "redis://:hunter2secret@host:99999",
    };
    struct gr_redis *r;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = (struct gr_redis *)&r;
        err[0] = '\0';
        if (gr_redis_new(bad[i], &r, err, sizeof(err)) != GR_ECONFIG)
            fail_msg("accepted '%s'", bad[i]);
        assert_null(r);
        assert_non_null(strstr(err, "REDIS_URL"));
        assert_null(strstr(err, "hunter2"));
    }
    assert_int_equal(gr_redis_new(NULL, &r, err, sizeof(err)), GR_ECONFIG);
}

static void test_down(void **state)
{
    char url[64];
    struct gr_redis *r;
    struct gr_tb *tb;
    struct gr_rl *rl;
    int64_t t0;

    (void)state;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", dead_port());
    r = client(url); /* no connect yet: a Redis that is down is not a config error */
    assert_false(gr_redis_ping(r));
    tb = gr_tb_new(16, r);
    rl = gr_rl_new_redis(r, 16);
    t0 = gr_time_mono_ms();
    /* In-process answers, same semantics. */
    for (int i = 0; i < 3; i++)
        assert_true(gr_tb_take(tb, "k", 0.001, 3, NULL));
    assert_false(gr_tb_take(tb, "k", 0.001, 3, NULL));
    assert_true(gr_rl_hit(rl, "k", 1, 60000, NULL));
    assert_false(gr_rl_hit(rl, "k", 1, 60000, NULL));
    assert_true(gr_rl_exceeded(rl, "k", 1, 60000, NULL));
    gr_rl_reset(rl, "k");
    assert_true(gr_rl_hit(rl, "k", 1, 60000, NULL));
    assert_int_equal(gr_tb_fallbacks(tb), 4);
    assert_int_equal(gr_rl_fallbacks(rl), 5);
    assert_true(gr_time_mono_ms() - t0 < 1000); /* refused connects and the backoff: no waits */
    gr_rl_free(rl);
    gr_tb_free(tb);
    gr_redis_free(r);
}

/* ---- against REDIS_URL ------------------------------------------------------------------- */

static void test_ping(void **state)
{
    struct gr_redis *r = client(redis_url);

    (void)state;
    assert_true(gr_redis_ping(r));
    assert_true(gr_redis_ping(r)); /* the same connection again */
    gr_redis_free(r);
}

static void test_evalsha(void **state)
{
    /* A script no earlier run loaded (the pid and time are in it): the first call receives
     * NOSCRIPT and loads it. */
    static char lua[200];
    static struct gr_redis_script s, bad, str;
    struct gr_redis *r = client(redis_url);
    const char *argv[3] = { "k", "5", "7" };
    long long out[4] = { 0 };
    size_t n = 0;

    (void)state;
    snprintf(lua, sizeof(lua), "-- %s\nreturn {tonumber(ARGV[1]) + tonumber(ARGV[2]), #KEYS, 3}",
             prefix);
    gr_redis_script_init(&s, lua);
    assert_int_equal(strlen(s.sha1), 40);
    assert_int_equal(gr_redis_evalsha(r, &s, 1, 3, argv, out, 4, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 12);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 3);
    assert_int_equal(gr_redis_evalsha(r, &s, 1, 3, argv, out, 2, &n), 0); /* loaded now */
    assert_int_equal(n, 2);
    gr_redis_script_init(&bad, "return redis.call('NOSUCHCOMMAND')");
    assert_int_equal(gr_redis_evalsha(r, &bad, 0, 0, NULL, out, 4, &n), GR_EINTERNAL);
    gr_redis_script_init(&str, "return 'text'");
    assert_int_equal(gr_redis_evalsha(r, &str, 0, 0, NULL, out, 4, &n), GR_EINTERNAL);
    assert_int_equal(gr_redis_evalsha(r, &s, 2, 1, argv, out, 4, &n), GR_EINVAL);
    assert_true(gr_redis_ping(r)); /* errors left the connection usable */
    gr_redis_free(r);
}

static void test_redis_rl(void **state)
{
    struct gr_redis *r = client(redis_url);
    struct gr_rl *rl = gr_rl_new_redis(r, 16);
    char k[128];
    int retry = 0;

    (void)state;
    key(k, sizeof(k), "rl");
    for (int i = 0; i < 3; i++)
        assert_true(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_false(gr_rl_exceeded(rl, key(k, sizeof(k), "rl-other"), 3, 60000, &retry));
    key(k, sizeof(k), "rl");
    assert_true(gr_rl_exceeded(rl, k, 3, 60000, &retry));
    assert_in_range(retry, 59, 60);
    assert_false(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_in_range(retry, 59, 60);
    gr_time_set_offset_ms(30000);
    assert_false(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_in_range(retry, 29, 30);
    gr_time_set_offset_ms(60001);
    assert_false(gr_rl_exceeded(rl, k, 3, 60000, &retry));
    assert_true(gr_rl_hit(rl, k, 3, 60000, &retry)); /* a new window */
    assert_true(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_true(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_false(gr_rl_hit(rl, k, 3, 60000, &retry));
    gr_rl_reset(rl, k);
    assert_true(gr_rl_hit(rl, k, 3, 60000, &retry));
    assert_int_equal(gr_rl_fallbacks(rl), 0);
    {
        char rk[160];

        /* The Redis key expires with its window: Redis memory stays bounded too. */
        snprintf(rk, sizeof(rk), "gr:rl:%s", k);
        assert_in_range(pttl(r, rk), 1, 60000);
    }
    gr_rl_free(rl);
    gr_redis_free(r);
}

static void test_redis_tb(void **state)
{
    struct gr_redis *r = client(redis_url);
    struct gr_tb *tb = gr_tb_new(16, r);
    char k[128];
    int retry = 0;

    (void)state;
    key(k, sizeof(k), "tb");
    for (int i = 0; i < 3; i++)
        assert_true(gr_tb_take(tb, k, 2.0, 3, &retry));
    assert_false(gr_tb_take(tb, k, 2.0, 3, &retry));
    assert_int_equal(retry, 1);
    gr_time_set_offset_ms(500);
    assert_true(gr_tb_take(tb, k, 2.0, 3, NULL));
    assert_false(gr_tb_take(tb, k, 2.0, 3, NULL));
    gr_time_set_offset_ms(60500);
    for (int i = 0; i < 3; i++)
        assert_true(gr_tb_take(tb, k, 2.0, 3, NULL));
    assert_false(gr_tb_take(tb, k, 2.0, 3, NULL));

    key(k, sizeof(k), "tb-slow");
    assert_true(gr_tb_take(tb, k, 0.1, 1, &retry));
    assert_false(gr_tb_take(tb, k, 0.1, 1, &retry));
    assert_int_equal(retry, 10);
    gr_time_set_offset_ms(60500 + 4000);
    assert_false(gr_tb_take(tb, k, 0.1, 1, &retry));
    assert_int_equal(retry, 6);
    assert_int_equal(gr_tb_fallbacks(tb), 0);
    {
        char rk[160];

        /* Expires once the bucket would be full again (10 s) plus a second. */
        snprintf(rk, sizeof(rk), "gr:tb:%s", k);
        assert_in_range(pttl(r, rk), 1, 11000);
    }
    gr_tb_free(tb);
    gr_redis_free(r);
}

static void test_redis_tb_shared(void **state)
{
    /* Two gateways: two clients, two limiters, one Redis, one budget. */
    struct gr_redis *r1 = client(redis_url), *r2 = client(redis_url);
    struct gr_tb *a = gr_tb_new(16, r1), *b = gr_tb_new(16, r2);
    struct gr_tb *local = gr_tb_new(16, NULL);
    char k[128];
    int ok = 0;

    (void)state;
    key(k, sizeof(k), "shared");
    for (int i = 0; i < 10; i++) {
        ok += gr_tb_take(a, k, 0.001, 6, NULL);
        ok += gr_tb_take(b, k, 0.001, 6, NULL);
    }
    assert_int_equal(ok, 6);
    assert_true(gr_tb_take(local, k, 0.001, 6, NULL)); /* an in-process one is separate */
    assert_int_equal(gr_tb_fallbacks(a) + gr_tb_fallbacks(b), 0);
    gr_tb_free(local);
    gr_tb_free(b);
    gr_tb_free(a);
    gr_redis_free(r2);
    gr_redis_free(r1);
}

struct worker {
    struct gr_tb *tb;
    struct gr_rl *rl;
    const char *key;
    int tb_ok, rl_ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (int i = 0; i < PER_THREAD; i++) {
        w->tb_ok += gr_tb_take(w->tb, w->key, 0.001, 100, NULL);
        w->rl_ok += gr_rl_hit(w->rl, w->key, 50, 600000, NULL);
    }
    return NULL;
}

static void test_redis_threads(void **state)
{
    struct gr_redis *r = client(redis_url);
    struct gr_tb *tb = gr_tb_new(16, r);
    struct gr_rl *rl = gr_rl_new_redis(r, 16);
    pthread_t th[THREADS];
    struct worker w[THREADS];
    char k[128];
    int tb_ok = 0, rl_ok = 0;

    (void)state;
    key(k, sizeof(k), "threads");
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .tb = tb, .rl = rl, .key = k };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        tb_ok += w[i].tb_ok;
        rl_ok += w[i].rl_ok;
    }
    assert_int_equal(gr_tb_fallbacks(tb), 0);
    assert_int_equal(gr_rl_fallbacks(rl), 0);
    assert_int_equal(tb_ok, 100);
    assert_int_equal(rl_ok, 50);
    {
        int64_t t0 = gr_time_mono_ns();

        for (int i = 0; i < 2000; i++)
            (void)gr_tb_take(tb, k, 1000.0, 10, NULL);
        fprintf(stderr, "gr_tb_take on Redis: %.1f us/op (one thread, loopback)\n",
                (double)(gr_time_mono_ns() - t0) / 2000 / 1000);
    }
    gr_rl_free(rl);
    gr_tb_free(tb);
    gr_redis_free(r); /* the workers' connections were closed when they exited */
}

/* Runs `redis.sh CMD DIR`; its last output line (the URL) into @out. */
static int redis_sh(const char *cmd, const char *dir, char *out, size_t n)
{
    const char *sh = getenv("GR_TEST_REDIS_SH");
    char line[512], buf[256] = "";
    FILE *p;

    if (!sh || !*sh)
        sh = "scripts/redis.sh";
    snprintf(line, sizeof(line), "'%s' %s '%s'", sh, cmd, dir);
    p = popen(line, "r");
    if (!p)
        return -1;
    while (fgets(buf, sizeof(buf), p))
        ;
    if (pclose(p) != 0)
        return -1;
    buf[strcspn(buf, "\n")] = '\0';
    if (out)
        snprintf(out, n, "%s", buf);
    return 0;
}

static void test_redis_outage(void **state)
{
    const char *sh = getenv("GR_TEST_REDIS_SH");
    char dir[] = "/tmp/gr_test_redis_XXXXXX", url[256], k[128];
    struct gr_redis *r;
    struct gr_tb *tb;
    struct gr_rl *rl;
    uint64_t fb;
    int64_t deadline, t0;
    int ok;

    (void)state;
    if (access(sh && *sh ? sh : "scripts/redis.sh", X_OK) != 0) {
        fprintf(stderr, "scripts/redis.sh not found (run from the repository root or set "
                        "GR_TEST_REDIS_SH): outage test skipped\n");
        skip();
    }
    assert_non_null(mkdtemp(dir));
    assert_int_equal(redis_sh("start", dir, url, sizeof(url)), 0);
    r = client(url);
    tb = gr_tb_new(16, r);
    rl = gr_rl_new_redis(r, 16);
    key(k, sizeof(k), "outage");
    assert_true(gr_tb_take(tb, k, 0.001, 2, NULL));
    assert_true(gr_rl_hit(rl, k, 2, 600000, NULL));
    assert_int_equal(gr_tb_fallbacks(tb) + gr_rl_fallbacks(rl), 0);

    assert_int_equal(redis_sh("stop", dir, NULL, 0), 0);
    t0 = gr_time_mono_ms();
    /* Down: answers come from the in-process tables (a fresh budget there), no errors. */
    ok = 0;
    for (int i = 0; i < 5; i++)
        ok += gr_tb_take(tb, k, 0.001, 2, NULL);
    assert_int_equal(ok, 2);
    assert_true(gr_rl_hit(rl, k, 2, 600000, NULL));
    assert_true(gr_rl_hit(rl, k, 2, 600000, NULL));
    assert_false(gr_rl_hit(rl, k, 2, 600000, NULL));
    assert_int_equal(gr_tb_fallbacks(tb), 5);
    assert_int_equal(gr_rl_fallbacks(rl), 3);
    assert_false(gr_redis_ping(r));
    assert_true(gr_time_mono_ms() - t0 < 2000);

    /* Back (empty, without the scripts): once the backoff is over, Redis answers again. */
    assert_int_equal(redis_sh("restart", dir, url, sizeof(url)), 0);
    deadline = gr_time_mono_ms() + 5000;
    while (!gr_redis_ping(r) && gr_time_mono_ms() < deadline)
        usleep(20000);
    assert_true(gr_redis_ping(r));
    fb = gr_tb_fallbacks(tb);
    assert_true(gr_tb_take(tb, k, 0.001, 2, NULL)); /* NOSCRIPT, loaded, a new bucket */
    assert_true(gr_tb_take(tb, k, 0.001, 2, NULL));
    assert_false(gr_tb_take(tb, k, 0.001, 2, NULL));
    assert_int_equal(gr_tb_fallbacks(tb), fb);
    fb = gr_rl_fallbacks(rl);
    assert_true(gr_rl_hit(rl, k, 1, 600000, NULL));
    assert_false(gr_rl_hit(rl, k, 1, 600000, NULL));
    assert_int_equal(gr_rl_fallbacks(rl), fb);

    gr_rl_free(rl);
    gr_tb_free(tb);
    gr_redis_free(r);
    assert_int_equal(redis_sh("stop", dir, NULL, 0), 0);
    for (size_t i = 0; i < 4; i++) {
        static const char *const files[] = { "redis.log", "redis.out", "port", "url" };

        snprintf(url, sizeof(url), "%s/%s", dir, files[i]);
        unlink(url);
    }
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest offline[] = {
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test(test_down),
    };
    const struct CMUnitTest online[] = {
        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_evalsha),
        cmocka_unit_test_teardown(test_redis_rl, reset_clock),
        cmocka_unit_test_teardown(test_redis_tb, reset_clock),
        cmocka_unit_test(test_redis_tb_shared),
        cmocka_unit_test(test_redis_threads),
        cmocka_unit_test(test_redis_outage),
    };
    int failed;

    snprintf(prefix, sizeof(prefix), "grtest-%d-%lld", (int)getpid(), (long long)gr_time_mono_ns());
    failed = cmocka_run_group_tests_name("redis offline", offline, NULL, NULL);
    /* GR_TEST_REDIS_URL like GR_TEST_PG_URL: a suite that exports it does not also put every
     * service it starts on that Redis. */
    redis_url = getenv("GR_TEST_REDIS_URL");
    if (!redis_url || !*redis_url)
        redis_url = getenv("REDIS_URL");
    if (!redis_url || !*redis_url) {
        fprintf(stderr, "GR_TEST_REDIS_URL and REDIS_URL not set: Redis tests skipped\n");
        return failed;
    }
    return failed + cmocka_run_group_tests_name("redis", online, NULL, NULL);
}
