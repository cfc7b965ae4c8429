/*
 * test_cart_db.c - cart_db.c's token helpers: a cart_token is 43 base64url characters from 32
 * random bytes and never repeats; its stored form is the lowercase hex SHA-256 (the FIPS 180-2
 * vector for "abc"), the same for the same token and different for another.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "../../cart.h"

static void test_token_shape(void **state)
{
    struct gr_arena a;
    const char *t1, *t2;

    (void)state;
    gr_arena_init(&a);
    t1 = cart_token_new(&a);
    t2 = cart_token_new(&a);
    assert_int_equal(strlen(t1), 43);
    assert_int_equal(strspn(t1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                     43);
    assert_string_not_equal(t1, t2);
    gr_arena_release(&a);
}

static void test_token_hash(void **state)
{
    struct gr_arena a;
    const char *t;

    (void)state;
    gr_arena_init(&a);
    assert_string_equal(cart_token_hash(&a, "abc"),
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    t = cart_token_new(&a);
    assert_string_equal(cart_token_hash(&a, t), cart_token_hash(&a, t));
    assert_string_not_equal(cart_token_hash(&a, t), cart_token_hash(&a, "abc"));
    assert_int_equal(strlen(cart_token_hash(&a, t)), 64);
    gr_arena_release(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_shape),
        cmocka_unit_test(test_token_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
