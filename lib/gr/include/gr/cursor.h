/*
 * gr/cursor.h - signed opaque cursors for list pagination (SERVICES §0 "Lists").
 *
 * A cursor carries the position of the last row of a page (e.g. "2026-…Z|0190…") to the
 * client and back. It is bound by an HMAC to a scope: the endpoint plus every filter that
 * must not change between pages. A cursor that was edited, truncated, made with another key
 * or for another scope fails to decode with GR_EINVAL, which the HTTP layer turns into 400.
 *
 * Format: base64url(payload) "." base64url(HMAC-SHA256(key, scope || 0x00 || payload)[0..16]),
 * unpadded base64url (RFC 4648 §5) with canonical trailing bits, so it is safe in a URL query
 * without escaping.
 */
#ifndef GR_CURSOR_H
#define GR_CURSOR_H

#include <stddef.h>

#include "gr/status.h"

struct gr_arena;

#define GR_CURSOR_PAYLOAD_MAX 1024 /* bytes of payload */
#define GR_CURSOR_MAX         2048 /* characters of an encoded cursor */

/* The HMAC key. Plain bytes: copy it freely; keep it out of logs. */
struct gr_cursor_key {
    unsigned char k[32];
};

/**
 * Derives a key from a secret string (e.g. env CURSOR_SECRET): key = SHA-256(@secret[0..@len)).
 * @secret is borrowed. The same secret gives the same key, so cursors survive restarts and
 * work across replicas.
 */
void gr_cursor_key_from_secret(struct gr_cursor_key *key, const char *secret, size_t len);
/** Fills @key with 32 random bytes (cursors then die with the process). */
void gr_cursor_key_random(struct gr_cursor_key *key);

/**
 * Encodes @payload (@len bytes, any content, at most GR_CURSOR_PAYLOAD_MAX) bound to @scope
 * (a NUL-terminated string such as "GET /api/v1/products?brand=x&sort=price") into a token.
 * @key, @scope and @payload are borrowed; *@out is a NUL-terminated string in @a.
 * GR_ETOOBIG when @len exceeds GR_CURSOR_PAYLOAD_MAX, GR_EINTERNAL if OpenSSL fails.
 */
GR_MUST_CHECK int gr_cursor_encode(const struct gr_cursor_key *key, struct gr_arena *a,
                                   const char *scope, const char *payload, size_t len,
                                   const char **out);
/**
 * Verifies @cursor (NUL-terminated, borrowed) against @key and @scope and decodes it.
 * GR_EINVAL for anything edited, truncated, longer than GR_CURSOR_MAX, signed for another
 * scope or key, or not canonical unpadded base64url. The MAC is compared in constant time.
 * On success *@payload is a NUL-terminated copy in @a (payloads may contain NUL bytes; *@len
 * is the exact length; @len may be NULL). Outputs are untouched on failure.
 */
GR_MUST_CHECK int gr_cursor_decode(const struct gr_cursor_key *key, struct gr_arena *a,
                                   const char *scope, const char *cursor, const char **payload,
                                   size_t *len);

#endif
