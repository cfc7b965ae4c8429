/*
 * test_deny.c - deny.c: added jtis deny until exp (on the library clock, moved with
 * gr_time_set_offset_ms), expired or unknown ones do not, re-adding extends, the set stays
 * bounded at GW_DENY_MAX with expired entries swept first, and concurrent use.
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

#include "gr/time.h"

#include "../../gw.h"
#include "../../h1.h"

static int teardown(void **state)
{
    (void)state;
    gw_deny_clear();
    gr_time_set_offset_ms(0);
    return 0;
}

static void test_add_has_expire(void **state)
{
    int64_t now = gr_time_now_s();
    (void)state;
    assert_false(gw_deny_has("a"));
    gw_deny_add("a", now + 60);
    gw_deny_add("b", now + 3600);
    gw_deny_add("past", now - 1);
    gw_deny_add("", now + 60);
    gw_deny_add(NULL, now + 60);
    assert_true(gw_deny_has("a"));
    assert_true(gw_deny_has("b"));
    assert_false(gw_deny_has("past"));
    assert_false(gw_deny_has("ab"));
    assert_false(gw_deny_has(""));
    assert_false(gw_deny_has(NULL));
    assert_int_equal(gw_deny_count(), 2);
    /* re-adding keeps the later exp */
    gw_deny_add("a", now + 10);
    gw_deny_add("b", now + 7200);
    assert_int_equal(gw_deny_count(), 2);
    gr_time_set_offset_ms(61 * 1000);
    assert_false(gw_deny_has("a"));
    assert_true(gw_deny_has("b"));
    gr_time_set_offset_ms(7201 * 1000);
    assert_false(gw_deny_has("b"));
}

static void test_long_jti(void **state)
{
    char big[GW_DENY_JTI_MAX + 2];
    (void)state;
    memset(big, 'j', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    gw_deny_add(big, gr_time_now_s() + 60);
    assert_false(gw_deny_has(big));
    big[GW_DENY_JTI_MAX] = '\0';
    gw_deny_add(big, gr_time_now_s() + 60);
    assert_true(gw_deny_has(big));
}

static void test_bounded(void **state)
{
    int64_t now = gr_time_now_s();
    char jti[32];
    (void)state;
    /* half expire soon, half late */
    for (int i = 0; i < GW_DENY_MAX; i++) {
        snprintf(jti, sizeof(jti), "j-%d", i);
        gw_deny_add(jti, now + (i % 2 ? 100000 : 10));
    }
    assert_int_equal(gw_deny_count(), GW_DENY_MAX);
    for (int i = 0; i < GW_DENY_MAX; i += 997) {
        snprintf(jti, sizeof(jti), "j-%d", i);
        assert_true(gw_deny_has(jti));
    }
    /* full with live entries: the soonest-expiring one is evicted */
    gw_deny_add("new-1", now + 50);
    assert_int_equal(gw_deny_count(), GW_DENY_MAX);
    assert_true(gw_deny_has("new-1"));
    assert_true(gw_deny_has("j-1"));
    /* after the short ones expire, adding sweeps them */
    gr_time_set_offset_ms(20 * 1000);
    gw_deny_add("new-2", now + 100000);
    assert_int_equal(gw_deny_count(), GW_DENY_MAX / 2 + 2);
    assert_true(gw_deny_has("new-2"));
    assert_true(gw_deny_has("new-1"));
    for (int i = 1; i < GW_DENY_MAX; i += 2) {
        snprintf(jti, sizeof(jti), "j-%d", i);
        if (!gw_deny_has(jti))
            fail_msg("lost %s", jti);
    }
    for (int i = 0; i < GW_DENY_MAX; i += 2) {
        snprintf(jti, sizeof(jti), "j-%d", i);
        assert_false(gw_deny_has(jti));
    }
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    char jti[32];
    int64_t now = gr_time_now_s();
    for (int i = 0; i < 5000; i++) {
        snprintf(jti, sizeof(jti), "t%d-%d", id, i);
        gw_deny_add(jti, now + 60);
        if (!gw_deny_has(jti))
            return (void *)1;
    }
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[4];
    void *ret;
    (void)state;
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    assert_int_equal(gw_deny_count(), 20000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_add_has_expire, teardown),
        cmocka_unit_test_teardown(test_long_jti, teardown),
        cmocka_unit_test_teardown(test_bounded, teardown),
        cmocka_unit_test_teardown(test_threads, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
