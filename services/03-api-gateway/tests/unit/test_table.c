/*
 * test_table.c - table.c: loading the routing document (defaults, every field, strict
 * rejections that keep the current table), reference counting across swaps, longest-prefix
 * matching on segment boundaries, and instances sharing breakers by host:port.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "gr/status.h"

#include "../../gw.h"
#include "../../h1.h"

static int load(const char *doc, char *err, size_t errlen)
{
    return gw_table_load(doc, strlen(doc), err, errlen);
}

static int teardown(void **state)
{
    (void)state;
    gw_table_clear();
    gw_breakers_clear();
    return 0;
}

static const struct gw_route *match(struct gw_table *t, const char *p)
{
    return gw_table_match(t, p, strlen(p));
}

static void test_defaults_and_fields(void **state)
{
    char err[256];
    struct gw_table *t;
    const struct gw_route *r;
    (void)state;
    assert_null(gw_table_get());
    assert_int_equal(
        load("{\"routes\":[{\"prefix\":\"/api/v1/products\",\"service\":\"product-service\","
             "\"instances\":[{\"host\":\"127.0.0.1\",\"port\":8007}]},"
             "{\"prefix\":\"/api/v1/auth\",\"service\":\"auth-service\",\"auth\":\"public\","
             "\"timeout_ms\":100,\"retries\":0,\"max_body\":10,\"rate_policy\":\"login\","
             "\"rate\":{\"per_s\":0.5,\"burst\":5},\"instances\":[{\"id\":\"i-1\","
             "\"host\":\"localhost\",\"port\":8001},{\"host\":\"::1\",\"port\":8002}]}]}",
             err, sizeof(err)),
        0);
    t = gw_table_get();
    assert_non_null(t);
    assert_int_equal(t->n, 2);
    r = match(t, "/api/v1/products");
    assert_non_null(r);
    assert_string_equal(r->service, "product-service");
    assert_int_equal(r->auth, GW_AUTH_JWT);
    assert_int_equal(r->timeout_ms, 5000);
    assert_int_equal(r->retries, 2);
    assert_int_equal(r->max_body, 1048576);
    assert_string_equal(r->rate_policy, "");
    assert_true(r->rate.per_s == 0);
    assert_int_equal(r->ninst, 1);
    assert_string_equal(r->inst[0].host, "127.0.0.1");
    assert_int_equal(r->inst[0].port, 8007);
    assert_non_null(r->inst[0].breaker);
    r = match(t, "/api/v1/auth/login");
    assert_non_null(r);
    assert_int_equal(r->auth, GW_AUTH_PUBLIC);
    assert_int_equal(r->timeout_ms, 100);
    assert_int_equal(r->retries, 0);
    assert_int_equal(r->max_body, 10);
    assert_string_equal(r->rate_policy, "login");
    assert_true(r->rate.per_s == 0.5);
    assert_int_equal(r->rate.burst, 5);
    assert_int_equal(r->ninst, 2);
    assert_string_equal(r->inst[0].id, "i-1");
    assert_string_equal(r->inst[1].id, "");
    gw_table_put(t);
}

static void test_match(void **state)
{
    char err[256];
    struct gw_table *t;
    (void)state;
    assert_int_equal(load("{\"routes\":[{\"prefix\":\"/api/v1/products\",\"service\":\"p\"},"
                          "{\"prefix\":\"/api/v1/products/variants\",\"service\":\"v\"},"
                          "{\"prefix\":\"/api/v1\",\"service\":\"catch\"},"
                          "{\"prefix\":\"/health\",\"service\":\"self\"}]}",
                          err, sizeof(err)),
                     0);
    t = gw_table_get();
    assert_string_equal(match(t, "/api/v1/products")->service, "p");
    assert_string_equal(match(t, "/api/v1/products/x")->service, "p");
    assert_string_equal(match(t, "/api/v1/products?x")->service, "p");
    assert_string_equal(match(t, "/api/v1/products/")->service, "p");
    assert_string_equal(match(t, "/api/v1/productsx")->service, "catch");
    assert_string_equal(match(t, "/api/v1/products/variants/9")->service, "v");
    assert_string_equal(match(t, "/api/v1/products/variantsX")->service, "p");
    assert_string_equal(match(t, "/api/v1/orders")->service, "catch");
    assert_string_equal(match(t, "/health")->service, "self");
    assert_null(match(t, "/healthz"));
    assert_null(match(t, "/api/v2"));
    assert_null(match(t, "/api/v"));
    assert_null(match(t, "/"));
    assert_null(match(t, ""));
    /* the length given, not the NUL, bounds the path */
    assert_string_equal(gw_table_match(t, "/api/v1/productsx", 16)->service, "p");
    assert_null(gw_table_match(NULL, "/x", 2));
    gw_table_put(t);
    /* a root route catches everything else */
    assert_int_equal(load("{\"routes\":[{\"prefix\":\"/\",\"service\":\"root\"},"
                          "{\"prefix\":\"/a\",\"service\":\"a\"}]}",
                          err, sizeof(err)),
                     0);
    t = gw_table_get();
    assert_string_equal(match(t, "/anything")->service, "root");
    assert_string_equal(match(t, "/a/b")->service, "a");
    assert_string_equal(match(t, "/")->service, "root");
    gw_table_put(t);
}

static void test_reject_keeps_current(void **state)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{\"routes\":{}}",
        "{\"routes\":[],\"x\":1}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\"}]} trailing",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"service\":\"t\"}]}",
        "{\"routes\":[1]}",
        "{\"routes\":[{\"service\":\"s\"}]}",
        "{\"routes\":[{\"prefix\":\"a\",\"service\":\"s\"}]}",
        "{\"routes\":[{\"prefix\":\"/a/\",\"service\":\"s\"}]}",
        "{\"routes\":[{\"prefix\":\"/a/../b\",\"service\":\"s\"}]}",
        "{\"routes\":[{\"prefix\":\"/a?x\",\"service\":\"s\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"auth\":\"none\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"timeout_ms\":0}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"timeout_ms\":\"5\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"retries\":-1}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"max_body\":1.5}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"rate\":{\"per_s\":-1}}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"rate\":{\"x\":1}}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"rate_policy\":"
        "\"0123456789012345678901234567890123\"}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"bogus\":1}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":{}}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":[{\"host\":\"h\"}]}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":[{\"host\":\"h\","
        "\"port\":0}]}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":[{\"host\":\"\","
        "\"port\":80}]}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":[{\"host\":\"a/b\","
        "\"port\":80}]}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":[{\"host\":\"h\","
        "\"port\":80,\"x\":1}]}]}",
        "{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\"},{\"prefix\":\"/"
        "a\",\"service\":\"t\"}]}",
    };
    char err[256];
    struct gw_table *t;
    uint64_t gen;
    (void)state;
    assert_int_equal(
        load("{\"routes\":[{\"prefix\":\"/keep\",\"service\":\"k\"}]}", err, sizeof(err)), 0);
    t = gw_table_get();
    gen = t->generation;
    gw_table_put(t);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (load(bad[i], err, sizeof(err)) != GR_EINVAL)
            fail_msg("accepted: %s", bad[i]);
        assert_true(err[0] != '\0');
    }
    t = gw_table_get();
    assert_int_equal(t->generation, gen);
    assert_string_equal(match(t, "/keep/x")->service, "k");
    gw_table_put(t);
    /* an empty table is valid */
    assert_int_equal(load("{\"routes\":[]}", err, sizeof(err)), 0);
    t = gw_table_get();
    assert_int_equal(t->n, 0);
    assert_true(t->generation > gen);
    assert_null(match(t, "/keep"));
    gw_table_put(t);
}

static void test_refcount_swap(void **state)
{
    char err[256];
    struct gw_table *old, *cur;
    const struct gw_route *r;
    (void)state;
    assert_int_equal(
        load("{\"routes\":[{\"prefix\":\"/v\",\"service\":\"one\"}]}", err, sizeof(err)), 0);
    old = gw_table_get();
    r = match(old, "/v");
    assert_int_equal(
        load("{\"routes\":[{\"prefix\":\"/v\",\"service\":\"two\"}]}", err, sizeof(err)), 0);
    /* the reader's snapshot stays valid (ASan would flag a use after free) */
    assert_string_equal(r->service, "one");
    assert_int_equal(atomic_load(&old->refs), 1);
    cur = gw_table_get();
    assert_string_equal(match(cur, "/v")->service, "two");
    assert_true(cur->generation > old->generation);
    gw_table_put(old);
    gw_table_put(cur);
}

static void test_shared_breakers(void **state)
{
    char err[256];
    struct gw_table *t;
    (void)state;
    assert_int_equal(
        load("{\"routes\":[{\"prefix\":\"/a\",\"service\":\"s\",\"instances\":["
             "{\"host\":\"127.0.0.1\",\"port\":9001},{\"host\":\"127.0.0.1\",\"port\":9002}]},"
             "{\"prefix\":\"/b\",\"service\":\"s\",\"instances\":["
             "{\"host\":\"127.0.0.1\",\"port\":9001}]}]}",
             err, sizeof(err)),
        0);
    t = gw_table_get();
    assert_ptr_equal(match(t, "/a")->inst[0].breaker, match(t, "/b")->inst[0].breaker);
    assert_ptr_not_equal(match(t, "/a")->inst[0].breaker, match(t, "/a")->inst[1].breaker);
    assert_ptr_equal(match(t, "/a")->inst[0].breaker, gw_breaker_for("127.0.0.1", 9001));
    gw_table_put(t);
}

static atomic_bool stop_readers;
static atomic_int readers_seen; /* readers that matched at least once */

static void *reader(void *arg)
{
    long hits = 0;
    (void)arg;
    while (!atomic_load(&stop_readers)) {
        struct gw_table *t = gw_table_get();
        const struct gw_route *r = gw_table_match(t, "/api/v1/x/1", 11);
        if (!r || strcmp(r->service, "x") != 0 || r->ninst != 1 || r->inst[0].port < 9000)
            return (void *)1;
        if (hits++ == 0)
            atomic_fetch_add(&readers_seen, 1);
        gw_table_put(t);
    }
    return hits > 0 ? NULL : (void *)1;
}

static void test_concurrent_swaps(void **state)
{
    char err[256], doc[256];
    pthread_t th[4];
    void *ret;
    (void)state;
    assert_int_equal(load("{\"routes\":[{\"prefix\":\"/api/v1/x\",\"service\":\"x\","
                          "\"instances\":[{\"host\":\"127.0.0.1\",\"port\":9000}]}]}",
                          err, sizeof(err)),
                     0);
    atomic_store(&stop_readers, false);
    atomic_store(&readers_seen, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, NULL), 0);
    /* Swap at least 300 times, and on until every reader has run (a loaded box may not have
     * scheduled them yet); the readers must never see a torn or freed table meanwhile. */
    for (int i = 1; i <= 300 || atomic_load(&readers_seen) < 4; i++) {
        snprintf(doc, sizeof(doc),
                 "{\"routes\":[{\"prefix\":\"/api/v1/x\",\"service\":\"x\","
                 "\"instances\":[{\"host\":\"127.0.0.1\",\"port\":%d}]}]}",
                 9000 + i % 50);
        assert_int_equal(load(doc, err, sizeof(err)), 0);
    }
    atomic_store(&stop_readers, true);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_defaults_and_fields, teardown),
        cmocka_unit_test_teardown(test_match, teardown),
        cmocka_unit_test_teardown(test_reject_keeps_current, teardown),
        cmocka_unit_test_teardown(test_refcount_swap, teardown),
        cmocka_unit_test_teardown(test_shared_breakers, teardown),
        cmocka_unit_test_teardown(test_concurrent_swaps, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
