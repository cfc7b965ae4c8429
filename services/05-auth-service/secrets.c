/*
 * secrets.c - the key-encryption key and what it protects: signing keys, TOTP secrets and the
 * child token kept for the refresh grace window are stored sealed with AES-256-GCM
 * (base64url of nonce | ciphertext | tag). The KEK comes from AUTH_KEY_SECRET (any string of
 * at least 32 bytes, hashed to 256 bits; give every instance the same one) or, for the
 * embedded single-process mode, from DATA_DIR/auth-key-secret, 32 random bytes made on first
 * start with mode 0600.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "auth.h"
#include "gr/buf.h"
#include "gr/log.h"

#define NONCE    12
#define TAG      16
#define SEAL_MAX 8192 /* bytes of plaintext sealed at most */

int auth_kek_load(struct auth_app *app, const char *data_dir)
{
    const char *env = getenv("AUTH_KEY_SECRET");
    char path[1024];
    unsigned char raw[32];
    int fd;
    ssize_t n;

    if (env && *env) {
        if (strlen(env) < 32) {
            fprintf(stderr, "05-auth-service: AUTH_KEY_SECRET must be at least 32 bytes\n");
            return GR_ECONFIG;
        }
        SHA256((const unsigned char *)env, strlen(env), app->kek);
        return 0;
    }
    if (snprintf(path, sizeof(path), "%s/auth-key-secret", data_dir) >= (int)sizeof(path))
        return GR_ECONFIG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, raw, sizeof(raw));
        close(fd);
        if (n != (ssize_t)sizeof(raw)) {
            gr_log_error("auth key secret file is damaged", "path", path);
            return GR_ECONFIG;
        }
    } else {
        if (RAND_bytes(raw, sizeof(raw)) != 1)
            return GR_EINTERNAL;
        (void)mkdir(data_dir, 0700);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, raw, sizeof(raw)) != (ssize_t)sizeof(raw) || fsync(fd) != 0) {
            gr_log_error("cannot write the auth key secret file", "path", path, "error",
                         strerror(errno));
            if (fd >= 0)
                close(fd);
            return GR_ECONFIG;
        }
        close(fd);
        gr_log_warn("AUTH_KEY_SECRET not set: made a key secret file (set AUTH_KEY_SECRET, the "
                    "same on every instance, in production)",
                    "path", path);
    }
    memcpy(app->kek, raw, sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

int auth_seal(const struct auth_app *app, struct gr_arena *a, const void *p, size_t n,
              const char **out)
{
    unsigned char buf[NONCE + SEAL_MAX + TAG];
    EVP_CIPHER_CTX *cx;
    struct gr_buf b;
    int len = 0, fin = 0, ok;

    if (n > SEAL_MAX)
        return GR_ETOOBIG;
    if (RAND_bytes(buf, NONCE) != 1)
        return GR_EINTERNAL;
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_EncryptInit_ex(cx, EVP_aes_256_gcm(), NULL, app->kek, buf) == 1 &&
         EVP_EncryptUpdate(cx, buf + NONCE, &len, p, (int)n) == 1 &&
         EVP_EncryptFinal_ex(cx, buf + NONCE + len, &fin) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, TAG, buf + NONCE + len + fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok)
        return GR_EINTERNAL;
    gr_buf_init(&b, (NONCE + SEAL_MAX + TAG) * 2);
    if (gr_b64url_encode(&b, buf, (size_t)(NONCE + len + fin + TAG)) < 0) {
        gr_buf_release(&b);
        return GR_EINTERNAL;
    }
    *out = gr_arena_strdup(a, gr_buf_cstr(&b));
    gr_buf_release(&b);
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

int auth_open(const struct auth_app *app, struct gr_arena *a, const char *sealed, char **out,
              size_t *outlen)
{
    size_t slen = sealed ? strlen(sealed) : 0, raw_len = 0;
    unsigned char *raw;
    char *plain;
    EVP_CIPHER_CTX *cx;
    int len = 0, fin = 0, ok;

    if (slen < 4 || slen > (NONCE + SEAL_MAX + TAG) * 4 / 3 + 4)
        return GR_EINVAL;
    raw = gr_arena_alloc(a, slen);
    if (gr_b64url_decode(sealed, slen, raw, &raw_len) < 0 || raw_len < NONCE + TAG)
        return GR_EINVAL;
    plain = gr_arena_alloc(a, raw_len + 1);
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, app->kek, raw) == 1 &&
         EVP_DecryptUpdate(cx, (unsigned char *)plain, &len, raw + NONCE,
                           (int)(raw_len - NONCE - TAG)) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(raw + raw_len - TAG)) == 1 &&
         EVP_DecryptFinal_ex(cx, (unsigned char *)plain + len, &fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok)
        return GR_EINVAL;
    plain[len + fin] = '\0';
    *out = plain;
    if (outlen)
        *outlen = (size_t)(len + fin);
    return 0;
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
