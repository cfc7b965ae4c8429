/*
 * gr/seal.h - sealing secrets at rest: AES-256-GCM under a 256-bit master key, with a fresh
 * random 96-bit nonce per value and optional associated data that binds a sealed value to its
 * place (so it cannot be moved to another row or key and still open).
 *
 * The stored text is base64url without padding (RFC 4648 §5) of
 *
 *     nonce (12 bytes) | ciphertext (as long as the plaintext) | tag (16 bytes)
 *
 * which is exactly what 04-config-service and 05-auth-service wrote before this module
 * existed, so their databases keep opening. No associated data and empty associated data are
 * the same thing in GCM. This unversioned form is version 0; should another form ever be
 * needed it must start with a character outside the base64url alphabet (e.g. "v1.") so the
 * two stay apart.
 *
 * The master key comes from an environment variable, in one of two encodings (each service
 * keeps the one it documents), or, when the variable is unset, from a file of 32 raw bytes in
 * DATA_DIR, made with mode 0600 on first start when the service allows it (single-process and
 * development setups; production sets the variable, the same on every instance). Key bytes
 * never reach a log or an error message, and every temporary copy is wiped (OPENSSL_cleanse).
 */
#ifndef GR_SEAL_H
#define GR_SEAL_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/arena.h"
#include "gr/status.h"

#define GR_SEAL_KEY_LEN  32            /* bytes of the master key (AES-256) */
#define GR_SEAL_NONCE    12            /* bytes of the GCM nonce (96 bits) */
#define GR_SEAL_TAG      16            /* bytes of the GCM tag */
#define GR_SEAL_MAX      (1024 * 1024) /* bytes of plaintext sealed or opened at most */
#define GR_SEAL_ERR_MAX  512           /* room for gr_seal_key_load's message */
#define GR_SEAL_PASS_MIN 32            /* bytes of a passphrase at least */
#define GR_SEAL_PATH_MAX 1024          /* bytes of DATA_DIR/file */

/* Characters of the sealed text of @n plaintext bytes (without the NUL). */
#define GR_SEAL_TEXT_LEN(n) ((((size_t)GR_SEAL_NONCE + (n) + GR_SEAL_TAG) * 4 + 2) / 3)

/* A master key. Caller memory; wipe it with gr_seal_key_wipe when done. */
struct gr_seal_key {
    unsigned char b[GR_SEAL_KEY_LEN];
};

/* How the environment variable spells the key. */
enum gr_seal_env_format {
    GR_SEAL_ENV_HEX = 0,    /* exactly 64 hex characters: the key itself */
    GR_SEAL_ENV_PASSPHRASE, /* any string of at least GR_SEAL_PASS_MIN bytes; key = SHA-256 */
};

/* Where a master key comes from. Every string is borrowed. */
struct gr_seal_key_opts {
    const char *env;                /* name of the variable, e.g. "CONFIG_MASTER_KEY" */
    enum gr_seal_env_format format; /* its encoding */
    const char *data_dir;           /* DATA_DIR; the key file lives there */
    const char *file;               /* the key file's name in data_dir, e.g. "config-master-key" */
    const char *what;               /* words for messages, e.g. "master key" */
    bool create;                    /* make the file (0600) when it is missing */
};

/**
 * Loads the master key into @key: from the variable @o->env when it is set and not empty,
 * otherwise from @o->data_dir/@o->file, which is made (32 random bytes, mode 0600, data_dir
 * created 0700 if missing) when it does not exist and @o->create is set; making it logs a
 * warning naming the file. An existing key file that others than its owner may read is used
 * but logged as a warning.
 *
 * Errors, with one line for the operator in @err (@errlen bytes, at most GR_SEAL_ERR_MAX
 * needed) that names the variable or the file and never holds key material:
 * GR_ECONFIG: the variable is malformed ("<ENV> must be 64 hex characters (a 256-bit key)",
 *             "<ENV> must be at least 32 bytes"), the file is damaged (not 32 bytes), cannot
 *             be written, or is missing and may not be made, or the path is too long;
 * GR_EINTERNAL: no random bytes.
 * On error @key is wiped.
 */
GR_MUST_CHECK int gr_seal_key_load(struct gr_seal_key *key, const struct gr_seal_key_opts *o,
                                   char *err, size_t errlen);

/** Decodes 64 hex characters into @key. GR_EINVAL (key wiped) on anything else. */
GR_MUST_CHECK int gr_seal_key_from_hex(struct gr_seal_key *key, const char *hex);

/** Derives @key as SHA-256 of @pass (at least GR_SEAL_PASS_MIN bytes, else GR_EINVAL). */
GR_MUST_CHECK int gr_seal_key_from_passphrase(struct gr_seal_key *key, const char *pass);

/** Wipes @key (OPENSSL_cleanse). */
void gr_seal_key_wipe(struct gr_seal_key *key);

/**
 * Seals @n bytes at @p under @key, bound to @aad (a NUL-terminated string; NULL or "" for
 * none), into *@out: NUL-terminated base64url text, arena memory of @a. A random nonce is
 * drawn for every call. GR_ETOOBIG past GR_SEAL_MAX bytes; GR_EINTERNAL when OpenSSL fails.
 */
GR_MUST_CHECK int gr_seal(const struct gr_seal_key *key, struct gr_arena *a, const char *aad,
                          const void *p, size_t n, const char **out);

/**
 * Opens gr_seal's text @sealed with @key and the same @aad into *@out (NUL-terminated arena
 * memory of @a; the plaintext may itself hold NUL bytes) and, if @outlen is not NULL, its
 * length. GR_EINVAL when the text is malformed or does not verify: tampered, another key or
 * other associated data (the three are not told apart). GR_EINTERNAL when OpenSSL fails.
 */
GR_MUST_CHECK int gr_seal_open(const struct gr_seal_key *key, struct gr_arena *a, const char *aad,
                               const char *sealed, char **out, size_t *outlen);

#endif
