/*
 * gr/confwatch.h - hot reload of whitelisted configuration from config-service (SERVICES §04:
 * "whitelisted keys (log level, limits) hot-reload without restart").
 *
 * When CONFIG_URL is set, gr_confwatch_start starts one thread that long-polls
 *   CONFIG_URL/api/v1/configs/<service name>/<GRAVITY_ENV or default>?index=N&wait=30s
 * with the process's service token (gr_svctoken_default) and applies the merged view's
 * whitelisted keys: LOG_LEVEL (gr_log_set_level; removing the key restores the start-up level)
 * and every key registered with gr_confwatch_on. A callback runs on the watcher thread when its
 * key's value changes (and once at the first answer when the key is set): with the value as
 * text (a JSON string's contents, any other JSON value as compact JSON text), or NULL when the
 * key is no longer set. Only key names and the index are logged, never values. While the
 * config service cannot be reached the thread retries with jittered backoff (1 s .. 30 s).
 */
#ifndef GR_CONFWATCH_H
#define GR_CONFWATCH_H

#include <stddef.h>

#include "gr/status.h"

#define GR_CONFWATCH_KEYS_MAX  32        /* callbacks registered at most */
#define GR_CONFWATCH_RESP_MAX  (4 << 20) /* bytes of one merged view */
#define GR_CONFWATCH_WAIT_S    30        /* long-poll wait asked of the server */
#define GR_CONFWATCH_BACKOFF_S 30        /* longest pause after a failure */

typedef void (*gr_confwatch_fn)(const char *value, void *arg);

/**
 * Registers @fn(@value, @arg) for @key (copied; [A-Za-z0-9_.-]{1,256}); a key may have several.
 * Call before gr_confwatch_start (thread-safe at any time, but a key registered later is
 * applied at the next change only). Errors: GR_EINVAL for a bad key or NULL @fn; GR_ETOOBIG
 * beyond GR_CONFWATCH_KEYS_MAX.
 */
GR_MUST_CHECK int gr_confwatch_on(const char *key, gr_confwatch_fn fn, void *arg);

/**
 * Reads CONFIG_URL (http or https; unset = nothing to do, returns 0) and GRAVITY_ENV (default,
 * dev, test, staging or prod; default "default") and starts the watcher for @service (the
 * service's name, e.g. "product-service"). Errors: GR_ECONFIG with one line in @err naming the
 * variable; GR_EINTERNAL when the thread cannot start; GR_EINVAL when already started.
 */
GR_MUST_CHECK int gr_confwatch_start(const char *service, char *err, size_t errlen);

/** Stops the watcher (aborting a long-poll in flight) and forgets the callbacks. Idempotent. */
void gr_confwatch_stop(void);

/** The config index of the last merged view applied (0 before the first), for tests. */
long long gr_confwatch_index(void);

#endif
