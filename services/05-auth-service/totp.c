/*
 * totp.c - RFC 6238 TOTP on liboath (base32 and code generation), with the acceptance rules of
 * auth-service: one step of drift either way, no step at or before the last one used, and a
 * constant-time comparison of the codes (liboath's own validators compare with strcmp and stop
 * at the first matching step, so the window logic lives here and liboath only generates codes).
 * Also recovery codes and their hashes.
 *
 * liboath allocates the results of its base32 functions with malloc; they are released with
 * gr_free (the same allocator) after being wiped.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <liboath/oath.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gr/arena.h"

#include "totp.h"

#define B32_ALPHABET    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz234567"
#define B32_MIN         16          /* 80 bits, RFC 4226's minimum key size was 128; 80 is common */
#define KEY_MAX         80          /* bytes; TOTP_SECRET_B32_MAX decodes to at most 65 */
#define NOW_MAX         (1LL << 40) /* far beyond any real clock, far from overflow */
#define RC_ALPHABET     "0123456789abcdefghjkmnpqrstvwxyz"
#define RC_SYMBOLS      (2 * TOTP_RC_GROUP)
#define RC_INPUT_MAX    64 /* longest typed recovery code that is looked at */
#define RC_MAX_PER_CALL 64

static pthread_once_t oath_once = PTHREAD_ONCE_INIT;
static int oath_init_rc = OATH_OK;

static void oath_setup(void)
{
    oath_init_rc = oath_init();
}

static bool b32_shape_ok(const char *b32, size_t len)
{
    return len >= B32_MIN && len <= TOTP_SECRET_B32_MAX && strspn(b32, B32_ALPHABET) == len;
}

/* Decodes a checked base32 secret (either case) into @key (KEY_MAX bytes). Returns its length,
 * or 0. */
static size_t b32_decode(const char *b32, size_t len, unsigned char *key)
{
    char up[TOTP_SECRET_B32_MAX];
    char *raw = NULL;
    size_t rawlen = 0;
    int rc;

    for (size_t i = 0; i < len; i++)
        up[i] = b32[i] >= 'a' && b32[i] <= 'z' ? (char)(b32[i] - 'a' + 'A') : b32[i];
    pthread_once(&oath_once, oath_setup);
    rc = oath_init_rc == OATH_OK ? oath_base32_decode(up, len, &raw, &rawlen) : oath_init_rc;
    OPENSSL_cleanse(up, sizeof(up));
    if (rc != OATH_OK)
        return 0;
    if (rawlen == 0 || rawlen > KEY_MAX) {
        rawlen = 0;
    } else {
        memcpy(key, raw, rawlen);
    }
    if (raw) {
        OPENSSL_cleanse(raw, rawlen);
        gr_free(raw);
    }
    return rawlen;
}

int totp_secret_new(char *b32, size_t n)
{
    unsigned char key[TOTP_SECRET_BYTES];
    char *enc = NULL;
    size_t enclen = 0;
    int rc = GR_EINTERNAL;

    if (b32 && n > 0)
        b32[0] = '\0';
    if (!b32 || n < TOTP_SECRET_B32_LEN)
        return GR_EINVAL;
    pthread_once(&oath_once, oath_setup);
    if (oath_init_rc != OATH_OK || RAND_bytes(key, sizeof(key)) != 1)
        goto out;
    if (oath_base32_encode((const char *)key, sizeof(key), &enc, &enclen) != OATH_OK || !enc)
        goto out;
    while (enclen > 0 && enc[enclen - 1] == '=')
        enclen--;
    if (enclen + 1 > n)
        goto out;
    memcpy(b32, enc, enclen);
    b32[enclen] = '\0';
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    if (enc) {
        OPENSSL_cleanse(enc, enclen);
        gr_free(enc);
    }
    return rc;
}

/* ---- provisioning URI ---------------------------------------------------------------------- */

/* A bounded string writer: once something does not fit, `over` stays set and nothing more is
 * written. */
struct writer {
    char *p;
    size_t cap, len;
    bool over;
};

static void put(struct writer *w, const char *s, size_t n)
{
    if (w->over || n >= w->cap - w->len) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

static void puts_lit(struct writer *w, const char *s)
{
    put(w, s, strlen(s));
}

static void put_pct(struct writer *w, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[3];

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            put(w, (const char *)s, 1);
            continue;
        }
        e[0] = '%';
        e[1] = hex[c >> 4];
        e[2] = hex[c & 15];
        put(w, e, 3);
    }
}

int totp_uri(const char *b32, const char *issuer, const char *account, char *out, size_t n)
{
    struct writer w = { .p = out, .cap = n };
    size_t blen;

    if (out && n > 0)
        out[0] = '\0';
    if (!b32 || !issuer || !account || !out || n == 0 || !*issuer || !*account ||
        strchr(issuer, ':') || strchr(account, ':'))
        return GR_EINVAL;
    blen = strnlen(b32, TOTP_SECRET_B32_MAX + 1);
    if (!b32_shape_ok(b32, blen))
        return GR_EINVAL;
    puts_lit(&w, "otpauth://totp/");
    put_pct(&w, issuer);
    puts_lit(&w, ":");
    put_pct(&w, account);
    puts_lit(&w, "?secret=");
    for (size_t i = 0; i < blen; i++) {
        char c = b32[i] >= 'a' && b32[i] <= 'z' ? (char)(b32[i] - 'a' + 'A') : b32[i];

        put(&w, &c, 1);
    }
    puts_lit(&w, "&issuer=");
    put_pct(&w, issuer);
    puts_lit(&w, "&algorithm=SHA1&digits=6&period=30");
    if (w.over) {
        out[0] = '\0';
        return GR_ETOOBIG;
    }
    return 0;
}

/* ---- verification -------------------------------------------------------------------------- */

static bool code_shape_ok(const char *code)
{
    size_t len = strnlen(code, TOTP_DIGITS + 1);

    return len == TOTP_DIGITS && strspn(code, "0123456789") == TOTP_DIGITS;
}

int totp_verify(const char *b32, const char *code, long long now_s, long long last_step,
                long long *matched_step)
{
    unsigned char key[KEY_MAX];
    size_t blen, keylen;
    long long now_step, found = -1;
    int rc = GR_EUNAUTH;

    if (!b32 || !code || !matched_step || now_s < 0 || now_s > NOW_MAX || !code_shape_ok(code))
        return GR_EINVAL;
    blen = strnlen(b32, TOTP_SECRET_B32_MAX + 1);
    if (!b32_shape_ok(b32, blen))
        return GR_EINVAL;
    keylen = b32_decode(b32, blen, key);
    if (keylen == 0)
        return GR_EINVAL;
    now_step = now_s / TOTP_STEP_S;
    /* Every candidate step is computed and compared, so the time taken does not tell which (if
     * any) matched; the earliest acceptable match wins. */
    for (long long s = now_step - TOTP_DRIFT_STEPS; s <= now_step + TOTP_DRIFT_STEPS; s++) {
        char otp[TOTP_DIGITS + 1];

        if (s < 0 || s <= last_step)
            continue;
        if (oath_totp_generate((const char *)key, keylen, (time_t)(s * TOTP_STEP_S), TOTP_STEP_S,
                               OATH_TOTP_DEFAULT_START_TIME, TOTP_DIGITS, otp) != OATH_OK) {
            rc = GR_EINVAL;
            break;
        }
        if (CRYPTO_memcmp(otp, code, TOTP_DIGITS) == 0 && found < 0)
            found = s;
        OPENSSL_cleanse(otp, sizeof(otp));
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (rc == GR_EUNAUTH && found >= 0) {
        *matched_step = found;
        rc = 0;
    }
    return rc;
}

/* ---- recovery codes ------------------------------------------------------------------------ */

int totp_recovery_codes(char codes[][TOTP_RC_LEN], int n)
{
    unsigned char rnd[RC_SYMBOLS];
    int rc = 0;

    if (!codes || n < 1 || n > RC_MAX_PER_CALL)
        return GR_EINVAL;
    for (int i = 0; i < n; i++) {
        char *c = codes[i];
        size_t k = 0;

        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            rc = GR_EINTERNAL;
            break;
        }
        /* 32 symbols divide 256 evenly, so masking keeps every symbol equally likely. */
        for (int j = 0; j < RC_SYMBOLS; j++) {
            if (j == TOTP_RC_GROUP)
                c[k++] = '-';
            c[k++] = RC_ALPHABET[rnd[j] & 31];
        }
        c[k] = '\0';
    }
    OPENSSL_cleanse(rnd, sizeof(rnd));
    if (rc < 0) {
        for (int i = 0; i < n; i++)
            OPENSSL_cleanse(codes[i], TOTP_RC_LEN);
    }
    return rc;
}

/* Maps one typed character to its alphabet symbol; 0 when it is not one. */
static char rc_symbol(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        c = (unsigned char)(c - 'A' + 'a');
    if (c == 'o')
        return '0';
    if (c == 'i' || c == 'l')
        return '1';
    if (c != '\0' && strchr(RC_ALPHABET, c))
        return (char)c;
    return 0;
}

void totp_recovery_hash(const char *code, char out[TOTP_RC_HASH_LEN])
{
    static const char hex[] = "0123456789abcdef";
    char norm[RC_SYMBOLS];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t k = 0;

    out[0] = '\0';
    if (!code)
        return;
    for (size_t i = 0; code[i]; i++) {
        char s;

        if (i >= RC_INPUT_MAX)
            return;
        if (code[i] == ' ' || code[i] == '-')
            continue;
        s = rc_symbol((unsigned char)code[i]);
        if (!s || k == RC_SYMBOLS)
            return;
        norm[k++] = s;
    }
    if (k != RC_SYMBOLS || !EVP_Digest(norm, k, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return;
    for (unsigned int i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * mdlen] = '\0';
}
