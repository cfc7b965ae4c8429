/*
 * test_totp.c - totp.c: RFC 6238 Appendix B (SHA-1) vectors, one step of drift either way and
 * not two, single use of a step, malformed codes and secrets, new secrets, the provisioning URI
 * (exact text, and as pyotp reads it), codes made by pyotp, and recovery codes and their hashes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <liboath/oath.h>

#include "gr/arena.h"

#include "../../totp.h"

/* RFC 6238's SHA-1 key "12345678901234567890" in base32. */
#define RFC_B32 "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
#define RFC_KEY "12345678901234567890"

/* The code liboath makes for @key at @t with @digits digits (the reference for our checks). */
static void code_at(const char *key, size_t keylen, long long t, unsigned digits, char *out)
{
    assert_int_equal(oath_totp_generate(key, keylen, (time_t)t, 30, 0, digits, out), OATH_OK);
}

static void rfc_code(long long t, char out[7])
{
    code_at(RFC_KEY, strlen(RFC_KEY), t, 6, out);
}

static void test_rfc6238_vectors(void **state)
{
    static const struct {
        long long t;
        const char *code8;
    } v[] = {
        { 59, "94287082" },         { 1111111109, "07081804" }, { 1111111111, "14050471" },
        { 1234567890, "89005924" }, { 2000000000, "69279037" }, { 20000000000LL, "65353130" },
    };

    (void)state;
    assert_int_equal(oath_init(), OATH_OK);
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char c8[9];
        long long step = -1;

        /* The 8-digit vectors as the RFC prints them ... */
        code_at(RFC_KEY, strlen(RFC_KEY), v[i].t, 8, c8);
        assert_string_equal(c8, v[i].code8);
        /* ... and our 6-digit codes are their last six digits (the same HOTP value mod 10^6). */
        assert_int_equal(totp_verify(RFC_B32, v[i].code8 + 2, v[i].t, -1, &step), 0);
        assert_int_equal(step, v[i].t / 30);
    }
}

static void test_drift_one_step_not_two(void **state)
{
    const long long now = 1700000015; /* inside a step, 15 s past its start */
    char c[7];
    long long step;

    (void)state;
    for (int d = -1; d <= 1; d++) {
        rfc_code(now + 30LL * d, c);
        step = -1;
        assert_int_equal(totp_verify(RFC_B32, c, now, -1, &step), 0);
        assert_int_equal(step, now / 30 + d);
    }
    rfc_code(now - 60, c);
    assert_int_equal(totp_verify(RFC_B32, c, now, -1, &step), GR_EUNAUTH);
    rfc_code(now + 60, c);
    assert_int_equal(totp_verify(RFC_B32, c, now, -1, &step), GR_EUNAUTH);
    /* Step boundaries: the last second of a step and the first of the next. */
    rfc_code(1700000009, c); /* step 56666666 spans ...980..009 */
    assert_int_equal(totp_verify(RFC_B32, c, 1700000039, -1, &step), 0);
    assert_int_equal(totp_verify(RFC_B32, c, 1700000040, -1, &step), GR_EUNAUTH);
    /* Around the epoch, there is no step -1. */
    rfc_code(0, c);
    assert_int_equal(totp_verify(RFC_B32, c, 29, -1, &step), 0);
    assert_int_equal(step, 0);
}

static void test_code_used_once(void **state)
{
    const long long now = 1700000015;
    char c[7], next[7], prev[7];
    long long step = -1, step2 = -1;

    (void)state;
    rfc_code(now, c);
    assert_int_equal(totp_verify(RFC_B32, c, now, -1, &step), 0);
    /* The same code again, in the same step or the next: refused, and *matched_step untouched. */
    step2 = 12345;
    assert_int_equal(totp_verify(RFC_B32, c, now, step, &step2), GR_EUNAUTH);
    assert_int_equal(totp_verify(RFC_B32, c, now + 30, step, &step2), GR_EUNAUTH);
    assert_int_equal(step2, 12345);
    /* An older code after a newer one: refused too, though within the drift window. */
    rfc_code(now - 30, prev);
    assert_int_equal(totp_verify(RFC_B32, prev, now, step, &step2), GR_EUNAUTH);
    /* The next step's code is still good once. */
    rfc_code(now + 30, next);
    assert_int_equal(totp_verify(RFC_B32, next, now, step, &step2), 0);
    assert_int_equal(step2, step + 1);
    assert_int_equal(totp_verify(RFC_B32, next, now + 30, step2, &step2), GR_EUNAUTH);
}

static void test_malformed(void **state)
{
    static const char *const bad_codes[] = {
        "",       "12345",  "1234567", "12a456",  "abcdef", " 123456",      "123456 ",
        "12 456", "-12345", "+12345",  "12345\n", "１２３", "1234\xff\x35",
    };
    static const char *const bad_secrets[] = {
        "",
        "GEZDGNBV",                             /* 40 bits: too short */
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ!",     /* not base32 */
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ0",     /* 0 is not base32 */
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====", /* padding */
        "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ",
    };
    char c[7], longsecret[300];
    long long step = 7;

    (void)state;
    rfc_code(1700000015, c);
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++)
        assert_int_equal(totp_verify(RFC_B32, bad_codes[i], 1700000015, -1, &step), GR_EINVAL);
    for (size_t i = 0; i < sizeof(bad_secrets) / sizeof(bad_secrets[0]); i++)
        assert_int_equal(totp_verify(bad_secrets[i], c, 1700000015, -1, &step), GR_EINVAL);
    memset(longsecret, 'A', sizeof(longsecret) - 1);
    longsecret[sizeof(longsecret) - 1] = '\0';
    assert_int_equal(totp_verify(longsecret, c, 1700000015, -1, &step), GR_EINVAL);
    assert_int_equal(totp_verify(NULL, c, 1700000015, -1, &step), GR_EINVAL);
    assert_int_equal(totp_verify(RFC_B32, NULL, 1700000015, -1, &step), GR_EINVAL);
    assert_int_equal(totp_verify(RFC_B32, c, 1700000015, -1, NULL), GR_EINVAL);
    assert_int_equal(totp_verify(RFC_B32, c, -1, -1, &step), GR_EINVAL);
    assert_int_equal(totp_verify(RFC_B32, c, (long long)INT64_MAX, -1, &step), GR_EINVAL);
    assert_int_equal(step, 7);
    /* Well formed but wrong: unauthorised, not malformed. */
    c[0] = c[0] == '9' ? '0' : (char)(c[0] + 1);
    assert_int_equal(totp_verify(RFC_B32, c, 1700000015, -1, &step), GR_EUNAUTH);
    /* A lower-case secret is the same secret. */
    rfc_code(1700000015, c);
    assert_int_equal(totp_verify("gezdgnbvgy3tqojqgezdgnbvgy3tqojq", c, 1700000015, -1, &step), 0);
    /* A 128-bit secret (26 characters unpadded, not a multiple of 8) works too. */
    code_at("1234567890123456", 16, 1700000015, 6, c);
    assert_int_equal(totp_verify("GEZDGNBVGY3TQOJQGEZDGNBVGY", c, 1700000015, -1, &step), 0);
}

static void test_secret_new(void **state)
{
    char a[TOTP_SECRET_B32_LEN], b[TOTP_SECRET_B32_LEN], c[7];
    char *raw = NULL;
    size_t rawlen = 0;
    long long step;

    (void)state;
    assert_int_equal(totp_secret_new(a, sizeof(a)), 0);
    assert_int_equal(totp_secret_new(b, sizeof(b)), 0);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), 32);
    assert_string_not_equal(a, b);
    /* 20 bytes behind it, and codes made from those bytes verify against it. */
    assert_int_equal(oath_base32_decode(a, strlen(a), &raw, &rawlen), OATH_OK);
    assert_int_equal(rawlen, TOTP_SECRET_BYTES);
    code_at(raw, rawlen, 1700000015, 6, c);
    gr_free(raw);
    assert_int_equal(totp_verify(a, c, 1700000015, -1, &step), 0);
    /* Too small a buffer. */
    b[0] = 'x';
    assert_int_equal(totp_secret_new(b, TOTP_SECRET_B32_LEN - 1), GR_EINVAL);
    assert_string_equal(b, "");
    assert_int_equal(totp_secret_new(NULL, 64), GR_EINVAL);
}

static void test_uri(void **state)
{
    char out[512];

    (void)state;
    assert_int_equal(totp_uri(RFC_B32, "Gravity", "alice@example.com", out, sizeof(out)), 0);
    assert_string_equal(out, "otpauth://totp/Gravity:alice%40example.com?secret=" RFC_B32
                             "&issuer=Gravity&algorithm=SHA1&digits=6&period=30");
    assert_int_equal(totp_uri("gezdgnbvgy3tqojqgezdgnbvgy3tqojq", "ACME Co", "jos\xc3\xa9+x&y=z",
                              out, sizeof(out)),
                     0);
    assert_string_equal(out, "otpauth://totp/ACME%20Co:jos%C3%A9%2Bx%26y%3Dz?secret=" RFC_B32
                             "&issuer=ACME%20Co&algorithm=SHA1&digits=6&period=30");
    /* A colon in either part would change the label's meaning. */
    assert_int_equal(totp_uri(RFC_B32, "a:b", "alice", out, sizeof(out)), GR_EINVAL);
    assert_int_equal(totp_uri(RFC_B32, "Gravity", "ali:ce", out, sizeof(out)), GR_EINVAL);
    assert_string_equal(out, "");
    assert_int_equal(totp_uri(RFC_B32, "", "alice", out, sizeof(out)), GR_EINVAL);
    assert_int_equal(totp_uri(RFC_B32, "Gravity", "", out, sizeof(out)), GR_EINVAL);
    assert_int_equal(totp_uri("NOT BASE32!", "Gravity", "alice", out, sizeof(out)), GR_EINVAL);
    assert_int_equal(totp_uri(NULL, "Gravity", "alice", out, sizeof(out)), GR_EINVAL);
    /* Too small for the result: refused, nothing partial left behind. */
    for (size_t n = 1; n < 110; n += 7) {
        out[0] = 'x';
        assert_int_equal(totp_uri(RFC_B32, "Gravity", "alice@example.com", out, n), GR_ETOOBIG);
        assert_string_equal(out, "");
    }
    assert_int_equal(totp_uri(RFC_B32, "Gravity", "alice", out, 0), GR_EINVAL);
}

static void test_recovery_codes(void **state)
{
    char codes[TOTP_RC_COUNT][TOTP_RC_LEN], h[TOTP_RC_HASH_LEN], h2[TOTP_RC_HASH_LEN];
    char hashes[TOTP_RC_COUNT][TOTP_RC_HASH_LEN];

    (void)state;
    assert_int_equal(totp_recovery_codes(codes, TOTP_RC_COUNT), 0);
    for (int i = 0; i < TOTP_RC_COUNT; i++) {
        const char *c = codes[i];

        assert_int_equal(strlen(c), 11);
        assert_int_equal(c[5], '-');
        assert_int_equal(strspn(c, "0123456789abcdefghjkmnpqrstvwxyz"), 5);
        assert_int_equal(strspn(c + 6, "0123456789abcdefghjkmnpqrstvwxyz"), 5);
        totp_recovery_hash(c, hashes[i]);
        assert_int_equal(strlen(hashes[i]), 64);
        assert_int_equal(strspn(hashes[i], "0123456789abcdef"), 64);
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(codes[i], codes[j]);
            assert_string_not_equal(hashes[i], hashes[j]);
        }
    }
    assert_int_equal(totp_recovery_codes(codes, 0), GR_EINVAL);
    assert_int_equal(totp_recovery_codes(codes, 65), GR_EINVAL);
    assert_int_equal(totp_recovery_codes(NULL, 1), GR_EINVAL);

    /* The hash is SHA-256 of the 10 normalised symbols ... */
    totp_recovery_hash("abcde-fghjk", h);
    assert_string_equal(h, "22f3f00d7f9cfe6eeefa9b71bdcb093a9080fcf4981d2dbf932648fa15a2d793");
    /* ... however the user types the code. */
    totp_recovery_hash("ABCDE FGHJK", h2);
    assert_string_equal(h, h2);
    totp_recovery_hash(" abcdefghjk ", h2);
    assert_string_equal(h, h2);
    totp_recovery_hash("01234-56789", h);
    assert_string_equal(h, "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882");
    totp_recovery_hash("oi234-5678q", h2); /* q is a symbol, so this is another code */
    assert_string_not_equal(h, h2);
    totp_recovery_hash("OL234-56789", h2);
    assert_string_equal(h, h2);
    totp_recovery_hash("oI234-56789", h2);
    assert_string_equal(h, h2);

    /* Anything that is not a code hashes to nothing. */
    {
        static const char *const bad[] = { "",
                                           "abcde",
                                           "abcde-fghj",
                                           "abcde-fghjkm",
                                           "abcde-fghju",
                                           "abcde_fghjk",
                                           "abcde-fghj\xc3\xa9" };
        char longcode[200];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            h[0] = 'x';
            totp_recovery_hash(bad[i], h);
            assert_string_equal(h, "");
        }
        memset(longcode, '-', sizeof(longcode) - 1);
        memcpy(longcode + 150, "abcdefghjk", 10);
        longcode[sizeof(longcode) - 1] = '\0';
        totp_recovery_hash(longcode, h);
        assert_string_equal(h, "");
        totp_recovery_hash(NULL, h);
        assert_string_equal(h, "");
    }
}

/* ---- interop with pyotp, standing in for an authenticator app ------------------------------ */

static bool interop_script(char *path, size_t n)
{
    const char *unit = strstr(__FILE__, "unit/test_totp.c");

    if (!unit)
        return false;
    snprintf(path, n, "%.*sinterop/totp_now.py", (int)(unit - __FILE__), __FILE__);
    return access("/usr/bin/python3", X_OK) == 0 && access(path, R_OK) == 0;
}

/* Runs totp_now.py with @args and leaves its first output line in @out; false on failure. */
static bool pyotp_run(const char *script, const char *args, char *out, size_t n)
{
    char cmd[1024];
    FILE *f;
    size_t len;

    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 '%s' %s", script, args);
    f = popen(cmd, "r");
    if (!f)
        return false;
    len = fread(out, 1, n - 1, f);
    out[len] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    return pclose(f) == 0;
}

static void test_pyotp_interop(void **state)
{
    char script[512], args[700], uri[512], out[256], secret[TOTP_SECRET_B32_LEN];
    long long step, now;

    (void)state;
    if (!interop_script(script, sizeof(script)) ||
        !pyotp_run(script, "--at 59 " RFC_B32, out, sizeof(out))) {
        print_message("skipped: /usr/bin/python3, python3-pyotp or %s missing\n", script);
        skip();
    }
    assert_string_equal(out, "287082"); /* RFC 6238's 94287082 */

    /* A new secret: pyotp's code now verifies here now. */
    assert_int_equal(totp_secret_new(secret, sizeof(secret)), 0);
    snprintf(args, sizeof(args), "%s", secret);
    now = (long long)time(NULL);
    assert_true(pyotp_run(script, args, out, sizeof(out)));
    assert_int_equal(totp_verify(secret, out, (long long)time(NULL), -1, &step), 0);
    assert_true(step >= now / 30 - 1 && step <= now / 30 + 1);

    /* The provisioning URI, read by pyotp as an app would: same label, same codes. */
    assert_int_equal(totp_uri(secret, "ACME Co", "jos\xc3\xa9@example.com", uri, sizeof(uri)), 0);
    snprintf(args, sizeof(args), "--label --uri '%s'", uri);
    assert_true(pyotp_run(script, args, out, sizeof(out)));
    assert_string_equal(out, "ACME Co\tjos\xc3\xa9@example.com");
    snprintf(args, sizeof(args), "--at 1700000015 --uri '%s'", uri);
    assert_true(pyotp_run(script, args, out, sizeof(out)));
    assert_int_equal(totp_verify(secret, out, 1700000015, -1, &step), 0);
    assert_int_equal(step, 1700000015 / 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc6238_vectors), cmocka_unit_test(test_drift_one_step_not_two),
        cmocka_unit_test(test_code_used_once),  cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_secret_new),      cmocka_unit_test(test_uri),
        cmocka_unit_test(test_recovery_codes),  cmocka_unit_test(test_pyotp_interop),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
