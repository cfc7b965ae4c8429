/*
 * test_time.c - the library clock (offset, monotonic clocks) and strict RFC 3339 formatting
 * and parsing: known instants, leap years, offsets, truncation of fractions, and rejects.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "gr/time.h"

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_clock_offset(void **state)
{
    int64_t before, now, after;
    int64_t day = INT64_C(86400000);

    (void)state;
    assert_int_equal(gr_time_get_offset_ms(), 0);
    before = wall_ms();
    now = gr_time_now_ms();
    after = wall_ms();
    assert_true(now >= before && now <= after);

    gr_time_set_offset_ms(30 * day);
    assert_int_equal(gr_time_get_offset_ms(), 30 * day);
    before = wall_ms();
    now = gr_time_now_ms();
    after = wall_ms();
    assert_true(now >= before + 30 * day && now <= after + 30 * day);
    assert_true(gr_time_now_s() >= (before + 30 * day) / 1000);
    assert_true(gr_time_now_s() <= (wall_ms() + 30 * day) / 1000);

    gr_time_set_offset_ms(-day);
    assert_true(gr_time_now_ms() <= wall_ms() - day);
    gr_time_set_offset_ms(0);
    assert_true(gr_time_now_ms() >= after);
}

static void test_mono(void **state)
{
    int64_t a_ms = gr_time_mono_ms(), a_ns = gr_time_mono_ns();
    int64_t b_ns, b_ms;

    (void)state;
    gr_time_set_offset_ms(INT64_C(-1000000000));
    b_ns = gr_time_mono_ns();
    b_ms = gr_time_mono_ms();
    gr_time_set_offset_ms(0);
    assert_true(b_ns >= a_ns);
    assert_true(b_ms >= a_ms);
    assert_true(b_ms - a_ms < 1000);
    assert_true(a_ns / 1000000 - a_ms <= 1);
}

struct fmt_case {
    int64_t ms;
    const char *text;
};

static void test_format(void **state)
{
    static const struct fmt_case cases[] = {
        { 0, "1970-01-01T00:00:00.000Z" },
        { 1, "1970-01-01T00:00:00.001Z" },
        { -1, "1969-12-31T23:59:59.999Z" },
        { 951782400000, "2000-02-29T00:00:00.000Z" },
        { 1795556569123, "2026-11-24T21:42:49.123Z" },
        { 4107542399999, "2100-02-28T23:59:59.999Z" },
        { 4107542400000, "2100-03-01T00:00:00.000Z" },
        { INT64_C(-62167219200000), "0000-01-01T00:00:00.000Z" },
        { INT64_C(253402300799999), "9999-12-31T23:59:59.999Z" },
        /* Out of four-digit range: clamped, never overflowing the buffer. */
        { INT64_MAX, "9999-12-31T23:59:59.999Z" },
        { INT64_MIN, "0000-01-01T00:00:00.000Z" },
    };
    char out[GR_TIME_STR_LEN];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gr_time_format(cases[i].ms, out);
        assert_string_equal(out, cases[i].text);
    }
}

static void test_parse_good(void **state)
{
    static const struct fmt_case cases[] = {
        { 0, "1970-01-01T00:00:00Z" },
        { 1795556569000, "2026-11-24T21:42:49Z" },
        { 1795556569123, "2026-11-24T21:42:49.123Z" },
        { 1795556569100, "2026-11-24T21:42:49.1Z" },
        { 1795556569123, "2026-11-24T21:42:49.123999999Z" }, /* truncated, not rounded */
        { 1795556569000, "2026-11-24T22:42:49+01:00" },
        { 1795556569000, "2026-11-24T16:12:49-05:30" },
        { 1795556569000, "2026-11-24T21:42:49-00:00" },
        { 1795556569000, "2026-11-25T05:42:49+08:00" },
        { 1795556569000, "2026-11-24T00:00:49-21:42" },
        { 951782400000, "2000-02-29T00:00:00Z" },
        { 1709164800000, "2024-02-29T00:00:00Z" },
        { -1000, "1969-12-31T23:59:59Z" },
        { INT64_C(-62167219200000), "0000-01-01T00:00:00Z" },
        { INT64_C(253402300799999), "9999-12-31T23:59:59.999Z" },
    };
    int64_t ms;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms = -42;
        assert_int_equal(gr_time_parse(cases[i].text, &ms), 0);
        assert_int_equal(ms, cases[i].ms);
    }
}

static void test_parse_bad(void **state)
{
    static const char *bad[] = {
        "2026-02-30T00:00:00Z",
        "2026-02-29T00:00:00Z", /* not a leap year */
        "1900-02-29T00:00:00Z", /* century, not a leap year */
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-11-24 21:42:49Z",
        "2026-11-24t21:42:49Z",
        "2026-11-24T21:42:49z",
        "2026-11-24T21:42:49",
        "2026-11-24T24:00:00Z",
        "2026-11-24T23:60:00Z",
        "2026-11-24T23:59:60Z",
        "2026-11-24T21:42:49.Z",
        "2026-11-24T21:42:49.1234567890Z",
        "2026-11-24T21:42:49+0100",
        "2026-11-24T21:42:49+01",
        "2026-11-24T21:42:49+24:00",
        "2026-11-24T21:42:49+01:60",
        "2026-11-24T21:42:49Z ",
        " 2026-11-24T21:42:49Z",
        "2026-11-24T21:42:49ZZ",
        "2026-11-24T21:42:49+01:00Z",
        "2026-11-24",
        "26-11-24T21:42:49Z",
        "2026-1-24T21:42:49Z",
        "2026-11-24T1:42:49Z",
        "+2026-11-24T21:42:49Z",
        "2026-11-24T21:42:4Z",
        "2026-11-24T21:42Z",
        "2026/11/24T21:42:49Z",
        "",
    };
    int64_t ms = 7;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gr_time_parse(bad[i], &ms) != GR_EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(ms, 7); /* untouched on failure */
    assert_int_equal(gr_time_parse(NULL, &ms), GR_EINVAL);
}

static void test_round_trip(void **state)
{
    char out[GR_TIME_STR_LEN];
    int64_t ms;

    (void)state;
    /* Every day boundary ± 1 ms across 1600..2400, with a stride that visits all months. */
    for (int64_t t = INT64_C(-11676096000000); t < INT64_C(13574563200000);
         t += INT64_C(86400000) * 7 + 1) {
        gr_time_format(t, out);
        assert_int_equal(gr_time_parse(out, &ms), 0);
        assert_int_equal(ms, t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clock_offset), cmocka_unit_test(test_mono),
        cmocka_unit_test(test_format),       cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),    cmocka_unit_test(test_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
