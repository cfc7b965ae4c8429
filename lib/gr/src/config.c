/*
 * config.c - typed, validated configuration from the environment (ARCHITECTURE §1). Every
 * reader fails with one line naming the variable, so a bad deployment stops at start-up with
 * a message an operator can act on. Values that may hold secrets are never echoed back.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gr/config.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/svctoken.h"

static const char *env(const char *name)
{
    const char *v = getenv(name);

    return v && *v ? v : NULL;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return GR_ECONFIG;
}

/* Quotes at most 40 bytes of a value in messages so that a huge variable cannot flood logs. */
#define SHOW(v) (int)(strlen(v) > 40 ? 40 : strlen(v)), (v)

int gr_config_int(const char *name, long long def, long long min, long long max, long long *out,
                  char *err, size_t errlen)
{
    const char *v = env(name);
    char *end;
    long long x;

    if (!v) {
        *out = def;
        return 0;
    }
    errno = 0;
    x = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < min || x > max)
        return fail(err, errlen, "%s: must be an integer in %lld..%lld, got '%.*s'", name, min, max,
                    SHOW(v));
    *out = x;
    return 0;
}

int gr_config_size(const char *name, size_t def, size_t min, size_t max, size_t *out, char *err,
                   size_t errlen)
{
    const char *v = env(name);
    char *end;
    unsigned long long x, mul = 1;

    if (!v) {
        *out = def;
        return 0;
    }
    errno = 0;
    x = strtoull(v, &end, 10);
    if (!errno && end != v && v[0] != '-') {
        if (strcasecmp(end, "k") == 0 || strcasecmp(end, "kb") == 0 || strcasecmp(end, "kib") == 0)
            mul = 1024, end += strlen(end);
        else if (strcasecmp(end, "m") == 0 || strcasecmp(end, "mb") == 0 ||
                 strcasecmp(end, "mib") == 0)
            mul = 1024 * 1024, end += strlen(end);
        else if (strcasecmp(end, "g") == 0 || strcasecmp(end, "gb") == 0 ||
                 strcasecmp(end, "gib") == 0)
            mul = 1024ull * 1024 * 1024, end += strlen(end);
    }
    if (errno || end == v || *end != '\0' || v[0] == '-' || x > max / mul || x * mul < min ||
        x * mul > max)
        return fail(err, errlen,
                    "%s: must be a size in %zu..%zu bytes (K/M/G suffixes), got '%.*s'", name, min,
                    max, SHOW(v));
    *out = (size_t)(x * mul);
    return 0;
}

int gr_config_bool(const char *name, bool def, bool *out, char *err, size_t errlen)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off" };
    const char *v = env(name);

    if (!v) {
        *out = def;
        return 0;
    }
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return fail(err, errlen, "%s: must be true or false, got '%.*s'", name, SHOW(v));
}

int gr_config_str(const char *name, const char *def, const char *const *choices, const char **out,
                  char *err, size_t errlen)
{
    const char *v = env(name);

    if (!v) {
        *out = def;
        return 0;
    }
    if (strlen(v) > 4096)
        return fail(err, errlen, "%s: longer than 4096 bytes", name);
    if (choices) {
        struct gr_buf b = GR_BUF_INIT;
        int rc;

        for (size_t i = 0; choices[i]; i++) {
            if (strcmp(v, choices[i]) == 0) {
                gr_buf_release(&b);
                *out = v;
                return 0;
            }
            gr_buf_printf(&b, "%s%s", i ? "|" : "", choices[i]);
        }
        rc = fail(err, errlen, "%s: must be one of %s, got '%.*s'", name, gr_buf_cstr(&b), SHOW(v));
        gr_buf_release(&b);
        return rc;
    }
    *out = v;
    return 0;
}

int gr_config_url(const char *name, const char *def, const char *const *schemes, const char **out,
                  char *err, size_t errlen)
{
    const char *v = env(name), *colon;
    size_t slen;

    if (!v) {
        *out = def;
        return 0;
    }
    if (strlen(v) > 4096)
        return fail(err, errlen, "%s: longer than 4096 bytes", name);
    colon = strstr(v, "://");
    if (!colon || colon == v)
        return fail(err, errlen, "%s: not a URL (expected scheme://...)", name);
    slen = (size_t)(colon - v);
    for (size_t i = 0; schemes[i]; i++) {
        if (strlen(schemes[i]) == slen && strncasecmp(v, schemes[i], slen) == 0) {
            if (colon[3] == '\0')
                return fail(err, errlen, "%s: nothing after '%s://'", name, schemes[i]);
            for (const char *p = v; *p; p++) {
                if ((unsigned char)*p <= ' ' || *p == 0x7f)
                    return fail(err, errlen, "%s: contains a space or control character", name);
            }
            *out = v;
            return 0;
        }
    }
    return fail(err, errlen, "%s: unsupported scheme '%.*s'", name, (int)(slen > 20 ? 20 : slen),
                v);
}

/* TRUSTED_PROXIES: up to 16 comma-separated IPv4 or IPv6 literals. */
static int trusted_proxies(const char **out, char *err, size_t errlen)
{
    const char *v = getenv("TRUSTED_PROXIES");
    const char *p;
    int n = 0;

    *out = NULL;
    if (!v || !*v)
        return 0;
    if (strlen(v) > 1024)
        return fail(err, errlen, "TRUSTED_PROXIES: longer than 1024 bytes");
    for (p = v; *p;) {
        size_t len = strcspn(p, ",");
        char ip[INET6_ADDRSTRLEN];
        unsigned char bin[sizeof(struct in6_addr)];

        if (len == 0 || len >= sizeof(ip) || ++n > 16)
            return fail(err, errlen,
                        "TRUSTED_PROXIES: want up to 16 comma-separated IP "
                        "addresses, got '%.*s'",
                        SHOW(v));
        memcpy(ip, p, len);
        ip[len] = '\0';
        if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, bin) != 1)
            return fail(err, errlen, "TRUSTED_PROXIES: '%s' is not an IP address", ip);
        p += len;
        if (*p == ',')
            p++;
    }
    *out = v;
    return 0;
}

int gr_config_load(struct gr_config *c, const struct gr_service *svc, char *err, size_t errlen)
{
    static const char *const formats[] = { "json", "text", NULL };
    static const char *const buses[] = { "http", "nats", NULL };
    static const char *const http_schemes[] = { "http", "https", NULL };
    static const char *const jwks_schemes[] = { "http", "https", "file", NULL };
    static const char *const redis_schemes[] = { "redis", "rediss", "unix", NULL };
    static const char *const nats_schemes[] = { "nats", "tls", NULL };
    static char data_dir_buf[4096];
    long long x;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *lvl, *fmt;
    int rc;

    memset(c, 0, sizeof(*c));
    rc = gr_config_str("HOST", "127.0.0.1", NULL, &c->host, err, errlen);
    if (rc == 0)
        rc = gr_config_int("PORT", svc->port, 0, 65535, &x, err, errlen);
    if (rc < 0)
        return rc;
    c->port = (int)x;
    if (!env("DATA_DIR")) {
        snprintf(data_dir_buf, sizeof(data_dir_buf), "./data/%s", svc->id);
        c->data_dir = data_dir_buf;
    } else {
        c->data_dir = env("DATA_DIR");
    }
    /* DATABASE_URL is validated by gr_db_open, which names the bad part precisely. */
    c->database_url = env("DATABASE_URL");
    rc = gr_config_url("REDIS_URL", NULL, redis_schemes, &c->redis_url, err, errlen);
    if (rc == 0)
        rc = gr_config_str("EVENT_BUS", "http", buses, &c->event_bus, err, errlen);
    if (rc == 0)
        rc = gr_config_url("EVENT_BUS_URL", "http://127.0.0.1:8019", http_schemes,
                           &c->event_bus_url, err, errlen);
    if (rc == 0)
        rc = gr_config_url("NATS_URL", "nats://127.0.0.1:4222", nats_schemes, &c->nats_url, err,
                           errlen);
    if (rc == 0)
        rc = gr_config_url("DISCOVERY_URL", NULL, http_schemes, &c->discovery_url, err, errlen);
    if (rc == 0)
        rc = trusted_proxies(&c->trusted_proxies, err, errlen);
    if (rc == 0)
        rc = gr_config_url("JWKS_URL", "http://127.0.0.1:8001/api/v1/auth/jwks", jwks_schemes,
                           &c->jwks_url, err, errlen);
    if (rc == 0) {
        /* SERVICE_TOKEN, AUTH_URL, SERVICE_CLIENT_ID/SECRET: gr_main's service token. */
        struct gr_svctoken_opts st;

        rc = gr_svctoken_opts_from_env(&st, err, errlen);
    }
    if (rc == 0)
        rc = gr_config_str("JWT_ISSUER", "gravity", NULL, &c->jwt_issuer, err, errlen);
    if (rc == 0)
        rc = gr_config_str("JWT_AUDIENCE", "gravity", NULL, &c->jwt_audience, err, errlen);
    if (rc == 0)
        rc = gr_config_str("LOG_LEVEL", "info", NULL, &lvl, err, errlen);
    if (rc == 0) {
        c->log_level = gr_log_level_parse(lvl);
        if (c->log_level < 0)
            rc = fail(err, errlen,
                      "LOG_LEVEL: must be one of debug|info|warn|error|off, got '%.*s'", SHOW(lvl));
    }
    if (rc == 0)
        rc = gr_config_str("LOG_FORMAT", "json", formats, &fmt, err, errlen);
    if (rc < 0)
        return rc;
    c->log_json = strcmp(fmt, "json") == 0;
    rc = gr_config_int("HTTP_THREADS", (ncpu > 0 ? ncpu : 1) * 4, 1, 1024, &x, err, errlen);
    if (rc < 0)
        return rc;
    c->http_threads = (int)x;
    rc = gr_config_size("HTTP_MAX_BODY", 1u << 20, 1024, (size_t)1 << 30, &c->http_max_body, err,
                        errlen);
    if (rc == 0)
        rc = gr_config_int("HTTP_TIMEOUT", 30, 1, 3600, &x, err, errlen);
    if (rc < 0)
        return rc;
    c->http_timeout_s = (int)x;
    rc = gr_config_int("DRAIN_TIMEOUT", 10, 0, 600, &x, err, errlen);
    if (rc < 0)
        return rc;
    c->drain_timeout_s = (int)x;
    c->cursor_secret = env("CURSOR_SECRET");
    c->port_file = env("GR_PORT_FILE");
    return 0;
}
