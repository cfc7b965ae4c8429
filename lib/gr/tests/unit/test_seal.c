/*
 * test_seal.c - unit tests for gr/seal.h: sealing round trips (with and without associated
 * data, empty and binary plaintexts, the size limit), every kind of wrong input failing with
 * GR_EINVAL (tampering anywhere in the text, other associated data, another key, malformed
 * text), the two key encodings of the environment and their messages (which name the variable
 * and never echo it), the key file (made 0600 on first start, read back, refused when damaged
 * or missing and not to be made, warned about when others may read it), a log that never shows
 * key material, and fixed vectors written by the code 04-config-service and 05-auth-service
 * ran before gr_seal existed, so databases they filled keep opening.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "gr/arena.h"
#include "gr/log.h"
#include "gr/seal.h"

#define ENV     "GR_TEST_SEAL_KEY"
#define HEX_KEY "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define PASS    "test-key-secret-of-at-least-32-bytes!!"

/*
 * Written by 04-config-service's cfg_seal (before this module) with CONFIG_MASTER_KEY=HEX_KEY
 * and associated data "billing/prod/db.password"; checked independently with Python's
 * cryptography AESGCM.
 */
#define V04_AAD    "billing/prod/db.password"
#define V04_PLAIN  "\"hunter2-s3cret\""
#define V04_SEALED "SRaDMKWzmxAGFQM1BJatHT86SQzc74MPR0BH3Pa31LnnxuK2PnuFr798cH8"
/* Written by 05-auth-service's auth_seal (no associated data) with AUTH_KEY_SECRET=PASS. */
#define V05_PLAIN  "JBSWY3DPEHPK3PXP"
#define V05_SEALED "4wdsjAA-gLsKelepEStKLGfTAMpaOcXXeW3b-12PwM8CDuLEYkg6JlFGIYE"

static void hex_key(struct gr_seal_key *k)
{
    assert_int_equal(gr_seal_key_from_hex(k, HEX_KEY), 0);
}

static bool all_zero(const struct gr_seal_key *k)
{
    for (size_t i = 0; i < sizeof(k->b); i++)
        if (k->b[i])
            return false;
    return true;
}

/* A fresh temporary directory in @dir (at least 64 bytes). */
static void tmpdir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/test_seal.XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void rmtree(const char *dir, const char *file)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    (void)unlink(path);
    (void)rmdir(dir);
}

/* Stderr (where gr_log writes) is sent to a file between capture_start and capture_end. */
struct capture {
    char path[64];
    int fd, saved;
};

static void capture_start(struct capture *c)
{
    snprintf(c->path, sizeof(c->path), "/tmp/test_seal.log.XXXXXX");
    c->fd = mkstemp(c->path);
    assert_true(c->fd >= 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    assert_true(dup2(c->fd, STDERR_FILENO) >= 0);
}

static void capture_end(struct capture *c, char *out, size_t n)
{
    ssize_t got;

    fflush(stderr);
    assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
    close(c->saved);
    got = pread(c->fd, out, n - 1, 0);
    close(c->fd);
    unlink(c->path);
    assert_true(got >= 0);
    out[got] = '\0';
}

static void test_round_trip(void **state)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k;
    const char *s1, *s2, *bin = "a\0b\0c";
    char *plain;
    size_t n;

    (void)state;
    hex_key(&k);
    assert_int_equal(gr_seal(&k, &a, "svc/env/key", "hello", 5, &s1), 0);
    assert_int_equal(strlen(s1), GR_SEAL_TEXT_LEN(5));
    assert_int_equal(gr_seal_open(&k, &a, "svc/env/key", s1, &plain, &n), 0);
    assert_int_equal(n, 5);
    assert_string_equal(plain, "hello");

    /* A fresh nonce every time: the same plaintext never seals to the same text. */
    assert_int_equal(gr_seal(&k, &a, "svc/env/key", "hello", 5, &s2), 0);
    assert_string_not_equal(s1, s2);
    assert_null(strstr(s1, "hello"));

    /* No associated data; an empty and a binary plaintext. */
    assert_int_equal(gr_seal(&k, &a, NULL, "", 0, &s1), 0);
    assert_int_equal(strlen(s1), GR_SEAL_TEXT_LEN(0));
    assert_int_equal(gr_seal_open(&k, &a, NULL, s1, &plain, &n), 0);
    assert_int_equal(n, 0);
    assert_string_equal(plain, "");
    assert_int_equal(gr_seal(&k, &a, NULL, bin, 5, &s1), 0);
    assert_int_equal(gr_seal_open(&k, &a, NULL, s1, &plain, NULL), 0);
    assert_memory_equal(plain, bin, 5);
    assert_int_equal(plain[5], '\0');

    /* NULL and "" associated data are the same (GCM with no AAD). */
    assert_int_equal(gr_seal(&k, &a, "", "x", 1, &s1), 0);
    assert_int_equal(gr_seal_open(&k, &a, NULL, s1, &plain, NULL), 0);
    assert_string_equal(plain, "x");
    gr_seal_key_wipe(&k);
    gr_arena_release(&a);
}

static void test_size_limit(void **state)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k;
    unsigned char *big = gr_xcalloc(1, GR_SEAL_MAX + 1);
    const char *s;
    char *plain;
    size_t n;

    (void)state;
    hex_key(&k);
    big[0] = 7;
    big[GR_SEAL_MAX - 1] = 9;
    assert_int_equal(gr_seal(&k, &a, "aad", big, GR_SEAL_MAX + 1, &s), GR_ETOOBIG);
    assert_int_equal(gr_seal(&k, &a, "aad", big, GR_SEAL_MAX, &s), 0);
    assert_int_equal(strlen(s), GR_SEAL_TEXT_LEN(GR_SEAL_MAX));
    assert_int_equal(gr_seal_open(&k, &a, "aad", s, &plain, &n), 0);
    assert_int_equal(n, GR_SEAL_MAX);
    assert_memory_equal(plain, big, GR_SEAL_MAX);
    gr_free(big);
    gr_seal_key_wipe(&k);
    gr_arena_release(&a);
}

static void test_tamper(void **state)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k;
    const char *s;
    char *plain, *t;
    size_t len;

    (void)state;
    hex_key(&k);
    assert_int_equal(gr_seal(&k, &a, "aad", "attack at dawn", 14, &s), 0);
    len = strlen(s);
    t = gr_arena_strdup(&a, s);
    /* Any character changed anywhere (nonce, ciphertext or tag) fails to open. */
    for (size_t i = 0; i < len; i++) {
        char was = t[i];

        t[i] = was == alpha[0] ? alpha[1] : alpha[0];
        plain = NULL;
        assert_int_equal(gr_seal_open(&k, &a, "aad", t, &plain, NULL), GR_EINVAL);
        assert_null(plain);
        t[i] = was;
    }
    assert_int_equal(gr_seal_open(&k, &a, "aad", t, &plain, NULL), 0);
    /* Truncated, extended, not base64url, too short to hold nonce and tag, NULL. */
    t[len - 1] = '\0';
    assert_int_equal(gr_seal_open(&k, &a, "aad", t, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", gr_arena_printf(&a, "%sAA", s), &plain, NULL),
                     GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", gr_arena_printf(&a, "%s=", s), &plain, NULL),
                     GR_EINVAL);
    assert_int_equal(
        gr_seal_open(&k, &a, "aad", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", &plain, NULL),
        GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", "AAAAAAAAAAAAAAAAAAAA", &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", "", &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", NULL, &plain, NULL), GR_EINVAL);
    gr_seal_key_wipe(&k);
    gr_arena_release(&a);
}

static void test_wrong_aad(void **state)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k;
    const char *s;
    char *plain;

    (void)state;
    hex_key(&k);
    assert_int_equal(gr_seal(&k, &a, "billing/prod/db.password", "pw", 2, &s), 0);
    assert_int_equal(gr_seal_open(&k, &a, "billing/prod/db.passwore", s, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "billing/dev/db.password", s, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, NULL, s, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal(&k, &a, NULL, "pw", 2, &s), 0);
    assert_int_equal(gr_seal_open(&k, &a, "x", s, &plain, NULL), GR_EINVAL);
    gr_seal_key_wipe(&k);
    gr_arena_release(&a);
}

static void test_wrong_key(void **state)
{
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k, other;
    const char *s;
    char *plain;

    (void)state;
    hex_key(&k);
    other = k;
    other.b[31] ^= 1;
    assert_int_equal(gr_seal(&k, &a, "aad", "secret", 6, &s), 0);
    assert_int_equal(gr_seal_open(&other, &a, "aad", s, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_key_from_passphrase(&other, PASS), 0);
    assert_int_equal(gr_seal_open(&other, &a, "aad", s, &plain, NULL), GR_EINVAL);
    assert_int_equal(gr_seal_open(&k, &a, "aad", s, &plain, NULL), 0);
    gr_seal_key_wipe(&k);
    gr_seal_key_wipe(&other);
    assert_true(all_zero(&k));
    gr_arena_release(&a);
}

/* Loads with @value in ENV; returns the code and the message in @err. */
static int load_env(struct gr_seal_key *k, enum gr_seal_env_format f, const char *value, char *err,
                    size_t n)
{
    struct gr_seal_key_opts o = { .env = ENV,
                                  .format = f,
                                  .data_dir = "/nonexistent/test_seal",
                                  .file = "key",
                                  .what = "test key",
                                  .create = false };

    setenv(ENV, value, 1);
    return gr_seal_key_load(k, &o, err, n);
}

static void test_key_env(void **state)
{
    static const char *bad_hex[] = {
        "00",                                                               /* short */
        HEX_KEY "00",                                                       /* long */
        "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", /* not hex */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1 ", /* space */
        "0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", /* prefix */
    };
    struct gr_seal_key k, want;
    char err[GR_SEAL_ERR_MAX];

    (void)state;
    /* Hex: exactly the 32 bytes, either case. */
    assert_int_equal(load_env(&k, GR_SEAL_ENV_HEX, HEX_KEY, err, sizeof(err)), 0);
    for (int i = 0; i < 32; i++)
        assert_int_equal(k.b[i], i);
    assert_int_equal(load_env(&want, GR_SEAL_ENV_HEX,
                              "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
                              err, sizeof(err)),
                     0);
    assert_memory_equal(k.b, want.b, 32);
    for (size_t i = 0; i < sizeof(bad_hex) / sizeof(bad_hex[0]); i++) {
        memset(k.b, 0xAA, sizeof(k.b));
        assert_int_equal(load_env(&k, GR_SEAL_ENV_HEX, bad_hex[i], err, sizeof(err)), GR_ECONFIG);
        assert_string_equal(err, ENV " must be 64 hex characters (a 256-bit key)");
        assert_true(all_zero(&k)); /* nothing half-decoded is left */
    }

    /* Passphrase: SHA-256 of at least 32 bytes; the message does not echo the value. */
    assert_int_equal(load_env(&k, GR_SEAL_ENV_PASSPHRASE, PASS, err, sizeof(err)), 0);
    assert_int_equal(gr_seal_key_from_passphrase(&want, PASS), 0);
    assert_memory_equal(k.b, want.b, 32);
    assert_int_equal(
        load_env(&k, GR_SEAL_ENV_PASSPHRASE, "31-byte-secret-xxxxxxxxxxxxxxxx", err, sizeof(err)),
        GR_ECONFIG);
    assert_string_equal(err, ENV " must be at least 32 bytes");
    assert_null(strstr(err, "31-byte"));
    assert_true(all_zero(&k));
    /* A hex key is a fine passphrase too, but gives another key than its hex meaning. */
    assert_int_equal(load_env(&k, GR_SEAL_ENV_PASSPHRASE, HEX_KEY, err, sizeof(err)), 0);
    assert_int_not_equal(k.b[0], 0);
    unsetenv(ENV);
    gr_seal_key_wipe(&k);
    gr_seal_key_wipe(&want);
}

static void test_key_file(void **state)
{
    char dir[64], sub[128], path[192], err[GR_SEAL_ERR_MAX], log[8192], hex[65];
    struct gr_seal_key_opts o = {
        .env = ENV, .format = GR_SEAL_ENV_HEX, .file = "the-key", .what = "test key", .create = true
    };
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k1, k2;
    struct capture c = { .fd = -1, .saved = -1 };
    struct stat st;
    unsigned char raw[40];
    const char *s;
    char *plain;
    int fd;

    (void)state;
    unsetenv(ENV);
    tmpdir(dir, sizeof(dir));
    /* DATA_DIR itself does not exist yet: it is made 0700, the file 0600 with 32 bytes. */
    snprintf(sub, sizeof(sub), "%s/data", dir);
    snprintf(path, sizeof(path), "%s/the-key", sub);
    o.data_dir = sub;
    capture_start(&c);
    assert_int_equal(gr_seal_key_load(&k1, &o, err, sizeof(err)), 0);
    capture_end(&c, log, sizeof(log));
    assert_non_null(strstr(log, ENV " not set: made a test key file (set " ENV
                                    ", the same on every instance, in production)"));
    assert_non_null(strstr(log, path));
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", k1.b[i]);
    assert_null(strstr(log, hex)); /* no key bytes in the log */
    assert_int_equal(stat(sub, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 32);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, raw, sizeof(raw)), 32);
    close(fd);
    assert_memory_equal(raw, k1.b, 32);

    /* The next start reads the same key, silently, and what it sealed opens. */
    assert_int_equal(gr_seal(&k1, &a, "x", "v", 1, &s), 0);
    capture_start(&c);
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), 0);
    capture_end(&c, log, sizeof(log));
    assert_string_equal(log, "");
    assert_memory_equal(k1.b, k2.b, 32);
    assert_int_equal(gr_seal_open(&k2, &a, "x", s, &plain, NULL), 0);

    /* A file others may read still loads, with a warning naming it and its mode. */
    assert_int_equal(chmod(path, 0644), 0);
    capture_start(&c);
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), 0);
    capture_end(&c, log, sizeof(log));
    assert_non_null(strstr(log, "test key file is accessible to others than its owner"));
    assert_non_null(strstr(log, "0644"));
    assert_memory_equal(k1.b, k2.b, 32);
    assert_int_equal(chmod(path, 0600), 0);

    /* The variable wins over the file. */
    setenv(ENV, HEX_KEY, 1);
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), 0);
    assert_int_equal(k2.b[1], 1);
    unsetenv(ENV);

    /* A damaged (short) file stops start-up, naming the file. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "short", 5), 5);
    close(fd);
    memset(k2.b, 0xAA, sizeof(k2.b));
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "the test key file '"));
    assert_non_null(strstr(err, "' is damaged"));
    assert_non_null(strstr(err, path));
    assert_true(all_zero(&k2));

    /* Missing, and the service may not make it. */
    unlink(path);
    o.create = false;
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, ENV " is not set and the test key file '"));
    assert_non_null(strstr(err, "does not exist"));
    assert_int_equal(stat(path, &st), -1);

    /* DATA_DIR beyond the path limit. */
    {
        char *longdir = gr_xmalloc(GR_SEAL_PATH_MAX + 1);

        memset(longdir, 'd', GR_SEAL_PATH_MAX);
        longdir[GR_SEAL_PATH_MAX] = '\0';
        o.data_dir = longdir;
        o.create = true;
        assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), GR_ECONFIG);
        assert_string_equal(err, "DATA_DIR is too long");
        gr_free(longdir);
    }

    /* A DATA_DIR where the file cannot be made (a regular file stands in its way). */
    snprintf(path, sizeof(path), "%s/plainfile", dir);
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    o.data_dir = path;
    assert_int_equal(gr_seal_key_load(&k2, &o, err, sizeof(err)), GR_ECONFIG);
    assert_non_null(strstr(err, "the test key file '"));
    unlink(path);

    rmtree(sub, "the-key");
    (void)rmdir(dir);
    gr_seal_key_wipe(&k1);
    gr_seal_key_wipe(&k2);
    gr_arena_release(&a);
}

/*
 * Loads a key as a service does (@value in the variable, in @format), opens @sealed with @aad
 * to @plain, refuses it with @bad_aad, and checks that gr_seal writes the same shape.
 */
static void check_vector(enum gr_seal_env_format format, const char *value, const char *aad,
                         const char *bad_aad, const char *sealed, const char *want)
{
    struct gr_seal_key_opts o = { .env = ENV,
                                  .format = format,
                                  .data_dir = "/nonexistent/test_seal",
                                  .file = "key",
                                  .what = "test key" };
    struct gr_arena a = GR_ARENA_INIT;
    struct gr_seal_key k;
    char err[GR_SEAL_ERR_MAX], *plain;
    const char *s;
    size_t n;

    setenv(ENV, value, 1);
    assert_int_equal(gr_seal_key_load(&k, &o, err, sizeof(err)), 0);
    unsetenv(ENV);
    assert_int_equal(gr_seal_open(&k, &a, aad, sealed, &plain, &n), 0);
    assert_int_equal(n, strlen(want));
    assert_string_equal(plain, want);
    assert_int_equal(gr_seal_open(&k, &a, bad_aad, sealed, &plain, &n), GR_EINVAL);
    /* What gr_seal writes has the same shape: base64url of nonce | ciphertext | tag. */
    assert_int_equal(gr_seal(&k, &a, aad, want, strlen(want), &s), 0);
    assert_int_equal(strlen(s), strlen(sealed));
    assert_int_equal(gr_seal_open(&k, &a, aad, s, &plain, NULL), 0);
    gr_seal_key_wipe(&k);
    gr_arena_release(&a);
}

/* What 04-config-service stored before gr_seal: a hex key, "service/env/key" as AAD. */
static void test_vector_config_service(void **state)
{
    (void)state;
    check_vector(GR_SEAL_ENV_HEX, HEX_KEY, V04_AAD, NULL, V04_SEALED, V04_PLAIN);
}

/* What 05-auth-service stored before gr_seal: a passphrase-derived key, no AAD. */
static void test_vector_auth_service(void **state)
{
    (void)state;
    check_vector(GR_SEAL_ENV_PASSPHRASE, PASS, NULL, "aad", V05_SEALED, V05_PLAIN);
    check_vector(GR_SEAL_ENV_PASSPHRASE, PASS, "", "x", V05_SEALED, V05_PLAIN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_wrong_aad),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_key_env),
        cmocka_unit_test(test_key_file),
        cmocka_unit_test(test_vector_config_service),
        cmocka_unit_test(test_vector_auth_service),
    };

    gr_log_setup("test_seal", GR_LOG_INFO, true);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
