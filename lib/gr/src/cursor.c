/*
 * cursor.c - HMAC-signed pagination cursors (gr/cursor.h).
 *
 * A cursor is base64url(payload) "." base64url(tag), where tag is the first 16 bytes of
 * HMAC-SHA256(key, scope || 0x00 || payload). The NUL separator keeps (scope, payload) pairs
 * unambiguous. Decoding is strict: unpadded base64url only, with the unused low bits of the
 * last character required to be zero, so each encoded byte sequence has exactly one text
 * form and no single-character edit can survive verification. The tag is compared with
 * CRYPTO_memcmp so its timing leaks nothing.
 */
#include <stdbool.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "gr/arena.h"
#include "gr/cursor.h"

#define TAG_LEN     16
#define TAG_B64_LEN 22 /* ceil(16 * 4 / 3) without padding */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void gr_cursor_key_from_secret(struct gr_cursor_key *key, const char *secret, size_t len)
{
    unsigned int n = 0;

    if (!EVP_Digest(secret, len, key->k, &n, EVP_sha256(), NULL) || n != sizeof(key->k))
        GR_BUG("sha-256 failed");
}

void gr_cursor_key_random(struct gr_cursor_key *key)
{
    if (RAND_bytes(key->k, (int)sizeof(key->k)) != 1)
        GR_BUG("random key generation failed");
}

/* Writes unpadded base64url of @src into @dst (room for (n * 4 + 2) / 3 bytes), returns len. */
static size_t b64_encode(char *dst, const unsigned char *src, size_t n)
{
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8 | src[i + 2];

        dst[o++] = b64_alphabet[v >> 18];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
        dst[o++] = b64_alphabet[(v >> 6) & 63];
        dst[o++] = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)src[i] << 16;

        dst[o++] = b64_alphabet[v >> 18];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8;

        dst[o++] = b64_alphabet[v >> 18];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
        dst[o++] = b64_alphabet[(v >> 6) & 63];
    }
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/*
 * Decodes @n characters of canonical unpadded base64url into @dst (room for n * 3 / 4 bytes).
 * False on any other character, an impossible length (n % 4 == 1) or non-zero unused bits.
 */
static bool b64_decode(unsigned char *dst, size_t *out_len, const char *src, size_t n)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;

    if (n % 4 == 1)
        return false;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(src[i]);

        if (v < 0)
            return false;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[o++] = (unsigned char)(acc >> bits);
        }
    }
    /* The 2 or 4 leftover bits must be zero: otherwise two texts would decode alike. */
    if (acc & ((1u << bits) - 1))
        return false;
    *out_len = o;
    return true;
}

/* Computes the 16-byte tag over scope || 0x00 || payload. */
static int compute_tag(const struct gr_cursor_key *key, struct gr_arena *a, const char *scope,
                       const unsigned char *payload, size_t len, unsigned char tag[TAG_LEN])
{
    size_t slen = strlen(scope);
    unsigned char *msg = gr_arena_alloc(a, slen + 1 + len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    memcpy(msg, scope, slen);
    msg[slen] = 0;
    if (len)
        memcpy(msg + slen + 1, payload, len);
    if (!HMAC(EVP_sha256(), key->k, (int)sizeof(key->k), msg, slen + 1 + len, md, &mdlen) ||
        mdlen < TAG_LEN)
        return GR_EINTERNAL;
    memcpy(tag, md, TAG_LEN);
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

int gr_cursor_encode(const struct gr_cursor_key *key, struct gr_arena *a, const char *scope,
                     const char *payload, size_t len, const char **out)
{
    unsigned char tag[TAG_LEN];
    char *s;
    size_t o;
    int rc;

    if (len > GR_CURSOR_PAYLOAD_MAX)
        return GR_ETOOBIG;
    rc = compute_tag(key, a, scope, (const unsigned char *)payload, len, tag);
    if (rc < 0)
        return rc;
    s = gr_arena_alloc(a, (len * 4 + 2) / 3 + 1 + TAG_B64_LEN + 1);
    o = b64_encode(s, (const unsigned char *)payload, len);
    s[o++] = '.';
    o += b64_encode(s + o, tag, TAG_LEN);
    s[o] = '\0';
    *out = s;
    return 0;
}

int gr_cursor_decode(const struct gr_cursor_key *key, struct gr_arena *a, const char *scope,
                     const char *cursor, const char **payload, size_t *len)
{
    unsigned char tag[TAG_LEN], want[TAG_LEN + 2];
    unsigned char *data;
    const char *dot;
    size_t n, plen_b64, dlen = 0, tlen = 0;
    int rc;

    if (!cursor)
        return GR_EINVAL;
    n = strnlen(cursor, GR_CURSOR_MAX + 1);
    if (n > GR_CURSOR_MAX)
        return GR_EINVAL;
    dot = memchr(cursor, '.', n);
    if (!dot)
        return GR_EINVAL;
    plen_b64 = (size_t)(dot - cursor);
    if (n - plen_b64 - 1 != TAG_B64_LEN)
        return GR_EINVAL;
    if (!b64_decode(want, &tlen, dot + 1, TAG_B64_LEN) || tlen != TAG_LEN)
        return GR_EINVAL;
    data = gr_arena_alloc(a, plen_b64 * 3 / 4 + 1);
    if (!b64_decode(data, &dlen, cursor, plen_b64) || dlen > GR_CURSOR_PAYLOAD_MAX)
        return GR_EINVAL;
    rc = compute_tag(key, a, scope, data, dlen, tag);
    if (rc < 0)
        return rc;
    if (CRYPTO_memcmp(tag, want, TAG_LEN) != 0)
        return GR_EINVAL;
    data[dlen] = '\0';
    *payload = (const char *)data;
    if (len)
        *len = dlen;
    return 0;
}
