/*
 * test_ratelimit.c - the in-process rate limits of gr/ratelimit.h: fixed windows (limit,
 * Retry-After, window end on the library clock, peek, reset, bounded table) and token buckets
 * (burst, refill, Retry-After, clock going back, bounded table that a flood of new keys cannot
 * use to reset an exhausted key, exact budgets under 8 threads), and the cost of one take.
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

#include "gr/ratelimit.h"
#include "gr/time.h"

#define THREADS    8
#define PER_THREAD 20000

static int reset_clock(void **state)
{
    (void)state;
    gr_time_set_offset_ms(0);
    return 0;
}

static void test_rl_window(void **state)
{
    struct gr_rl *rl = gr_rl_new(16);
    int retry = 0;

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_true(gr_rl_hit(rl, "k", 3, 60000, &retry));
    assert_false(gr_rl_hit(rl, "k", 3, 60000, &retry));
    assert_int_equal(retry, 60);
    assert_true(gr_rl_hit(rl, "other", 3, 60000, NULL)); /* keys are separate */
    gr_time_set_offset_ms(30000);
    assert_false(gr_rl_hit(rl, "k", 3, 60000, &retry));
    assert_in_range(retry, 29, 30);
    gr_time_set_offset_ms(60001);
    assert_true(gr_rl_hit(rl, "k", 3, 60000, &retry)); /* a new window */
    gr_rl_free(rl);
}

static void test_rl_exceeded_reset(void **state)
{
    struct gr_rl *rl = gr_rl_new(16);
    int retry = 0;

    (void)state;
    assert_false(gr_rl_exceeded(rl, "k", 2, 10000, &retry));
    assert_true(gr_rl_hit(rl, "k", 2, 10000, NULL));
    assert_false(gr_rl_exceeded(rl, "k", 2, 10000, &retry)); /* peeking counts nothing */
    assert_false(gr_rl_exceeded(rl, "k", 2, 10000, &retry));
    assert_true(gr_rl_hit(rl, "k", 2, 10000, NULL));
    assert_true(gr_rl_exceeded(rl, "k", 2, 10000, &retry));
    assert_int_equal(retry, 10);
    gr_rl_reset(rl, "k");
    assert_false(gr_rl_exceeded(rl, "k", 2, 10000, &retry));
    assert_true(gr_rl_hit(rl, "k", 2, 10000, NULL));
    assert_int_equal(gr_rl_fallbacks(rl), 0);
    gr_rl_free(rl);
}

static void test_rl_bounded(void **state)
{
    struct gr_rl *rl = gr_rl_new(16);
    char key[32];

    (void)state;
    /* 1000 keys, each over its limit, in a table of 16: the oldest are forgotten. */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        gr_time_set_offset_ms(i); /* distinct window starts: a strict eviction order */
        assert_true(gr_rl_hit(rl, key, 1, 600000, NULL));
        assert_false(gr_rl_hit(rl, key, 1, 600000, NULL));
    }
    assert_true(gr_rl_hit(rl, "key0", 1, 600000, NULL));
    assert_false(gr_rl_hit(rl, "key999", 1, 600000, NULL)); /* the newest is kept */
    gr_rl_free(rl);
}

static void test_tb_burst_refill(void **state)
{
    struct gr_tb *tb = gr_tb_new(16, NULL);
    int retry = 0;

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_true(gr_tb_take(tb, "k", 2.0, 3, &retry));
    assert_false(gr_tb_take(tb, "k", 2.0, 3, &retry));
    assert_int_equal(retry, 1); /* half a second, rounded up */
    assert_true(gr_tb_take(tb, "other", 2.0, 3, NULL));
    gr_time_set_offset_ms(500); /* one token back */
    assert_true(gr_tb_take(tb, "k", 2.0, 3, NULL));
    assert_false(gr_tb_take(tb, "k", 2.0, 3, NULL));
    gr_time_set_offset_ms(60500); /* refills up to the burst, no more */
    for (int i = 0; i < 3; i++)
        assert_true(gr_tb_take(tb, "k", 2.0, 3, NULL));
    assert_false(gr_tb_take(tb, "k", 2.0, 3, NULL));
    assert_int_equal(gr_tb_fallbacks(tb), 0);
    gr_tb_free(tb);
}

static void test_tb_retry_after(void **state)
{
    struct gr_tb *tb = gr_tb_new(16, NULL);
    int retry = 0;

    (void)state;
    assert_true(gr_tb_take(tb, "slow", 0.1, 1, &retry)); /* one per 10 s */
    assert_false(gr_tb_take(tb, "slow", 0.1, 1, &retry));
    assert_int_equal(retry, 10);
    gr_time_set_offset_ms(4000);
    assert_false(gr_tb_take(tb, "slow", 0.1, 1, &retry));
    assert_int_equal(retry, 6);
    gr_time_set_offset_ms(10000);
    assert_true(gr_tb_take(tb, "slow", 0.1, 1, &retry));
    /* Nonsense parameters are clamped, not trusted: burst 0 is 1, rate 0 one per day. */
    assert_true(gr_tb_take(tb, "zero", 0.0, 0, &retry));
    assert_false(gr_tb_take(tb, "zero", 0.0, 0, &retry));
    assert_int_equal(retry, 86400);
    gr_tb_free(tb);
}

static void test_tb_clock_back(void **state)
{
    struct gr_tb *tb = gr_tb_new(16, NULL);

    (void)state;
    gr_time_set_offset_ms(100000);
    assert_true(gr_tb_take(tb, "k", 1.0, 1, NULL));
    gr_time_set_offset_ms(0); /* 100 s back: no refill, and no stall afterwards */
    assert_false(gr_tb_take(tb, "k", 1.0, 1, NULL));
    gr_time_set_offset_ms(1000);
    assert_true(gr_tb_take(tb, "k", 1.0, 1, NULL));
    gr_tb_free(tb);
}

static void test_tb_bounded(void **state)
{
    struct gr_tb *tb = gr_tb_new(16, NULL);
    char key[32];

    (void)state;
    /* An exhausted bucket survives a flood of new keys that each take one token... */
    for (int i = 0; i < 5; i++)
        assert_true(gr_tb_take(tb, "victim", 0.001, 5, NULL));
    assert_false(gr_tb_take(tb, "victim", 0.001, 5, NULL));
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "flood%d", i);
        assert_true(gr_tb_take(tb, key, 0.001, 5, NULL));
    }
    assert_false(gr_tb_take(tb, "victim", 0.001, 5, NULL));
    /* ...but the table stays bounded: 1000 exhausted keys cannot all be remembered. */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "ex%d", i);
        assert_true(gr_tb_take(tb, key, 0.001, 1, NULL));
        assert_false(gr_tb_take(tb, key, 0.001, 1, NULL));
    }
    assert_true(gr_tb_take(tb, "ex0", 0.001, 1, NULL));
    gr_tb_free(tb);
}

static void test_tb_long_keys(void **state)
{
    struct gr_tb *tb = gr_tb_new(16, NULL);
    char a[600], b[600];

    (void)state;
    memset(a, 'x', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[10] = 'y';
    assert_true(gr_tb_take(tb, a, 0.001, 1, NULL));
    assert_false(gr_tb_take(tb, a, 0.001, 1, NULL));
    assert_true(gr_tb_take(tb, b, 0.001, 1, NULL));
    gr_tb_free(tb);
}

struct worker {
    struct gr_tb *tb;
    int id;
    int shared_ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char key[32];

    for (int i = 0; i < PER_THREAD; i++) {
        if (gr_tb_take(w->tb, "shared", 0.001, 1000, NULL))
            w->shared_ok++;
        snprintf(key, sizeof(key), "t%d-%d", w->id, i % 500);
        (void)gr_tb_take(w->tb, key, 1000.0, 10, NULL);
    }
    return NULL;
}

static void test_tb_threads(void **state)
{
    struct gr_tb *tb = gr_tb_new(100000, NULL);
    pthread_t th[THREADS];
    struct worker w[THREADS];
    int total = 0;
    int64_t t0 = gr_time_mono_ns();

    (void)state;
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ .tb = tb, .id = i };
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += w[i].shared_ok;
    }
    fprintf(stderr, "gr_tb_take in-process, %d threads: %.0f ns per take (wall / all takes)\n",
            THREADS, (double)(gr_time_mono_ns() - t0) / (THREADS * PER_THREAD * 2.0));
    /* 160000 takes in well under the 1000 s a token takes to come back: exactly the burst. */
    assert_int_equal(total, 1000);
    gr_tb_free(tb);
}

static void test_tb_cost(void **state)
{
    struct gr_tb *tb = gr_tb_new(65536, NULL);
    char keys[1000][24];
    int n = 1000000, ok = 0;
    int64_t t0, t1;

    (void)state;
    for (int i = 0; i < 1000; i++)
        snprintf(keys[i], sizeof(keys[i]), "ip|10.0.%d.%d", i / 256, i % 256);
    t0 = gr_time_mono_ns();
    for (int i = 0; i < n; i++)
        ok += gr_tb_take(tb, keys[i % 1000], 100.0, 50, NULL);
    t1 = gr_time_mono_ns();
    fprintf(stderr, "gr_tb_take in-process: %.0f ns/op (1000 keys, one thread)\n",
            (double)(t1 - t0) / n);
    assert_true(ok > 0);
    assert_true((t1 - t0) / n < 20000); /* loose: sanitizer builds are several times slower */
    gr_tb_free(tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rl_window, reset_clock),
        cmocka_unit_test_teardown(test_rl_exceeded_reset, reset_clock),
        cmocka_unit_test_teardown(test_rl_bounded, reset_clock),
        cmocka_unit_test_teardown(test_tb_burst_refill, reset_clock),
        cmocka_unit_test_teardown(test_tb_retry_after, reset_clock),
        cmocka_unit_test_teardown(test_tb_clock_back, reset_clock),
        cmocka_unit_test_teardown(test_tb_bounded, reset_clock),
        cmocka_unit_test_teardown(test_tb_long_keys, reset_clock),
        cmocka_unit_test_teardown(test_tb_threads, reset_clock),
        cmocka_unit_test_teardown(test_tb_cost, reset_clock),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
