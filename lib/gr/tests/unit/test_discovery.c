/*
 * test_discovery.c - the registration client (gr/discovery.h): the address rules, argument
 * checks, and, when GR_TEST_DISCOVERY_URL and GR_TEST_DISCOVERY_TOKEN name a running
 * 02-service-discovery and a registry:write token (services/02-service-discovery/tests/
 * test-registry.py runs it so), the whole life of a registration: registered, listed,
 * registered again after the registry forgot it, and deregistered by gr_discovery_stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "gr/discovery.h"
#include "gr/id.h"
#include "gr/svctoken.h"
#include "gr/time.h"

static void test_address(void **state)
{
    char a[300];

    (void)state;
    unsetenv("DISCOVERY_ADDRESS");
    unsetenv("HOST");
    assert_int_equal(gr_discovery_address(a, sizeof(a)), 0);
    assert_string_equal(a, "127.0.0.1");
    setenv("HOST", "0.0.0.0", 1);
    assert_int_equal(gr_discovery_address(a, sizeof(a)), 0);
    assert_string_equal(a, "127.0.0.1");
    setenv("HOST", "::", 1);
    assert_int_equal(gr_discovery_address(a, sizeof(a)), 0);
    assert_string_equal(a, "127.0.0.1");
    setenv("HOST", "10.1.2.3", 1);
    assert_int_equal(gr_discovery_address(a, sizeof(a)), 0);
    assert_string_equal(a, "10.1.2.3");
    setenv("DISCOVERY_ADDRESS", "orders-1.internal", 1);
    assert_int_equal(gr_discovery_address(a, sizeof(a)), 0);
    assert_string_equal(a, "orders-1.internal");
    assert_int_equal(gr_discovery_address(a, 4), GR_ETOOBIG);
    unsetenv("DISCOVERY_ADDRESS");
    unsetenv("HOST");
}

static void test_bad_args(void **state)
{
    struct gr_discovery *d = (struct gr_discovery *)1;
    char err[200];

    (void)state;
    assert_int_equal(gr_discovery_start("ftp://x", "svc", NULL, 80, &d, err, sizeof(err)),
                     GR_ECONFIG);
    assert_null(d);
    assert_non_null(strstr(err, "DISCOVERY_URL"));
    assert_int_equal(
        gr_discovery_start("http://127.0.0.1:1", "Bad_Name", NULL, 80, &d, err, sizeof(err)),
        GR_EINVAL);
    assert_int_equal(gr_discovery_start("http://127.0.0.1:1", "svc", NULL, 0, &d, err, sizeof(err)),
                     GR_EINVAL);
    assert_int_equal(
        gr_discovery_start("http://127.0.0.1:1", "svc", NULL, 70000, &d, err, sizeof(err)),
        GR_EINVAL);
    setenv("DISCOVERY_TTL", "10m", 1);
    assert_int_equal(
        gr_discovery_start("http://127.0.0.1:1", "svc", NULL, 80, &d, err, sizeof(err)),
        GR_ECONFIG);
    assert_non_null(strstr(err, "DISCOVERY_TTL"));
    unsetenv("DISCOVERY_TTL");
    gr_discovery_stop(NULL);
}

/* A registry that never answers: start returns at once, stop within its limit. */
static void test_unreachable(void **state)
{
    struct gr_discovery *d = NULL;
    char err[200], id[GR_ID_LEN];
    int64_t t0;

    (void)state;
    assert_int_equal(
        gr_discovery_start("http://127.0.0.1:9", "svc", "127.0.0.1", 80, &d, err, sizeof(err)), 0);
    gr_discovery_id(d, id);
    assert_string_equal(id, "");
    t0 = gr_time_mono_ms();
    gr_discovery_stop(d);
    assert_true(gr_time_mono_ms() - t0 < 2500);
}

/* ---- against a running registry ------------------------------------------------------- */

static size_t sink(char *p, size_t sz, size_t n, void *u)
{
    (void)p;
    (void)u;
    return sz * n;
}

static long call(const char *method, const char *url, const char *token)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char auth[8300];
    long st = 0;

    assert_non_null(c);
    if (token != NULL) {
        (void)snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    return st;
}

/* Polls until the client holds an id other than @old (""), 15 s at most. */
static void wait_id(struct gr_discovery *d, const char *old, char id[GR_ID_LEN])
{
    int64_t end = gr_time_mono_ms() + 15000;
    struct timespec ts = { 0, 20 * 1000000L };

    for (;;) {
        gr_discovery_id(d, id);
        if (id[0] != '\0' && strcmp(id, old) != 0)
            return;
        assert_true(gr_time_mono_ms() < end);
        nanosleep(&ts, NULL);
    }
}

static void test_live(void **state)
{
    const char *url = getenv("GR_TEST_DISCOVERY_URL");
    const char *token = getenv("GR_TEST_DISCOVERY_TOKEN");
    struct gr_svctoken_opts o = { .token = token };
    struct gr_svctoken *t = NULL;
    struct gr_discovery *d = NULL;
    char err[200], id[GR_ID_LEN], id2[GR_ID_LEN], u[1024];

    (void)state;
    if (url == NULL || token == NULL) {
        skip();
        return;
    }
    assert_int_equal(gr_svctoken_new(&o, &t, err, sizeof(err)), 0);
    gr_svctoken_set_default(t);
    setenv("DISCOVERY_TTL", "1", 1);
    assert_int_equal(
        gr_discovery_start(url, "unit-client", "127.0.0.1", 4567, &d, err, sizeof(err)), 0);
    wait_id(d, "", id);
    (void)snprintf(u, sizeof(u), "%s/api/v1/registry/instances/%s", url, id);
    assert_int_equal(call("GET", u, NULL), 200);
    /* Heartbeats every ttl_s/3 keep it registered past several TTLs. */
    {
        struct timespec ts = { 2, 500 * 1000000L };

        nanosleep(&ts, NULL);
    }
    gr_discovery_id(d, id2);
    assert_string_equal(id, id2);
    /* The registry forgets it: the next heartbeat's 404 registers it again (a new id). */
    assert_int_equal(call("DELETE", u, token), 204);
    wait_id(d, id, id2);
    gr_discovery_stop(d);
    (void)snprintf(u, sizeof(u), "%s/api/v1/registry/instances/%s", url, id2);
    assert_int_equal(call("GET", u, NULL), 404);
    unsetenv("DISCOVERY_TTL");
    gr_svctoken_set_default(NULL);
    gr_svctoken_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_live),
    };
    int rc;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
