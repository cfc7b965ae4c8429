/*
 * confwatch.c - the hot-reload watcher (gr/confwatch.h): one thread long-polls the config
 * service's merged view and applies LOG_LEVEL and the registered keys when they change.
 * Process-wide state under one mutex: the callback table, the last applied values, the stop
 * flag and the index; callbacks run on the watcher thread without the mutex held.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gr/arena.h"
#include "gr/buf.h"
#include "gr/config.h"
#include "gr/confwatch.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define URL_MAX 4096
#define BEARER  "Authorization: Bearer "
#define LOG_KEY "LOG_LEVEL"
#define SVC_MAX 63

struct cb {
    char *key;
    gr_confwatch_fn fn;
    void *arg;
    char *last; /* last value applied (NULL: unset) */
    bool seen;  /* applied at least once */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* stop */
    struct cb cbs[GR_CONFWATCH_KEYS_MAX];
    size_t ncbs;
    bool running;
    atomic_bool stop;
    pthread_t th;
    char base[URL_MAX];
    char path[256];
    int boot_level; /* LOG_LEVEL at start, restored when the key goes away */
    char *log_last;
    bool log_seen;
    atomic_llong index;
} W = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static bool key_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n < 1 || n > 256)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
            return false;
    return true;
}

int gr_confwatch_on(const char *key, gr_confwatch_fn fn, void *arg)
{
    int rc = 0;

    if (!key_ok(key) || !fn)
        return GR_EINVAL;
    pthread_mutex_lock(&W.mu);
    if (W.ncbs == GR_CONFWATCH_KEYS_MAX) {
        rc = GR_ETOOBIG;
    } else {
        W.cbs[W.ncbs] = (struct cb){ .key = gr_xstrdup(key), .fn = fn, .arg = arg };
        W.ncbs++;
    }
    pthread_mutex_unlock(&W.mu);
    return rc;
}

long long gr_confwatch_index(void)
{
    return atomic_load(&W.index);
}

/* ---- HTTP ------------------------------------------------------------------------------ */

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct gr_buf *b = arg;
    size_t len = size * n;

    if (gr_buf_append(b, p, len) < 0)
        return 0; /* over GR_CONFWATCH_RESP_MAX: aborts the transfer */
    return len;
}

/* Aborts a transfer in flight once a stop is asked. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)arg;
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return atomic_load(&W.stop) ? 1 : 0;
}

/* GETs the merged view after @index (< 0: at once) into @b; the HTTP status into *@status. */
static int fetch(CURL *h, long long index, struct gr_buf *b, long *status)
{
    char url[URL_MAX + 512], auth[sizeof(BEARER) + GR_SVCTOKEN_MAX + 1];
    struct curl_slist *hdr = NULL;
    struct gr_svctoken *tok = gr_svctoken_default();
    CURLcode cc;
    int n;

    if (index >= 0)
        n = snprintf(url, sizeof(url), "%s%s?index=%lld&wait=%ds", W.base, W.path, index,
                     GR_CONFWATCH_WAIT_S);
    else
        n = snprintf(url, sizeof(url), "%s%s", W.base, W.path);
    if (n < 0 || (size_t)n >= sizeof(url))
        return GR_EINTERNAL;
    if (tok) {
        memcpy(auth, BEARER, sizeof(BEARER) - 1);
        if (gr_svctoken_copy(tok, auth + sizeof(BEARER) - 1, sizeof(auth) - sizeof(BEARER) + 1) < 0)
            return GR_EUNAVAIL; /* no token yet: the config service would refuse us */
        hdr = curl_slist_append(hdr, auth);
    }
    gr_buf_reset(b);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(GR_CONFWATCH_WAIT_S + 10) * 1000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    cc = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdr);
    if (tok)
        OPENSSL_cleanse(auth, sizeof(auth));
    if (cc != CURLE_OK) {
        if (!atomic_load(&W.stop))
            gr_log_debug("config watch request failed", "error", curl_easy_strerror(cc));
        return GR_EUNAVAIL;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (*status == 401 && tok) {
        char cur[GR_SVCTOKEN_MAX + 1];

        if (gr_svctoken_copy(tok, cur, sizeof(cur)) >= 0)
            gr_svctoken_refused(tok, cur);
        OPENSSL_cleanse(cur, sizeof(cur));
    }
    return 0;
}

/* ---- applying ---------------------------------------------------------------------------- */

/* The text of an entry's value (gr_xmalloc'd), or NULL when @entry is absent. */
static char *value_text(json_t *entry)
{
    json_t *v = json_object_get(entry, "value");
    size_t need;
    char *out;

    if (!v)
        return NULL;
    if (json_is_string(v))
        return gr_xstrdup(json_string_value(v));
    need = json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    if (need == 0)
        return NULL;
    out = gr_xmalloc(need + 1);
    (void)json_dumpb(v, out, need, JSON_COMPACT | JSON_ENCODE_ANY);
    out[need] = '\0';
    return out;
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void apply_log_level(json_t *entries)
{
    char *v = value_text(json_object_get(entries, LOG_KEY));
    int lvl;

    if (W.log_seen && same(v, W.log_last)) {
        gr_free(v);
        return;
    }
    if (!v) {
        if (W.log_seen)
            gr_log_set_level(W.boot_level);
    } else if ((lvl = gr_log_level_parse(v)) >= 0) {
        /* Logged under whichever of the two levels is more verbose. */
        if (lvl > gr_log_get_level()) {
            gr_log_info("config applied", "key", LOG_KEY);
            gr_log_set_level(lvl);
        } else {
            gr_log_set_level(lvl);
            gr_log_info("config applied", "key", LOG_KEY);
        }
    } else {
        gr_log_warn("config value ignored: not a log level", "key", LOG_KEY);
    }
    gr_free(W.log_last);
    W.log_last = v;
    W.log_seen = true;
}

/* Applies one merged view: LOG_LEVEL, then each registered key whose value changed. */
static void apply(json_t *entries)
{
    struct cb todo[GR_CONFWATCH_KEYS_MAX];
    char *vals[GR_CONFWATCH_KEYS_MAX];
    size_t n = 0;

    apply_log_level(entries);
    pthread_mutex_lock(&W.mu);
    for (size_t i = 0; i < W.ncbs; i++) {
        struct cb *c = &W.cbs[i];
        char *v = value_text(json_object_get(entries, c->key));

        if ((c->seen && same(v, c->last)) || (!c->seen && !v)) {
            c->seen = true;
            gr_free(v);
            continue;
        }
        gr_free(c->last);
        c->last = v;
        c->seen = true;
        todo[n] = *c;
        vals[n] = v ? gr_xstrdup(v) : NULL;
        n++;
    }
    pthread_mutex_unlock(&W.mu);
    for (size_t i = 0; i < n; i++) {
        todo[i].fn(vals[i], todo[i].arg);
        gr_log_info("config applied", "key", todo[i].key);
        gr_free(vals[i]);
    }
}

/* ---- the thread --------------------------------------------------------------------------- */

/* Sleeps @ms unless a stop comes first; true when stopping. */
static bool pause_ms(long long ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&W.mu);
    while (!atomic_load(&W.stop) && pthread_cond_timedwait(&W.cv, &W.mu, &ts) == 0)
        ;
    pthread_mutex_unlock(&W.mu);
    return atomic_load(&W.stop);
}

static void *watch(void *unused)
{
    CURL *h = curl_easy_init();
    struct gr_buf b;
    long long index = -1, backoff = 1000;

    (void)unused;
    if (!h) {
        gr_log_error("config watch cannot start libcurl");
        return NULL;
    }
    gr_buf_init(&b, GR_CONFWATCH_RESP_MAX);
    while (!atomic_load(&W.stop)) {
        long status = 0;
        json_t *doc = NULL, *entries;
        long long got;
        int rc = fetch(h, index, &b, &status);

        if (rc == 0 && status == 200)
            doc = json_loadb(b.ptr, b.len, 0, NULL);
        entries = json_object_get(doc, "entries");
        if (!json_is_object(entries) || !json_is_integer(json_object_get(doc, "index"))) {
            json_decref(doc);
            if (atomic_load(&W.stop))
                break;
            if (rc == 0)
                gr_log_warn("config watch: unexpected answer", "status",
                            status == 0 ? "none" : (status < 500 ? "4xx" : "5xx"));
            /* Jittered backoff: half the window plus a random part. */
            if (pause_ms(backoff / 2 +
                         (long long)((unsigned long long)gr_time_mono_ns() % (backoff / 2 + 1))))
                break;
            backoff = backoff * 2 > GR_CONFWATCH_BACKOFF_S * 1000LL
                          ? GR_CONFWATCH_BACKOFF_S * 1000LL
                          : backoff * 2;
            continue;
        }
        backoff = 1000;
        got = json_integer_value(json_object_get(doc, "index"));
        if (got != index) {
            apply(entries);
            atomic_store(&W.index, got);
        }
        /* An index that went backwards (a reset config store) is simply followed. */
        index = got;
        json_decref(doc);
    }
    gr_buf_release(&b);
    curl_easy_cleanup(h);
    return NULL;
}

int gr_confwatch_start(const char *service, char *err, size_t errlen)
{
    static const char *const schemes[] = { "http", "https", NULL };
    static const char *const envs[] = { "default", "dev", "test", "staging", "prod", NULL };
    const char *url = NULL, *env = NULL;
    size_t n;
    int rc;

    rc = gr_config_url("CONFIG_URL", NULL, schemes, &url, err, errlen);
    if (rc == 0)
        rc = gr_config_str("GRAVITY_ENV", "default", envs, &env, err, errlen);
    if (rc < 0 || !url)
        return rc;
    n = service ? strlen(service) : 0;
    if (n < 1 || n > SVC_MAX) {
        snprintf(err, errlen, "confwatch: bad service name");
        return GR_ECONFIG;
    }
    pthread_mutex_lock(&W.mu);
    if (W.running) {
        pthread_mutex_unlock(&W.mu);
        return GR_EINVAL;
    }
    n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    if (n >= sizeof(W.base)) {
        pthread_mutex_unlock(&W.mu);
        snprintf(err, errlen, "CONFIG_URL: longer than %zu bytes", sizeof(W.base) - 1);
        return GR_ECONFIG;
    }
    memcpy(W.base, url, n);
    W.base[n] = '\0';
    snprintf(W.path, sizeof(W.path), "/api/v1/configs/%s/%s", service, env);
    W.boot_level = gr_log_get_level();
    atomic_store(&W.stop, false);
    atomic_store(&W.index, 0);
    if (pthread_create(&W.th, NULL, watch, NULL) != 0) {
        pthread_mutex_unlock(&W.mu);
        return GR_EINTERNAL;
    }
    W.running = true;
    pthread_mutex_unlock(&W.mu);
    gr_log_info("config watch started", "path", W.path);
    return 0;
}

void gr_confwatch_stop(void)
{
    bool running;

    pthread_mutex_lock(&W.mu);
    running = W.running;
    atomic_store(&W.stop, true);
    pthread_cond_broadcast(&W.cv);
    pthread_mutex_unlock(&W.mu);
    if (running)
        pthread_join(W.th, NULL);
    pthread_mutex_lock(&W.mu);
    W.running = false;
    for (size_t i = 0; i < W.ncbs; i++) {
        gr_free(W.cbs[i].key);
        gr_free(W.cbs[i].last);
    }
    W.ncbs = 0;
    gr_free(W.log_last);
    W.log_last = NULL;
    W.log_seen = false;
    pthread_mutex_unlock(&W.mu);
}
