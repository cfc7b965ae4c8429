/*
 * registry.c - where the instances behind each route come from.
 *
 * With DISCOVERY_URL, a watcher thread long-polls the registry (02):
 *   GET {DISCOVERY_URL}/api/v1/registry/services?index=N&wait=30s
 * which answers when the registry's index (header X-Registry-Index) moves past N or the wait
 * ends. When the index moved, it reads GET …/services/{name}/instances (passing instances
 * only) for every listed service that a route names, replaces the instance cache and rebuilds
 * the routing table. A route change (gw_registry_refresh) cuts the long poll short and
 * triggers the same read, so a new route has its instances within about a second. Errors are kept
 * for GET /api/v1/gateway/upstreams and retried with a jittered exponential backoff (250 ms .. 10
 * s); the table keeps its last instances meanwhile.
 *
 * Without DISCOVERY_URL, GATEWAY_UPSTREAMS="svc=host:port,…" gives fixed instances, read once.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "gr/buf.h"
#include "gr/json.h"
#include "gr/log.h"

#define REG_PATH         "/api/v1/registry/services"
#define REG_WAIT         "30s"
#define REG_TIMEOUT_MS   40000L /* the long poll plus slack */
#define REG_BODY_MAX     ((size_t)4 << 20)
#define REG_URL_MAX      1024
#define BACKOFF_MIN_MS   250
#define BACKOFF_MAX_MS   10000
#define STATIC_ENTRY_MAX 512

void gw_svcs_free(struct gw_app *a)
{
    for (size_t i = 0; i < a->nsvcs; i++)
        gr_free(a->svcs[i].inst);
    gr_free(a->svcs);
    a->svcs = NULL;
    a->nsvcs = 0;
}

static bool name_ok(const char *s, size_t n)
{
    if (n < 1 || n >= GW_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool host_ok(const char *s, size_t n)
{
    if (n < 1 || n >= GW_HOST_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.' || s[i] == ':'))
            return false;
    return true;
}

/* Adds @host:@port (@id may be "") to service @name in the list *@svcs (*@n entries). */
static void svcs_add(struct gw_svc_inst **svcs, size_t *n, const char *name, size_t name_len,
                     const char *id, const char *host, size_t host_len, int port)
{
    struct gw_svc_inst *s = NULL;
    struct gw_instance *in;

    for (size_t i = 0; i < *n; i++)
        if (strlen((*svcs)[i].name) == name_len && memcmp((*svcs)[i].name, name, name_len) == 0)
            s = &(*svcs)[i];
    if (s == NULL) {
        if (*n >= GW_MAX_SERVICES)
            return;
        *svcs = gr_xrealloc(*svcs, (*n + 1) * sizeof(**svcs));
        s = &(*svcs)[(*n)++];
        memset(s, 0, sizeof(*s));
        memcpy(s->name, name, name_len);
    }
    if (s->n >= GW_MAX_INST)
        return;
    s->inst = gr_xrealloc(s->inst, (s->n + 1) * sizeof(*s->inst));
    in = &s->inst[s->n++];
    memset(in, 0, sizeof(*in));
    snprintf(in->id, sizeof(in->id), "%s", id);
    memcpy(in->host, host, host_len);
    in->port = port;
}

int gw_static_upstreams(struct gw_app *a, const char *spec, char *err, size_t errlen)
{
    const char *p = spec;

    if (spec == NULL || *spec == '\0')
        return 0;
    while (*p) {
        const char *end = strchr(p, ','), *eq, *colon;
        size_t len;
        char num[8];
        long port;
        char *stop = NULL;

        if (end == NULL)
            end = p + strlen(p);
        len = (size_t)(end - p);
        eq = memchr(p, '=', len);
        colon = NULL;
        for (const char *q = end; eq != NULL && q > eq; q--)
            if (q[-1] == ':') {
                colon = q - 1;
                break;
            }
        if (len == 0 || len > STATIC_ENTRY_MAX || eq == NULL || colon == NULL ||
            !name_ok(p, (size_t)(eq - p)) || !host_ok(eq + 1, (size_t)(colon - eq - 1)) ||
            (size_t)(end - colon - 1) == 0 || (size_t)(end - colon - 1) >= sizeof(num)) {
            snprintf(err, errlen,
                     "GATEWAY_UPSTREAMS: entry %d must be service=host:port (service "
                     "[a-z0-9-]{1,63}), got '%.*s'",
                     (int)(a->nsvcs + 1), (int)(len > 80 ? 80 : len), p);
            gw_svcs_free(a);
            return GR_ECONFIG;
        }
        memcpy(num, colon + 1, (size_t)(end - colon - 1));
        num[end - colon - 1] = '\0';
        port = strtol(num, &stop, 10);
        if (*stop != '\0' || port < 1 || port > 65535) {
            snprintf(err, errlen, "GATEWAY_UPSTREAMS: port must be 1..65535, got '%s'", num);
            gw_svcs_free(a);
            return GR_ECONFIG;
        }
        svcs_add(&a->svcs, &a->nsvcs, p, (size_t)(eq - p), "", eq + 1, (size_t)(colon - eq - 1),
                 (int)port);
        p = *end ? end + 1 : end;
    }
    a->source = "static";
    return 0;
}

/* ---- the watcher ---------------------------------------------------------------------------- */

struct fetch {
    struct gw_app *a;
    struct gr_buf body;
    unsigned long long index;
    bool has_index;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct fetch *f = arg;

    return gr_buf_append(&f->body, p, size * n) < 0 ? 0 : size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    static const char name[] = "x-registry-index:";
    struct fetch *f = arg;
    size_t len = size * n;

    if (len > sizeof(name) - 1 && len < 64 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        char num[64];
        char *end = NULL;

        memcpy(num, p + sizeof(name) - 1, len - (sizeof(name) - 1));
        num[len - (sizeof(name) - 1)] = '\0';
        f->index = strtoull(num, &end, 10);
        f->has_index = end != num;
    }
    return len;
}

/* Whether the transfer in progress should end now (stop, or a route changed). */
static bool cut_short(const struct gw_app *a)
{
    return atomic_load(&a->stop) || atomic_load(&a->refresh);
}

/*
 * Runs @curl on the watcher's multi handle, so that gw_registry_stop and gw_registry_refresh
 * (curl_multi_wakeup) end even a 30 s long poll at once.
 */
static CURLcode perform(struct gw_app *a, CURL *curl)
{
    CURLcode cc = CURLE_ABORTED_BY_CALLBACK;
    int running = 1;
    CURLMsg *msg;
    int left;

    if (curl_multi_add_handle(a->multi, curl) != CURLM_OK)
        return CURLE_FAILED_INIT;
    while (running && !cut_short(a)) {
        if (curl_multi_perform(a->multi, &running) != CURLM_OK)
            break;
        if (running && curl_multi_poll(a->multi, NULL, 0, 1000, NULL) != CURLM_OK)
            break;
    }
    while ((msg = curl_multi_info_read(a->multi, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == curl)
            cc = msg->data.result;
    curl_multi_remove_handle(a->multi, curl);
    return cc;
}

/* GET @url into f->body; 0 on a 200, else GR_EUNAVAIL with @why set. */
static int get(CURL *curl, struct fetch *f, const char *url, long timeout_ms, char *why,
               size_t whylen)
{
    CURLcode cc;
    long status = 0;

    gr_buf_reset(&f->body);
    f->has_index = false;
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, f);
    cc = perform(f->a, curl);
    if (cc != CURLE_OK) {
        snprintf(why, whylen, "registry request failed: %s", curl_easy_strerror(cc));
        return GR_EUNAVAIL;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        snprintf(why, whylen, "registry answered HTTP %ld", status);
        return GR_EUNAVAIL;
    }
    return 0;
}

/* The items of a list body ({"data":[…]} or a bare array), or NULL. */
static json_t *items_of(json_t *doc)
{
    json_t *d = json_is_object(doc) ? json_object_get(doc, "data") : doc;

    return json_is_array(d) ? d : NULL;
}

/* Reads every listed service's passing instances into a new list; GR_EUNAVAIL on failure. */
static int read_instances(CURL *curl, struct fetch *f, const char *base, json_t *services,
                          const struct gr_db_rows *routed, struct gw_svc_inst **out, size_t *nout,
                          char *why, size_t whylen)
{
    struct gw_svc_inst *svcs = NULL;
    size_t n = 0;
    int rc = 0;

    for (size_t i = 0; i < json_array_size(services) && rc == 0; i++) {
        const char *name = json_string_value(json_object_get(json_array_get(services, i), "name"));
        char url[REG_URL_MAX];
        json_t *doc, *items;
        bool named = false;

        if (name == NULL || !name_ok(name, strlen(name)))
            continue;
        for (size_t k = 0; k < gr_db_nrows(routed) && !named; k++)
            named = strcmp(gr_db_text(routed, k, 0), name) == 0;
        if (!named)
            continue;
        snprintf(url, sizeof(url), "%s" REG_PATH "/%s/instances", base, name);
        rc = get(curl, f, url, 5000L, why, whylen);
        if (rc < 0)
            break;
        doc = json_loadb(f->body.ptr, f->body.len, 0, NULL);
        items = items_of(doc);
        if (items == NULL) {
            snprintf(why, whylen, "registry sent a malformed instance list for %s", name);
            rc = GR_EUNAVAIL;
        }
        for (size_t k = 0; items != NULL && k < json_array_size(items); k++) {
            json_t *it = json_array_get(items, k);
            const char *host = json_string_value(json_object_get(it, "address"));
            const char *id = json_string_value(json_object_get(it, "id"));
            json_int_t port = json_integer_value(json_object_get(it, "port"));

            if (host == NULL || !host_ok(host, strlen(host)) || port < 1 || port > 65535)
                continue;
            svcs_add(&svcs, &n, name, strlen(name), id ? id : "", host, strlen(host), (int)port);
        }
        json_decref(doc);
    }
    if (rc < 0) {
        for (size_t i = 0; i < n; i++)
            gr_free(svcs[i].inst);
        gr_free(svcs);
        return rc;
    }
    *out = svcs;
    *nout = n;
    return 0;
}

/* Waits @ms or until stop; true when stopping. */
static bool pause_ms(struct gw_app *a, int ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->stop_mu);
    while (!atomic_load(&a->stop))
        if (pthread_cond_timedwait(&a->stop_cond, &a->stop_mu, &ts) != 0)
            break;
    pthread_mutex_unlock(&a->stop_mu);
    return atomic_load(&a->stop);
}

static void set_error(struct gw_app *a, const char *why)
{
    pthread_mutex_lock(&a->mu);
    snprintf(a->reg_error, sizeof(a->reg_error), "%s", why);
    pthread_mutex_unlock(&a->mu);
}

static void *watch(void *arg)
{
    struct gw_app *a = arg;
    struct fetch f = { .a = a };
    char base[REG_URL_MAX], url[REG_URL_MAX + 64], why[GW_ERR_MAX];
    unsigned long long seen = 0;
    bool have = false;
    int backoff = BACKOFF_MIN_MS;
    struct gr_db_conn *c = NULL;
    CURL *curl = curl_easy_init();
    size_t blen;

    snprintf(base, sizeof(base), "%s", a->ctx->cfg.discovery_url);
    blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        base[--blen] = '\0';
    gr_buf_init(&f.body, REG_BODY_MAX);
    while (curl != NULL && !atomic_load(&a->stop)) {
        struct gw_svc_inst *svcs = NULL, *old;
        size_t n = 0, nold;
        json_t *doc, *items;
        int rc;

        if (atomic_exchange(&a->refresh, false))
            have = false; /* a route changed: read everything now, without waiting */
        if (have)
            snprintf(url, sizeof(url), "%s" REG_PATH "?index=%llu&wait=" REG_WAIT, base, seen);
        else
            snprintf(url, sizeof(url), "%s" REG_PATH, base);
        rc = get(curl, &f, url, REG_TIMEOUT_MS, why, sizeof(why));
        if (rc == 0 && !f.has_index) {
            snprintf(why, sizeof(why), "registry answer without X-Registry-Index");
            rc = GR_EUNAVAIL;
        }
        if (rc == 0 && have && f.index == seen)
            continue; /* the wait ended without a change */
        if (rc == 0) {
            unsigned long long idx = f.index;

            struct gr_arena ar;
            struct gr_db_rows *routed = NULL;

            gr_arena_init(&ar);
            doc = json_loadb(f.body.ptr, f.body.len, 0, NULL);
            items = items_of(doc);
            if (items == NULL) {
                snprintf(why, sizeof(why), "registry sent a malformed service list");
                rc = GR_EUNAVAIL;
            } else if ((c == NULL && gr_db_conn(a->ctx->db, &c) < 0) ||
                       gr_db_query(c, &ar, "SELECT DISTINCT service FROM routes", NULL, 0,
                                   &routed) < 0) {
                snprintf(why, sizeof(why), "cannot read the routes");
                rc = GR_EUNAVAIL;
            } else {
                rc = read_instances(curl, &f, base, items, routed, &svcs, &n, why, sizeof(why));
            }
            json_decref(doc);
            gr_arena_release(&ar);
            f.index = idx;
        }
        if (atomic_load(&a->stop))
            break;
        if (rc < 0 && atomic_load(&a->refresh))
            continue; /* cut short by gw_registry_refresh, not a registry error */
        if (rc < 0) {
            set_error(a, why);
            gr_log_warn("registry watch failed", "error", why);
            if (pause_ms(a, backoff / 2 + rand() % (backoff / 2 + 1)))
                break;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = BACKOFF_MIN_MS;
        pthread_mutex_lock(&a->mu);
        old = a->svcs;
        nold = a->nsvcs;
        a->svcs = svcs;
        a->nsvcs = n;
        a->reg_index = f.index;
        a->reg_error[0] = '\0';
        a->reg_ok = true;
        pthread_mutex_unlock(&a->mu);
        for (size_t i = 0; i < nold; i++)
            gr_free(old[i].inst);
        gr_free(old);
        seen = f.index;
        have = true;
        if (c != NULL && gw_rebuild(a, c) == 0)
            gr_log_debug("routing table rebuilt from the registry");
    }
    gr_buf_release(&f.body);
    if (curl != NULL)
        curl_easy_cleanup(curl);
    return NULL;
}

int gw_registry_start(struct gw_app *a)
{
    if (a->ctx->cfg.discovery_url == NULL || a->ctx->db == NULL)
        return 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    a->multi = curl_multi_init();
    if (a->multi == NULL)
        return GR_EINTERNAL;
    if (pthread_create(&a->thread, NULL, watch, a) != 0) {
        curl_multi_cleanup(a->multi);
        a->multi = NULL;
        return GR_EINTERNAL;
    }
    a->thread_started = true;
    return 0;
}

void gw_registry_refresh(struct gw_app *a)
{
    if (a->thread_started) {
        atomic_store(&a->refresh, true);
        curl_multi_wakeup(a->multi);
    }
}

void gw_registry_stop(struct gw_app *a)
{
    if (!a->thread_started)
        return;
    pthread_mutex_lock(&a->stop_mu);
    atomic_store(&a->stop, true);
    pthread_cond_broadcast(&a->stop_cond);
    pthread_mutex_unlock(&a->stop_mu);
    curl_multi_wakeup(a->multi);
    pthread_join(a->thread, NULL);
    a->thread_started = false;
    curl_multi_cleanup(a->multi);
    a->multi = NULL;
}
