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
#include "gr/buf.h"
#include "gr/cursor.h"

#define TAG_LEN     16
#define TAG_B64_LEN 22 /* ceil(16 * 4 / 3) without padding */

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
    struct gr_buf b = GR_BUF_INIT;
    int rc;

    if (len > GR_CURSOR_PAYLOAD_MAX)
        return GR_ETOOBIG;
    rc = compute_tag(key, a, scope, (const unsigned char *)payload, len, tag);
    if (rc < 0)
        return rc;
    gr_buf_init(&b, GR_CURSOR_MAX + 1);
    rc = gr_b64url_encode(&b, payload, len);
    if (rc == 0)
        rc = gr_buf_putc(&b, '.');
    if (rc == 0)
        rc = gr_b64url_encode(&b, tag, TAG_LEN);
    if (rc == 0)
        *out = gr_arena_strndup(a, gr_buf_cstr(&b), b.len);
    gr_buf_release(&b);
    return rc;
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
    if (gr_b64url_decode(dot + 1, TAG_B64_LEN, want, &tlen) < 0 || tlen != TAG_LEN)
        return GR_EINVAL;
    data = gr_arena_alloc(a, plen_b64 * 3 / 4 + 1);
    if (gr_b64url_decode(cursor, plen_b64, data, &dlen) < 0 || dlen > GR_CURSOR_PAYLOAD_MAX)
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
