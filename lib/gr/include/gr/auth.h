/*
 * gr/auth.h - access-token verification against a JWKS, permission checks, and JWT signing.
 *
 * A struct gr_auth verifies compact JWS access tokens (SERVICES decision 10: alg RS256 or ES256,
 * kid, typ "at+jwt"; claims iss, aud, sub, iat, nbf, exp, jti, roles, permissions) against the
 * keys of a JWKS that comes from http(s) (service 05's /api/v1/auth/jwks) or from a local file
 * (decision 12: JWKS_URL=file:///path/jwks.json). Keys load lazily, are cached, and an unknown
 * kid triggers at most one refetch per GR_AUTH_REFETCH_S seconds. A verified token becomes a
 * struct gr_principal whose strings live in the request arena; routes authorise with
 * gr_principal_can() against the token's permissions ("*" and "resource:*" wildcards).
 *
 * The signing half (struct gr_jwt_key, gr_jwt_sign) is used by tests, the gr-jwt tool and the
 * auth service. Everything here is thread-safe: a gr_auth is shared by every request thread and
 * a gr_jwt_key may be used by many threads at once.
 */
#ifndef GR_AUTH_H
#define GR_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/status.h"

#define GR_AUTH_TOKEN_MAX 8192         /* bytes of a compact token */
#define GR_AUTH_LEEWAY_S  30           /* clock skew allowed on exp, nbf and iat */
#define GR_AUTH_REFETCH_S 10           /* at most one JWKS refetch per this many seconds */
#define GR_AUTH_RETRY_MS  1000         /* retry interval while the JWKS was never loaded */
#define GR_AUTH_FETCH_MS  2000         /* timeout of one http(s) JWKS fetch */
#define GR_AUTH_JWKS_MAX  (256 * 1024) /* bytes of a JWKS document */
#define GR_AUTH_KEYS_MAX  64           /* usable keys kept from one JWKS */
#define GR_AUTH_LIST_MAX  256          /* entries of roles, permissions or aud */
#define GR_AUTH_STR_MAX   256          /* bytes of sub, jti, kid, a role or a permission */

/* The identity a verified access token carries. Every pointer is arena memory. */
struct gr_principal {
    const char *sub; /* never NULL after a successful verify */
    const char *jti; /* NULL when the token has none */
    const char **roles;
    size_t nroles;
    const char **perms;
    size_t nperms;
    long long exp; /* seconds since the epoch */
};

/* Verifier: JWKS source, expected issuer and audience, key cache. Thread-safe. */
struct gr_auth;

/**
 * Creates a verifier for tokens issued by @issuer for @audience, with keys from @jwks_url:
 * "http://host…", "https://host…" or "file:///abs/path.json". Nothing is fetched yet (the auth
 * service may start after us): keys load on the first verify or gr_auth_ready(). All strings
 * are borrowed (copied). On success *@out is caller-freed with gr_auth_free().
 * Errors: GR_ECONFIG for a malformed URL or an empty issuer/audience, with one line in @err
 * (@errlen bytes, may be 0) naming JWKS_URL, JWT_ISSUER or JWT_AUDIENCE and the bad part.
 */
GR_MUST_CHECK int gr_auth_new(const char *jwks_url, const char *issuer, const char *audience,
                              struct gr_auth **out, char *err, size_t errlen);

/**
 * Creates a verifier with a static key set parsed from @jwks_json (@len bytes, borrowed), for
 * tests and fuzzing; it never fetches. Unusable keys in the set are skipped.
 * Errors: GR_EINVAL when @jwks_json is not a JWKS object or issuer/audience are empty.
 */
GR_MUST_CHECK int gr_auth_new_jwks(const char *jwks_json, size_t len, const char *issuer,
                                   const char *audience, struct gr_auth **out);

/**
 * Makes @au verify against the key set @jwks_json (@len bytes, borrowed) from now on instead of
 * its JWKS_URL, and never fetch again: the auth service, which holds the keys, verifies its own
 * tokens this way and calls it again after each key rotation. The first call must come before
 * any thread verifies with @au (a service's init hook); later calls are thread-safe.
 * Errors: GR_EINVAL when @jwks_json is not a JWKS object.
 */
GR_MUST_CHECK int gr_auth_set_jwks(struct gr_auth *au, const char *jwks_json, size_t len);

/** Frees @au (NULL is a no-op). No verify may be running on it. */
void gr_auth_free(struct gr_auth *au);

/**
 * Verifies the compact JWS access token @token (@len bytes, borrowed, need not be
 * NUL-terminated) and fills @out with arena (@a) copies of its identity.
 * Checks, each failure giving GR_EUNAUTH: at most GR_AUTH_TOKEN_MAX bytes; three non-empty
 * strict base64url parts (no padding); header and claims strict JSON objects (duplicate keys
 * rejected); alg exactly "RS256" or "ES256" and matching the key type; kid present and found
 * by exact match; typ "at+jwt" or "application/at+jwt" (case-insensitive); no jku, x5u, x5c,
 * jwk or crit header; a valid signature (ES256 as 64-byte r||s); iss equal to the issuer; aud
 * equal to, or an array containing, the audience; integer exp > now - leeway; integer nbf (if
 * present) <= now + leeway; integer iat (if present) <= now + leeway; non-empty string sub;
 * string jti (if present); roles and permissions arrays of strings (absent = empty) of at most
 * GR_AUTH_LIST_MAX entries. "now" is gr_time_now_s(), leeway GR_AUTH_LEEWAY_S.
 * Errors: GR_EUNAUTH as above; GR_EUNAVAIL when the JWKS has never been loadable. On error
 * @out is zeroed.
 */
GR_MUST_CHECK int gr_auth_verify(struct gr_auth *au, struct gr_arena *a, const char *token,
                                 size_t len, struct gr_principal *out);

/** True once keys were loaded at least once; tries a (rate-limited) load if not. */
bool gr_auth_ready(struct gr_auth *au);

/**
 * Fetches the JWKS again now (blocking up to GR_AUTH_FETCH_MS), whatever the once-per-
 * GR_AUTH_REFETCH_S limit says: for a verifier told that the keys rotated (auth.keys.rotated),
 * so a token signed by the new key is accepted at once. A no-op for a static key set.
 * Thread-safe.
 */
void gr_auth_refetch(struct gr_auth *au);

/** Number of JWKS fetch attempts so far (for tests and metrics). */
unsigned gr_auth_fetch_count(struct gr_auth *au);

/**
 * True when @p (may be NULL: false) holds @perm: a "*" permission grants everything,
 * "products:*" grants every "products:…" permission, anything else must match exactly.
 */
bool gr_principal_can(const struct gr_principal *p, const char *perm);

/** True when @p (may be NULL: false) has the role @role (exact match). */
bool gr_principal_has_role(const struct gr_principal *p, const char *role);

/* ---- signing ------------------------------------------------------------------------------ */

/* A private signing key with its kid and alg. Immutable once made; thread-safe to share. */
struct gr_jwt_key;

/**
 * Generates a new key: RSA 2048 for "RS256", P-256 for "ES256". @kid (1..GR_AUTH_STR_MAX-1
 * bytes) is copied. *@out is caller-freed with gr_jwt_key_free().
 * Errors: GR_EINVAL for another alg or a bad kid; GR_EINTERNAL when OpenSSL fails.
 */
GR_MUST_CHECK int gr_jwt_key_generate(const char *alg, const char *kid, struct gr_jwt_key **out);

/**
 * Loads a PEM private key (@pem, @len bytes, borrowed; PKCS#8 or traditional). @alg must
 * match the key (RSA >= 2048 bits for RS256, P-256 for ES256); NULL infers it from the key.
 * *@out is caller-freed with gr_jwt_key_free().
 * Errors: GR_EINVAL for an unreadable or unsuitable key, a wrong alg or a bad kid.
 */
GR_MUST_CHECK int gr_jwt_key_load_pem(const char *pem, size_t len, const char *alg, const char *kid,
                                      struct gr_jwt_key **out);

/** Appends the PKCS#8 PEM of the private key to @out. Errors: GR_ETOOBIG, GR_EINTERNAL. */
GR_MUST_CHECK int gr_jwt_key_pem(const struct gr_jwt_key *k, struct gr_buf *out);

/**
 * Makes the public JWK {kty, kid, alg, use:"sig", n, e} (RSA) or {kty, kid, alg, use, crv, x,
 * y} (EC) of @k. *@out is a new reference (caller json_decref()s). Errors: GR_EINTERNAL.
 */
GR_MUST_CHECK int gr_jwt_key_jwk(const struct gr_jwt_key *k, json_t **out);

/** The kid (borrowed from @k) and alg ("RS256" or "ES256", static) of @k. */
const char *gr_jwt_key_kid(const struct gr_jwt_key *k);
const char *gr_jwt_key_alg(const struct gr_jwt_key *k);

/** Frees @k (NULL is a no-op). */
void gr_jwt_key_free(struct gr_jwt_key *k);

/**
 * Signs @claims (borrowed, not modified) with the header {alg, kid, typ}; @typ NULL leaves typ
 * out (for tests). *@out is a NUL-terminated compact token, caller-freed with gr_free().
 * Errors: GR_EINVAL when @claims is not an object; GR_EINTERNAL when OpenSSL fails.
 */
GR_MUST_CHECK int gr_jwt_sign(const struct gr_jwt_key *k, const char *typ, json_t *claims,
                              char **out);

/**
 * Signs arbitrary header and payload bytes (each base64url-encoded here, nothing validated)
 * with @k's alg, for tests and fuzzing that need well-signed odd tokens. *@out is caller-freed
 * with gr_free(). Errors: GR_EINTERNAL when OpenSSL fails.
 */
GR_MUST_CHECK int gr_jwt_sign_raw(const struct gr_jwt_key *k, const char *header, size_t hlen,
                                  const char *payload, size_t plen, char **out);

#endif
