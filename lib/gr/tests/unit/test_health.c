/*
 * test_health.c - gr/health.h: a service's dependencies in /health/detailed.
 *
 * Checks that are up and down (with and without detail) appear under their names with status,
 * latency_ms and detail and clear the "ok" flag only when down; a detail that is not UTF-8 is
 * dropped, never the check; checks run from 8 threads while one is added (TSan); the built-in
 * Redis check is down (with a detail) for a Redis that does not listen, and up against a real
 * one (GR_TEST_REDIS_URL or REDIS_URL; skipped with a message when unset).
 */
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

#include <cmocka.h>

#include "gr/health.h"
#include "gr/service.h"

static atomic_int calls;

static int up_quiet(void *arg, char *detail, size_t len)
{
    (void)arg;
    (void)detail;
    (void)len;
    atomic_fetch_add(&calls, 1);
    return 0;
}

static int up_detail(void *arg, char *detail, size_t len)
{
    snprintf(detail, len, "relay %s", (const char *)arg);
    return 0;
}

static int down_detail(void *arg, char *detail, size_t len)
{
    (void)arg;
    snprintf(detail, len, "connect: refused");
    return -1;
}

static int down_binary(void *arg, char *detail, size_t len)
{
    (void)arg;
    memset(detail, 0xff, len - 1); /* not UTF-8, and no NUL: gr terminates it */
    return GR_EUNAVAIL;
}

static void test_none(void **state)
{
    struct gr_ctx ctx = { 0 };
    json_t *checks = json_object();
    bool ok = true;

    (void)state;
    gr_health__run(&ctx, checks, &ok);
    assert_true(ok);
    assert_int_equal(json_object_size(checks), 0);
    json_decref(checks);
    gr_health__release(&ctx);
}

static void test_up_down(void **state)
{
    struct gr_ctx ctx = { 0 };
    json_t *checks = json_object(), *c;
    bool ok = true;

    (void)state;
    gr_health_add(&ctx, "smtp", up_detail, "smtp.example");
    gr_health_add(&ctx, "cache", up_quiet, NULL);
    gr_health__run(&ctx, checks, &ok);
    assert_true(ok);
    c = json_object_get(checks, "smtp");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "up");
    assert_string_equal(json_string_value(json_object_get(c, "detail")), "relay smtp.example");
    assert_true(json_is_real(json_object_get(c, "latency_ms")));
    c = json_object_get(checks, "cache");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "up");
    assert_null(json_object_get(c, "detail"));

    gr_health_add(&ctx, "payments", down_detail, NULL);
    gr_health_add(&ctx, "blob", down_binary, NULL);
    json_object_clear(checks);
    gr_health__run(&ctx, checks, &ok);
    assert_false(ok);
    assert_int_equal(json_object_size(checks), 4);
    c = json_object_get(checks, "payments");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "down");
    assert_string_equal(json_string_value(json_object_get(c, "detail")), "connect: refused");
    c = json_object_get(checks, "blob");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "down");
    assert_null(json_object_get(c, "detail"));
    json_decref(checks);
    gr_health__release(&ctx);
    assert_null(ctx.health);
}

struct runner {
    struct gr_ctx *ctx;
    atomic_bool *stop;
    int runs;
};

static void *run_loop(void *arg)
{
    struct runner *r = arg;

    while (!atomic_load(r->stop) || r->runs < 50) {
        json_t *checks = json_object();
        bool ok = true;

        gr_health__run(r->ctx, checks, &ok);
        assert_true(json_object_size(checks) >= 1);
        json_decref(checks);
        r->runs++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct gr_ctx ctx = { 0 };
    atomic_bool stop = false;
    struct runner r[8];
    pthread_t th[8];

    (void)state;
    atomic_store(&calls, 0);
    gr_health_add(&ctx, "first", up_quiet, NULL);
    for (int i = 0; i < 8; i++) {
        r[i] = (struct runner){ .ctx = &ctx, .stop = &stop };
        assert_int_equal(pthread_create(&th[i], NULL, run_loop, &r[i]), 0);
    }
    gr_health_add(&ctx, "late", up_quiet, NULL); /* while requests read the table */
    atomic_store(&stop, true);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_true(atomic_load(&calls) >= 8 * 50);
    gr_health__release(&ctx);
}

static void test_redis_down(void **state)
{
    struct gr_ctx ctx = { 0 };
    json_t *checks = json_object(), *c;
    char err[256] = "";
    bool ok = true;

    (void)state;
    /* Port 1 on loopback: nothing listens, the connect is refused at once. */
    assert_int_equal(gr_health__add_redis(&ctx, "redis://127.0.0.1:1/0", err, sizeof(err)), 0);
    gr_health__run(&ctx, checks, &ok);
    assert_false(ok);
    c = json_object_get(checks, "redis");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "down");
    assert_non_null(strstr(json_string_value(json_object_get(c, "detail")), "PONG"));
    json_decref(checks);
    gr_health__release(&ctx);
    /* A malformed URL is refused with the variable named. */
    assert_int_equal(gr_health__add_redis(&ctx, "redis://:@x", err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "REDIS_URL"));
    gr_health__release(&ctx);
}

static void test_redis_up(void **state)
{
    const char *url = getenv("GR_TEST_REDIS_URL");
    struct gr_ctx ctx = { 0 };
    json_t *checks = json_object();
    char err[256] = "";
    bool ok = true;

    (void)state;
    if (!url || !*url)
        url = getenv("REDIS_URL");
    if (!url || !*url) {
        fprintf(stderr, "GR_TEST_REDIS_URL and REDIS_URL not set: the live Redis check skipped\n");
        json_decref(checks);
        skip();
    }
    assert_int_equal(gr_health__add_redis(&ctx, url, err, sizeof(err)), 0);
    gr_health__run(&ctx, checks, &ok);
    assert_true(ok);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(checks, "redis"), "status")), "up");
    json_decref(checks);
    gr_health__release(&ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_none),     cmocka_unit_test(test_up_down),
        cmocka_unit_test(test_threads),  cmocka_unit_test(test_redis_down),
        cmocka_unit_test(test_redis_up),
    };

    return cmocka_run_group_tests_name("health", tests, NULL, NULL);
}
