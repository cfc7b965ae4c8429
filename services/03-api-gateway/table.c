/*
 * table.c - the routing table (gw.h): strict parsing of the control plane's JSON document,
 * reference-counted immutable snapshots behind a mutex-protected current pointer, and
 * longest-prefix matching on segment boundaries.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gr/arena.h"
#include "gr/json.h"
#include "gr/status.h"

#include "gw.h"
#include "h1.h"

#define DEF_TIMEOUT_MS 5000
#define DEF_RETRIES    2
#define DEF_MAX_BODY   (1024 * 1024)
#define MAX_TIMEOUT_MS 600000
#define MAX_RETRIES    10
#define MAX_MAX_BODY   (1024LL * 1024 * 1024)

static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gw_table *cur;
static uint64_t generation;

static void table_free(struct gw_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        gr_free(t->routes[i].inst);
    gr_free(t->routes);
    gr_free(t);
}

struct gw_table *gw_table_get(void)
{
    struct gw_table *t;
    pthread_mutex_lock(&cur_mu);
    t = cur;
    if (t)
        atomic_fetch_add(&t->refs, 1);
    pthread_mutex_unlock(&cur_mu);
    return t;
}

void gw_table_put(struct gw_table *t)
{
    if (t && atomic_fetch_sub(&t->refs, 1) == 1)
        table_free(t);
}

static void publish(struct gw_table *t)
{
    struct gw_table *old;
    pthread_mutex_lock(&cur_mu);
    if (t)
        t->generation = ++generation;
    old = cur;
    cur = t;
    pthread_mutex_unlock(&cur_mu);
    gw_table_put(old);
}

void gw_table_clear(void)
{
    publish(NULL);
}

const struct gw_route *gw_table_match(const struct gw_table *t, const char *path, size_t len)
{
    if (!t)
        return NULL;
    for (size_t i = 0; i < t->n; i++) {
        const struct gw_route *r = &t->routes[i];
        size_t pl = r->prefix_len;
        if (len < pl || memcmp(path, r->prefix, pl) != 0)
            continue;
        if (len == pl || r->prefix[pl - 1] == '/' || path[pl] == '/' || path[pl] == '?')
            return r;
    }
    return NULL;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) GR_PRINTF(3, 4);
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return GR_EINVAL;
}

static bool only_keys(json_t *o, const char *const *allowed, const char **bad)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        bool ok = false;
        (void)v;
        for (size_t i = 0; allowed[i]; i++) {
            if (strcmp(k, allowed[i]) == 0)
                ok = true;
        }
        if (!ok) {
            *bad = k;
            return false;
        }
    }
    return true;
}

/* Integer member @key of @o within [min,max], or @def when absent. */
static int get_int(json_t *o, const char *key, long long min, long long max, long long def,
                   long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return -1;
    *out = json_integer_value(v);
    return 0;
}

/* String member of 0..@max-1 bytes copied into @out, @def when absent. */
static int get_str(json_t *o, const char *key, char *out, size_t max, const char *def)
{
    json_t *v = json_object_get(o, key);
    const char *s = def;
    if (v) {
        if (!json_is_string(v))
            return -1;
        s = json_string_value(v);
    }
    if (strlen(s) >= max)
        return -1;
    snprintf(out, max, "%s", s);
    return 0;
}

static bool prefix_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || p[0] != '/')
        return false;
    if (n > 1 && p[n - 1] == '/')
        return false;
    return h1_path_safe(p, n);
}

static int parse_route(json_t *jr, size_t idx, struct gw_route *r, char *err, size_t errlen)
{
    static const char *const keys[] = { "prefix",    "service",  "auth", "timeout_ms",
                                        "retries",   "max_body", "rate", "rate_policy",
                                        "instances", "id",       NULL };
    static const char *const ikeys[] = { "id", "host", "port", NULL };
    const char *bad = NULL, *auth;
    long long v;
    json_t *ja, *rate, *insts;

    if (!json_is_object(jr))
        return fail(err, errlen, "/routes/%zu: must be an object", idx);
    if (!only_keys(jr, keys, &bad))
        return fail(err, errlen, "/routes/%zu/%s: unknown field", idx, bad);
    if (!json_is_string(json_object_get(jr, "prefix")) ||
        get_str(jr, "prefix", r->prefix, sizeof(r->prefix), "") < 0 || !prefix_ok(r->prefix))
        return fail(err, errlen, "/routes/%zu/prefix: must be a safe absolute path", idx);
    r->prefix_len = strlen(r->prefix);
    if (!json_is_string(json_object_get(jr, "service")) ||
        get_str(jr, "service", r->service, sizeof(r->service), "") < 0 || !r->service[0])
        return fail(err, errlen, "/routes/%zu/service: must be a non-empty string", idx);
    ja = json_object_get(jr, "auth");
    auth = ja ? json_string_value(ja) : "jwt";
    if (auth && strcmp(auth, "jwt") == 0)
        r->auth = GW_AUTH_JWT;
    else if (auth && strcmp(auth, "public") == 0)
        r->auth = GW_AUTH_PUBLIC;
    else
        return fail(err, errlen, "/routes/%zu/auth: must be \"public\" or \"jwt\"", idx);
    if (get_int(jr, "timeout_ms", 1, MAX_TIMEOUT_MS, DEF_TIMEOUT_MS, &v) < 0)
        return fail(err, errlen, "/routes/%zu/timeout_ms: must be 1..%d", idx, MAX_TIMEOUT_MS);
    r->timeout_ms = (int)v;
    if (get_int(jr, "retries", 0, MAX_RETRIES, DEF_RETRIES, &v) < 0)
        return fail(err, errlen, "/routes/%zu/retries: must be 0..%d", idx, MAX_RETRIES);
    r->retries = (int)v;
    if (get_int(jr, "max_body", 0, MAX_MAX_BODY, DEF_MAX_BODY, &v) < 0)
        return fail(err, errlen, "/routes/%zu/max_body: must be 0..%lld", idx, MAX_MAX_BODY);
    r->max_body = (size_t)v;
    if (get_str(jr, "rate_policy", r->rate_policy, sizeof(r->rate_policy), "") < 0)
        return fail(err, errlen, "/routes/%zu/rate_policy: must be a string of at most %d bytes",
                    idx, GW_POLICY_MAX - 1);
    rate = json_object_get(jr, "rate");
    if (rate) {
        static const char *const rkeys[] = { "per_s", "burst", NULL };
        json_t *ps = json_object_get(rate, "per_s");
        if (!json_is_object(rate) || !only_keys(rate, rkeys, &bad))
            return fail(err, errlen, "/routes/%zu/rate: must be {per_s, burst}", idx);
        if (ps && (!json_is_number(ps) || json_number_value(ps) < 0 || json_number_value(ps) > 1e9))
            return fail(err, errlen, "/routes/%zu/rate/per_s: must be 0..1e9", idx);
        r->rate.per_s = ps ? json_number_value(ps) : 0;
        if (get_int(rate, "burst", 0, 1000000000, 0, &v) < 0)
            return fail(err, errlen, "/routes/%zu/rate/burst: must be 0..1e9", idx);
        r->rate.burst = (int)v;
    }
    insts = json_object_get(jr, "instances");
    if (insts && !json_is_array(insts))
        return fail(err, errlen, "/routes/%zu/instances: must be an array", idx);
    if (insts && json_array_size(insts) > GW_MAX_INST)
        return fail(err, errlen, "/routes/%zu/instances: at most %d", idx, GW_MAX_INST);
    r->ninst = insts ? json_array_size(insts) : 0;
    r->inst = r->ninst ? gr_xcalloc(r->ninst, sizeof(*r->inst)) : NULL;
    for (size_t j = 0; j < r->ninst; j++) {
        json_t *ji = json_array_get(insts, j);
        struct gw_instance *in = &r->inst[j];
        if (!json_is_object(ji) || !only_keys(ji, ikeys, &bad))
            return fail(err, errlen, "/routes/%zu/instances/%zu: must be {id, host, port}", idx, j);
        if (get_str(ji, "id", in->id, sizeof(in->id), "") < 0)
            return fail(err, errlen, "/routes/%zu/instances/%zu/id: bad", idx, j);
        if (get_str(ji, "host", in->host, sizeof(in->host), "") < 0 || !in->host[0] ||
            strpbrk(in->host, " /\\@?#\t\r\n") != NULL)
            return fail(err, errlen, "/routes/%zu/instances/%zu/host: bad", idx, j);
        if (!json_object_get(ji, "port") || get_int(ji, "port", 1, 65535, 0, &v) < 0)
            return fail(err, errlen, "/routes/%zu/instances/%zu/port: must be 1..65535", idx, j);
        in->port = (int)v;
    }
    atomic_init(&r->rr, 0);
    return 0;
}

static int cmp_len_desc(const void *a, const void *b)
{
    const struct gw_route *x = a, *y = b;
    if (x->prefix_len != y->prefix_len)
        return x->prefix_len > y->prefix_len ? -1 : 1;
    return strcmp(x->prefix, y->prefix);
}

int gw_table_load(const char *json, size_t len, char *err, size_t errlen)
{
    static const char *const top_keys[] = { "routes", NULL };
    struct gr_arena a = GR_ARENA_INIT;
    struct gw_table *t = NULL;
    const char *bad = NULL;
    json_t *doc = NULL, *routes;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (gr_json_parse(&a, json, len, &doc, NULL) != 0) {
        rc = fail(err, errlen, "not valid JSON");
        goto out;
    }
    if (!json_is_object(doc) || !only_keys(doc, top_keys, &bad)) {
        rc = fail(err, errlen, "must be an object {\"routes\": [...]}");
        goto out;
    }
    routes = json_object_get(doc, "routes");
    if (!json_is_array(routes)) {
        rc = fail(err, errlen, "/routes: must be an array");
        goto out;
    }
    if (json_array_size(routes) > GW_MAX_ROUTES) {
        rc = fail(err, errlen, "/routes: at most %d routes", GW_MAX_ROUTES);
        goto out;
    }
    t = gr_xcalloc(1, sizeof(*t));
    atomic_init(&t->refs, 1);
    t->routes = gr_xcalloc(json_array_size(routes) + 1, sizeof(*t->routes));
    for (size_t i = 0; i < json_array_size(routes); i++) {
        rc = parse_route(json_array_get(routes, i), i, &t->routes[i], err, errlen);
        t->n = i + 1; /* so that table_free releases what parse_route allocated */
        if (rc != 0)
            goto out;
    }
    qsort(t->routes, t->n, sizeof(*t->routes), cmp_len_desc);
    for (size_t i = 1; i < t->n; i++) {
        if (strcmp(t->routes[i].prefix, t->routes[i - 1].prefix) == 0) {
            rc = fail(err, errlen, "duplicate prefix %s", t->routes[i].prefix);
            goto out;
        }
    }
    /* Breakers are created only once the document is known good. */
    for (size_t i = 0; i < t->n; i++) {
        for (size_t j = 0; j < t->routes[i].ninst; j++) {
            struct gw_instance *in = &t->routes[i].inst[j];
            in->breaker = gw_breaker_for(in->host, in->port);
        }
    }
    publish(t);
    t = NULL;
    rc = 0;
out:
    table_free(t);
    gr_arena_release(&a);
    return rc;
}
