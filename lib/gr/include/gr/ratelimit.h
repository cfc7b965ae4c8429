/*
 * gr/ratelimit.h - in-process rate limits: a fixed-window counter per key.
 *
 * gr_rl_hit counts one event for @key and says whether it is within @limit events per
 * @window_ms; when it is not, *retry_after_s tells the client when the window ends (the
 * Retry-After of a 429). Keys are strings of at most GR_RL_KEY_MAX bytes (longer keys are
 * hashed as given, compared in full); the table holds at most the number of keys given to
 * gr_rl_new, replacing the entry whose window ended longest ago when full, so memory stays
 * bounded whatever the clients send. Windows follow the library clock (gr/time.h), so tests
 * move it instead of sleeping. Thread-safe. A Redis implementation with the same calls comes
 * with REDIS_URL (ARCHITECTURE §3).
 */
#ifndef GR_RATELIMIT_H
#define GR_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GR_RL_KEY_MAX 256

struct gr_rl;

/** A limiter that tracks at most @max_keys keys (at least 16). Never fails (aborts on OOM). */
struct gr_rl *gr_rl_new(size_t max_keys);
/** Frees @rl (NULL is a no-op). */
void gr_rl_free(struct gr_rl *rl);

/**
 * Counts one event for @key. True when it is at most the @limit-th event of @key's current
 * window of @window_ms; false otherwise, with *@retry_after_s (may be NULL) set to the whole
 * seconds (at least 1) until the window ends.
 */
bool gr_rl_hit(struct gr_rl *rl, const char *key, int limit, int64_t window_ms, int *retry_after_s);

/** True when one more event for @key would be refused now (does not count one). */
bool gr_rl_exceeded(struct gr_rl *rl, const char *key, int limit, int64_t window_ms,
                    int *retry_after_s);

/** Forgets @key (e.g. after a successful login). */
void gr_rl_reset(struct gr_rl *rl, const char *key);

#endif
