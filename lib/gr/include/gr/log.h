/*
 * gr/log.h - one JSON object per line on stderr (or key=value text with LOG_FORMAT=text).
 *
 * Every line carries time, level, service and msg; callers add fields as pairs of
 * (key, value) strings. Values named like secrets (password, token, secret, authorization,
 * cookie, key) are always written as "[redacted]", whatever the caller passes.
 * Messages follow STYLE R12: lowercase, failure first, no final full stop.
 */
#ifndef GR_LOG_H
#define GR_LOG_H

#include <stdbool.h>

#include "gr/status.h"

enum gr_log_level { GR_LOG_DEBUG = 0, GR_LOG_INFO, GR_LOG_WARN, GR_LOG_ERROR, GR_LOG_OFF };

/** Process-wide logger setup; called once by gr_main before threads start. */
void gr_log_setup(const char *service, int level, bool json);
/** Changes the level at run time (hot reload); thread-safe. */
void gr_log_set_level(int level);
int gr_log_get_level(void);
/** Parses "debug|info|warn|error|off"; returns level or -1. */
int gr_log_level_parse(const char *s);
bool gr_log_enabled(int level);

/**
 * Logs @msg with NULL-terminated key/value string pairs:
 *   gr_log(GR_LOG_INFO, "listening", "port", "8007", (char *)NULL);
 * NULL values are skipped.
 */
void gr_log(int level, const char *msg, ...) __attribute__((sentinel));
/** Logs a pre-rendered JSON fragment of extra fields (`"a":1,"b":"x"`), used by the access log. */
void gr_log_raw(int level, const char *msg, const char *json_fields);

#define gr_log_debug(...) gr_log(GR_LOG_DEBUG, __VA_ARGS__, (char *)NULL)
#define gr_log_info(...)  gr_log(GR_LOG_INFO, __VA_ARGS__, (char *)NULL)
#define gr_log_warn(...)  gr_log(GR_LOG_WARN, __VA_ARGS__, (char *)NULL)
#define gr_log_error(...) gr_log(GR_LOG_ERROR, __VA_ARGS__, (char *)NULL)

#endif
