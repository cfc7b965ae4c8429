/*
 * test_calc.c - calc.c: percentages round half-up per line; only eligible lines (product or
 * category targets, or every line without targets) are discounted; a fixed amount is spread
 * in proportion, half-up per line, sums exactly to min(amount_off, eligible remaining) and
 * never exceeds a line; stacked coupons work on what the previous one left; free shipping
 * leaves the lines alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../discount.h"

#define P1 "0190a0b0-0000-7000-8000-000000000001"
#define P2 "0190a0b0-0000-7000-8000-000000000002"
#define C1 "0190a0b0-0000-7000-8000-0000000000c1"

static struct coupon make(const char *kind, long long bp, long long amount, const char *pids,
                          const char *cids)
{
    struct coupon c;

    memset(&c, 0, sizeof(c));
    c.kind = kind;
    c.percent_off_bp = bp;
    c.amount_off = amount;
    c.currency = "usd";
    c.product_ids = json_loads(pids, 0, NULL);
    c.category_ids = json_loads(cids, 0, NULL);
    return c;
}

static void drop(struct coupon *c)
{
    json_decref(c->product_ids);
    json_decref(c->category_ids);
}

static struct dc_line line(const char *pid, const char *cid, long long total)
{
    struct dc_line l = {
        .product_id = pid, .category_id = cid, .total = total, .remaining = total
    };
    return l;
}

static void test_percent_half_up(void **state)
{
    (void)state;
    assert_int_equal(dc_percent(333, 1500), 50); /* 49.95 */
    assert_int_equal(dc_percent(330, 1500), 50); /* 49.5 */
    assert_int_equal(dc_percent(329, 1500), 49); /* 49.35 */
    assert_int_equal(dc_percent(1, 4999), 0);    /* 0.4999 */
    assert_int_equal(dc_percent(1, 5000), 1);    /* 0.5 */
    assert_int_equal(dc_percent(99999999, 10000), 99999999);
    assert_int_equal(dc_percent(0, 10000), 0);
}

static void test_eligibility(void **state)
{
    struct coupon all = make("percent", 1000, 0, "[]", "[]");
    struct coupon some = make("percent", 1000, 0, "[\"" P1 "\"]", "[\"" C1 "\"]");
    struct dc_line a = line(P1, NULL, 100), b = line(P2, C1, 100), c = line(P2, NULL, 100);

    (void)state;
    assert_true(dc_eligible(&all, &c));
    assert_true(dc_eligible(&some, &a));
    assert_true(dc_eligible(&some, &b));
    assert_false(dc_eligible(&some, &c));
    drop(&all);
    drop(&some);
}

static void test_percent_lines(void **state)
{
    struct coupon c = make("percent", 1500, 0, "[\"" P1 "\"]", "[\"" C1 "\"]");
    struct dc_line l[3] = { line(P1, NULL, 333), line(P2, C1, 330), line(P2, NULL, 1000) };
    long long total = -1, ship = -1;

    (void)state;
    dc_apply(&c, l, 3, 500, &total, &ship);
    assert_int_equal(total, 100);
    assert_int_equal(ship, 0);
    assert_int_equal(l[0].discount, 50);
    assert_int_equal(l[1].discount, 50);
    assert_int_equal(l[2].discount, 0);
    assert_int_equal(l[0].remaining, 283);
    assert_int_equal(l[2].remaining, 1000);
    drop(&c);
}

static void test_fixed_spread(void **state)
{
    struct coupon c = make("fixed", 0, 1000, "[]", "[]");
    struct dc_line l[3] = { line(P1, NULL, 333), line(P2, NULL, 330), line(P2, NULL, 1000) };
    long long total, ship;

    (void)state;
    dc_apply(&c, l, 3, 0, &total, &ship);
    assert_int_equal(total, 1000);
    assert_int_equal(l[0].discount + l[1].discount + l[2].discount, 1000);
    assert_int_equal(l[0].discount, 201); /* 200.24 -> 200, plus the cent rounding left */
    assert_int_equal(l[1].discount, 198);
    assert_int_equal(l[2].discount, 601);
    drop(&c);
}

static void test_fixed_capped(void **state)
{
    struct coupon c = make("fixed", 0, 5000, "[\"" P1 "\"]", "[]");
    struct dc_line l[2] = { line(P1, NULL, 333), line(P2, NULL, 1000) };
    long long total, ship;

    (void)state;
    dc_apply(&c, l, 2, 0, &total, &ship);
    assert_int_equal(total, 333);
    assert_int_equal(l[0].discount, 333);
    assert_int_equal(l[0].remaining, 0);
    assert_int_equal(l[1].discount, 0);
    drop(&c);
}

/* Many tiny lines: rounding half-up on each must never over-give, and the sum is exact. */
static void test_fixed_tiny_lines(void **state)
{
    struct coupon c = make("fixed", 0, 7, "[]", "[]");
    struct dc_line l[10];
    long long total, ship, sum = 0;

    (void)state;
    for (size_t i = 0; i < 10; i++)
        l[i] = line(P1, NULL, 1);
    dc_apply(&c, l, 10, 0, &total, &ship);
    for (size_t i = 0; i < 10; i++) {
        assert_true(l[i].discount >= 0 && l[i].discount <= 1);
        sum += l[i].discount;
    }
    assert_int_equal(total, 7);
    assert_int_equal(sum, 7);
    drop(&c);
}

static void test_stacked_and_shipping(void **state)
{
    struct coupon p = make("percent", 1500, 0, "[\"" P1 "\"]", "[\"" C1 "\"]");
    struct coupon f = make("fixed", 0, 1000, "[]", "[]");
    struct coupon s = make("free_shipping", 0, 0, "[]", "[]");
    struct dc_line l[3] = { line(P1, NULL, 333), line(P2, C1, 330), line(P2, NULL, 1000) };
    long long total, ship;

    (void)state;
    dc_apply(&p, l, 3, 0, &total, &ship);
    dc_apply(&f, l, 3, 0, &total, &ship);
    assert_int_equal(total, 1000);
    assert_int_equal(l[0].total - l[0].remaining, 231);
    assert_int_equal(l[1].total - l[1].remaining, 229);
    assert_int_equal(l[2].total - l[2].remaining, 640);
    dc_apply(&s, l, 3, 799, &total, &ship);
    assert_int_equal(total, 0);
    assert_int_equal(ship, 799);
    assert_int_equal(l[2].remaining, 360);
    drop(&p);
    drop(&f);
    drop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percent_half_up),      cmocka_unit_test(test_eligibility),
        cmocka_unit_test(test_percent_lines),        cmocka_unit_test(test_fixed_spread),
        cmocka_unit_test(test_fixed_capped),         cmocka_unit_test(test_fixed_tiny_lines),
        cmocka_unit_test(test_stacked_and_shipping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
