/*
 * test_id.c - UUIDv7: format, version and variant bits, timestamp, strict order within and
 * across threads, uniqueness, speed, and gr_id_valid.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "gr/arena.h"
#include "gr/id.h"

#define THREADS    4
#define PER_THREAD 100000

static uint64_t hex_u64(const char *s, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        v = v * 16 + (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_format_and_bits(void **state)
{
    char id[GR_ID_LEN];
    int64_t before = wall_ms(), after, ts;
    char ts_hex[13];

    (void)state;
    gr_id_new(id);
    after = wall_ms();
    assert_int_equal(strlen(id), 36);
    assert_true(gr_id_valid(id, strlen(id)));
    assert_int_equal(id[14], '7');           /* version */
    assert_non_null(strchr("89ab", id[19])); /* variant 10xx */
    memcpy(ts_hex, id, 8);
    memcpy(ts_hex + 8, id + 9, 4);
    ts = (int64_t)hex_u64(ts_hex, 12);
    assert_true(ts >= before);
    assert_true(ts <= after + 1);
}

static void test_increasing_single_thread(void **state)
{
    char prev[GR_ID_LEN], cur[GR_ID_LEN];

    (void)state;
    gr_id_new(prev);
    for (int i = 0; i < 200000; i++) {
        gr_id_new(cur);
        assert_true(strcmp(prev, cur) < 0);
        assert_int_equal(cur[14], '7');
        assert_non_null(strchr("89ab", cur[19]));
        memcpy(prev, cur, GR_ID_LEN);
    }
}

static void test_speed(void **state)
{
    char id[GR_ID_LEN];
    struct timespec a, b;
    double secs;

    (void)state;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 1000000; i++)
        gr_id_new(id);
    clock_gettime(CLOCK_MONOTONIC, &b);
    secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    /* ≥ 1M ids/s in a normal build; sanitizer builds get 5x slack. */
    assert_true(secs < 5.0);
}

struct worker {
    char (*ids)[GR_ID_LEN];
    int ordered;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;

    w->ordered = 1;
    for (int i = 0; i < PER_THREAD; i++) {
        gr_id_new(w->ids[i]);
        if (i > 0 && strcmp(w->ids[i - 1], w->ids[i]) >= 0)
            w->ordered = 0;
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_threads_unique(void **state)
{
    struct worker w[THREADS];
    pthread_t th[THREADS];
    char(*all)[GR_ID_LEN] = gr_xcalloc(THREADS * PER_THREAD, GR_ID_LEN);

    (void)state;
    for (int t = 0; t < THREADS; t++) {
        w[t].ids = all + (size_t)t * PER_THREAD;
        assert_int_equal(pthread_create(&th[t], NULL, worker_run, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(th[t], NULL), 0);
        assert_int_equal(w[t].ordered, 1);
    }
    qsort(all, THREADS * PER_THREAD, GR_ID_LEN, cmp_id);
    for (size_t i = 1; i < THREADS * PER_THREAD; i++)
        assert_true(strcmp(all[i - 1], all[i]) < 0);
    gr_free(all);
}

static void test_valid(void **state)
{
    static const char *good[] = {
        "0190e8f0-8a3b-7c4d-9e5f-0123456789ab",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
    };
    static const char *bad[] = {
        "0190E8F0-8A3B-7C4D-9E5F-0123456789AB",  /* upper case */
        "0190e8f0-8a3b-7c4d-9e5f-0123456789a",   /* short */
        "0190e8f0-8a3b-7c4d-9e5f-0123456789abc", /* long */
        "0190e8f08a3b-7c4d-9e5f-0123456789ab-",
        "0190e8f0-8a3b-7c4d-9e5f_0123456789ab",
        "0190e8f0-8a3b-7c4d-9e5g-0123456789ab",
        "{190e8f0-8a3b-7c4d-9e5f-0123456789ab",
        "",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(gr_id_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(gr_id_valid(bad[i], strlen(bad[i])));
    /* The length is authoritative: a valid prefix of a longer string is not enough. */
    assert_false(gr_id_valid(good[0], 35));
    assert_false(gr_id_valid(NULL, 36));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_and_bits), cmocka_unit_test(test_increasing_single_thread),
        cmocka_unit_test(test_speed),           cmocka_unit_test(test_threads_unique),
        cmocka_unit_test(test_valid),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
