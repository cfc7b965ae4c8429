/*
 * test_json.c - unit tests for gr/json.h: the strict parser (every 400/422 rule of SERVICES.md
 * section 0 with real byte inputs), the typed readers and their JSON Pointers, RFC 7396 merge
 * patch (the RFC's appendix A table) and compact dumps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gr/json.h"

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

/* Parses a NUL-terminated literal (the NUL is not part of the input). */
static int parse_s(struct fx *f, const char *s, json_t **out)
{
    f->errs.n = 0;
    return gr_json_parse(&f->a, s, strlen(s), out, &f->errs);
}

/* Parses a literal that must be valid and returns the document. */
static json_t *doc(struct fx *f, const char *s)
{
    json_t *v = NULL;

    assert_int_equal(parse_s(f, s, &v), 0);
    assert_non_null(v);
    return v;
}

/* Asserts that @s is rejected with 400, one error at "" whose message contains @what. */
static void assert_400(struct fx *f, const char *s, size_t len, const char *what)
{
    json_t *v = (json_t *)1;

    f->errs.n = 0;
    assert_int_equal(gr_json_parse(&f->a, s, len, &v, &f->errs), GR_EINVAL);
    assert_null(v);
    assert_int_equal(f->errs.n, 1);
    assert_string_equal(f->errs.items[0].field, "");
    if (!strstr(f->errs.items[0].message, what))
        fail_msg("message '%s' lacks '%s'", f->errs.items[0].message, what);
}

#define REJECT(f, lit, what) assert_400((f), (lit), sizeof(lit) - 1, (what))

static void assert_err(struct fx *f, size_t i, const char *field, const char *message)
{
    assert_true(f->errs.n > i);
    assert_string_equal(f->errs.items[i].field, field);
    assert_string_equal(f->errs.items[i].message, message);
}

/* ---- parser ------------------------------------------------------------------------------ */

static void test_parse_valid(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(f, " {\"a\":[1,2.5,\"x\",true,false,null],\"b\":{}} \n\t\r");

    assert_int_equal(f->errs.n, 0);
    assert_true(json_is_object(v));
    assert_int_equal(json_array_size(json_object_get(v, "a")), 6);
    /* The arena owns the only reference; releasing it must free the document (LSan). */
    assert_int_equal(v->refcount, 1);
    assert_true(json_is_integer(doc(f, "5")));
    assert_true(json_is_string(doc(f, "\"s\"")));
    assert_true(json_is_null(doc(f, "null")));
    assert_true(json_is_string(doc(f, "\"\\ud83d\\ude00 \xf0\x9f\x98\x80 \xc3\xa9\"")));
}

static void test_parse_syntax(void **state)
{
    struct fx *f = *state;

    REJECT(f, "", "unexpected end of input");
    REJECT(f, "   ", "unexpected end of input");
    REJECT(f, "{", "unexpected end of input");
    REJECT(f, "{\"a\":}", "invalid JSON syntax");
    REJECT(f, "[1,]", "invalid JSON syntax");
    REJECT(f, "{'a':1}", "invalid JSON syntax");
    REJECT(f, "{\"a\":01}", "invalid JSON syntax");
    REJECT(f, "[NaN]", "invalid JSON syntax");
    REJECT(f, "\"tab\tinside\"", "invalid JSON syntax");
    /* The position is reported. */
    REJECT(f, "{\"a\":1,}", "line 1, column 8 (byte 8)");
}

static void test_parse_trailing(void **state)
{
    struct fx *f = *state;

    REJECT(f, "{}x", "unexpected data after the JSON value");
    REJECT(f, "{}{}", "unexpected data after the JSON value");
    REJECT(f, "1 2", "unexpected data after the JSON value");
    REJECT(f, "{} \n x", "unexpected data after the JSON value");
    /* An embedded NUL byte is trailing garbage, not an end of input. */
    REJECT(f, "{}\0", "JSON");
    doc(f, "{}  \n\r\t");
}

static void test_parse_utf8(void **state)
{
    struct fx *f = *state;

    REJECT(f, "\"\xff\"", "invalid UTF-8");
    REJECT(f, "\xff", "invalid UTF-8");
    REJECT(f, "{\"k\xfe\":1}", "invalid UTF-8");
    /* Overlong encodings of '/' (2 and 3 bytes) and of NUL. */
    REJECT(f, "\"\xc0\xaf\"", "invalid UTF-8");
    REJECT(f, "\"\xe0\x80\xaf\"", "invalid UTF-8");
    REJECT(f, "\"\xc0\x80\"", "invalid UTF-8");
    /* UTF-8-encoded surrogate (CESU-8), truncated sequence, above U+10FFFF, lone continuation. */
    REJECT(f, "\"\xed\xa0\x80\"", "invalid UTF-8");
    REJECT(f, "\"\xe2\x82\"", "invalid UTF-8");
    REJECT(f, "\"\xf4\x90\x80\x80\"", "invalid UTF-8");
    REJECT(f, "\"\x80\"", "invalid UTF-8");
    /* Escaped lone surrogates. */
    REJECT(f, "\"\\ud800\"", "invalid JSON syntax");
    REJECT(f, "\"\\udc00\"", "invalid JSON syntax");
    REJECT(f, "\"\\ud800x\"", "invalid JSON syntax");
    REJECT(f, "\"\\ud800\\u0041\"", "invalid JSON syntax");
}

static void test_parse_nul(void **state)
{
    struct fx *f = *state;

    REJECT(f, "\"a\\u0000b\"", "\\u0000 is not allowed");
    REJECT(f, "{\"\\u0000\":1}", "\\u0000 is not allowed");
    REJECT(f, "\"a\0b\"", "invalid JSON syntax");
}

static void test_parse_duplicates(void **state)
{
    struct fx *f = *state;

    REJECT(f, "{\"a\":1,\"a\":2}", "duplicate object key");
    REJECT(f, "{\"a\":1,\"b\":2,\"a\":1}", "duplicate object key");
    REJECT(f, "{\"x\":{\"b\":1,\"b\":2}}", "duplicate object key");
    REJECT(f, "[{\"k\":1},{\"k\":1,\"k\":1}]", "duplicate object key");
    /* Escapes are decoded before comparing: "\u0061" is "a". */
    REJECT(f, "{\"a\":1,\"\\u0061\":2}", "duplicate object key");
    /* The same key in sibling objects is fine. */
    doc(f, "[{\"k\":1},{\"k\":1}]");
}

static char *nest(size_t depth, char open, char close)
{
    char *s = gr_xmalloc(2 * depth + 1);

    memset(s, open, depth);
    memset(s + depth, close, depth);
    s[2 * depth] = '\0';
    return s;
}

/* {"a":{"a":...1...}} with @depth objects. */
static char *nest_obj(size_t depth)
{
    char *s = gr_xmalloc(6 * depth + 2), *p = s;

    for (size_t i = 0; i < depth; i++, p += 5)
        memcpy(p, "{\"a\":", 5);
    *p++ = '1';
    memset(p, '}', depth);
    p[depth] = '\0';
    return s;
}

static void test_parse_depth(void **state)
{
    struct fx *f = *state;
    char *s = nest(GR_JSON_MAX_DEPTH, '[', ']');

    doc(f, s);
    gr_free(s);
    s = nest(GR_JSON_MAX_DEPTH + 1, '[', ']');
    assert_400(f, s, strlen(s), "nesting deeper than 32 at byte 32");
    gr_free(s);

    /* Objects count too: 32 levels of {"a":...} are fine, 33 are not. */
    s = nest_obj(GR_JSON_MAX_DEPTH);
    doc(f, s);
    gr_free(s);
    s = nest_obj(GR_JSON_MAX_DEPTH + 1);
    assert_400(f, s, strlen(s), "nesting deeper than 32 at byte 160");
    gr_free(s);

    /* Brackets inside strings, even after escaped quotes, do not count. */
    doc(f, "[\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"]");

    /* A million '[' is rejected by the pre-scan without recursing. */
    s = gr_xmalloc(1000000);
    memset(s, '[', 1000000);
    assert_400(f, s, 1000000, "nesting deeper than 32");
    gr_free(s);
}

static void test_parse_numbers(void **state)
{
    struct fx *f = *state;
    json_t *v;

    v = doc(f, "{\"a\":9007199254740992,\"b\":-9007199254740992}");
    assert_int_equal(json_integer_value(json_object_get(v, "a")), 9007199254740992LL);

    assert_int_equal(parse_s(f, "{\"a\":9007199254740993}", &v), GR_EVALID);
    assert_null(v);
    assert_int_equal(f->errs.n, 1);
    assert_err(f, 0, "/a", "must be between -9007199254740992 and 9007199254740992");

    assert_int_equal(parse_s(f, "{\"x\":[1,{\"y/z~\":-9007199254740993}],\"w\":[[1e300]]}", &v),
                     GR_EVALID);
    assert_int_equal(f->errs.n, 1);
    assert_string_equal(f->errs.items[0].field, "/x/1/y~1z~0");

    /* Every offender is reported; a root scalar has pointer "". */
    assert_int_equal(parse_s(f, "[9007199254740993,0,-9223372036854775808]", &v), GR_EVALID);
    assert_int_equal(f->errs.n, 2);
    assert_string_equal(f->errs.items[0].field, "/0");
    assert_string_equal(f->errs.items[1].field, "/2");
    assert_int_equal(parse_s(f, "9223372036854775807", &v), GR_EVALID);
    assert_string_equal(f->errs.items[0].field, "");

    /* Literals that do not fit int64 or a double are malformed. */
    REJECT(f, "9223372036854775808", "number out of range");
    REJECT(f, "[-9223372036854775809]", "number out of range");
    REJECT(f, "1e400", "number out of range");
    REJECT(f, "{\"a\":-1e400}", "number out of range");
    /* Reals are kept as reals (the int reader rejects them later). */
    assert_true(json_is_real(doc(f, "1.0")));
    assert_true(json_is_real(doc(f, "1e2")));
}

static void test_parse_null_errs(void **state)
{
    struct fx *f = *state;
    json_t *v;

    assert_int_equal(gr_json_parse(&f->a, "{", 1, &v, NULL), GR_EINVAL);
    assert_int_equal(gr_json_parse(&f->a, "[9007199254740993]", 18, &v, NULL), GR_EVALID);
    assert_int_equal(gr_json_parse(&f->a, "[1]", 3, &v, NULL), 0);
}

/* ---- readers ----------------------------------------------------------------------------- */

static void test_only(void **state)
{
    struct fx *f = *state;
    static const char *const allowed[] = { "name", "price", NULL };
    json_t *v = doc(f, "{\"name\":1,\"a/b~c\":2,\"price\":3,\"zz\":4}");

    f->errs.n = 0;
    assert_int_equal(gr_json_only(&f->rd, v, "", allowed), GR_EVALID);
    assert_int_equal(f->errs.n, 2);
    assert_err(f, 0, "/a~1b~0c", "unknown field");
    assert_err(f, 1, "/zz", "unknown field");

    f->errs.n = 0;
    assert_int_equal(gr_json_only(&f->rd, v, "/items/0", allowed), GR_EVALID);
    assert_err(f, 0, "/items/0/a~1b~0c", "unknown field");

    f->errs.n = 0;
    assert_int_equal(gr_json_only(&f->rd, doc(f, "{\"name\":\"x\"}"), "", allowed), 0);
    assert_int_equal(gr_json_only(&f->rd, doc(f, "{}"), "", NULL), 0);
    assert_int_equal(f->errs.n, 0);
    assert_int_equal(gr_json_only(&f->rd, doc(f, "{\"a\":1}"), "", NULL), GR_EVALID);
    assert_err(f, 0, "/a", "unknown field");

    f->errs.n = 0;
    assert_int_equal(gr_json_only(&f->rd, doc(f, "[]"), "/x", allowed), GR_EVALID);
    assert_err(f, 0, "/x", "must be an object");
    assert_int_equal(gr_json_only(&f->rd, NULL, "", allowed), GR_EVALID);
    assert_err(f, 1, "", "must be an object");
}

static void test_str(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(
        f, "{\"s\":\"h\xc3\xa9llo\",\"e\":\"\",\"eur\":\"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\","
           "\"n\":5,\"z\":null,\"k/x\":true}");
    const char *out = "untouched";
    bool present = true;

    f->errs.n = 0;
    /* 5 code points in 6 bytes. */
    assert_int_equal(gr_json_str(&f->rd, v, "", "s", GR_JSON_REQUIRED, 5, 5, &out, &present), 0);
    assert_string_equal(out, "h\xc3\xa9llo");
    assert_true(present);
    assert_int_equal(gr_json_str(&f->rd, v, "", "eur", 0, 0, 3, &out, NULL), 0);
    assert_string_equal(out, "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac");
    assert_int_equal(f->errs.n, 0);
    out = "untouched";

    assert_int_equal(gr_json_str(&f->rd, v, "", "eur", 0, 0, 2, &out, NULL), GR_EVALID);
    assert_err(f, 0, "/eur", "must be at most 2 characters");
    assert_int_equal(gr_json_str(&f->rd, v, "", "e", 0, 1, 9, &out, NULL), GR_EVALID);
    assert_err(f, 1, "/e", "must not be empty");
    assert_int_equal(gr_json_str(&f->rd, v, "/o", "s", 0, 6, 9, &out, NULL), GR_EVALID);
    assert_err(f, 2, "/o/s", "must be at least 6 characters");
    assert_int_equal(gr_json_str(&f->rd, v, "", "n", 0, 0, 9, &out, NULL), GR_EVALID);
    assert_err(f, 3, "/n", "must be a string");
    assert_int_equal(gr_json_str(&f->rd, v, "", "k/x", 0, 0, 9, &out, NULL), GR_EVALID);
    assert_err(f, 4, "/k~1x", "must be a string");
    assert_int_equal(gr_json_str(&f->rd, v, "", "z", 0, 0, 9, &out, NULL), GR_EVALID);
    assert_err(f, 5, "/z", "must not be null");
    assert_int_equal(gr_json_str(&f->rd, v, "", "missing", GR_JSON_REQUIRED, 0, 9, &out, &present),
                     GR_EVALID);
    assert_err(f, 6, "/missing", "is required");
    assert_false(present);
    assert_int_equal(f->errs.n, 7);
    assert_string_equal(out, "untouched"); /* errors leave out untouched */

    /* Absent and optional: nothing happens. */
    f->errs.n = 0;
    present = true;
    assert_int_equal(gr_json_str(&f->rd, v, "", "missing", 0, 1, 9, &out, &present), 0);
    assert_false(present);
    assert_string_equal(out, "untouched");
    /* Null when nullable: present, out NULL. */
    assert_int_equal(gr_json_str(&f->rd, v, "", "z", GR_JSON_NULLABLE, 1, 9, &out, &present), 0);
    assert_true(present);
    assert_null(out);
    /* Null even when required-and-nullable is a value. */
    assert_int_equal(
        gr_json_str(&f->rd, v, "", "z", GR_JSON_REQUIRED | GR_JSON_NULLABLE, 1, 9, &out, &present),
        0);
    /* A non-object container counts as "absent". */
    assert_int_equal(gr_json_str(&f->rd, doc(f, "[1]"), "", "s", 0, 0, 9, &out, &present), 0);
    assert_false(present);
    assert_int_equal(f->errs.n, 0);
}

static void test_int(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(f, "{\"i\":42,\"one\":1.0,\"real\":19.99,\"exp\":1e2,\"str\":\"5\",\"t\":true,"
                       "\"neg\":-3,\"big\":9007199254740992,\"z\":null}");
    long long out = 7;
    bool present = false;

    f->errs.n = 0;
    assert_int_equal(gr_json_int(&f->rd, v, "", "i", GR_JSON_REQUIRED, 0, 100, &out, &present), 0);
    assert_int_equal(out, 42);
    assert_true(present);
    assert_int_equal(gr_json_int(&f->rd, v, "", "big", 0, 0, GR_JSON_MAX_INT, &out, NULL), 0);
    assert_int_equal(out, GR_JSON_MAX_INT);
    assert_int_equal(f->errs.n, 0);

    out = 7;
    assert_int_equal(gr_json_int(&f->rd, v, "", "one", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 0, "/one", "must be an integer");
    assert_int_equal(gr_json_int(&f->rd, v, "", "real", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 1, "/real", "must be an integer");
    assert_int_equal(gr_json_int(&f->rd, v, "", "exp", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 2, "/exp", "must be an integer");
    assert_int_equal(gr_json_int(&f->rd, v, "", "str", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 3, "/str", "must be an integer");
    assert_int_equal(gr_json_int(&f->rd, v, "", "t", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 4, "/t", "must be an integer");
    assert_int_equal(gr_json_int(&f->rd, v, "", "neg", 0, 0, 100, &out, NULL), GR_EVALID);
    assert_err(f, 5, "/neg", "must be between 0 and 100");
    assert_int_equal(gr_json_int(&f->rd, v, "", "i", 0, 43, 100, &out, NULL), GR_EVALID);
    assert_err(f, 6, "/i", "must be between 43 and 100");
    assert_int_equal(gr_json_int(&f->rd, v, "", "i", 0, 0, 41, &out, NULL), GR_EVALID);
    assert_int_equal(f->errs.n, 8);
    assert_int_equal(out, 7);

    f->errs.n = 0;
    assert_int_equal(gr_json_int(&f->rd, v, "", "z", GR_JSON_NULLABLE, 1, 9, &out, &present), 0);
    assert_int_equal(out, 0);
    assert_true(present);
    assert_int_equal(gr_json_int(&f->rd, v, "", "none", 0, 1, 9, &out, &present), 0);
    assert_false(present);
    assert_int_equal(f->errs.n, 0);
}

static void test_bool_obj_arr(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(f, "{\"b\":false,\"o\":{\"x\":1},\"a\":[1,2,3],\"n\":0,\"z\":null}");
    bool b = true, present;
    json_t *o = NULL, *arr = NULL;

    f->errs.n = 0;
    assert_int_equal(gr_json_bool(&f->rd, v, "", "b", GR_JSON_REQUIRED, &b, &present), 0);
    assert_false(b);
    assert_int_equal(gr_json_obj(&f->rd, v, "", "o", GR_JSON_REQUIRED, &o, &present), 0);
    assert_ptr_equal(o, json_object_get(v, "o"));
    assert_int_equal(gr_json_arr(&f->rd, v, "", "a", GR_JSON_REQUIRED, 3, &arr, &present), 0);
    assert_ptr_equal(arr, json_object_get(v, "a"));
    assert_int_equal(f->errs.n, 0);

    assert_int_equal(gr_json_bool(&f->rd, v, "", "n", 0, &b, NULL), GR_EVALID);
    assert_err(f, 0, "/n", "must be a boolean");
    assert_int_equal(gr_json_obj(&f->rd, v, "", "a", 0, &o, NULL), GR_EVALID);
    assert_err(f, 1, "/a", "must be an object");
    assert_int_equal(gr_json_arr(&f->rd, v, "", "o", 0, 9, &arr, NULL), GR_EVALID);
    assert_err(f, 2, "/o", "must be an array");
    assert_int_equal(gr_json_arr(&f->rd, v, "", "a", 0, 2, &arr, NULL), GR_EVALID);
    assert_err(f, 3, "/a", "must have at most 2 items");
    assert_int_equal(gr_json_bool(&f->rd, v, "", "q", GR_JSON_REQUIRED, &b, NULL), GR_EVALID);
    assert_err(f, 4, "/q", "is required");
    assert_int_equal(gr_json_obj(&f->rd, v, "", "z", 0, &o, NULL), GR_EVALID);
    assert_err(f, 5, "/z", "must not be null");

    f->errs.n = 0;
    b = true;
    assert_int_equal(gr_json_bool(&f->rd, v, "", "z", GR_JSON_NULLABLE, &b, &present), 0);
    assert_false(b);
    assert_int_equal(gr_json_obj(&f->rd, v, "", "z", GR_JSON_NULLABLE, &o, &present), 0);
    assert_null(o);
    assert_int_equal(gr_json_arr(&f->rd, v, "", "z", GR_JSON_NULLABLE, 1, &arr, &present), 0);
    assert_null(arr);
    assert_true(present);
    assert_int_equal(f->errs.n, 0);
}

static void test_pointers(void **state)
{
    struct fx *f = *state;

    assert_string_equal(gr_json_ptr_key(&f->a, "", "a/b~c"), "/a~1b~0c");
    assert_string_equal(gr_json_ptr_key(&f->a, "/x", "~~//"), "/x/~0~0~1~1");
    assert_string_equal(gr_json_ptr_key(&f->a, "", ""), "/");
    assert_string_equal(gr_json_ptr_key(&f->a, NULL, "k"), "/k");
    assert_string_equal(gr_json_ptr_idx(&f->a, "/variants", 2), "/variants/2");
    assert_string_equal(gr_json_ptr_idx(&f->a, "", 0), "/0");
}

/* ---- merge patch and dump ---------------------------------------------------------------- */

/* RFC 7396 appendix A: original, patch, result. */
static const char *const rfc7396[][3] = {
    { "{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}" },
    { "{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}" },
    { "{\"a\":\"b\"}", "{\"a\":null}", "{}" },
    { "{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}" },
    { "{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}" },
    { "{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}" },
    { "{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}" },
    { "{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}" },
    { "[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]" },
    { "{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]" },
    { "{\"a\":\"foo\"}", "null", "null" },
    { "{\"a\":\"foo\"}", "\"bar\"", "\"bar\"" },
    { "{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}" },
    { "[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}" },
    { "{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}" },
};

static void assert_json_eq(struct fx *f, const json_t *v, const char *want)
{
    struct gr_str s;

    assert_int_equal(gr_json_dump(&f->a, v, &s), 0);
    assert_string_equal(s.ptr, want);
}

static void test_merge_patch_rfc(void **state)
{
    struct fx *f = *state;

    for (size_t i = 0; i < sizeof(rfc7396) / sizeof(rfc7396[0]); i++) {
        json_t *t = doc(f, rfc7396[i][0]), *p = doc(f, rfc7396[i][1]);
        json_t *want = doc(f, rfc7396[i][2]);
        json_t *res = gr_json_merge_patch_value(t, p);
        struct gr_str before;

        assert_non_null(res);
        if (!json_equal(res, want))
            fail_msg("case %zu: wrong result", i);
        /* Exact text too, which checks key order for the objects. */
        assert_json_eq(f, res, rfc7396[i][2]);
        json_decref(res);
        /* The inputs are untouched. */
        assert_json_eq(f, t, rfc7396[i][0]);
        assert_json_eq(f, p, rfc7396[i][1]);

        /* In place: objects only; anything else is GR_EVALID with the target unchanged. */
        assert_int_equal(gr_json_dump(&f->a, t, &before), 0);
        if (json_is_object(t) && json_is_object(p)) {
            assert_int_equal(gr_json_merge_patch(t, p), 0);
            assert_json_eq(f, t, rfc7396[i][2]);
        } else {
            assert_int_equal(gr_json_merge_patch(t, p), GR_EVALID);
            assert_json_eq(f, t, before.ptr);
        }
    }
}

static void test_merge_patch_aliasing(void **state)
{
    struct fx *f = *state;
    json_t *t = doc(f, "{\"a\":null,\"b\":{\"c\":null,\"d\":1}}");
    json_t *u = doc(f, "{\"x\":{\"x\":null,\"y\":2}}");
    json_t *w = doc(f, "{\"k\":[1]}"), *res;

    /* A document patched with itself loses its nulls. */
    assert_int_equal(gr_json_merge_patch(t, t), 0);
    assert_json_eq(f, t, "{\"b\":{\"d\":1}}");
    /* A patch that lives inside the target may delete its own parent. */
    assert_int_equal(gr_json_merge_patch(u, json_object_get(u, "x")), 0);
    assert_json_eq(f, u, "{\"y\":2}");
    /* Replaced values are copies, not shared with the patch. */
    res = doc(f, "{}");
    assert_int_equal(gr_json_merge_patch(res, w), 0);
    json_array_append_new(json_object_get(res, "k"), json_integer(2));
    assert_json_eq(f, w, "{\"k\":[1]}");
    res = gr_json_merge_patch_value(NULL, w);
    assert_json_eq(f, res, "{\"k\":[1]}");
    json_decref(res);
}

static void test_dump(void **state)
{
    struct fx *f = *state;
    json_t *v = doc(f, "{ \"b\" : 1, \"a\" : [ true, null, \"\xc3\xa9\\n\\\"\" ], \"c\":-0.5 }");
    struct gr_str s;

    assert_json_eq(f, v, "{\"b\":1,\"a\":[true,null,\"\xc3\xa9\\n\\\"\"],\"c\":-0.5}");
    assert_int_equal(gr_json_dump(&f->a, v, &s), 0);
    assert_int_equal(s.len, strlen(s.ptr));
    assert_json_eq(f, doc(f, " 5 "), "5");
    assert_json_eq(f, doc(f, "\"x\""), "\"x\"");
    assert_json_eq(f, doc(f, "[]"), "[]");
    assert_int_equal(gr_json_dump(&f->a, NULL, &s), GR_EINTERNAL);
    assert_null(s.ptr);
}

/* Texts shorter than, exactly at and longer than the one-pass guess come out whole. */
static void test_dump_sizes(void **state)
{
    struct fx *f = *state;
    /* {"k":"xxx…"}: 8 bytes around the string */
    const size_t sizes[] = { 9,
                             GR_JSON_DUMP_GUESS - 2,
                             GR_JSON_DUMP_GUESS - 1,
                             GR_JSON_DUMP_GUESS,
                             GR_JSON_DUMP_GUESS + 1,
                             5 * GR_JSON_DUMP_GUESS };

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i] - 8, len = 0;
        char *x = gr_arena_alloc(&f->a, n + 1);
        json_t *v;
        char *txt;

        memset(x, 'x', n);
        x[n] = '\0';
        v = json_pack("{s:s}", "k", x);
        txt = gr_json_dumpb(&f->a, v, JSON_COMPACT, &len);
        assert_non_null(txt);
        assert_int_equal(len, sizes[i]);
        assert_int_equal(strlen(txt), len);
        assert_memory_equal(txt, "{\"k\":\"", 6);
        assert_memory_equal(txt + len - 2, "\"}", 2);
        json_decref(v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_syntax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_trailing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_nul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_null_errs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_str, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bool_obj_arr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pointers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_patch_rfc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_patch_aliasing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_sizes, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
