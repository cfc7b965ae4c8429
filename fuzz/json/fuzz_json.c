/*
 * fuzz_json.c - libFuzzer harness for gr/json.h and gr/money.h. Each input is parsed with
 * gr_json_parse() into a fresh arena; accepted documents then go through the unknown-field
 * check, every typed reader on every member (arbitrary keys exercise RFC 6901 escaping), the
 * money reader on array elements, a dump that must parse back to an equal document, and RFC
 * 7396 merge patches (in place, aliased and by value) that must be idempotent. Releasing the
 * arena must free everything, which LeakSanitizer checks.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib/gr/include
 *        fuzz/json/fuzz_json.c lib/gr/src/{json,money,status,arena,buf}.c -ljansson
 */
#include <stdint.h>
#include <string.h>

#include "gr/json.h"
#include "gr/money.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const allowed[] = { "name", "amount", "price", "variants", "a", "b", NULL };

/* Runs every reader on member @key of @obj with flags @flags. */
static void read_member(const struct gr_json_rd *r, json_t *obj, const char *ptr, const char *key,
                        unsigned flags)
{
    const char *s = NULL;
    long long n = 0;
    bool b = false, present = false;
    json_t *o = NULL;
    struct gr_money m = { 0, "" };

    (void)gr_json_str(r, obj, ptr, key, flags, 1, 8, &s, &present);
    (void)gr_json_int(r, obj, ptr, key, flags, -5, GR_JSON_MAX_INT, &n, &present);
    (void)gr_json_bool(r, obj, ptr, key, flags, &b, &present);
    (void)gr_json_obj(r, obj, ptr, key, flags, &o, &present);
    (void)gr_json_arr(r, obj, ptr, key, flags, 3, &o, &present);
    if (gr_json_money(r, obj, ptr, key, flags, &m, &present) == 0 && present && m.currency[0]) {
        json_t *j = gr_money_to_json(&m);

        GR_ASSERT(gr_money_currency_valid(m.currency));
        GR_ASSERT(m.amount >= 0 && m.amount <= GR_MONEY_MAX_AMOUNT);
        json_decref(j);
    }
}

static void readers(const struct gr_json_rd *r, json_t *doc)
{
    const char *k;
    json_t *v, *arr = NULL;
    size_t i;

    (void)gr_json_only(r, doc, "", allowed);
    read_member(r, doc, "", "missing", GR_JSON_REQUIRED);
    if (json_is_object(doc)) {
        json_object_foreach(doc, k, v)
        {
            read_member(r, doc, "", k, GR_JSON_OPTIONAL);
            read_member(r, doc, "/x~1y", k, GR_JSON_REQUIRED | GR_JSON_NULLABLE);
        }
    }
    if (gr_json_arr(r, doc, "", "variants", 0, 64, &arr, NULL) == 0 && arr) {
        const char *vptr = gr_json_ptr_key(r->a, "", "variants");

        json_array_foreach(arr, i, v)
        {
            struct gr_money m;

            (void)gr_json_money(r, v, gr_json_ptr_idx(r->a, vptr, i), "price", GR_JSON_REQUIRED, &m,
                                NULL);
        }
    }
}

/* The dump must be valid strict JSON that parses back to an equal document. */
static void round_trip(struct gr_arena *a, json_t *doc)
{
    struct gr_errs errs = GR_ERRS_INIT;
    struct gr_str s;
    json_t *back = NULL;

    GR_ASSERT(gr_json_dump(a, doc, &s) == 0);
    GR_ASSERT(s.len == strlen(s.ptr));
    GR_ASSERT(gr_json_parse(a, s.ptr, s.len, &back, &errs) == 0);
    GR_ASSERT(json_equal(doc, back));
}

static void merge(json_t *doc)
{
    json_t *once, *twice, *t, *first = NULL;
    const char *k;
    json_t *v;

    /* By value, with the document as both target and patch; merge patch is idempotent. */
    once = gr_json_merge_patch_value(doc, doc);
    GR_ASSERT(once);
    twice = gr_json_merge_patch_value(once, doc);
    GR_ASSERT(twice && json_equal(once, twice));
    json_decref(twice);
    json_decref(once);
    if (!json_is_object(doc))
        return;
    /* In place on a copy, patching with itself and with one of its own members. */
    t = json_deep_copy(doc);
    GR_ASSERT(t);
    GR_ASSERT(gr_json_merge_patch(t, t) == 0);
    json_object_foreach(t, k, v)
    {
        if (json_is_object(v)) {
            first = v;
            break;
        }
    }
    if (first)
        GR_ASSERT(gr_json_merge_patch(t, first) == 0);
    json_decref(t);
    /* Empty target: the result is the patch without its nulls. */
    t = json_object();
    GR_ASSERT(gr_json_merge_patch(t, doc) == 0);
    json_decref(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gr_arena a;
    struct gr_errs errs = GR_ERRS_INIT;
    struct gr_json_rd r = { &a, &errs };
    json_t *doc = NULL;
    int rc;

    gr_arena_init(&a);
    rc = gr_json_parse(&a, (const char *)data, size, &doc, &errs);
    if (rc < 0) {
        GR_ASSERT(!doc && errs.n >= 1);
        GR_ASSERT(rc == GR_EINVAL || rc == GR_EVALID);
        goto out;
    }
    readers(&r, doc);
    round_trip(&a, doc);
    merge(doc);
out:
    gr_arena_release(&a);
    return 0;
}
