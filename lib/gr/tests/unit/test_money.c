/*
 * test_money.c - unit tests for gr/money.h: the ISO 4217 table (every active code is found,
 * which also proves the table is sorted for bsearch), minor-unit exponents, the money reader's
 * rules and pointers (including inside arrays), serialisation and currency-safe addition.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gr/money.h"

struct fx {
    struct gr_arena a;
    struct gr_errs errs;
    struct gr_json_rd rd;
};

static int setup(void **state)
{
    struct fx *f = gr_xcalloc(1, sizeof(*f));

    gr_arena_init(&f->a);
    f->rd.a = &f->a;
    f->rd.errs = &f->errs;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    gr_arena_release(&f->a);
    gr_free(f);
    return 0;
}

static json_t *doc(struct fx *f, const char *s)
{
    json_t *v = NULL;

    assert_int_equal(gr_json_parse(&f->a, s, strlen(s), &v, &f->errs), 0);
    return v;
}

static void assert_err(struct fx *f, size_t i, const char *field, const char *message)
{
    assert_true(f->errs.n > i);
    assert_string_equal(f->errs.items[i].field, field);
    assert_string_equal(f->errs.items[i].message, message);
}

/* The active ISO 4217 codes with minor units, in the order the table must keep. */
static const char *const all_codes[] = {
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bhd", "bif", "bmd", "bnd", "bob", "bov", "brl", "bsd", "btn", "bwp", "byn", "bzd",
    "cad", "cdf", "che", "chf", "chw", "clf", "clp", "cny", "cop", "cou", "crc", "cuc", "cup",
    "cve", "czk", "djf", "dkk", "dop", "dzd", "egp", "ern", "etb", "eur", "fjd", "fkp", "gbp",
    "gel", "ghs", "gip", "gmd", "gnf", "gtq", "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils",
    "inr", "iqd", "irr", "isk", "jmd", "jod", "jpy", "kes", "kgs", "khr", "kmf", "kpw", "krw",
    "kwd", "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "lyd", "mad", "mdl", "mga", "mkd",
    "mmk", "mnt", "mop", "mru", "mur", "mvr", "mwk", "mxn", "mxv", "myr", "mzn", "nad", "ngn",
    "nio", "nok", "npr", "nzd", "omr", "pab", "pen", "pgk", "php", "pkr", "pln", "pyg", "qar",
    "ron", "rsd", "rub", "rwf", "sar", "sbd", "scr", "sdg", "sek", "sgd", "shp", "sle", "sll",
    "sos", "srd", "ssp", "stn", "svc", "syp", "szl", "thb", "tjs", "tmt", "tnd", "top", "try",
    "ttd", "twd", "tzs", "uah", "ugx", "usd", "usn", "uyi", "uyu", "uyw", "uzs", "ved", "ves",
    "vnd", "vuv", "wst", "xaf", "xcd", "xcg", "xof", "xpf", "yer", "zar", "zmw", "zwg", "zwl",
};

static void test_table(void **state)
{
    size_t n = sizeof(all_codes) / sizeof(all_codes[0]);

    (void)state;
    assert_int_equal(n, 169);
    for (size_t i = 0; i < n; i++) {
        if (!gr_money_currency_valid(all_codes[i]))
            fail_msg("'%s' not found (table missing it or out of order)", all_codes[i]);
        assert_true(gr_money_minor_digits(all_codes[i]) >= 0);
        if (i > 0)
            assert_true(strcmp(all_codes[i - 1], all_codes[i]) < 0);
    }
}

static void test_valid(void **state)
{
    static const char *const bad[] = { "USD", "Usd", "usD", "us",  "usdd",  "",    "u d",
                                       "xau", "xag", "xdr", "xts", "xxx",   "hrk", "vef",
                                       "mro", "abc", "zzz", "aaa", "us\x01" };

    (void)state;
    assert_true(gr_money_currency_valid("usd"));
    assert_true(gr_money_currency_valid("eur"));
    assert_true(gr_money_currency_valid("aed")); /* first */
    assert_true(gr_money_currency_valid("zwl")); /* last */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gr_money_currency_valid(bad[i]))
            fail_msg("'%s' accepted", bad[i]);
        assert_int_equal(gr_money_minor_digits(bad[i]), -1);
    }
    assert_false(gr_money_currency_valid(NULL));
}

static void test_minor_digits(void **state)
{
    (void)state;
    assert_int_equal(gr_money_minor_digits("usd"), 2);
    assert_int_equal(gr_money_minor_digits("eur"), 2);
    assert_int_equal(gr_money_minor_digits("gbp"), 2);
    assert_int_equal(gr_money_minor_digits("jpy"), 0);
    assert_int_equal(gr_money_minor_digits("krw"), 0);
    assert_int_equal(gr_money_minor_digits("vnd"), 0);
    assert_int_equal(gr_money_minor_digits("isk"), 0);
    assert_int_equal(gr_money_minor_digits("clp"), 0);
    assert_int_equal(gr_money_minor_digits("xof"), 0);
    assert_int_equal(gr_money_minor_digits("kwd"), 3);
    assert_int_equal(gr_money_minor_digits("bhd"), 3);
    assert_int_equal(gr_money_minor_digits("jod"), 3);
    assert_int_equal(gr_money_minor_digits("omr"), 3);
    assert_int_equal(gr_money_minor_digits("tnd"), 3);
    assert_int_equal(gr_money_minor_digits("iqd"), 3);
    assert_int_equal(gr_money_minor_digits("lyd"), 3);
    assert_int_equal(gr_money_minor_digits("clf"), 4);
    assert_int_equal(gr_money_minor_digits("uyw"), 4);
    assert_int_equal(gr_money_minor_digits("xyz"), -1);
    assert_int_equal(gr_money_minor_digits(NULL), -1);
}

static void test_read_ok(void **state)
{
    struct fx *f = *state;
    json_t *v =
        doc(f, "{\"price\":{\"currency\":\"jpy\",\"amount\":1999},\"max\":{\"amount\":"
               "99999999,\"currency\":\"usd\"},\"zero\":{\"amount\":0,\"currency\":\"kwd\"},"
               "\"z\":null}");
    struct gr_money m = { 5, "xxx" };
    bool present = false;

    assert_int_equal(gr_json_money(&f->rd, v, "", "price", GR_JSON_REQUIRED, &m, &present), 0);
    assert_true(present);
    assert_int_equal(m.amount, 1999);
    assert_string_equal(m.currency, "jpy");
    assert_int_equal(gr_json_money(&f->rd, v, "", "max", 0, &m, NULL), 0);
    assert_int_equal(m.amount, 99999999);
    assert_int_equal(gr_json_money(&f->rd, v, "", "zero", 0, &m, NULL), 0);
    assert_int_equal(m.amount, 0);
    assert_string_equal(m.currency, "kwd");

    /* Absent optional: untouched. Null nullable: zeroed and present. */
    assert_int_equal(gr_json_money(&f->rd, v, "", "none", 0, &m, &present), 0);
    assert_false(present);
    assert_string_equal(m.currency, "kwd");
    m.amount = 7;
    assert_int_equal(gr_json_money(&f->rd, v, "", "z", GR_JSON_NULLABLE, &m, &present), 0);
    assert_true(present);
    assert_int_equal(m.amount, 0);
    assert_string_equal(m.currency, "");
    assert_int_equal(f->errs.n, 0);
}

/* Reads {"p": <body>} and expects exactly one error at @field with @message. */
static void expect_bad(struct fx *f, const char *body, const char *field, const char *message)
{
    struct gr_money m = { 5, "eur" };
    json_t *v;

    f->errs.n = 0;
    v = doc(f, body);
    assert_int_equal(gr_json_money(&f->rd, v, "", "p", GR_JSON_REQUIRED, &m, NULL), GR_EVALID);
    if (f->errs.n != 1)
        fail_msg("%s: %zu errors, first '%s' '%s'", body, f->errs.n,
                 f->errs.n ? f->errs.items[0].field : "",
                 f->errs.n ? f->errs.items[0].message : "");
    assert_err(f, 0, field, message);
    assert_int_equal(m.amount, 5);
    assert_string_equal(m.currency, "eur");
}

static void test_read_bad(void **state)
{
    struct fx *f = *state;
    const char *cur = "must be a lowercase ISO 4217 currency code";

    expect_bad(f, "{\"p\":{\"amount\":19.99,\"currency\":\"usd\"}}", "/p/amount",
               "must be an integer");
    expect_bad(f, "{\"p\":{\"amount\":\"19.99\",\"currency\":\"usd\"}}", "/p/amount",
               "must be an integer");
    expect_bad(f, "{\"p\":{\"amount\":\"1999\",\"currency\":\"usd\"}}", "/p/amount",
               "must be an integer");
    expect_bad(f, "{\"p\":{\"amount\":1999.0,\"currency\":\"usd\"}}", "/p/amount",
               "must be an integer");
    expect_bad(f, "{\"p\":{\"amount\":-1,\"currency\":\"usd\"}}", "/p/amount",
               "must be between 0 and 99999999");
    expect_bad(f, "{\"p\":{\"amount\":100000000,\"currency\":\"usd\"}}", "/p/amount",
               "must be between 0 and 99999999");
    expect_bad(f, "{\"p\":{\"currency\":\"usd\"}}", "/p/amount", "is required");
    expect_bad(f, "{\"p\":{\"amount\":null,\"currency\":\"usd\"}}", "/p/amount",
               "must not be null");
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":\"USD\"}}", "/p/currency", cur);
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":\"dollars\"}}", "/p/currency", cur);
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":\"\"}}", "/p/currency", cur);
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":\"xau\"}}", "/p/currency", cur);
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":840}}", "/p/currency", "must be a string");
    expect_bad(f, "{\"p\":{\"amount\":1}}", "/p/currency", "is required");
    expect_bad(f, "{\"p\":{\"amount\":1,\"currency\":\"usd\",\"a/b~c\":0}}", "/p/a~1b~0c",
               "unknown field");
    expect_bad(f, "{\"p\":1999}", "/p", "must be an object");
    expect_bad(f, "{\"p\":\"19.99 usd\"}", "/p", "must be an object");
    expect_bad(f, "{\"p\":null}", "/p", "must not be null");
    expect_bad(f, "{}", "/p", "is required");

    /* Errors accumulate: all three problems are reported. */
    f->errs.n = 0;
    {
        struct gr_money m;
        json_t *v = doc(f, "{\"p\":{\"amount\":1.5,\"currency\":\"Usd\",\"x\":1}}");

        assert_int_equal(gr_json_money(&f->rd, v, "/o", "p", 0, &m, NULL), GR_EVALID);
        assert_int_equal(f->errs.n, 3);
        assert_err(f, 0, "/o/p/x", "unknown field");
        assert_err(f, 1, "/o/p/amount", "must be an integer");
        assert_err(f, 2, "/o/p/currency", cur);
    }
}

/* The handler pattern for arrays: the pointer of element i is built with gr_json_ptr_idx. */
static void test_read_in_array(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(f, "{\"variants\":[{\"price\":{\"amount\":1,\"currency\":\"usd\"}},"
                       "{\"price\":{\"amount\":2,\"currency\":\"usd\"}},"
                       "{\"price\":{\"amount\":2.5,\"currency\":\"usd\"}}]}");
    const char *vptr = gr_json_ptr_key(&f->a, "", "variants");
    json_t *arr = NULL, *item;
    long long sum = 0;
    size_t i;

    f->errs.n = 0;
    assert_int_equal(gr_json_arr(&f->rd, v, "", "variants", GR_JSON_REQUIRED, 10, &arr, NULL), 0);
    json_array_foreach(arr, i, item)
    {
        struct gr_money m;

        if (gr_json_money(&f->rd, item, gr_json_ptr_idx(&f->a, vptr, i), "price", GR_JSON_REQUIRED,
                          &m, NULL) == 0)
            sum += m.amount;
    }
    assert_int_equal(sum, 3);
    assert_int_equal(f->errs.n, 1);
    assert_err(f, 0, "/variants/2/price/amount", "must be an integer");
}

static void test_to_json(void **state)
{
    struct fx *f = *state;
    struct gr_money m = { 1999, "usd" }, back;
    json_t *j = gr_money_to_json(&m), *wrap = json_object();
    struct gr_str s;

    assert_non_null(j);
    assert_int_equal(gr_json_dump(&f->a, j, &s), 0);
    assert_string_equal(s.ptr, "{\"amount\":1999,\"currency\":\"usd\"}");
    /* Round trip through the reader. */
    json_object_set_new(wrap, "m", j);
    f->errs.n = 0;
    assert_int_equal(gr_json_money(&f->rd, wrap, "", "m", GR_JSON_REQUIRED, &back, NULL), 0);
    assert_int_equal(back.amount, 1999);
    assert_string_equal(back.currency, "usd");
    json_decref(wrap);
}

static void test_add(void **state)
{
    struct gr_money acc = { 100, "usd" }, a = { 250, "usd" }, e = { 1, "eur" };
    struct gr_money big = { GR_MONEY_MAX_AMOUNT, "usd" };

    (void)state;
    assert_int_equal(gr_money_add(&acc, &a), 0);
    assert_int_equal(acc.amount, 350);
    assert_int_equal(gr_money_add(&acc, &e), GR_EVALID);
    assert_int_equal(acc.amount, 350);
    assert_int_equal(gr_money_add(&acc, &big), GR_EVALID);
    assert_int_equal(acc.amount, 350);
    acc.amount = 0;
    assert_int_equal(gr_money_add(&acc, &big), 0);
    assert_int_equal(acc.amount, GR_MONEY_MAX_AMOUNT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_minor_digits),
        cmocka_unit_test_setup_teardown(test_read_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_bad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_in_array, setup, teardown),
        cmocka_unit_test_setup_teardown(test_to_json, setup, teardown),
        cmocka_unit_test(test_add),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
