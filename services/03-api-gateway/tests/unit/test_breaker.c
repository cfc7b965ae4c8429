/*
 * test_breaker.c - breaker.c: 5 straight failures open it; more than half of the last 20
 * calls failing opens it (exactly half does not); open answers "skip" for 30 s on a test clock,
 * then one probe; the probe's success closes, its failure re-opens; change callbacks; the
 * registry shares one breaker per host:port; the JSON view; many threads at once.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../gw.h"
#include "../../h1.h"

static int64_t fake_now;
static int64_t fake_clock(void)
{
    return fake_now;
}

static int nopened, nclosed;
static char cb_err[64];
static int cb_port;
static void on_change(const char *host, int port, bool opened, const char *last_error)
{
    (void)host;
    cb_port = port;
    if (opened)
        nopened++;
    else
        nclosed++;
    snprintf(cb_err, sizeof(cb_err), "%s", last_error ? last_error : "");
}

static int setup(void **state)
{
    (void)state;
    fake_now = 1000000;
    nopened = nclosed = 0;
    cb_err[0] = '\0';
    gw_breaker_set_clock(fake_clock);
    gw_breaker_set_open_ms(30000);
    gw_breaker_on_change(on_change);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    gw_breakers_clear();
    gw_breaker_set_clock(NULL);
    gw_breaker_on_change(NULL);
    return 0;
}

static void test_straight_failures(void **state)
{
    struct gw_breaker *b = gw_breaker_for("127.0.0.1", 7001);
    (void)state;
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    for (int i = 0; i < 4; i++) {
        assert_true(gw_breaker_allow(b));
        gw_breaker_result(b, false, "connect refused");
    }
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    assert_int_equal(nopened, 0);
    /* a success resets the streak */
    gw_breaker_result(b, true, NULL);
    for (int i = 0; i < 4; i++)
        gw_breaker_result(b, false, "timeout");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    gw_breaker_result(b, false, "502");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_OPEN);
    assert_int_equal(nopened, 1);
    assert_int_equal(cb_port, 7001);
    assert_string_equal(cb_err, "502");
    assert_false(gw_breaker_allow(b));
}

static void test_window(void **state)
{
    struct gw_breaker *b = gw_breaker_for("127.0.0.1", 7002);
    (void)state;
    /* 10 of 20 failing (alternating, never 5 straight): exactly half does not open */
    for (int i = 0; i < 20; i++)
        gw_breaker_result(b, i % 2 == 0, "x");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    /* slide: pattern F F S repeated gives 2/3 failures once the window is full */
    for (int i = 0; i < 40 && gw_breaker_state(b) == GW_BREAKER_CLOSED; i++)
        gw_breaker_result(b, i % 3 == 2, "x");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_OPEN);
    assert_int_equal(nopened, 1);
    /* fewer than 20 calls never trigger the ratio rule: 4 F, 1 S, 4 F, ... (8 of 10) */
    b = gw_breaker_for("127.0.0.1", 7003);
    for (int i = 0; i < 10; i++)
        gw_breaker_result(b, i % 5 == 4, "x");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
}

static void open_it(struct gw_breaker *b)
{
    for (int i = 0; i < 5; i++)
        gw_breaker_result(b, false, "connect refused");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_OPEN);
}

static void test_open_probe_close(void **state)
{
    struct gw_breaker *b = gw_breaker_for("127.0.0.1", 7004);
    (void)state;
    open_it(b);
    fake_now += 29999;
    assert_false(gw_breaker_allow(b));
    fake_now += 1;
    /* one probe only */
    assert_true(gw_breaker_allow(b));
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_HALF_OPEN);
    assert_false(gw_breaker_allow(b));
    assert_false(gw_breaker_allow(b));
    gw_breaker_result(b, true, NULL);
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    assert_int_equal(nclosed, 1);
    assert_true(gw_breaker_allow(b));
    /* closed again with a fresh count: 4 failures do not reopen */
    for (int i = 0; i < 4; i++)
        gw_breaker_result(b, false, "x");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
}

static void test_probe_fails(void **state)
{
    struct gw_breaker *b = gw_breaker_for("127.0.0.1", 7005);
    (void)state;
    open_it(b);
    fake_now += 30000;
    assert_true(gw_breaker_allow(b));
    gw_breaker_result(b, false, "timeout");
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_OPEN);
    assert_int_equal(nopened, 1); /* it never closed, so no second "opened" */
    assert_int_equal(nclosed, 0);
    /* a fresh 30 s from the failed probe */
    fake_now += 29999;
    assert_false(gw_breaker_allow(b));
    fake_now += 1;
    assert_true(gw_breaker_allow(b));
    /* a probe that never reports is replaced after another open period */
    assert_false(gw_breaker_allow(b));
    fake_now += 30000;
    assert_true(gw_breaker_allow(b));
    gw_breaker_result(b, true, NULL);
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_CLOSED);
    /* late results while open are ignored for the counts */
    open_it(b);
    gw_breaker_result(b, true, NULL);
    assert_int_equal(gw_breaker_state(b), GW_BREAKER_OPEN);
}

static void test_registry_and_json(void **state)
{
    struct gw_breaker *a = gw_breaker_for("10.0.0.1", 80), *b = gw_breaker_for("10.0.0.1", 81);
    json_t *arr = json_array(), *o;
    size_t i;
    int seen = 0;
    (void)state;
    assert_ptr_equal(a, gw_breaker_for("10.0.0.1", 80));
    assert_ptr_not_equal(a, b);
    assert_true(gw_breaker_allow(NULL));
    gw_breaker_result(NULL, false, "x");
    open_it(a);
    gw_breakers_json(arr);
    assert_int_equal(json_array_size(arr), 2);
    json_array_foreach(arr, i, o)
    {
        if (json_integer_value(json_object_get(o, "port")) == 80) {
            assert_string_equal(json_string_value(json_object_get(o, "state")), "open");
            assert_string_equal(json_string_value(json_object_get(o, "last_error")),
                                "connect refused");
            assert_int_equal(json_integer_value(json_object_get(o, "failures")), 5);
            assert_true(json_is_string(json_object_get(o, "opened_at")));
            seen++;
        } else {
            assert_string_equal(json_string_value(json_object_get(o, "state")), "closed");
            assert_true(json_is_null(json_object_get(o, "opened_at")));
            assert_true(json_is_null(json_object_get(o, "last_error")));
            seen++;
        }
        assert_string_equal(json_string_value(json_object_get(o, "host")), "10.0.0.1");
    }
    assert_int_equal(seen, 2);
    json_decref(arr);
}

static void *hammer(void *arg)
{
    struct gw_breaker *b = arg;
    for (int i = 0; i < 20000; i++) {
        if (gw_breaker_allow(b))
            gw_breaker_result(b, i % 7 != 0, "x");
    }
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[4];
    struct gw_breaker *b;
    (void)state;
    gw_breaker_set_clock(NULL); /* the real clock; never open long */
    gw_breaker_set_open_ms(0);
    b = gw_breaker_for("127.0.0.1", 7010);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, b), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(nopened, 0); /* 1 in 7 failures never crosses either rule */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_straight_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_probe_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
