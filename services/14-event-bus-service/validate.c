/*
 * validate.c - small helpers shared by the handlers: the grammar of event types and type
 * filters, arena ownership of jansson values, the clock and the JSON reader context.
 */
#include <string.h>

#include "eventbus.h"
#include "gr/arena.h"

static bool lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool eb_type_valid(const char *s)
{
    size_t n = strlen(s), i = 0, dots = 0;

    if (n == 0 || n > EB_TYPE_MAX)
        return false;
    /* First segment: [a-z0-9]+ */
    while (i < n && lower_alnum(s[i]))
        i++;
    if (i == 0)
        return false;
    /* Then one or more (\.[a-z0-9_]+) */
    while (i < n) {
        size_t start;

        if (s[i] != '.')
            return false;
        start = ++i;
        while (i < n && (lower_alnum(s[i]) || s[i] == '_'))
            i++;
        if (i == start)
            return false;
        dots++;
    }
    return dots > 0;
}

bool eb_filter_valid(const char *s, bool *prefix, size_t *pattern_len)
{
    size_t n = strlen(s);

    if (n == 0 || n > EB_TYPE_MAX)
        return false;
    if (s[n - 1] != '*') {
        *prefix = false;
        *pattern_len = n;
        return eb_type_valid(s);
    }
    *prefix = true;
    *pattern_len = n - 1;
    if (n > 1 && !lower_alnum(s[0]))
        return false;
    for (size_t i = 0; i + 1 < n; i++)
        if (!lower_alnum(s[i]) && s[i] != '.' && s[i] != '_')
            return false;
    return true;
}

static void decref_cb(void *p)
{
    json_decref(p);
}

json_t *eb_own(struct gr_arena *a, json_t *v)
{
    GR_ASSERT(v != NULL);
    gr_arena_defer(a, decref_cb, v);
    return v;
}

void eb_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

struct gr_json_rd eb_rd(struct gr_req *req, struct gr_resp *resp)
{
    struct gr_json_rd r = { req->arena, &resp->errs };
    return r;
}

size_t eb_utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}
