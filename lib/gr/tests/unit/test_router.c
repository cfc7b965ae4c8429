/*
 * test_router.c - route matching: literals beat parameters, parameters are decoded, 404 vs
 * 405 with Allow, and paths that could smuggle another path are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gr/router.h"

static int h_a(struct gr_req *req, struct gr_resp *resp)
{
    (void)req;
    (void)resp;
    return 0;
}

static const struct gr_route routes[] = {
    { "GET", "/api/v1/products", h_a, 0, NULL, NULL, 0 },
    { "POST", "/api/v1/products", h_a, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/products/variants", h_a, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/products/{id}", h_a, 0, NULL, NULL, 0 },
    { "DELETE", "/api/v1/products/{id}", h_a, 0, NULL, NULL, 0 },
    { "PATCH", "/api/v1/products/{id}/variants/{vid}", h_a, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/x/{a}/lit", h_a, 0, NULL, NULL, 0 },
    { "GET", "/api/v1/x/b/{c}", h_a, 0, NULL, NULL, 0 },
};

struct fx {
    struct gr_router *r;
    struct gr_arena a;
};

static int setup(void **state)
{
    static struct fx fx;
    const struct gr_route *const tables[] = { routes };
    const size_t counts[] = { sizeof(routes) / sizeof(routes[0]) };

    memset(&fx, 0, sizeof(fx));
    if (gr_router_new(tables, counts, 1, &fx.r) < 0)
        return -1;
    *state = &fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    gr_arena_release(&fx->a);
    gr_router_free(fx->r);
    return 0;
}

static int match(struct fx *fx, const char *m, const char *p, const struct gr_route **rt,
                 struct gr_kv *params, size_t *np, const char **allow)
{
    return gr_router_match(fx->r, &fx->a, m, p, rt, params, np, allow);
}

static void test_literal_wins(void **state)
{
    struct fx *fx = *state;
    const struct gr_route *rt;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    size_t np;
    const char *allow = NULL;

    assert_int_equal(match(fx, "GET", "/api/v1/products/variants", &rt, params, &np, &allow), 0);
    assert_ptr_equal(rt, &routes[2]);
    assert_int_equal(np, 0);
    assert_int_equal(match(fx, "GET", "/api/v1/products/abc", &rt, params, &np, &allow), 0);
    assert_ptr_equal(rt, &routes[3]);
    assert_int_equal(np, 1);
    assert_string_equal(params[0].key, "id");
    assert_string_equal(params[0].value, "abc");
}

static void test_backtracks_to_param(void **state)
{
    struct fx *fx = *state;
    const struct gr_route *rt;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    size_t np;
    const char *allow = NULL;

    /* "b" matches the literal branch, which has no ".../lit": the parameter branch must. */
    assert_int_equal(match(fx, "GET", "/api/v1/x/b/lit", &rt, params, &np, &allow), 0);
    assert_ptr_equal(rt, &routes[7]);
    assert_string_equal(params[0].key, "c");
    assert_int_equal(match(fx, "GET", "/api/v1/x/zz/lit", &rt, params, &np, &allow), 0);
    assert_ptr_equal(rt, &routes[6]);
    assert_string_equal(params[0].value, "zz");
}

static void test_two_params_decoded(void **state)
{
    struct fx *fx = *state;
    const struct gr_route *rt;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    size_t np;
    const char *allow = NULL;

    assert_int_equal(
        match(fx, "PATCH", "/api/v1/products/p%201/variants/v%C3%A9", &rt, params, &np, &allow), 0);
    assert_int_equal(np, 2);
    assert_string_equal(params[0].value, "p 1");
    assert_string_equal(params[1].key, "vid");
    assert_string_equal(params[1].value, "v\xc3\xa9");
}

static void test_405_allow(void **state)
{
    struct fx *fx = *state;
    const struct gr_route *rt;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    size_t np;
    const char *allow = NULL;

    assert_int_equal(match(fx, "PUT", "/api/v1/products", &rt, params, &np, &allow), GR_EMETHOD);
    assert_string_equal(allow, "GET, POST, HEAD");
    assert_int_equal(match(fx, "HEAD", "/api/v1/products", &rt, params, &np, &allow), 0);
    assert_ptr_equal(rt, &routes[0]);
}

static void test_404_and_bad_paths(void **state)
{
    struct fx *fx = *state;
    const struct gr_route *rt;
    struct gr_kv params[GR_ROUTE_MAX_PARAMS];
    size_t np;
    const char *allow = NULL;
    static const char *const notfound[] = { "/api/v1/nothing",
                                            "/api/v1/products/",
                                            "//api/v1/products",
                                            "/api/v1/products/a/b",
                                            "",
                                            "api/v1/products",
                                            "/" };
    static const char *const bad[] = { "/api/v1/products/a%2Fb", "/api/v1/products/%00",
                                       "/api/v1/products/%zz",   "/api/v1/products/%4",
                                       "/api/v1/products/..",    "/api/v1/products/%2e%2e",
                                       "/api/v1/products/." };

    for (size_t i = 0; i < sizeof(notfound) / sizeof(notfound[0]); i++)
        assert_int_equal(match(fx, "GET", notfound[i], &rt, params, &np, &allow), GR_ENOTFOUND);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(match(fx, "GET", bad[i], &rt, params, &np, &allow), GR_EINVAL);
}

static void test_bad_tables_rejected(void **state)
{
    static const struct gr_route dup[] = { { "GET", "/a/{x}", h_a, 0, NULL, NULL, 0 },
                                           { "GET", "/a/{x}", h_a, 0, NULL, NULL, 0 } };
    static const struct gr_route names[] = { { "GET", "/a/{x}", h_a, 0, NULL, NULL, 0 },
                                             { "POST", "/a/{y}", h_a, 0, NULL, NULL, 0 } };
    static const struct gr_route empty[] = { { "GET", "/a//b", h_a, 0, NULL, NULL, 0 } };
    const struct gr_route *const t1[] = { dup }, *const t2[] = { names }, *const t3[] = { empty };
    const size_t c2[] = { 2 }, c1[] = { 1 };
    struct gr_router *r = NULL;

    (void)state;
    assert_int_equal(gr_router_new(t1, c2, 1, &r), GR_EINVAL);
    assert_int_equal(gr_router_new(t2, c2, 1, &r), GR_EINVAL);
    assert_int_equal(gr_router_new(t3, c1, 1, &r), GR_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_wins),       cmocka_unit_test(test_backtracks_to_param),
        cmocka_unit_test(test_two_params_decoded), cmocka_unit_test(test_405_allow),
        cmocka_unit_test(test_404_and_bad_paths),  cmocka_unit_test(test_bad_tables_rejected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
