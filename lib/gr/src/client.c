/*
 * client.c - service-to-service calls (gr/client.h): peers resolved from the environment, the
 * registry (02) or a default, one keep-alive curl handle per calling thread, one retry on
 * another instance, deadlines, capped answers and per-peer metrics.
 */
#include "gr/client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gr/buf.h"
#include "gr/config.h"
#include "gr/http.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/metrics.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define REGISTRY_PATH     "/api/v1/registry/services/"
#define REGISTRY_RESP_MAX (256 * 1024)
#define TRACEPARENT_MAX   128
#define REQUEST_ID_MAX    128
#define IDEM_KEY_MAX      255

enum outcome { O_2XX, O_3XX, O_4XX, O_5XX, O_TIMEOUT, O_UNAVAIL, O_TOOBIG, O_N };
static const char *const outcome_names[O_N] = { "2xx",     "3xx",         "4xx",      "5xx",
                                                "timeout", "unavailable", "too_large" };

struct inst {
    char url[GR_CLIENT_URL_MAX + 1];
    bool dead; /* refused a connection since the last refresh */
};

struct gr_peer {
    struct gr_client *c;
    char name[64];
    char fixed[GR_CLIENT_URL_MAX + 1]; /* from the environment variable */
    bool overridden;
    char def[GR_CLIENT_URL_MAX + 1]; /* "" = none */
    struct gr_counter *ctr[O_N];
    pthread_mutex_t mu; /* guards everything below */
    struct inst inst[GR_CLIENT_INSTANCES];
    size_t ninst;
    unsigned rr;
    int64_t fetched_ms; /* monotonic time of the last lookup (success or not) */
    bool fetched;       /* a lookup was made */
    bool refreshing;    /* a thread is looking up */
};

/* One calling thread's handle. */
struct tcache {
    struct gr_client *c;
    CURL *h;
    long connects;
    struct tcache *prev, *next;
};

struct gr_client {
    char discovery[GR_CLIENT_URL_MAX + 1]; /* "" = none */
    struct gr_metrics *metrics;
    char *user_agent;
    int refresh_ms;
    pthread_key_t key;
    pthread_mutex_t mu; /* guards peers, npeers and caches */
    struct gr_peer *peers[GR_CLIENT_PEERS_MAX];
    size_t npeers;
    struct tcache *caches;
};

static _Atomic(struct gr_client *) default_client;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct gr_client *gr_client_default(void)
{
    return atomic_load(&default_client);
}

void gr_client_set_default(struct gr_client *c)
{
    atomic_store(&default_client, c);
}

/* http(s)://host... without whitespace, fitting GR_CLIENT_URL_MAX; copied without trailing '/'. */
static bool url_ok(const char *u, char out[GR_CLIENT_URL_MAX + 1])
{
    size_t n, scheme;

    if (u == NULL)
        return false;
    if (strncmp(u, "http://", 7) == 0)
        scheme = 7;
    else if (strncmp(u, "https://", 8) == 0)
        scheme = 8;
    else
        return false;
    n = strlen(u);
    if (n > GR_CLIENT_URL_MAX || n <= scheme || u[scheme] == '/')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] <= ' ' || u[i] == 0x7f)
            return false;
    while (n > 0 && u[n - 1] == '/')
        n--;
    memcpy(out, u, n);
    out[n] = '\0';
    return true;
}

static bool name_ok(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static void tcache_destroy(void *arg)
{
    struct tcache *tc = arg;
    struct gr_client *c = tc->c;

    pthread_mutex_lock(&c->mu);
    if (tc->prev != NULL)
        tc->prev->next = tc->next;
    else
        c->caches = tc->next;
    if (tc->next != NULL)
        tc->next->prev = tc->prev;
    pthread_mutex_unlock(&c->mu);
    curl_easy_cleanup(tc->h);
    gr_free(tc);
}

/* This thread's handle, made on first use; NULL when curl cannot make one. */
static struct tcache *tcache_get(struct gr_client *c)
{
    struct tcache *tc = pthread_getspecific(c->key);

    if (tc != NULL)
        return tc;
    tc = gr_xcalloc(1, sizeof(*tc));
    tc->c = c;
    tc->h = curl_easy_init();
    if (tc->h == NULL) {
        gr_free(tc);
        return NULL;
    }
    pthread_mutex_lock(&c->mu);
    tc->next = c->caches;
    if (c->caches != NULL)
        c->caches->prev = tc;
    c->caches = tc;
    pthread_mutex_unlock(&c->mu);
    if (pthread_setspecific(c->key, tc) != 0) {
        tcache_destroy(tc);
        return NULL;
    }
    return tc;
}

int gr_client_new(const struct gr_client_opts *o, struct gr_client **out)
{
    struct gr_client *c;

    *out = NULL;
    pthread_once(&curl_once, curl_init_once);
    c = gr_xcalloc(1, sizeof(*c));
    if (o != NULL && o->discovery_url != NULL && o->discovery_url[0] != '\0' &&
        !url_ok(o->discovery_url, c->discovery)) {
        gr_free(c);
        return GR_ECONFIG;
    }
    c->metrics = o != NULL ? o->metrics : NULL;
    c->user_agent = gr_xstrdup(o != NULL && o->user_agent != NULL ? o->user_agent : "gravity");
    c->refresh_ms = o != NULL && o->refresh_ms > 0 ? o->refresh_ms : GR_CLIENT_REFRESH_MS;
    if (pthread_key_create(&c->key, tcache_destroy) != 0) {
        gr_free(c->user_agent);
        gr_free(c);
        return GR_EINTERNAL;
    }
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void gr_client_free(struct gr_client *c)
{
    if (c == NULL)
        return;
    /* No destructor runs for the key from here on; the handles of live threads go now. */
    pthread_key_delete(c->key);
    while (c->caches != NULL) {
        struct tcache *tc = c->caches;

        c->caches = tc->next;
        curl_easy_cleanup(tc->h);
        gr_free(tc);
    }
    for (size_t i = 0; i < c->npeers; i++) {
        pthread_mutex_destroy(&c->peers[i]->mu);
        gr_free(c->peers[i]);
    }
    pthread_mutex_destroy(&c->mu);
    gr_free(c->user_agent);
    gr_free(c);
}

int gr_client_peer(struct gr_client *c, const char *service, const char *env, const char *def_url,
                   struct gr_peer **out, char *err, size_t errlen)
{
    const char *v = env != NULL ? getenv(env) : NULL;
    struct gr_peer *p;
    int rc = 0;

    *out = NULL;
    if (!name_ok(service)) {
        snprintf(err, errlen, "bad service name");
        return GR_EINVAL;
    }
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->npeers; i++)
        if (strcmp(c->peers[i]->name, service) == 0) {
            *out = c->peers[i];
            pthread_mutex_unlock(&c->mu);
            return 0;
        }
    if (c->npeers == GR_CLIENT_PEERS_MAX) {
        pthread_mutex_unlock(&c->mu);
        snprintf(err, errlen, "too many peers");
        return GR_ETOOBIG;
    }
    p = gr_xcalloc(1, sizeof(*p));
    p->c = c;
    snprintf(p->name, sizeof(p->name), "%s", service);
    if (v != NULL && v[0] != '\0') {
        if (!url_ok(v, p->fixed)) {
            snprintf(err, errlen, "%s: not an http(s) URL of at most %d bytes", env,
                     GR_CLIENT_URL_MAX);
            rc = GR_ECONFIG;
        }
        p->overridden = true;
    }
    if (rc == 0 && def_url != NULL && !url_ok(def_url, p->def)) {
        snprintf(err, errlen, "default URL of %s: not an http(s) URL", service);
        rc = GR_ECONFIG;
    }
    if (rc < 0) {
        pthread_mutex_unlock(&c->mu);
        gr_free(p);
        return rc;
    }
    pthread_mutex_init(&p->mu, NULL);
    if (c->metrics != NULL)
        for (int i = 0; i < O_N; i++)
            p->ctr[i] = gr_metrics_counter(
                c->metrics, "upstream_requests_total",
                "Calls to other services by peer and outcome",
                (const char *[]){ "peer", p->name, "outcome", outcome_names[i], NULL });
    c->peers[c->npeers++] = p;
    pthread_mutex_unlock(&c->mu);
    *out = p;
    return 0;
}

bool gr_peer_overridden(const struct gr_peer *p)
{
    return p->overridden;
}

const char *gr_peer_name(const struct gr_peer *p)
{
    return p->name;
}

long gr_client_thread_connects(struct gr_client *c)
{
    struct tcache *tc = pthread_getspecific(c->key);

    return tc != NULL ? tc->connects : 0;
}

/* ---- the registry ------------------------------------------------------------------------ */

struct sink {
    struct gr_buf b;
    bool toobig;
};

static size_t sink_write(char *ptr, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;

    if (gr_buf_append(&s->b, ptr, size * n) < 0) {
        s->toobig = true;
        return 0;
    }
    return size * n;
}

/* Looks the peer's passing instances up into @out (at most GR_CLIENT_INSTANCES); the count, or
 * -1 when the registry did not answer 200 with a list. */
static int lookup(struct tcache *tc, const struct gr_peer *p, int timeout_ms, struct inst *out)
{
    char url[GR_CLIENT_URL_MAX + 128];
    struct sink s = { .toobig = false };
    json_t *root = NULL, *data, *v;
    long status = 0;
    size_t i;
    int n = -1;

    snprintf(url, sizeof(url), "%s" REGISTRY_PATH "%s/instances", p->c->discovery, p->name);
    gr_buf_init(&s.b, REGISTRY_RESP_MAX);
    curl_easy_reset(tc->h);
    curl_easy_setopt(tc->h, CURLOPT_URL, url);
    curl_easy_setopt(tc->h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(tc->h, CURLOPT_USERAGENT, p->c->user_agent);
    curl_easy_setopt(tc->h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(tc->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(tc->h, CURLOPT_MAXCONNECTS, (long)GR_CLIENT_MAXCONNS);
    curl_easy_setopt(tc->h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(tc->h, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(tc->h, CURLOPT_WRITEDATA, &s);
    if (curl_easy_perform(tc->h) == CURLE_OK)
        curl_easy_getinfo(tc->h, CURLINFO_RESPONSE_CODE, &status);
    {
        long k = 0;

        curl_easy_getinfo(tc->h, CURLINFO_NUM_CONNECTS, &k);
        tc->connects += k;
    }
    if (status == 200 && s.b.len > 0)
        root = json_loadb(gr_buf_cstr(&s.b), s.b.len, 0, NULL);
    data = json_object_get(root, "data");
    if (json_is_array(data)) {
        n = 0;
        json_array_foreach(data, i, v)
        {
            const char *addr = json_string_value(json_object_get(v, "address"));
            json_int_t port = json_integer_value(json_object_get(v, "port"));
            int w;

            if (n == GR_CLIENT_INSTANCES)
                break;
            if (addr == NULL || addr[0] == '\0' || port <= 0 || port > 65535 ||
                strpbrk(addr, " /?#@[]") != NULL)
                continue;
            w = snprintf(out[n].url, sizeof(out[n].url),
                         strchr(addr, ':') != NULL ? "http://[%s]:%d" : "http://%s:%d", addr,
                         (int)port);
            if (w < 0 || (size_t)w >= sizeof(out[n].url))
                continue;
            out[n].dead = false;
            n++;
        }
    }
    json_decref(root);
    gr_buf_release(&s.b);
    return n;
}

/* Refreshes the peer's instance list when it is stale (one thread at a time once it has one). */
static void maybe_refresh(struct tcache *tc, struct gr_peer *p, int timeout_ms)
{
    struct gr_client *c = p->c;
    struct inst *fresh;
    int64_t now = gr_time_mono_ms();
    int n;

    if (p->overridden || c->discovery[0] == '\0')
        return;
    pthread_mutex_lock(&p->mu);
    if ((p->fetched && now - p->fetched_ms < c->refresh_ms) || (p->refreshing && p->fetched)) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    p->refreshing = true;
    pthread_mutex_unlock(&p->mu);
    fresh = gr_xcalloc(GR_CLIENT_INSTANCES, sizeof(*fresh));
    n = lookup(tc, p, timeout_ms < GR_CLIENT_DISCOVERY_MS ? timeout_ms : GR_CLIENT_DISCOVERY_MS,
               fresh);
    pthread_mutex_lock(&p->mu);
    if (n >= 0) {
        memcpy(p->inst, fresh, (size_t)n * sizeof(*fresh));
        p->ninst = (size_t)n;
    }
    p->fetched = true;
    p->fetched_ms = gr_time_mono_ms();
    p->refreshing = false;
    pthread_mutex_unlock(&p->mu);
    if (n < 0)
        gr_log_warn("service lookup failed", "peer", p->name, "error",
                    "registry did not answer with a list");
    gr_free(fresh);
}

/* The base URL for the next attempt, not @avoid (NULL: any); false when there is none. */
static bool pick(struct gr_peer *p, const char *avoid, char out[GR_CLIENT_URL_MAX + 1])
{
    bool found = false;

    if (p->overridden) {
        if (avoid != NULL && strcmp(avoid, p->fixed) == 0)
            return false;
        memcpy(out, p->fixed, sizeof(p->fixed));
        return true;
    }
    pthread_mutex_lock(&p->mu);
    /* Live instances first, then (all refused) any other than @avoid. */
    for (int pass = 0; pass < 2 && !found; pass++)
        for (size_t k = 0; k < p->ninst && !found; k++) {
            struct inst *in = &p->inst[(p->rr + k) % p->ninst];

            if ((pass == 0 && in->dead) || (avoid != NULL && strcmp(avoid, in->url) == 0))
                continue;
            memcpy(out, in->url, sizeof(in->url));
            p->rr = (unsigned)((p->rr + k + 1) % p->ninst);
            found = true;
        }
    if (!found && p->ninst == 0 && p->def[0] != '\0' &&
        (avoid == NULL || strcmp(avoid, p->def) != 0)) {
        memcpy(out, p->def, sizeof(p->def));
        found = true;
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

static void mark_dead(struct gr_peer *p, const char *url)
{
    pthread_mutex_lock(&p->mu);
    for (size_t k = 0; k < p->ninst; k++)
        if (strcmp(p->inst[k].url, url) == 0)
            p->inst[k].dead = true;
    pthread_mutex_unlock(&p->mu);
}

/* ---- calls ------------------------------------------------------------------------------- */

static bool idempotent(const struct gr_call *call)
{
    static const char *const m[] = { "GET", "HEAD", "PUT", "DELETE", "OPTIONS", NULL };

    if (call->idem_key != NULL)
        return true;
    for (size_t i = 0; m[i] != NULL; i++)
        if (strcmp(call->method, m[i]) == 0)
            return true;
    return false;
}

/* A header value we may send: printable, no CR/LF, at most @max bytes. */
static bool hval_ok(const char *v, size_t max)
{
    size_t n = v != NULL ? strlen(v) : 0;

    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < ' ' || v[i] == 0x7f)
            return false;
    return true;
}

static int add_hdr(struct curl_slist **h, struct gr_arena *a, const char *name, const char *val)
{
    struct curl_slist *t = curl_slist_append(*h, gr_arena_printf(a, "%s: %s", name, val));

    if (t == NULL)
        return GR_EINTERNAL;
    *h = t;
    return 0;
}

static const char *problem_slug(struct gr_arena *a, const json_t *j)
{
    const char *t = json_string_value(json_object_get(j, "type"));
    const char *s;

    if (t == NULL)
        return NULL;
    s = strrchr(t, ':');
    if (strrchr(t, '/') > s)
        s = strrchr(t, '/');
    return gr_arena_strdup(a, s != NULL ? s + 1 : t);
}

static void count(struct gr_peer *p, enum outcome o)
{
    if (p->ctr[o] != NULL)
        gr_counter_add(p->ctr[o], 1);
}

int gr_client_call(struct gr_peer *p, struct gr_arena *a, const struct gr_call *call,
                   struct gr_call_res *res)
{
    struct gr_client *c = p->c;
    const char *what = call->what != NULL ? call->what : call->path;
    int timeout = call->timeout_ms > 0 ? call->timeout_ms : GR_CLIENT_TIMEOUT_MS;
    size_t cap = call->resp_max > 0 ? call->resp_max : GR_CLIENT_RESP_MAX;
    int64_t deadline = gr_time_mono_ms() + timeout;
    struct gr_svctoken *prov = NULL;
    const char *tok = NULL, *rid = call->request_id, *tp = call->traceparent;
    struct gr_str body = { 0 };
    struct curl_slist *h = NULL;
    struct sink s = { .toobig = false };
    char url[GR_CLIENT_URL_MAX + 1], tried[GR_CLIENT_URL_MAX + 1] = "";
    const char *reason = "no instance";
    CURLcode cc = CURLE_FAILED_INIT;
    struct tcache *tc;
    bool has_body;
    int rc = GR_EUNAVAIL;
    enum outcome o = O_UNAVAIL;

    res->status = 0;
    res->json = NULL;
    res->problem = NULL;
    if (call->method == NULL || call->path == NULL || call->path[0] != '/')
        return GR_EINVAL;
    tc = tcache_get(c);
    if (tc == NULL)
        return GR_EINTERNAL;
    if (call->json != NULL) {
        rc = gr_json_dump(a, call->json, &body);
        if (rc < 0)
            return rc;
    } else if (call->body != NULL) {
        body.ptr = call->body;
        body.len = call->body_len > 0 ? call->body_len : strlen(call->body);
    }
    has_body = body.ptr != NULL;
    if (call->auth == GR_CALL_SERVICE) {
        prov = gr_svctoken_default();
        tok = prov != NULL ? gr_svctoken_get(prov, a) : NULL;
    } else {
        tok = call->bearer;
    }
    if (call->req != NULL) {
        rid = call->req->request_id;
        tp = gr_req_header(call->req, "traceparent");
    }
    rc = add_hdr(&h, a, "Accept", "application/json");
    if (rc == 0 && has_body)
        rc = add_hdr(&h, a, "Content-Type", "application/json");
    if (rc == 0) {
        /* No "Expect: 100-continue" round trip on large bodies. */
        struct curl_slist *t = curl_slist_append(h, "Expect:");

        if (t == NULL)
            rc = GR_EINTERNAL;
        else
            h = t;
    }
    if (rc == 0 && hval_ok(rid, REQUEST_ID_MAX))
        rc = add_hdr(&h, a, "X-Request-Id", rid);
    if (rc == 0 && hval_ok(tp, TRACEPARENT_MAX))
        rc = add_hdr(&h, a, "traceparent", tp);
    if (rc == 0 && hval_ok(tok, GR_SVCTOKEN_MAX))
        rc = add_hdr(&h, a, "Authorization", gr_arena_printf(a, "Bearer %s", tok));
    if (rc == 0 && call->idem_key != NULL) {
        if (!hval_ok(call->idem_key, IDEM_KEY_MAX))
            rc = GR_EINVAL;
        else
            rc = add_hdr(&h, a, "Idempotency-Key", call->idem_key);
    }
    if (rc < 0) {
        curl_slist_free_all(h);
        return rc;
    }
    rc = GR_EUNAVAIL;
    gr_buf_init(&s.b, cap);
    maybe_refresh(tc, p, timeout);
    for (int attempt = 0; attempt < 2; attempt++) {
        int64_t left = deadline - gr_time_mono_ms();
        long k = 0;

        if (!pick(p, attempt > 0 ? tried : NULL, url))
            break; /* no (other) instance: keep the last reason */
        if (left <= 0) {
            rc = GR_ETIMEOUT;
            o = O_TIMEOUT;
            reason = "deadline passed";
            break;
        }
        memcpy(tried, url, sizeof(url));
        gr_buf_reset(&s.b);
        s.toobig = false;
        curl_easy_reset(tc->h);
        curl_easy_setopt(tc->h, CURLOPT_URL, gr_arena_printf(a, "%s%s", url, call->path));
        curl_easy_setopt(tc->h, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(tc->h, CURLOPT_USERAGENT, c->user_agent);
        curl_easy_setopt(tc->h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(tc->h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(tc->h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(tc->h, CURLOPT_MAXCONNECTS, (long)GR_CLIENT_MAXCONNS);
        curl_easy_setopt(tc->h, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(tc->h, CURLOPT_TIMEOUT_MS, (long)left);
        curl_easy_setopt(tc->h, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(left < GR_CLIENT_CONNECT_MS ? left : GR_CLIENT_CONNECT_MS));
        curl_easy_setopt(tc->h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)cap);
        curl_easy_setopt(tc->h, CURLOPT_WRITEFUNCTION, sink_write);
        curl_easy_setopt(tc->h, CURLOPT_WRITEDATA, &s);
        if (strcmp(call->method, "GET") == 0 && !has_body) {
            curl_easy_setopt(tc->h, CURLOPT_HTTPGET, 1L);
        } else if (strcmp(call->method, "HEAD") == 0) {
            curl_easy_setopt(tc->h, CURLOPT_NOBODY, 1L);
        } else {
            curl_easy_setopt(tc->h, CURLOPT_CUSTOMREQUEST, call->method);
            curl_easy_setopt(tc->h, CURLOPT_POSTFIELDS, has_body ? body.ptr : "");
            curl_easy_setopt(tc->h, CURLOPT_POSTFIELDSIZE_LARGE,
                             (curl_off_t)(has_body ? body.len : 0));
        }
        cc = curl_easy_perform(tc->h);
        curl_easy_getinfo(tc->h, CURLINFO_NUM_CONNECTS, &k);
        tc->connects += k;
        if (cc == CURLE_OK) {
            curl_easy_getinfo(tc->h, CURLINFO_RESPONSE_CODE, &res->status);
            rc = 0;
            break;
        }
        if (s.toobig || cc == CURLE_FILESIZE_EXCEEDED) {
            reason = "response too large";
            o = O_TOOBIG;
            break;
        }
        reason = curl_easy_strerror(cc);
        if (cc == CURLE_OPERATION_TIMEDOUT) {
            rc = GR_ETIMEOUT;
            o = O_TIMEOUT;
            break;
        }
        if (cc == CURLE_COULDNT_CONNECT) {
            mark_dead(p, url); /* nothing was sent: any request may go elsewhere */
            continue;
        }
        if ((cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING ||
             cc == CURLE_PARTIAL_FILE || cc == CURLE_COULDNT_RESOLVE_HOST) &&
            idempotent(call))
            continue;
        break;
    }
    if (rc == 0) {
        if (s.b.len > 0 && gr_json_parse(a, gr_buf_cstr(&s.b), s.b.len, &res->json, NULL) < 0)
            res->json = NULL;
        if (res->status >= 400)
            res->problem = problem_slug(a, res->json);
        o = res->status >= 500   ? O_5XX
            : res->status >= 400 ? O_4XX
            : res->status >= 300 ? O_3XX
                                 : O_2XX;
        if (res->status == 401 && prov != NULL && tok != NULL)
            gr_svctoken_refused(prov, tok);
    } else {
        gr_log_warn("upstream call failed", "call", what, "peer", p->name, "error", reason);
    }
    count(p, o);
    curl_slist_free_all(h);
    gr_buf_release(&s.b);
    return rc;
}
