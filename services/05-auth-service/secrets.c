/*
 * secrets.c - auth-service's use of gr/seal.h, and its small hashing and token helpers. Signing
 * keys, TOTP secrets, PKCE verifiers and the child token kept for the refresh grace window are
 * stored sealed under the key-encryption key (KEK), with no associated data. The KEK comes
 * from AUTH_KEY_SECRET (any string of at least 32 bytes, hashed to 256 bits; give every
 * instance the same one) or, for the embedded single-process mode, from
 * DATA_DIR/auth-key-secret, 32 random bytes made on first start with mode 0600.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "auth.h"
#include "gr/buf.h"

int auth_kek_load(struct auth_app *app, const char *data_dir)
{
    const struct gr_seal_key_opts o = {
        .env = "AUTH_KEY_SECRET",
        .format = GR_SEAL_ENV_PASSPHRASE,
        .file = "auth-key-secret",
        .what = "key secret",
        .data_dir = data_dir,
        .create = true,
    };
    char err[GR_SEAL_ERR_MAX];
    int rc;

    rc = gr_seal_key_load(&app->kek, &o, err, sizeof(err));
    if (rc < 0 && err[0])
        fprintf(stderr, "05-auth-service: %s\n", err);
    return rc;
}

int auth_seal(const struct auth_app *app, struct gr_arena *a, const void *p, size_t n,
              const char **out)
{
    if (n > AUTH_SEAL_MAX)
        return GR_ETOOBIG;
    return gr_seal(&app->kek, a, NULL, p, n, out);
}

int auth_open(const struct auth_app *app, struct gr_arena *a, const char *sealed, char **out,
              size_t *outlen)
{
    if (sealed && strlen(sealed) > GR_SEAL_TEXT_LEN(AUTH_SEAL_MAX))
        return GR_EINVAL;
    return gr_seal_open(&app->kek, a, NULL, sealed, out, outlen);
}

void auth_sha256_hex(const void *p, size_t n, char out[AUTH_SHA256_HEX])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256(p, n, md);
    for (size_t i = 0; i < sizeof(md); i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

int auth_random_token(char out[AUTH_TOKEN_B64 + 1])
{
    unsigned char raw[32];
    struct gr_buf b;
    int rc;

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return GR_EINTERNAL;
    gr_buf_init(&b, 64);
    rc = gr_b64url_encode(&b, raw, sizeof(raw));
    if (rc == 0 && b.len == AUTH_TOKEN_B64)
        memcpy(out, gr_buf_cstr(&b), AUTH_TOKEN_B64 + 1);
    else
        rc = GR_EINTERNAL;
    gr_buf_release(&b);
    OPENSSL_cleanse(raw, sizeof(raw));
    return rc;
}
