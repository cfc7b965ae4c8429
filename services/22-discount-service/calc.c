/*
 * calc.c - the discount arithmetic (SERVICES §22 Rules, §0 Money): which lines a coupon
 * applies to, and how much it takes off each, rounded half-up per line and never more than
 * the eligible lines' remaining amount. Pure functions on integers of minor units.
 */
#include <string.h>

#include "discount.h"

/* True when the JSON array @ids holds the string @id. */
static bool ids_have(const json_t *ids, const char *id)
{
    size_t i;
    json_t *v;

    if (id == NULL)
        return false;
    json_array_foreach(ids, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
            return true;
    }
    return false;
}

bool dc_eligible(const struct coupon *c, const struct dc_line *l)
{
    if (json_array_size(c->product_ids) == 0 && json_array_size(c->category_ids) == 0)
        return true;
    return ids_have(c->product_ids, l->product_id) || ids_have(c->category_ids, l->category_id);
}

long long dc_percent(long long amount, long long bp)
{
    return (amount * bp + DISCOUNT_BP_MAX / 2) / DISCOUNT_BP_MAX;
}

/* round_half_up(@a x @b / @d) for non-negative operands whose product fits 63 bits. */
static long long mul_div_half_up(long long a, long long b, long long d)
{
    return (a * b * 2 + d) / (d * 2);
}

/* Fixed amount: min(amount_off, eligible remaining) spread over the eligible lines. */
static long long apply_fixed(const struct coupon *c, struct dc_line *lines, size_t n)
{
    long long eligible = 0, target, given = 0;

    for (size_t i = 0; i < n; i++)
        if (dc_eligible(c, &lines[i]))
            eligible += lines[i].remaining;
    target = c->amount_off < eligible ? c->amount_off : eligible;
    if (target <= 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        long long share;
        if (!dc_eligible(c, &lines[i]))
            continue;
        share = mul_div_half_up(target, lines[i].remaining, eligible);
        if (share > target - given)
            share = target - given;
        if (share > lines[i].remaining)
            share = lines[i].remaining;
        lines[i].discount = share;
        given += share;
    }
    /* Rounding left some cents over: settle them on the lines in order, where there is room. */
    for (size_t i = 0; i < n && given < target; i++) {
        long long room;
        if (!dc_eligible(c, &lines[i]))
            continue;
        room = lines[i].remaining - lines[i].discount;
        if (room > target - given)
            room = target - given;
        lines[i].discount += room;
        given += room;
    }
    return given;
}

void dc_apply(const struct coupon *c, struct dc_line *lines, size_t n, long long shipping,
              long long *lines_total, long long *ship)
{
    long long total = 0;

    *ship = 0;
    for (size_t i = 0; i < n; i++)
        lines[i].discount = 0;
    if (strcmp(c->kind, "percent") == 0) {
        for (size_t i = 0; i < n; i++) {
            if (!dc_eligible(c, &lines[i]))
                continue;
            lines[i].discount = dc_percent(lines[i].remaining, c->percent_off_bp);
            total += lines[i].discount;
        }
    } else if (strcmp(c->kind, "fixed") == 0) {
        total = apply_fixed(c, lines, n);
    } else {
        *ship = shipping;
    }
    for (size_t i = 0; i < n; i++)
        lines[i].remaining -= lines[i].discount;
    *lines_total = total;
}
