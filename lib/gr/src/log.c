/*
 * log.c - structured logs: one JSON object (or key=value text) per line on stderr, written
 * with a single write(2) so lines from different threads never interleave. Keys that name
 * secrets are redacted here, centrally, so no caller can leak one by mistake.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "gr/buf.h"
#include "gr/log.h"

#define LINE_MAX_BYTES 16384

static const char *g_service = "gravity";
static atomic_int g_level = GR_LOG_INFO;
static bool g_json = true;

static const char *const level_names[] = { "debug", "info", "warn", "error", "off" };

void gr_log_setup(const char *service, int level, bool json)
{
    g_service = service;
    atomic_store(&g_level, level);
    g_json = json;
}

void gr_log_set_level(int level)
{
    atomic_store(&g_level, level);
}

int gr_log_get_level(void)
{
    return atomic_load(&g_level);
}

int gr_log_level_parse(const char *s)
{
    for (int i = 0; i <= GR_LOG_OFF; i++) {
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    }
    if (strcasecmp(s, "warning") == 0)
        return GR_LOG_WARN;
    return -1;
}

bool gr_log_enabled(int level)
{
    return level >= atomic_load(&g_level) && level < GR_LOG_OFF;
}

static bool is_secret_key(const char *k)
{
    static const char *const words[] = { "password", "passwd", "secret",  "token",  "authorization",
                                         "cookie",   "apikey", "api_key", "private" };

    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcasestr(k, words[i]))
            return true;
    }
    return false;
}

static bool is_reserved_key(const char *k)
{
    return strcmp(k, "time") == 0 || strcmp(k, "level") == 0 || strcmp(k, "service") == 0 ||
           strcmp(k, "msg") == 0;
}

static void stamp(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000) % 1000);
}

static void emit(struct gr_buf *b)
{
    const char *p;
    size_t left;

    if (gr_buf_putc(b, '\n') < 0) {
        /* Over the line limit: cut, keep the line parseable as far as possible. */
        b->len = b->len > 2 ? b->len - 2 : 0;
        (void)gr_buf_puts(b, "\n");
    }
    p = gr_buf_cstr(b);
    left = b->len;
    while (left > 0) {
        ssize_t w = write(STDERR_FILENO, p, left);
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
}

static void begin(struct gr_buf *b, int level, const char *msg)
{
    char ts[96];

    stamp(ts, sizeof(ts));
    if (g_json) {
        (void)gr_buf_printf(b, "{\"time\":\"%s\",\"level\":\"%s\",\"service\":", ts,
                            level_names[level]);
        (void)gr_buf_json_str(b, g_service, strlen(g_service));
        (void)gr_buf_puts(b, ",\"msg\":");
        (void)gr_buf_json_str(b, msg, strlen(msg));
    } else {
        (void)gr_buf_printf(b, "%s %-5s %s: %s", ts, level_names[level], g_service, msg);
    }
}

void gr_log(int level, const char *msg, ...)
{
    struct gr_buf b = GR_BUF_INIT;
    va_list ap;
    const char *k;

    if (!gr_log_enabled(level))
        return;
    gr_buf_init(&b, LINE_MAX_BYTES);
    begin(&b, level, msg);
    va_start(ap, msg);
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        if (!v)
            continue;
        if (is_secret_key(k))
            v = "[redacted]";
        if (g_json) {
            (void)gr_buf_putc(&b, ',');
            /* A caller's field must not duplicate a key every line has (strict parsers
             * reject duplicate keys): it is written with an "x_" prefix instead. */
            if (is_reserved_key(k))
                (void)gr_buf_puts(&b, "\"x_");
            else
                (void)gr_buf_putc(&b, '"');
            (void)gr_buf_puts(&b, k);
            (void)gr_buf_putc(&b, '"');
            (void)gr_buf_putc(&b, ':');
            (void)gr_buf_json_str(&b, v, strlen(v));
        } else {
            (void)gr_buf_printf(&b, " %s='%s'", k, v);
        }
    }
    va_end(ap);
    if (g_json)
        (void)gr_buf_putc(&b, '}');
    emit(&b);
    gr_buf_release(&b);
}

void gr_log_raw(int level, const char *msg, const char *json_fields)
{
    struct gr_buf b = GR_BUF_INIT;

    if (!gr_log_enabled(level))
        return;
    gr_buf_init(&b, LINE_MAX_BYTES);
    begin(&b, level, msg);
    if (g_json) {
        if (json_fields && *json_fields) {
            (void)gr_buf_putc(&b, ',');
            (void)gr_buf_puts(&b, json_fields);
        }
        (void)gr_buf_putc(&b, '}');
    } else if (json_fields) {
        (void)gr_buf_printf(&b, " %s", json_fields);
    }
    emit(&b);
    gr_buf_release(&b);
}
