/*
 * totp.h - RFC 6238 time-based one-time passwords for auth-service's MFA (SERVICES §05), and
 * the recovery codes that stand in for a lost authenticator.
 *
 * Secrets are 20 random bytes (160 bits, RFC 4226's recommended size) written as unpadded
 * base32, which is what authenticator apps take. Codes are 6 digits, HMAC-SHA1, 30-second steps
 * from the Unix epoch: the defaults every authenticator app assumes. A code is usable once: the
 * caller stores the step that matched and passes it back as last_step, and any step up to it is
 * refused.
 *
 * Recovery codes are shown to the user once; the service stores only totp_recovery_hash() of
 * each. All functions are thread-safe and log nothing.
 */
#ifndef AUTH_TOTP_H
#define AUTH_TOTP_H

#include <stddef.h>

#include "gr/status.h"

#define TOTP_SECRET_BYTES 20
/* Buffer size for a base32 secret: 32 characters and the NUL. */
#define TOTP_SECRET_B32_LEN 33
/* Longest base32 secret totp_verify accepts (a 64-byte key). */
#define TOTP_SECRET_B32_MAX 104
#define TOTP_DIGITS         6
#define TOTP_STEP_S         30
/* Steps of clock drift accepted on either side of the current one. */
#define TOTP_DRIFT_STEPS 1

/* Recovery codes: "xxxxx-xxxxx" from Crockford's base32 alphabet, 50 random bits each. */
#define TOTP_RC_GROUP 5
#define TOTP_RC_LEN   12 /* 11 characters and the NUL */
#define TOTP_RC_COUNT 10
/* Buffer size for totp_recovery_hash's output: 64 hex digits and the NUL. */
#define TOTP_RC_HASH_LEN 65

/**
 * Writes a new random secret (TOTP_SECRET_BYTES from RAND_bytes) as unpadded base32 into @b32
 * (@n bytes, at least TOTP_SECRET_B32_LEN).
 * Errors: GR_EINVAL when @b32 is NULL or @n is too small; GR_EINTERNAL when the random source
 * fails. On error @b32 is an empty string (when @n > 0).
 */
GR_MUST_CHECK int totp_secret_new(char *b32, size_t n);

/**
 * Writes the provisioning URI that authenticator apps scan, into @out (@n bytes):
 *   otpauth://totp/ISSUER:ACCOUNT?secret=B32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30
 * ISSUER and ACCOUNT are percent-encoded (everything but RFC 3986's unreserved characters).
 * All strings are borrowed and NUL-terminated.
 * Errors: GR_EINVAL when a pointer is NULL, @issuer or @account is empty or contains ':' (the
 * label separator, which the key-URI format forbids in either), or @b32 is not 16..104
 * characters of base32; GR_ETOOBIG when @out is too small. On error @out is an empty string
 * (when @n > 0).
 */
GR_MUST_CHECK int totp_uri(const char *b32, const char *issuer, const char *account, char *out,
                           size_t n);

/**
 * Checks @code against the secret @b32 at time @now_s (Unix seconds). The code must be exactly 6
 * ASCII digits. It is accepted for the steps now-1, now and now+1 (step = now_s / 30), but only
 * for a step greater than @last_step, the step that last matched for this secret (pass -1 when
 * none has). Codes are compared in constant time. @b32 may be lower case; padding and spaces are
 * not accepted.
 *
 * Returns 0 when the code is valid, with the matched step in *@matched_step (which the caller
 * stores as the next last_step); GR_EUNAUTH when it is well formed but does not match an
 * acceptable step (including a replay); GR_EINVAL when @code is not 6 digits, @b32 is not a
 * base32 secret of 16..104 characters, @now_s is negative or a pointer is NULL.
 */
GR_MUST_CHECK int totp_verify(const char *b32, const char *code, long long now_s,
                              long long last_step, long long *matched_step);

/**
 * Fills @codes[0..@n-1] with new random recovery codes "xxxxx-xxxxx" (lower-case Crockford
 * base32: 0-9 and a-z without i, l, o, u). @n is 1..64 (TOTP_RC_COUNT is the usual number).
 * Errors: GR_EINVAL for a bad @n or NULL @codes; GR_EINTERNAL when the random source fails
 * (no code is then left in @codes).
 */
GR_MUST_CHECK int totp_recovery_codes(char codes[][TOTP_RC_LEN], int n);

/**
 * Writes the lower-case hex SHA-256 of the normalised @code into @out: case, spaces and '-'
 * are ignored, and Crockford's look-alikes are mapped (o to 0, i and l to 1), so whatever way the
 * user types a code it hashes the same. When @code does not normalise to 10 characters of the
 * alphabet (or is NULL), @out is the empty string, which never equals a stored hash.
 */
void totp_recovery_hash(const char *code, char out[TOTP_RC_HASH_LEN]);

#endif
