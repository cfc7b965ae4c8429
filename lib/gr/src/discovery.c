/*
 * discovery.c - the registration client of 02-service-discovery (gr/discovery.h). One
 * background thread per registration: register with backoff, heartbeat every ttl_s/3,
 * register again on a 404; gr_discovery_stop deregisters from the caller's thread.
 */
#include "gr/discovery.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gr/arena.h"
#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"

#define PREFIX       "/api/v1/registry/instances"
#define RESP_MAX     65536
#define REQ_MS       5000
#define CONNECT_MS   2000
#define BACKOFF_MIN  100
#define BACKOFF_MAX  5000
#define BEARER       "Authorization: Bearer "
#define AUTH_HDR_MAX (sizeof(BEARER) + GR_SVCTOKEN_MAX + 1)

struct gr_discovery {
    char base[GR_DISCOVERY_URL_MAX + 1];
    char service[64];
    char address[GR_DISCOVERY_ADDR_MAX + 1];
    int port;
    int ttl_s;
    pthread_t thread;
    pthread_mutex_t mu; /* guards id, stop */
    pthread_cond_t cond;
    bool stop;
    char id[GR_ID_LEN];
};

struct resp {
    char buf[RESP_MAX + 1];
    size_t len;
};

static size_t on_data(char *p, size_t sz, size_t n, void *u)
{
    struct resp *r = u;
    size_t k = sz * n;

    if (r->len + k > RESP_MAX)
        return 0;
    memcpy(r->buf + r->len, p, k);
    r->len += k;
    r->buf[r->len] = '\0';
    return k;
}

/* One request; the HTTP status into *@status (0 when none came). */
static void request(const struct gr_discovery *d, const char *method, const char *path,
                    const char *body, int timeout_ms, struct resp *r, long *status)
{
    char url[GR_DISCOVERY_URL_MAX + 128];
    char *auth = gr_xcalloc(1, AUTH_HDR_MAX);
    struct gr_svctoken *t = gr_svctoken_default();
    struct curl_slist *hdr = NULL;
    CURL *c = curl_easy_init();

    *status = 0;
    r->len = 0;
    r->buf[0] = '\0';
    if (c == NULL) {
        gr_free(auth);
        return;
    }
    (void)snprintf(url, sizeof(url), "%s%s", d->base, path);
    if (t != NULL) {
        memcpy(auth, BEARER, sizeof(BEARER) - 1);
        if (gr_svctoken_copy(t, auth + sizeof(BEARER) - 1, AUTH_HDR_MAX - sizeof(BEARER)) >= 0)
            hdr = curl_slist_append(hdr, auth);
    }
    if (body != NULL)
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    } else if (strcmp(method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(timeout_ms < CONNECT_MS ? timeout_ms : CONNECT_MS));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdr);
    if (*status == 401 && t != NULL)
        gr_svctoken_refused(t, auth + sizeof(BEARER) - 1);
    memset(auth, 0, AUTH_HDR_MAX);
    gr_free(auth);
}

/* Registers; 0 with d->id set, else an error code. */
static int do_register(struct gr_discovery *d, struct resp *r)
{
    json_t *b = json_pack("{s:s,s:s,s:i,s:[],s:{s:s,s:i,s:i}}", "service", d->service, "address",
                          d->address, "port", d->port, "tags", "check", "kind", "ttl", "ttl_s",
                          d->ttl_s, "deregister_after_s", GR_DISCOVERY_DEREGISTER_S);
    struct gr_arena a;
    struct gr_str body;
    json_t *doc;
    long status = 0;
    int rc;

    if (b == NULL)
        return GR_EINTERNAL;
    gr_arena_init(&a);
    rc = gr_json_dump(&a, b, &body);
    json_decref(b);
    if (rc == 0)
        request(d, "POST", PREFIX, body.ptr, REQ_MS, r, &status);
    gr_arena_release(&a);
    if (rc < 0)
        return rc;
    if (status != 200 && status != 201) {
        gr_log_debug("registry registration failed", "status", status == 0 ? "none" : "http");
        return status == 0 ? GR_EUNAVAIL : GR_EINVAL;
    }
    doc = json_loadb(r->buf, r->len, 0, NULL);
    rc = GR_EINVAL;
    if (json_is_string(json_object_get(doc, "id")) &&
        json_string_length(json_object_get(doc, "id")) == GR_ID_LEN - 1) {
        pthread_mutex_lock(&d->mu);
        memcpy(d->id, json_string_value(json_object_get(doc, "id")), GR_ID_LEN);
        pthread_mutex_unlock(&d->mu);
        rc = 0;
    }
    json_decref(doc);
    if (rc == 0)
        gr_log_info("registered in the registry", "service", d->service, "instance_id", d->id);
    return rc;
}

/* Waits @ms or until stopped; true when stopped. */
static bool pause_ms(struct gr_discovery *d, long ms)
{
    struct timespec ts;
    bool stop;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&d->mu);
    while (!d->stop)
        if (pthread_cond_timedwait(&d->cond, &d->mu, &ts) != 0)
            break;
    stop = d->stop;
    pthread_mutex_unlock(&d->mu);
    return stop;
}

static long jitter(long ms)
{
    /* Jitter only spreads retries of several processes: the clock's low bits suffice. */
    uint64_t x = (uint64_t)gr_time_mono_ns();

    x ^= x >> 17;
    x *= 0x9E3779B97F4A7C15ULL;
    return ms / 2 + (long)((x >> 33) % (uint64_t)(ms / 2 + 1));
}

static void *discovery_main(void *arg)
{
    struct gr_discovery *d = arg;
    struct resp *r = gr_xmalloc(sizeof(*r));
    long backoff = BACKOFF_MIN;
    long beat_ms = d->ttl_s * 1000L / 3;

    if (beat_ms < 100)
        beat_ms = 100;
    for (;;) {
        char id[GR_ID_LEN], path[sizeof(PREFIX) + GR_ID_LEN + 16];
        long status = 0;

        pthread_mutex_lock(&d->mu);
        memcpy(id, d->id, sizeof(id));
        pthread_mutex_unlock(&d->mu);
        if (id[0] == '\0') {
            if (do_register(d, r) == 0) {
                backoff = BACKOFF_MIN;
                if (pause_ms(d, beat_ms))
                    break;
                continue;
            }
            if (pause_ms(d, jitter(backoff)))
                break;
            backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
            continue;
        }
        (void)snprintf(path, sizeof(path), PREFIX "/%s/heartbeat", id);
        request(d, "PUT", path, NULL, REQ_MS, r, &status);
        if (status == 404) {
            gr_log_warn("registry forgot the instance, registering again", "instance_id", id);
            pthread_mutex_lock(&d->mu);
            d->id[0] = '\0';
            pthread_mutex_unlock(&d->mu);
            continue;
        }
        if (status != 200)
            gr_log_debug("registry heartbeat failed", "instance_id", id);
        if (pause_ms(d, beat_ms))
            break;
    }
    gr_free(r);
    return NULL;
}

int gr_discovery_address(char *out, size_t size)
{
    const char *a = getenv("DISCOVERY_ADDRESS");
    int n;

    if (a == NULL || a[0] == '\0') {
        a = getenv("HOST");
        if (a == NULL || a[0] == '\0' || strcmp(a, "0.0.0.0") == 0 || strcmp(a, "::") == 0 ||
            strcmp(a, "[::]") == 0)
            a = "127.0.0.1";
    }
    if (strlen(a) > GR_DISCOVERY_ADDR_MAX)
        return GR_EINVAL;
    n = snprintf(out, size, "%s", a);
    return n < 0 || (size_t)n >= size ? GR_ETOOBIG : 0;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static int bad(char *err, size_t errlen, int code, const char *msg)
{
    if (errlen > 0)
        (void)snprintf(err, errlen, "%s", msg);
    return code;
}

int gr_discovery_start(const char *discovery_url, const char *service_name, const char *address,
                       int port, struct gr_discovery **out, char *err, size_t errlen)
{
    struct gr_discovery *d;
    const char *ttl = getenv("DISCOVERY_TTL");
    long ttl_s = GR_DISCOVERY_TTL_DEFAULT;
    size_t ulen;
    pthread_condattr_t at;
    int rc;

    *out = NULL;
    if (discovery_url == NULL ||
        (strncmp(discovery_url, "http://", 7) != 0 && strncmp(discovery_url, "https://", 8) != 0))
        return bad(err, errlen, GR_ECONFIG, "DISCOVERY_URL: must be an http(s):// URL");
    ulen = strlen(discovery_url);
    if (ulen > GR_DISCOVERY_URL_MAX || strpbrk(discovery_url, " \t\r\n") != NULL)
        return bad(err, errlen, GR_ECONFIG, "DISCOVERY_URL: too long or holds spaces");
    if (service_name == NULL || !name_ok(service_name))
        return bad(err, errlen, GR_EINVAL, "discovery: service name must match [a-z0-9-]{1,63}");
    if (port < 1 || port > 65535)
        return bad(err, errlen, GR_EINVAL, "discovery: port must be 1..65535");
    if (ttl != NULL && ttl[0] != '\0') {
        char *end = NULL;

        ttl_s = strtol(ttl, &end, 10);
        if (end == ttl || *end != '\0' || ttl_s < 1 || ttl_s > 3600)
            return bad(err, errlen, GR_ECONFIG, "DISCOVERY_TTL: must be an integer 1..3600");
    }
    d = gr_xcalloc(1, sizeof(*d));
    memcpy(d->base, discovery_url, ulen + 1);
    while (ulen > 0 && d->base[ulen - 1] == '/')
        d->base[--ulen] = '\0';
    (void)snprintf(d->service, sizeof(d->service), "%s", service_name);
    if (address != NULL) {
        if (strlen(address) < 1 || strlen(address) > GR_DISCOVERY_ADDR_MAX) {
            gr_free(d);
            return bad(err, errlen, GR_EINVAL, "discovery: address must be 1..253 characters");
        }
        (void)snprintf(d->address, sizeof(d->address), "%s", address);
    } else if (gr_discovery_address(d->address, sizeof(d->address)) < 0) {
        gr_free(d);
        return bad(err, errlen, GR_ECONFIG, "DISCOVERY_ADDRESS: longer than 253 characters");
    }
    d->port = port;
    d->ttl_s = (int)ttl_s;
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_init(&at);
    pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &at);
    pthread_condattr_destroy(&at);
    rc = pthread_create(&d->thread, NULL, discovery_main, d);
    if (rc != 0) {
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->mu);
        gr_free(d);
        return bad(err, errlen, GR_EINTERNAL, "discovery: cannot start its thread");
    }
    *out = d;
    return 0;
}

void gr_discovery_id(struct gr_discovery *d, char out[GR_ID_LEN])
{
    pthread_mutex_lock(&d->mu);
    memcpy(out, d->id, GR_ID_LEN);
    pthread_mutex_unlock(&d->mu);
}

void gr_discovery_stop(struct gr_discovery *d)
{
    char path[sizeof(PREFIX) + GR_ID_LEN + 16];
    long status = 0;

    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    if (d->id[0] != '\0') {
        struct resp *r = gr_xmalloc(sizeof(*r));

        (void)snprintf(path, sizeof(path), PREFIX "/%s", d->id);
        request(d, "DELETE", path, NULL, GR_DISCOVERY_STOP_MS, r, &status);
        if (status == 204 || status == 404)
            gr_log_info("deregistered from the registry", "instance_id", d->id);
        else
            gr_log_warn("registry deregistration failed", "instance_id", d->id);
        gr_free(r);
    }
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->mu);
    gr_free(d);
}
