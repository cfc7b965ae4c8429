/*
 * health.c - the dependencies of /health/detailed (gr/health.h): a fixed table per service,
 * filled from the init hook (entries are published with a release store of the count, so a
 * late gr_health_add never races a request reading the table), and the built-in Redis check.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/health.h"
#include "gr/redis.h"
#include "gr/service.h"
#include "gr/time.h"

struct dep {
    char *name;
    gr_health_fn fn;
    void *arg;
};

struct gr_health {
    pthread_mutex_t mu; /* writers */
    struct dep deps[GR_HEALTH_MAX];
    atomic_size_t n;
    struct gr_redis *redis; /* the built-in check's client */
};

static const char *const builtin[] = { "database", "jwks", "bus", "redis", NULL };

static bool name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-'))
            return false;
    return true;
}

static struct gr_health *health_of(struct gr_ctx *ctx)
{
    if (!ctx->health) { /* from the init hook: one thread */
        ctx->health = gr_xcalloc(1, sizeof(*ctx->health));
        pthread_mutex_init(&ctx->health->mu, NULL);
        atomic_init(&ctx->health->n, 0);
    }
    return ctx->health;
}

static void add(struct gr_ctx *ctx, const char *name, gr_health_fn fn, void *arg, bool internal)
{
    struct gr_health *h;
    size_t n;

    if (!name_ok(name) || !fn)
        GR_BUG("gr_health_add: bad name or no function");
    for (size_t i = 0; !internal && builtin[i]; i++)
        if (strcmp(name, builtin[i]) == 0)
            GR_BUG("gr_health_add: a built-in check has this name");
    h = health_of(ctx);
    pthread_mutex_lock(&h->mu);
    n = atomic_load(&h->n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(h->deps[i].name, name) == 0)
            GR_BUG("gr_health_add: name added twice");
    if (n >= GR_HEALTH_MAX)
        GR_BUG("gr_health_add: more than GR_HEALTH_MAX dependencies");
    h->deps[n] = (struct dep){ .name = gr_xstrdup(name), .fn = fn, .arg = arg };
    atomic_store_explicit(&h->n, n + 1, memory_order_release);
    pthread_mutex_unlock(&h->mu);
}

void gr_health_add(struct gr_ctx *ctx, const char *name, gr_health_fn fn, void *arg)
{
    add(ctx, name, fn, arg, false);
}

void gr_health__run(struct gr_ctx *ctx, json_t *checks, bool *ok)
{
    struct gr_health *h = ctx->health;
    size_t n = h ? atomic_load_explicit(&h->n, memory_order_acquire) : 0;

    for (size_t i = 0; i < n; i++) {
        const struct dep *d = &h->deps[i];
        char detail[GR_HEALTH_DETAIL_MAX] = "";
        int64_t t0 = gr_time_mono_ns();
        int rc = d->fn(d->arg, detail, sizeof(detail));
        json_t *o;

        detail[sizeof(detail) - 1] = '\0';
        o = json_pack("{s:s, s:f}", "status", rc < 0 ? "down" : "up", "latency_ms",
                      (double)((gr_time_mono_ns() - t0) / 1000) / 1000.0);
        /* Not valid UTF-8 would make jansson refuse it: keep the check, drop the text. */
        if (detail[0] && o)
            json_object_set_new(o, "detail", json_string(detail));
        json_object_set_new(checks, d->name, o ? o : json_pack("{s:s}", "status", "down"));
        if (rc < 0)
            *ok = false;
    }
}

static int redis_check(void *arg, char *detail, size_t len)
{
    struct gr_health *h = arg;

    if (gr_redis_ping(h->redis))
        return 0;
    snprintf(detail, len, "no PONG within %d ms (down or unreachable)", GR_REDIS_TIMEOUT_MS);
    return -1;
}

int gr_health__add_redis(struct gr_ctx *ctx, const char *url, char *err, size_t errlen)
{
    struct gr_health *h = health_of(ctx);
    int rc;

    if (h->redis)
        return GR_EINVAL;
    rc = gr_redis_new(url, &h->redis, err, errlen);
    if (rc < 0)
        return rc;
    add(ctx, "redis", redis_check, h, true);
    return 0;
}

void gr_health__release(struct gr_ctx *ctx)
{
    struct gr_health *h = ctx->health;

    if (!h)
        return;
    for (size_t i = 0; i < atomic_load(&h->n); i++)
        gr_free(h->deps[i].name);
    gr_redis_free(h->redis);
    pthread_mutex_destroy(&h->mu);
    gr_free(h);
    ctx->health = NULL;
}
