/*
 * gr/health.h - a service's own dependencies in GET /health/detailed (SERVICES §0).
 *
 * Next to the built-in checks (database, jwks, bus, and redis when REDIS_URL is set), a
 * service adds its dependencies from its init hook:
 *
 *   static int smtp_up(void *arg, char *detail, size_t len) { ... return ok ? 0 : -1; }
 *   gr_health_add(ctx, "smtp", smtp_up, app);
 *
 * Each appears under checks.<name> as {"status":"up"|"down","latency_ms":…[,"detail":…]}; one
 * that is down makes the document say "degraded". /health/detailed always answers 200.
 */
#ifndef GR_HEALTH_H
#define GR_HEALTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct gr_ctx;

#define GR_HEALTH_MAX        16  /* dependencies a service may add */
#define GR_HEALTH_DETAIL_MAX 256 /* bytes of a check's detail, with the NUL */

/**
 * A check: 0 = up, < 0 = down. It may write a short text (never a secret) into @detail
 * (@detail_len bytes, NUL-terminated, empty when unused). Called from request threads,
 * possibly at the same time: it must be thread-safe, and quick (a ping with a timeout).
 */
typedef int (*gr_health_fn)(void *arg, char *detail,
                            size_t detail_len); /* 0 = up, <0 = down; detail optional */

/**
 * Adds dependency @name (copied; [a-z0-9_-], unique, not a built-in name) checked by @fn(@arg).
 * Call from the service's init hook. A bad name or more than GR_HEALTH_MAX is a programming
 * error and aborts (GR_BUG).
 */
void gr_health_add(struct gr_ctx *ctx, const char *name, gr_health_fn fn, void *arg);

/* ---- for gr itself (service.c) and its tests -------------------------------------------- */

/** Runs every added check into @checks (a JSON object); clears *@ok when one is down. */
void gr_health__run(struct gr_ctx *ctx, json_t *checks, bool *ok);
/** Adds the built-in "redis" check on REDIS_URL @url (a client of its own). */
int gr_health__add_redis(struct gr_ctx *ctx, const char *url, char *err, size_t errlen);
/** Releases what gr_health_add and gr_health__add_redis made. */
void gr_health__release(struct gr_ctx *ctx);

#endif
