/*
 * secrets.c - the master key and the sealing of secret values: AES-256-GCM (OpenSSL EVP),
 * stored as base64url(nonce | ciphertext | tag), with "service/env/key" as additional
 * authenticated data so a sealed value cannot be moved to another key. The master key comes
 * from CONFIG_MASTER_KEY (64 hex characters, the same on every instance) or, when that is
 * unset, from DATA_DIR/config-master-key: 32 random bytes made on first start with mode 0600
 * (the approach of 05-auth-service's key secret file). Never from the database.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cfgsvc.h"
#include "gr/buf.h"
#include "gr/log.h"

#define NONCE 12
#define TAG   16

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int key_from_file(struct cfg_app *app, const char *data_dir)
{
    char path[1024];
    unsigned char raw[32];
    int fd;
    ssize_t n;

    if (snprintf(path, sizeof(path), "%s/config-master-key", data_dir) >= (int)sizeof(path)) {
        fprintf(stderr, "04-config-service: DATA_DIR is too long\n");
        return GR_ECONFIG;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, raw, sizeof(raw));
        close(fd);
        if (n != (ssize_t)sizeof(raw)) {
            fprintf(stderr, "04-config-service: the master key file %s is damaged\n", path);
            return GR_ECONFIG;
        }
    } else {
        if (RAND_bytes(raw, sizeof(raw)) != 1)
            return GR_EINTERNAL;
        (void)mkdir(data_dir, 0700);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, raw, sizeof(raw)) != (ssize_t)sizeof(raw) || fsync(fd) != 0) {
            fprintf(stderr, "04-config-service: cannot write the master key file %s: %s\n", path,
                    strerror(errno));
            if (fd >= 0)
                close(fd);
            OPENSSL_cleanse(raw, sizeof(raw));
            return GR_ECONFIG;
        }
        close(fd);
        gr_log_warn("CONFIG_MASTER_KEY not set: made a master key file (set CONFIG_MASTER_KEY, "
                    "the same on every instance, in production)",
                    "path", path);
    }
    memcpy(app->key, raw, sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

int cfg_key_load(struct cfg_app *app, const char *data_dir)
{
    const char *env = getenv("CONFIG_MASTER_KEY");

    if (!env || !*env)
        return key_from_file(app, data_dir);
    if (strlen(env) != 64) {
        fprintf(stderr, "04-config-service: CONFIG_MASTER_KEY must be 64 hex characters "
                        "(a 256-bit key)\n");
        return GR_ECONFIG;
    }
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(env[2 * i]), lo = hexval(env[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(app->key, sizeof(app->key));
            fprintf(stderr, "04-config-service: CONFIG_MASTER_KEY must be 64 hex characters "
                            "(a 256-bit key)\n");
            return GR_ECONFIG;
        }
        app->key[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

int cfg_seal(const struct cfg_app *app, struct gr_arena *a, const char *aad, const void *p,
             size_t n, const char **out)
{
    unsigned char *buf;
    EVP_CIPHER_CTX *cx;
    struct gr_buf b;
    int len = 0, fin = 0, alen = 0, ok;

    if (n > CFG_VALUE_MAX)
        return GR_ETOOBIG;
    buf = gr_arena_alloc(a, NONCE + n + TAG);
    if (RAND_bytes(buf, NONCE) != 1)
        return GR_EINTERNAL;
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_EncryptInit_ex(cx, EVP_aes_256_gcm(), NULL, app->key, buf) == 1 &&
         EVP_EncryptUpdate(cx, NULL, &alen, (const unsigned char *)aad, (int)strlen(aad)) == 1 &&
         EVP_EncryptUpdate(cx, buf + NONCE, &len, p, (int)n) == 1 &&
         EVP_EncryptFinal_ex(cx, buf + NONCE + len, &fin) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, TAG, buf + NONCE + len + fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok)
        return GR_EINTERNAL;
    gr_buf_init(&b, (NONCE + n + TAG) * 2 + 8);
    if (gr_b64url_encode(&b, buf, (size_t)(NONCE + len + fin + TAG)) < 0) {
        gr_buf_release(&b);
        return GR_EINTERNAL;
    }
    *out = gr_arena_strdup(a, gr_buf_cstr(&b));
    gr_buf_release(&b);
    return 0;
}

int cfg_open(const struct cfg_app *app, struct gr_arena *a, const char *aad, const char *sealed,
             const char **out)
{
    size_t slen = sealed ? strlen(sealed) : 0, raw_len = 0;
    unsigned char *raw;
    char *plain;
    EVP_CIPHER_CTX *cx;
    int len = 0, fin = 0, alen = 0, ok;

    if (slen < 4 || slen > (NONCE + CFG_VALUE_MAX + TAG) * 4 / 3 + 4)
        return GR_EINVAL;
    raw = gr_arena_alloc(a, slen);
    if (gr_b64url_decode(sealed, slen, raw, &raw_len) < 0 || raw_len < NONCE + TAG)
        return GR_EINVAL;
    plain = gr_arena_alloc(a, raw_len + 1);
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, app->key, raw) == 1 &&
         EVP_DecryptUpdate(cx, NULL, &alen, (const unsigned char *)aad, (int)strlen(aad)) == 1 &&
         EVP_DecryptUpdate(cx, (unsigned char *)plain, &len, raw + NONCE,
                           (int)(raw_len - NONCE - TAG)) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(raw + raw_len - TAG)) == 1 &&
         EVP_DecryptFinal_ex(cx, (unsigned char *)plain + len, &fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok)
        return GR_EINVAL;
    plain[len + fin] = '\0';
    *out = plain;
    return 0;
}
