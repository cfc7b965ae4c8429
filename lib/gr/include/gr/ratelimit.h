/*
 * gr/ratelimit.h - rate limits: a fixed-window counter or a token bucket per key, in-process or
 * in Redis.
 *
 * gr_rl_hit counts one event for @key and says whether it is within @limit events per
 * @window_ms; when it is not, *retry_after_s tells the client when the window ends (the
 * Retry-After of a 429). Keys are strings of at most GR_RL_KEY_MAX bytes (longer keys are
 * hashed as given, compared in full); the table holds at most the number of keys given to
 * gr_rl_new, replacing the entry whose window ended longest ago when full, so memory stays
 * bounded whatever the clients send. Windows follow the library clock (gr/time.h), so tests
 * move it instead of sleeping. Thread-safe.
 *
 * Redis (ARCHITECTURE §3): gr_rl_new_redis and gr_tb_new with a client keep the counters in
 * Redis, so every process on that Redis shares one budget per key (keys are global there:
 * callers put their own prefix in keys, e.g. "auth|ip|1.2.3.4"; stored as gr:rl:KEY and
 * gr:tb:KEY). Each call is one EVALSHA of a Lua script given the library clock (so the test
 * clock moves Redis limits too); the Redis keys expire by themselves. When Redis fails (down,
 * timeout), the call is answered from the in-process table instead - limits stay local for
 * that call, never an error - and counted in gr_rl_fallbacks / gr_tb_fallbacks.
 *
 * Token buckets (gr_tb_*) are for request rates: each key holds up to @burst tokens, refilled
 * at @per_s per second; a request takes one. The in-process table is split in shards with a
 * lock each, so takes on different keys rarely contend.
 */
#ifndef GR_RATELIMIT_H
#define GR_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GR_RL_KEY_MAX 256

struct gr_rl;
struct gr_tb;
struct gr_redis;

/** A limiter that tracks at most @max_keys keys (at least 16). Never fails (aborts on OOM). */
struct gr_rl *gr_rl_new(size_t max_keys);
/**
 * A limiter whose counters live in Redis through @r (not owned; must outlive the limiter),
 * with an in-process table of @max_keys keys for the calls Redis cannot answer.
 */
struct gr_rl *gr_rl_new_redis(struct gr_redis *r, size_t max_keys);
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

/** How many calls on @rl were answered in-process because Redis failed. */
uint64_t gr_rl_fallbacks(const struct gr_rl *rl);

/* ---- token buckets ----------------------------------------------------------------------- */

/**
 * A token-bucket limiter for at most @max_keys keys in-process (at least 16; the least useful
 * bucket - the one that would be full soonest - is replaced when full), in Redis when @r is
 * not NULL (not owned; must outlive the limiter). Never fails (aborts on OOM).
 */
struct gr_tb *gr_tb_new(size_t max_keys, struct gr_redis *r);
/** Frees @tb (NULL is a no-op). */
void gr_tb_free(struct gr_tb *tb);

/**
 * Takes one token from @key's bucket of @burst tokens (at least 1) refilled at @per_s tokens
 * per second (> 0; smaller values are taken as one per day). A new key starts full. True when
 * a token was taken; false otherwise, with *@retry_after_s (may be NULL) set to the whole
 * seconds (1-86400) until one token is back.
 */
bool gr_tb_take(struct gr_tb *tb, const char *key, double per_s, int burst, int *retry_after_s);

/** How many takes on @tb were answered in-process because Redis failed. */
uint64_t gr_tb_fallbacks(const struct gr_tb *tb);

#endif
