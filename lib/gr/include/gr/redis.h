/*
 * gr/redis.h - a small Redis client over hiredis for the Redis implementations of gr's
 * cache / rate limit / lock modules (ARCHITECTURE §3).
 *
 * A struct gr_redis holds the parsed REDIS_URL; every thread that uses it has its own
 * connection (thread-local, connected on first use, with a 200 ms connect and command
 * timeout). A connection that fails is dropped and made again on the next call; after a
 * failed connect, calls fail at once with GR_EUNAVAIL for GR_REDIS_BACKOFF_MS instead of
 * waiting for the timeout each time, so a Redis outage costs callers nothing but a fallback.
 *
 * URLs: redis://[[user]:password@]host[:port][/db] (port 1-65535, default 6379; db 0-9999,
 * default 0; host a name, an IPv4 address or a bracketed IPv6 address) and
 * unix://[[user]:password@]/path/to/socket. Nothing else (no query, no fragment, no TLS).
 */
#ifndef GR_REDIS_H
#define GR_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/status.h"

#define GR_REDIS_TIMEOUT_MS 200
#define GR_REDIS_BACKOFF_MS 500
#define GR_REDIS_ARGS_MAX   16 /* keys + arguments of one gr_redis_evalsha */

struct gr_redis;

/**
 * Parses @url and makes a client; it does not connect (the first command does), so a Redis
 * that is down at start-up is not an error. Errors: GR_ECONFIG for a malformed URL, with one
 * line in @err naming REDIS_URL and the rule broken (never the password).
 */
GR_MUST_CHECK int gr_redis_new(const char *url, struct gr_redis **out, char *err, size_t errlen);
/** Frees @r and every thread's connection to it; no thread may use @r any more (NULL ok). */
void gr_redis_free(struct gr_redis *r);

/** True when Redis answers PING within the timeout (for /health/detailed). */
bool gr_redis_ping(struct gr_redis *r);

/** A Lua script and its SHA-1, for EVALSHA. Define one per script, statically. */
struct gr_redis_script {
    const char *lua;
    char sha1[41]; /* filled by gr_redis_script_init */
};

/** Computes @s's SHA-1 from @lua. Call once before use (not thread-safe against use). */
void gr_redis_script_init(struct gr_redis_script *s, const char *lua);

/**
 * Runs @s with EVALSHA: @nkeys keys then the other arguments, @argc strings in all (at most
 * GR_REDIS_ARGS_MAX). When Redis does not know the script (NOSCRIPT, e.g. after a restart)
 * it is loaded with SCRIPT LOAD and run again. The script must return an integer or an array
 * of integers: up to @nout of them are stored in @out and their number in *@nret (may be
 * NULL). Errors: GR_EUNAVAIL when Redis cannot be reached or times out (the connection is
 * dropped and made again next time); GR_EINTERNAL for an error reply or another reply type;
 * GR_EINVAL for bad arguments.
 */
GR_MUST_CHECK int gr_redis_evalsha(struct gr_redis *r, const struct gr_redis_script *s, int nkeys,
                                   int argc, const char *const *argv, long long *out, size_t nout,
                                   size_t *nret);

#endif
