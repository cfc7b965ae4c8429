/*
 * password.h - password hashing for auth-service: Argon2id for every new hash, bcrypt accepted
 * for imported accounts and flagged for upgrade (SERVICES §05, decision 4).
 *
 * Passwords are opaque bytes: nothing is normalised, and a password may hold any byte value.
 * Hashes are PHC strings ("$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>") that callers store
 * as TEXT. Every Argon2 or bcrypt computation takes a slot from one process-wide limit, so that a
 * burst of logins cannot allocate 19 MiB per request without bound; a caller that cannot get a
 * slot within the wait receives GR_EBUSY (503). Nothing here logs a password or a hash.
 *
 * All functions are thread-safe.
 */
#ifndef AUTH_PASSWORD_H
#define AUTH_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gr/status.h"

/* Argon2id parameters of every new hash (OWASP's first recommended set). */
#define PW_ARGON2_M_KIB 19456
#define PW_ARGON2_T     2
#define PW_ARGON2_P     1
#define PW_SALT_LEN     16
#define PW_HASH_LEN     32

/* Password length rules (decision 4): 8..128 characters, counted as UTF-8 code points. */
#define PW_MIN_CHARS 8
#define PW_MAX_CHARS 128
/* The most bytes a password may have: 128 characters of at most 4 bytes each. */
#define PW_MAX_BYTES (PW_MAX_CHARS * 4)

/* A buffer of this size always holds what pw_hash writes (97 characters and the NUL). */
#define PW_HASH_MAX 128
/* Stored hashes longer than this are treated as garbage by pw_verify. */
#define PW_STORED_MAX 256

/* Stored Argon2id hashes whose cost is above these are refused rather than computed, so a
 * corrupted or hostile row cannot make one login allocate gigabytes or spin for minutes. */
#define PW_VERIFY_MAX_M_KIB 65536
#define PW_VERIFY_MAX_T     16
#define PW_VERIFY_MAX_P     8
/* The same for bcrypt: cost 15 is 32768 rounds of Blowfish setup, about 3 s. */
#define PW_BCRYPT_MAX_COST 15

/* Default limit on concurrent hash computations, and how long a caller waits for a slot. */
#define PW_MAX_CONCURRENT_DEFAULT 4
#define PW_WAIT_MS_DEFAULT        10000

/**
 * Whether @pw (@len bytes) has 8..128 characters. Characters are UTF-8 code points (bytes that
 * are not continuation bytes), so an ASCII password's characters are its bytes. Anything longer
 * than PW_MAX_BYTES bytes is refused before it is scanned. @pw is borrowed.
 */
bool pw_length_ok(const char *pw, size_t len);

/**
 * Hashes @pw (@len bytes, borrowed) with Argon2id (PW_ARGON2_*), a fresh random 16-byte salt
 * from RAND_bytes, and a 32-byte tag, and writes the NUL-terminated PHC string into @out
 * (@outlen bytes, at least PW_HASH_MAX is always enough).
 *
 * Errors: GR_EINVAL when pw_length_ok() is false, @out is NULL or @outlen is too small (nothing
 * is hashed); GR_EBUSY when no hashing slot frees up within the wait; GR_EINTERNAL when the
 * random source or Argon2 fails. On any error @out is an empty string.
 */
GR_MUST_CHECK int pw_hash(const char *pw, size_t len, char *out, size_t outlen);

/**
 * Checks @pw (@len bytes, borrowed) against @stored (a NUL-terminated PHC or crypt string from
 * the database, borrowed). Accepted formats:
 *   - "$argon2id$...": Argon2id; *needs_upgrade is true on a match when the stored parameters
 *     (version, m, t, salt or tag length) are weaker than PW_ARGON2_*;
 *   - "$2a$", "$2b$", "$2y$" bcrypt (60 characters): *needs_upgrade is true on every match.
 * Anything else, including a stored string over PW_STORED_MAX bytes, a malformed hash or one
 * whose cost is over the PW_VERIFY_MAX_* / PW_BCRYPT_MAX_COST limits, is a mismatch: the function
 * returns 0 with *ok false. The comparison of the computed and stored values is constant-time.
 *
 * The password length is not checked against the 8..128 rule (an imported account may have a
 * shorter one); only lengths over PW_MAX_BYTES are refused.
 *
 * Returns 0 when the check ran (the answer is in *ok); GR_EINVAL for a NULL @ok/@needs_upgrade,
 * a NULL @pw with @len > 0, or @len > PW_MAX_BYTES; GR_EBUSY when no slot frees up within the
 * wait; GR_EINTERNAL when Argon2 cannot allocate its memory. *ok and *needs_upgrade are false on
 * every path but a match.
 */
GR_MUST_CHECK int pw_verify(const char *pw, size_t len, const char *stored, bool *ok,
                            bool *needs_upgrade);

/**
 * Spends the time of one Argon2id verification with our parameters against a hash that no
 * password matches (random salt and tag, made once at first use), and reports nothing. Login
 * calls it for an unknown user so that answering "no such user" takes as long as "wrong
 * password". @pw is borrowed; lengths over PW_MAX_BYTES are clamped.
 *
 * Returns 0, or GR_EBUSY / GR_EINTERNAL like pw_verify.
 */
GR_MUST_CHECK int pw_dummy_verify(const char *pw, size_t len);

/**
 * Sets the process-wide limit on concurrent Argon2/bcrypt computations (default
 * PW_MAX_CONCURRENT_DEFAULT); values below 1 become 1. Threads already computing keep their
 * slots; waiters are woken to look at the new limit.
 */
void pw_set_max_concurrent(int max);

/** Sets how long a caller waits for a slot before GR_EBUSY, in ms (default 10000; >= 0). */
void pw_set_wait_ms(int ms);

/** A snapshot of the hashing limiter, for /metrics and tests. */
struct pw_stats {
    int max;       /* current limit */
    int active;    /* computations running now */
    int peak;      /* most computations that ran at once since the last reset */
    int waiting;   /* callers waiting for a slot now */
    uint64_t runs; /* slots granted since the last reset */
    uint64_t busy; /* callers turned away with GR_EBUSY since the last reset */
};

/** Copies the limiter's counters into @out (caller's memory). */
void pw_stats(struct pw_stats *out);
/** Resets peak (to the current active count), runs and busy. */
void pw_stats_reset(void);

/*
 * Internal, for tests: take and give back one slot of the limiter directly, as a computation
 * would. pw__slot_acquire returns 0 or GR_EBUSY after the configured wait.
 */
GR_MUST_CHECK int pw__slot_acquire(void);
void pw__slot_release(void);

#endif
