/*
 * auth_int.h - internals shared by auth.c (verification, JWKS) and jwt.c (keys, signing):
 * the strict base64url codec and the RS256/ES256 primitives on OpenSSL EVP keys.
 */
#ifndef GR_AUTH_INT_H
#define GR_AUTH_INT_H

#include <stddef.h>

#include <openssl/evp.h>

#include "gr/buf.h"
#include "gr/status.h"

enum { GR_AUTH__RS256 = 1, GR_AUTH__ES256 = 2 };

/** GR_AUTH__RS256 or GR_AUTH__ES256 for the exact strings "RS256"/"ES256", else GR_EINVAL. */
int gr_auth__alg_parse(const char *s);
/** "RS256" or "ES256" (static). */
const char *gr_auth__alg_name(int alg);
/** The alg @pk can serve: RSA of 2048..8192 bits → RS256, EC P-256 → ES256, else GR_EINVAL. */
int gr_auth__pkey_alg(const EVP_PKEY *pk);

/**
 * Verifies @sig (@siglen bytes; ES256 as JOSE r||s of exactly 64 bytes, RS256 exactly the
 * modulus size) over @msg with SHA-256. Returns 0 when valid, GR_EUNAUTH otherwise.
 */
GR_MUST_CHECK int gr_auth__verify_sig(EVP_PKEY *pk, int alg, const unsigned char *msg, size_t n,
                                      const unsigned char *sig, size_t siglen);

#endif
