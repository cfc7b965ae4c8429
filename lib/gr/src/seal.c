/*
 * seal.c - secrets at rest (gr/seal.h): the master key from the environment or a 0600 key
 * file in DATA_DIR, and AES-256-GCM sealing through OpenSSL EVP into
 * base64url(nonce | ciphertext | tag), the form 04-config-service and 05-auth-service have
 * always stored. Key bytes live only in the caller's struct gr_seal_key and in stack copies
 * that are wiped before returning; messages name the variable or the file, never a value.
 */
#include "gr/seal.h"

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
#include <openssl/sha.h>

#include "gr/buf.h"
#include "gr/log.h"

void gr_seal_key_wipe(struct gr_seal_key *key)
{
    OPENSSL_cleanse(key->b, sizeof(key->b));
}

int gr_seal_key_from_hex(struct gr_seal_key *key, const char *hex)
{
    if (!hex || strlen(hex) != 2 * GR_SEAL_KEY_LEN) {
        gr_seal_key_wipe(key);
        return GR_EINVAL;
    }
    for (size_t i = 0; i < GR_SEAL_KEY_LEN; i++) {
        int hi = OPENSSL_hexchar2int((unsigned char)hex[2 * i]),
            lo = OPENSSL_hexchar2int((unsigned char)hex[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            gr_seal_key_wipe(key);
            return GR_EINVAL;
        }
        key->b[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

int gr_seal_key_from_passphrase(struct gr_seal_key *key, const char *pass)
{
    size_t n = pass ? strlen(pass) : 0;

    if (n < GR_SEAL_PASS_MIN) {
        gr_seal_key_wipe(key);
        return GR_EINVAL;
    }
    SHA256((const unsigned char *)pass, n, key->b);
    return 0;
}

/* Reads (or, with @out, writes) exactly @n bytes at @p; -1 on a short file or an error. */
static int io_full(int fd, unsigned char *p, size_t n, bool out)
{
    size_t done = 0;

    while (done < n) {
        ssize_t r = out ? write(fd, p + done, n - done) : read(fd, p + done, n - done);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

/* Reads the existing key file @fd; warns when others than its owner may read it. */
static int read_key_file(int fd, const char *path, const struct gr_seal_key_opts *o,
                         unsigned char *raw, char *err, size_t errlen)
{
    struct stat st;

    if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0) {
        char msg[256], mode[8];

        snprintf(msg, sizeof(msg), "%s file is accessible to others than its owner (want 0600)",
                 o->what);
        snprintf(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 0777));
        gr_log_warn(msg, "path", path, "mode", mode);
    }
    if (io_full(fd, raw, GR_SEAL_KEY_LEN, false) < 0) {
        snprintf(err, errlen, "the %s file '%s' is damaged", o->what, path);
        return GR_ECONFIG;
    }
    return 0;
}

/* Makes a new key file of 32 random bytes with mode 0600; on failure leaves no file. */
static int make_key_file(const char *dir, const char *path, const struct gr_seal_key_opts *o,
                         unsigned char *raw, char *err, size_t errlen)
{
    char msg[256];
    int fd, e;

    if (RAND_bytes(raw, GR_SEAL_KEY_LEN) != 1) {
        snprintf(err, errlen, "no random bytes for the %s file", o->what);
        return GR_EINTERNAL;
    }
    (void)mkdir(dir, 0700);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write the %s file '%s': %s", o->what, path, strerror(errno));
        return GR_ECONFIG;
    }
    if (io_full(fd, raw, GR_SEAL_KEY_LEN, true) < 0 || fsync(fd) != 0) {
        e = errno;
        close(fd);
        (void)unlink(path);
        snprintf(err, errlen, "cannot write the %s file '%s': %s", o->what, path, strerror(e));
        return GR_ECONFIG;
    }
    close(fd);
    snprintf(msg, sizeof(msg),
             "%s not set: made a %s file (set %s, the same on every instance, in production)",
             o->env, o->what, o->env);
    gr_log_warn(msg, "path", path);
    return 0;
}

static int key_from_file(struct gr_seal_key *key, const struct gr_seal_key_opts *o, char *err,
                         size_t errlen)
{
    const char *dir = o->data_dir && *o->data_dir ? o->data_dir : ".";
    char path[GR_SEAL_PATH_MAX];
    unsigned char raw[GR_SEAL_KEY_LEN];
    int fd, rc, n;

    n = snprintf(path, sizeof(path), "%s/%s", dir, o->file);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        snprintf(err, errlen, "DATA_DIR is too long");
        return GR_ECONFIG;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        rc = read_key_file(fd, path, o, raw, err, errlen);
        close(fd);
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "cannot read the %s file '%s': %s", o->what, path, strerror(errno));
        rc = GR_ECONFIG;
    } else if (!o->create) {
        snprintf(err, errlen, "%s is not set and the %s file '%s' does not exist", o->env, o->what,
                 path);
        rc = GR_ECONFIG;
    } else {
        rc = make_key_file(dir, path, o, raw, err, errlen);
    }
    if (rc == 0)
        memcpy(key->b, raw, sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    return rc;
}

int gr_seal_key_load(struct gr_seal_key *key, const struct gr_seal_key_opts *o, char *err,
                     size_t errlen)
{
    const char *env = o->env ? getenv(o->env) : NULL;
    int rc;

    if (errlen)
        err[0] = '\0';
    if (!env || !*env) {
        rc = key_from_file(key, o, err, errlen);
    } else if (o->format == GR_SEAL_ENV_PASSPHRASE) {
        rc = gr_seal_key_from_passphrase(key, env);
        if (rc < 0)
            snprintf(err, errlen, "%s must be at least %d bytes", o->env, GR_SEAL_PASS_MIN);
    } else {
        rc = gr_seal_key_from_hex(key, env);
        if (rc < 0)
            snprintf(err, errlen, "%s must be %d hex characters (a 256-bit key)", o->env,
                     2 * GR_SEAL_KEY_LEN);
    }
    if (rc < 0) {
        gr_seal_key_wipe(key);
        return rc == GR_EINTERNAL ? GR_EINTERNAL : GR_ECONFIG;
    }
    return 0;
}

int gr_seal(const struct gr_seal_key *key, struct gr_arena *a, const char *aad, const void *p,
            size_t n, const char **out)
{
    size_t alen = aad ? strlen(aad) : 0;
    unsigned char *buf;
    EVP_CIPHER_CTX *cx;
    struct gr_buf b;
    int len = 0, fin = 0, dummy = 0, ok, rc;

    if (n > GR_SEAL_MAX || alen > GR_SEAL_MAX)
        return GR_ETOOBIG;
    buf = gr_arena_alloc(a, GR_SEAL_NONCE + n + GR_SEAL_TAG);
    if (RAND_bytes(buf, GR_SEAL_NONCE) != 1)
        return GR_EINTERNAL;
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_EncryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key->b, buf) == 1 &&
         (alen == 0 ||
          EVP_EncryptUpdate(cx, NULL, &dummy, (const unsigned char *)aad, (int)alen) == 1) &&
         EVP_EncryptUpdate(cx, buf + GR_SEAL_NONCE, &len, p, (int)n) == 1 &&
         EVP_EncryptFinal_ex(cx, buf + GR_SEAL_NONCE + len, &fin) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, GR_SEAL_TAG,
                             buf + GR_SEAL_NONCE + len + fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok)
        return GR_EINTERNAL;
    gr_buf_init(&b, (GR_SEAL_NONCE + n + GR_SEAL_TAG) * 4 / 3 + 8);
    rc = gr_b64url_encode(&b, buf, (size_t)(GR_SEAL_NONCE + len + fin + GR_SEAL_TAG));
    if (rc == 0)
        *out = gr_arena_strdup(a, gr_buf_cstr(&b));
    gr_buf_release(&b);
    return rc < 0 ? GR_EINTERNAL : 0;
}

int gr_seal_open(const struct gr_seal_key *key, struct gr_arena *a, const char *aad,
                 const char *sealed, char **out, size_t *outlen)
{
    size_t slen = sealed ? strlen(sealed) : 0, alen = aad ? strlen(aad) : 0, raw_len = 0;
    unsigned char *raw;
    char *plain;
    EVP_CIPHER_CTX *cx;
    int len = 0, fin = 0, dummy = 0, ok;

    if (slen < 4 || slen > (GR_SEAL_NONCE + GR_SEAL_MAX + GR_SEAL_TAG) * 4 / 3 + 4 ||
        alen > GR_SEAL_MAX)
        return GR_EINVAL;
    raw = gr_arena_alloc(a, slen);
    if (gr_b64url_decode(sealed, slen, raw, &raw_len) < 0 || raw_len < GR_SEAL_NONCE + GR_SEAL_TAG)
        return GR_EINVAL;
    plain = gr_arena_alloc(a, raw_len + 1);
    cx = EVP_CIPHER_CTX_new();
    if (!cx)
        return GR_EINTERNAL;
    ok = EVP_DecryptInit_ex(cx, EVP_aes_256_gcm(), NULL, key->b, raw) == 1 &&
         (alen == 0 ||
          EVP_DecryptUpdate(cx, NULL, &dummy, (const unsigned char *)aad, (int)alen) == 1) &&
         EVP_DecryptUpdate(cx, (unsigned char *)plain, &len, raw + GR_SEAL_NONCE,
                           (int)(raw_len - GR_SEAL_NONCE - GR_SEAL_TAG)) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, GR_SEAL_TAG, raw + raw_len - GR_SEAL_TAG) ==
             1 &&
         EVP_DecryptFinal_ex(cx, (unsigned char *)plain + len, &fin) == 1;
    EVP_CIPHER_CTX_free(cx);
    if (!ok) {
        /* Whatever was decrypted before the tag failed to verify must not linger. */
        OPENSSL_cleanse(plain, raw_len + 1);
        return GR_EINVAL;
    }
    plain[len + fin] = '\0';
    *out = plain;
    if (outlen)
        *outlen = (size_t)(len + fin);
    return 0;
}
