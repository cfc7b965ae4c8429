/*
 * gr/config.h - typed configuration from the environment (12-factor), validated at start-up.
 *
 * Every service reads the common variables of ARCHITECTURE §1 into struct gr_config; a service
 * reads its own prefixed variables with the gr_config_* readers. A bad value fails with
 * GR_ECONFIG and one line in @err naming the variable, the rule and the value, e.g.
 *   "PORT: must be an integer in 0..65535, got 'http'".
 */
#ifndef GR_CONFIG_H
#define GR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "gr/status.h"

struct gr_service;

struct gr_config {
    const char *host;          /* HOST, default 127.0.0.1 */
    int port;                  /* PORT, default the service's seed port; 0 = any free port */
    const char *data_dir;      /* DATA_DIR, default ./data/<service id> */
    const char *database_url;  /* DATABASE_URL, default sqlite://<DATA_DIR>/<name>.db */
    const char *redis_url;     /* REDIS_URL, NULL = in-process */
    const char *event_bus;     /* EVENT_BUS: http | nats */
    const char *event_bus_url; /* EVENT_BUS_URL */
    const char *nats_url;      /* NATS_URL */
    const char *discovery_url; /* DISCOVERY_URL, NULL = no registration */
    const char *jwks_url;      /* JWKS_URL */
    const char *jwt_issuer;    /* JWT_ISSUER */
    const char *jwt_audience;  /* JWT_AUDIENCE */
    int log_level;             /* LOG_LEVEL */
    bool log_json;             /* LOG_FORMAT json|text */
    int http_threads;          /* HTTP_THREADS, default cores x 4 */
    size_t http_max_body;      /* HTTP_MAX_BODY, default 1 MiB (accepts K/M suffixes) */
    int http_timeout_s;        /* HTTP_TIMEOUT, idle connection timeout, default 30 */
    int drain_timeout_s;       /* DRAIN_TIMEOUT, default 10 */
    const char *cursor_secret; /* CURSOR_SECRET, NULL = random per process */
    const char *port_file;     /* GR_PORT_FILE: write the bound port there (tests) */
    /* TRUSTED_PROXIES: comma-separated IP addresses (the gateway's) whose X-Forwarded-For
     * names the client (gr_req_client_ip); NULL = trust none. */
    const char *trusted_proxies;
};

/** Loads and validates the common variables. Strings point into the environment or are static. */
GR_MUST_CHECK int gr_config_load(struct gr_config *c, const struct gr_service *svc, char *err,
                                 size_t errlen);

/** Integer variable @name in [min, max], @def when unset. */
GR_MUST_CHECK int gr_config_int(const char *name, long long def, long long min, long long max,
                                long long *out, char *err, size_t errlen);
/** Byte size with optional K/M/G suffix (powers of 1024), in [min, max]. */
GR_MUST_CHECK int gr_config_size(const char *name, size_t def, size_t min, size_t max, size_t *out,
                                 char *err, size_t errlen);
/** Boolean: 1/0, true/false, yes/no, on/off. */
GR_MUST_CHECK int gr_config_bool(const char *name, bool def, bool *out, char *err, size_t errlen);
/** String, @def when unset or empty; with @choices (NULL-terminated) the value must be one. */
GR_MUST_CHECK int gr_config_str(const char *name, const char *def, const char *const *choices,
                                const char **out, char *err, size_t errlen);
/** URL whose scheme is one of @schemes (NULL-terminated), e.g. {"http","https","file",NULL}. */
GR_MUST_CHECK int gr_config_url(const char *name, const char *def, const char *const *schemes,
                                const char **out, char *err, size_t errlen);

#endif
