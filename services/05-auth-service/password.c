/*
 * password.c - Argon2id hashing and verification (libargon2), bcrypt verification of imported
 * hashes (libxcrypt's crypt_rn), and the process-wide limit on concurrent computations.
 *
 * Argon2id with m=19456 KiB costs 19 MiB per computation, so the limiter is what keeps a burst of
 * logins from exhausting memory: every computation takes a slot first, and a caller that waits
 * longer than the configured time receives GR_EBUSY instead of queueing without bound. The limit is
 * process-wide on purpose (it guards the process's memory), which is why its state is the one
 * mutable global of this file, guarded by a mutex.
 *
 * Stored strings are parsed here only far enough to bound their cost and decide on an upgrade;
 * libargon2 and libxcrypt do the real decoding and reject whatever else is wrong.
 */
#include <crypt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gr/arena.h"
#include "gr/log.h"

#include "password.h"

#define ARGON2ID_PREFIX "$argon2id$"
#define BCRYPT_LEN      60

/* ---- the limiter --------------------------------------------------------------------------- */

static pthread_once_t lim_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lim_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lim_cv; /* on CLOCK_MONOTONIC, set up by lim_init */
static struct pw_stats lim = { .max = PW_MAX_CONCURRENT_DEFAULT };
static int lim_wait_ms = PW_WAIT_MS_DEFAULT;

static void lim_init(void)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&lim_cv, &attr);
    pthread_condattr_destroy(&attr);
}

static void deadline_after_ms(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int pw__slot_acquire(void)
{
    struct timespec deadline;
    int rc = 0;

    pthread_once(&lim_once, lim_init);
    pthread_mutex_lock(&lim_mu);
    deadline_after_ms(&deadline, lim_wait_ms);
    lim.waiting++;
    while (lim.active >= lim.max) {
        int e = pthread_cond_timedwait(&lim_cv, &lim_mu, &deadline);

        if (e != 0 && lim.active >= lim.max) {
            rc = GR_EBUSY;
            break;
        }
    }
    lim.waiting--;
    if (rc == 0) {
        lim.active++;
        lim.runs++;
        if (lim.active > lim.peak)
            lim.peak = lim.active;
    } else {
        lim.busy++;
    }
    pthread_mutex_unlock(&lim_mu);
    return rc;
}

void pw__slot_release(void)
{
    pthread_once(&lim_once, lim_init);
    pthread_mutex_lock(&lim_mu);
    GR_ASSERT(lim.active > 0);
    lim.active--;
    pthread_cond_signal(&lim_cv);
    pthread_mutex_unlock(&lim_mu);
}

void pw_set_max_concurrent(int max)
{
    pthread_once(&lim_once, lim_init);
    pthread_mutex_lock(&lim_mu);
    lim.max = max < 1 ? 1 : max;
    pthread_cond_broadcast(&lim_cv);
    pthread_mutex_unlock(&lim_mu);
}

void pw_set_wait_ms(int ms)
{
    pthread_mutex_lock(&lim_mu);
    lim_wait_ms = ms < 0 ? 0 : ms;
    pthread_mutex_unlock(&lim_mu);
}

void pw_stats(struct pw_stats *out)
{
    pthread_mutex_lock(&lim_mu);
    *out = lim;
    pthread_mutex_unlock(&lim_mu);
}

void pw_stats_reset(void)
{
    pthread_mutex_lock(&lim_mu);
    lim.peak = lim.active;
    lim.runs = 0;
    lim.busy = 0;
    pthread_mutex_unlock(&lim_mu);
}

/* ---- lengths and hashing ------------------------------------------------------------------- */

bool pw_length_ok(const char *pw, size_t len)
{
    size_t chars = 0;

    if (!pw || len < PW_MIN_CHARS || len > PW_MAX_BYTES)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)pw[i] & 0xC0) != 0x80)
            chars++;
    }
    return chars >= PW_MIN_CHARS && chars <= PW_MAX_CHARS;
}

int pw_hash(const char *pw, size_t len, char *out, size_t outlen)
{
    unsigned char salt[PW_SALT_LEN];
    size_t need = argon2_encodedlen(PW_ARGON2_T, PW_ARGON2_M_KIB, PW_ARGON2_P, PW_SALT_LEN,
                                    PW_HASH_LEN, Argon2_id);
    int rc;

    if (out && outlen > 0)
        out[0] = '\0';
    if (!out || outlen < need || !pw_length_ok(pw, len))
        return GR_EINVAL;
    if (RAND_bytes(salt, sizeof(salt)) != 1) {
        gr_log_error("password salt generation failed");
        return GR_EINTERNAL;
    }
    rc = pw__slot_acquire();
    if (rc < 0)
        return rc;
    rc = argon2id_hash_encoded(PW_ARGON2_T, PW_ARGON2_M_KIB, PW_ARGON2_P, pw, len, salt,
                               sizeof(salt), PW_HASH_LEN, out, outlen);
    pw__slot_release();
    if (rc != ARGON2_OK) {
        gr_log_error("argon2id hashing failed", "error", argon2_error_message(rc));
        out[0] = '\0';
        return GR_EINTERNAL;
    }
    return 0;
}

/* ---- verification -------------------------------------------------------------------------- */

/* What pw_verify reads from an "$argon2id$" string before handing it to libargon2. */
struct argon2_params {
    uint32_t v, m, t, p;
    size_t saltlen, hashlen; /* decoded bytes */
};

/* Reads 1..10 decimal digits into *v (at most UINT32_MAX) and advances *s past them. */
static bool read_u32(const char **s, uint32_t *v)
{
    uint64_t x = 0;
    size_t n = 0;

    while ((*s)[n] >= '0' && (*s)[n] <= '9') {
        if (n == 10)
            return false;
        x = x * 10 + (uint64_t)((*s)[n] - '0');
        n++;
    }
    if (n == 0 || x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    *s += n;
    return true;
}

static bool eat(const char **s, const char *lit)
{
    size_t n = strlen(lit);

    if (strncmp(*s, lit, n) != 0)
        return false;
    *s += n;
    return true;
}

/* Length of the run of base64 characters at @s; its decoded size goes to *bytes. */
static size_t b64_run(const char *s, size_t *bytes)
{
    size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");

    *bytes = n * 3 / 4;
    return n;
}

/* Parses "$argon2id$[v=N$]m=N,t=N,p=N$salt$hash" (PHC; a missing v means version 0x10). */
static bool parse_argon2id(const char *s, struct argon2_params *a)
{
    size_t n;

    if (!eat(&s, ARGON2ID_PREFIX))
        return false;
    a->v = ARGON2_VERSION_10;
    if (eat(&s, "v=") && (!read_u32(&s, &a->v) || !eat(&s, "$")))
        return false;
    if (!eat(&s, "m=") || !read_u32(&s, &a->m) || !eat(&s, ",t=") || !read_u32(&s, &a->t) ||
        !eat(&s, ",p=") || !read_u32(&s, &a->p) || !eat(&s, "$"))
        return false;
    n = b64_run(s, &a->saltlen);
    s += n;
    if (n == 0 || !eat(&s, "$"))
        return false;
    n = b64_run(s, &a->hashlen);
    return n > 0 && s[n] == '\0';
}

static int verify_argon2id(const char *pw, size_t len, const char *stored, bool *ok,
                           bool *needs_upgrade)
{
    struct argon2_params a;
    int rc;

    if (!parse_argon2id(stored, &a) || a.m > PW_VERIFY_MAX_M_KIB || a.t > PW_VERIFY_MAX_T ||
        a.p > PW_VERIFY_MAX_P)
        return 0;
    rc = pw__slot_acquire();
    if (rc < 0)
        return rc;
    rc = argon2id_verify(stored, pw, len);
    pw__slot_release();
    if (rc == ARGON2_OK) {
        *ok = true;
        *needs_upgrade = a.v < ARGON2_VERSION_13 || a.m < PW_ARGON2_M_KIB || a.t < PW_ARGON2_T ||
                         a.saltlen < PW_SALT_LEN || a.hashlen < PW_HASH_LEN;
        return 0;
    }
    if (rc == ARGON2_MEMORY_ALLOCATION_ERROR) {
        gr_log_error("argon2id verification failed", "error", argon2_error_message(rc));
        return GR_EINTERNAL;
    }
    /* A mismatch, or a string libargon2 refuses to decode: both are "no". */
    return 0;
}

/* "$2a$"/"$2b$"/"$2y$", two cost digits, "$", then 53 characters of bcrypt's base64. */
static bool bcrypt_shape_ok(const char *s, size_t slen)
{
    int cost;

    if (slen != BCRYPT_LEN || s[0] != '$' || s[1] != '2' ||
        (s[2] != 'a' && s[2] != 'b' && s[2] != 'y') || s[3] != '$' || s[4] < '0' || s[4] > '9' ||
        s[5] < '0' || s[5] > '9' || s[6] != '$')
        return false;
    cost = (s[4] - '0') * 10 + (s[5] - '0');
    if (cost < 4 || cost > PW_BCRYPT_MAX_COST)
        return false;
    return strspn(s + 7, "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") ==
           BCRYPT_LEN - 7;
}

static int verify_bcrypt(const char *pw, size_t len, const char *stored, size_t slen, bool *ok,
                         bool *needs_upgrade)
{
    char phrase[PW_MAX_BYTES + 1];
    struct crypt_data *cd;
    const char *res;
    int rc;

    /* crypt() takes a C string, so a password with a NUL byte cannot match a bcrypt hash. */
    if (!bcrypt_shape_ok(stored, slen) || (len > 0 && memchr(pw, '\0', len)))
        return 0;
    memcpy(phrase, pw, len);
    phrase[len] = '\0';
    cd = gr_xcalloc(1, sizeof(*cd));
    rc = pw__slot_acquire();
    if (rc < 0)
        goto out;
    res = crypt_rn(phrase, stored, cd, (int)sizeof(*cd));
    pw__slot_release();
    if (res && strlen(res) == slen && CRYPTO_memcmp(res, stored, slen) == 0) {
        *ok = true;
        *needs_upgrade = true;
    }
out:
    OPENSSL_cleanse(phrase, sizeof(phrase));
    OPENSSL_cleanse(cd, sizeof(*cd));
    gr_free(cd);
    return rc;
}

int pw_verify(const char *pw, size_t len, const char *stored, bool *ok, bool *needs_upgrade)
{
    size_t slen;

    if (!ok || !needs_upgrade)
        return GR_EINVAL;
    *ok = false;
    *needs_upgrade = false;
    if ((!pw && len > 0) || len > PW_MAX_BYTES)
        return GR_EINVAL;
    if (!pw)
        pw = "";
    if (!stored)
        return 0;
    slen = strnlen(stored, PW_STORED_MAX + 1);
    if (slen > PW_STORED_MAX)
        return 0;
    if (strncmp(stored, ARGON2ID_PREFIX, strlen(ARGON2ID_PREFIX)) == 0)
        return verify_argon2id(pw, len, stored, ok, needs_upgrade);
    if (strncmp(stored, "$2", 2) == 0)
        return verify_bcrypt(pw, len, stored, slen, ok, needs_upgrade);
    return 0;
}

/* ---- the dummy hash ------------------------------------------------------------------------ */

static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static char dummy_hash[PW_HASH_MAX];

/* Standard base64 without padding, as PHC strings write it. @out holds 4 * ceil(n / 3) + 1. */
static void b64_nopad(const unsigned char *in, size_t n, char *out)
{
    int w = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

    while (w > 0 && out[w - 1] == '=')
        out[--w] = '\0';
}

/*
 * A PHC string with our parameters and a random salt and tag: verifying against it costs exactly
 * what a real verification costs, and no password matches it, since no hash was ever computed.
 */
static void dummy_make(void)
{
    unsigned char salt[PW_SALT_LEN], tag[PW_HASH_LEN];
    char salt64[((PW_SALT_LEN + 2) / 3) * 4 + 1], tag64[((PW_HASH_LEN + 2) / 3) * 4 + 1];

    if (RAND_bytes(salt, sizeof(salt)) != 1 || RAND_bytes(tag, sizeof(tag)) != 1) {
        /* Fixed bytes still make a valid string that nothing matches in practice. */
        memset(salt, 0x5a, sizeof(salt));
        memset(tag, 0xa5, sizeof(tag));
    }
    b64_nopad(salt, sizeof(salt), salt64);
    b64_nopad(tag, sizeof(tag), tag64);
    snprintf(dummy_hash, sizeof(dummy_hash), ARGON2ID_PREFIX "v=%d$m=%d,t=%d,p=%d$%s$%s",
             ARGON2_VERSION_13, PW_ARGON2_M_KIB, PW_ARGON2_T, PW_ARGON2_P, salt64, tag64);
}

int pw_dummy_verify(const char *pw, size_t len)
{
    bool ok, needs_upgrade;

    pthread_once(&dummy_once, dummy_make);
    if (!pw)
        len = 0;
    if (len > PW_MAX_BYTES)
        len = PW_MAX_BYTES;
    return pw_verify(pw, len, dummy_hash, &ok, &needs_upgrade);
}
