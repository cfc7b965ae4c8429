/*
 * test_cursor.c - signed cursors: round trips (also binary and empty payloads), rejection of
 * every single-character edit, truncation, other scopes and keys, garbage and oversize input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gr/arena.h"
#include "gr/cursor.h"

#define SCOPE   "GET /api/v1/products?brand=x&sort=price"
#define PAYLOAD "2026-11-24T21:42:49.123Z|0190e8f0-8a3b-7c4d-9e5f-0123456789ab"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

struct fixture {
    struct gr_arena a;
    struct gr_cursor_key key;
};

static int setup(void **state)
{
    static struct fixture f;

    gr_arena_init(&f.a);
    gr_cursor_key_from_secret(&f.key, "s3cret", 6);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    gr_arena_release(&f->a);
    return 0;
}

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    const char *c = NULL, *p = NULL;
    size_t len = 0;

    assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, PAYLOAD, strlen(PAYLOAD), &c), 0);
    assert_non_null(c);
    assert_null(strpbrk(c, "+/=")); /* URL-safe */
    assert_int_equal(gr_cursor_decode(&f->key, &f->a, SCOPE, c, &p, &len), 0);
    assert_int_equal(len, strlen(PAYLOAD));
    assert_string_equal(p, PAYLOAD);
    /* Deterministic: same key, scope and payload give the same cursor. */
    {
        const char *c2 = NULL;

        assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, PAYLOAD, strlen(PAYLOAD), &c2), 0);
        assert_string_equal(c, c2);
    }
}

static void test_round_trip_lengths(void **state)
{
    struct fixture *f = *state;
    char payload[GR_CURSOR_PAYLOAD_MAX];

    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)(i * 37 + 11); /* all byte values, including NUL */
    for (size_t n = 0; n <= GR_CURSOR_PAYLOAD_MAX; n += (n < 40 ? 1 : 97)) {
        const char *c = NULL, *p = NULL;
        size_t len = 12345;

        assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, payload, n, &c), 0);
        assert_true(strlen(c) <= GR_CURSOR_MAX);
        assert_int_equal(gr_cursor_decode(&f->key, &f->a, SCOPE, c, &p, &len), 0);
        assert_int_equal(len, n);
        assert_memory_equal(p, payload, n);
        assert_int_equal(p[n], '\0');
    }
    {
        const char *c = NULL, *p = NULL;

        assert_int_equal(
            gr_cursor_encode(&f->key, &f->a, SCOPE, payload, GR_CURSOR_PAYLOAD_MAX, &c), 0);
        assert_int_equal(gr_cursor_decode(&f->key, &f->a, SCOPE, c, &p, NULL), 0);
        assert_int_equal(
            gr_cursor_encode(&f->key, &f->a, SCOPE, payload, GR_CURSOR_PAYLOAD_MAX + 1, &c),
            GR_ETOOBIG);
    }
}

static void expect_reject(struct fixture *f, const char *scope, const char *cursor)
{
    const char *p = "untouched";
    size_t len = 99;

    if (gr_cursor_decode(&f->key, &f->a, scope, cursor, &p, &len) != GR_EINVAL)
        fail_msg("accepted cursor '%s'", cursor);
    assert_string_equal(p, "untouched");
    assert_int_equal(len, 99);
}

static void test_every_edit_rejected(void **state)
{
    struct fixture *f = *state;
    const char *c = NULL;
    char buf[GR_CURSOR_MAX + 2];
    size_t n;

    /* Two payload lengths so that both 2- and 4-bit tails of base64 are covered. */
    for (int k = 0; k < 3; k++) {
        size_t plen = strlen(PAYLOAD) - (size_t)k;

        assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, PAYLOAD, plen, &c), 0);
        n = strlen(c);
        for (size_t i = 0; i < n; i++) {
            /* Replace. */
            for (const char *r = alphabet; *r; r++) {
                if (*r == c[i])
                    continue;
                memcpy(buf, c, n + 1);
                buf[i] = *r;
                expect_reject(f, SCOPE, buf);
            }
            /* Delete (also every truncation at the end). */
            memcpy(buf, c, i);
            memcpy(buf + i, c + i + 1, n - i);
            expect_reject(f, SCOPE, buf);
            memcpy(buf, c, i);
            buf[i] = '\0';
            expect_reject(f, SCOPE, buf);
            /* Insert. */
            memcpy(buf, c, i);
            buf[i] = 'A';
            memcpy(buf + i + 1, c + i, n - i + 1);
            expect_reject(f, SCOPE, buf);
        }
        memcpy(buf, c, n);
        memcpy(buf + n, "A", 2);
        expect_reject(f, SCOPE, buf);
    }
}

static void test_other_scope_and_key(void **state)
{
    struct fixture *f = *state;
    struct gr_cursor_key other, same, rnd1, rnd2;
    const char *c = NULL, *p = NULL;

    assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, PAYLOAD, strlen(PAYLOAD), &c), 0);
    expect_reject(f, "GET /api/v1/orders?sort=price", c);
    expect_reject(f, "GET /api/v1/products?brand=y&sort=price", c);
    expect_reject(f, SCOPE "x", c);
    expect_reject(f, "", c);

    /* The 0x00 separator: moving bytes between scope and payload changes the tag. */
    {
        const char *c1 = NULL, *c2 = NULL;

        assert_int_equal(gr_cursor_encode(&f->key, &f->a, "ab", "c", 1, &c1), 0);
        assert_int_equal(gr_cursor_encode(&f->key, &f->a, "a", "bc", 2, &c2), 0);
        assert_string_not_equal(strchr(c1, '.'), strchr(c2, '.'));
    }

    gr_cursor_key_from_secret(&other, "s3cres", 6);
    assert_int_not_equal(gr_cursor_decode(&other, &f->a, SCOPE, c, &p, NULL), 0);
    gr_cursor_key_from_secret(&same, "s3cret", 6);
    assert_int_equal(gr_cursor_decode(&same, &f->a, SCOPE, c, &p, NULL), 0);
    assert_memory_equal(same.k, f->key.k, sizeof(same.k));
    /* SHA-256("s3cret") first bytes, from `printf s3cret | sha256sum`. */
    assert_int_equal(same.k[0], 0x1e);
    assert_int_equal(same.k[1], 0xc1);

    gr_cursor_key_random(&rnd1);
    gr_cursor_key_random(&rnd2);
    assert_memory_not_equal(rnd1.k, rnd2.k, sizeof(rnd1.k));
    assert_int_equal(gr_cursor_decode(&rnd1, &f->a, SCOPE, c, &p, NULL), GR_EINVAL);
}

static void test_garbage(void **state)
{
    struct fixture *f = *state;
    static const char *garbage[] = {
        "",
        ".",
        "abc",
        "abc.",
        ".AAAAAAAAAAAAAAAAAAAAAA",
        "MjAyNg.AAAAAAAAAAAAAAAAAAAAAA",
        "MjAyNg==.AAAAAAAAAAAAAAAAAAAAAA",
        "MjAy Ng.AAAAAAAAAAAAAAAAAAAAAA",
        "Mj+yNg.AAAAAAAAAAAAAAAAAAAAAA",
        "MjAyNg.AAAAAAAAAAAAAAAAAAAAAA.AAAA",
        "MjAyNg..AAAAAAAAAAAAAAAAAAAAA",
        "%00%00%00",
        "null",
    };
    char big[GR_CURSOR_MAX + 64];
    const char *c = NULL, *p = NULL;

    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        expect_reject(f, SCOPE, garbage[i]);
    assert_int_equal(gr_cursor_decode(&f->key, &f->a, SCOPE, NULL, &p, NULL), GR_EINVAL);

    /* Too long: a valid-looking cursor over GR_CURSOR_MAX characters. */
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    big[sizeof(big) - 24] = '.';
    expect_reject(f, SCOPE, big);

    /* A payload whose base64 decodes to more than GR_CURSOR_PAYLOAD_MAX bytes is refused even
     * though the whole cursor is under GR_CURSOR_MAX. */
    assert_int_equal(gr_cursor_encode(&f->key, &f->a, SCOPE, "x", 1, &c), 0);
    memset(big, 'A', 1400);
    memcpy(big + 1400, strchr(c, '.'), 24);
    expect_reject(f, SCOPE, big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip_lengths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_edit_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_scope_and_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
