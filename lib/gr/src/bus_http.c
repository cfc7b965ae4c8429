/*
 * bus_http.c - the `http` backend of gr bus: 14-event-bus-service over its REST API
 * (services/14-event-bus-service/README.md). Publish is one batch POST of the outbox rows
 * (application/cloudevents-batch+json, stored atomically, duplicates by (source, id) reported
 * as stored); the durable subscription is created or bound by name at start-up; pull is a long
 * poll; ack and nak name the delivery by its seq. One libcurl easy handle per backend, so one
 * thread per backend (bus.c opens one for the relay and one for the consumer).
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_int.h"
#include "gr/buf.h"
#include "gr/log.h"
#include "gr/status.h"
#include "gr/svctoken.h"

#define RESP_MAX  (32u * 1024 * 1024) /* bytes of one response body */
#define URL_MAX   1024
#define TOKEN_MAX 8192
#define BEARER    "Authorization: Bearer "
#define PULL_MAX  1000  /* 14's bounds of one pull: max 1..1000 */
#define WAIT_MAX  30000 /* and wait_ms 0..30000 */

struct hb {
    CURL *curl;
    char base[URL_MAX];   /* http://host:port (no trailing slash) */
    char auth[TOKEN_MAX]; /* "Authorization: Bearer …" or "" */
    char sub_id[64];      /* the bound subscription's id */
    char *sub_req;        /* the subscription's POST body, to bind again if it was deleted */
    char durable[128];    /* its name, for the log */
    struct gr_buf resp;
    bool too_big;
    /* Without a static token: the process's service token provider, asked per request. */
    struct gr_svctoken *svctoken;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct hb *h = arg;
    size_t len = size * n;

    if (h->resp.len + len > RESP_MAX) {
        h->too_big = true;
        return 0;
    }
    if (gr_buf_append(&h->resp, p, len) < 0)
        return 0;
    return len;
}

/* POSTs @body (JSON of @ctype) to base+@path; the status into *@status, body in h->resp. */
static int post(struct hb *h, const char *path, const char *ctype, const char *body, size_t len,
                int timeout_ms, long *status)
{
    char url[URL_MAX + 256], ct[128];
    struct curl_slist *hdr = NULL;
    CURLcode cc;

    snprintf(url, sizeof(url), "%s%s", h->base, path);
    snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    if (h->svctoken) {
        /* No token yet (auth not reached): 14 would refuse us, so it counts as unavailable. */
        memcpy(h->auth, BEARER, sizeof(BEARER) - 1);
        if (gr_svctoken_copy(h->svctoken, h->auth + sizeof(BEARER) - 1,
                             sizeof(h->auth) - sizeof(BEARER) + 1) < 0) {
            h->auth[0] = '\0';
            gr_log_debug("event bus request skipped: no service token yet", "path", path);
            return GR_EUNAVAIL;
        }
    }
    hdr = curl_slist_append(hdr, ct);
    if (h->auth[0])
        hdr = curl_slist_append(hdr, h->auth);
    gr_buf_reset(&h->resp);
    h->too_big = false;
    curl_easy_setopt(h->curl, CURLOPT_URL, url);
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
    cc = curl_easy_perform(h->curl);
    curl_slist_free_all(hdr);
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, NULL);
    if (cc != CURLE_OK) {
        gr_log_debug("event bus request failed", "path", path, "error", curl_easy_strerror(cc));
        return h->too_big ? GR_ETOOBIG : GR_EUNAVAIL;
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, status);
    if (*status == 401 && h->svctoken)
        gr_svctoken_refused(h->svctoken, h->auth + sizeof(BEARER) - 1);
    return 0;
}

/* Maps an unexpected status to a code: 4xx input errors are permanent, the rest retryable. */
static int status_err(long st)
{
    if (st == 400 || st == 413 || st == 415 || st == 422)
        return st == 413 ? GR_ETOOBIG : GR_EVALID;
    return GR_EUNAVAIL;
}

static int h_publish(struct gr_bus_backend *b, const struct gr_bus_out *ev, size_t n,
                     int timeout_ms)
{
    struct hb *h = b->impl;
    struct gr_buf body = GR_BUF_INIT;
    long st = 0;
    int rc;

    if (n > 1000)
        n = 1000;
    gr_buf_append(&body, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            gr_buf_append(&body, ",", 1);
        if (gr_buf_append(&body, ev[i].json, ev[i].json_len) < 0)
            break;
    }
    gr_buf_append(&body, "]", 1);
    rc = post(h, "/api/v1/events", "application/cloudevents-batch+json", gr_buf_cstr(&body),
              body.len, timeout_ms, &st);
    gr_buf_release(&body);
    if (rc < 0)
        return rc;
    if (st == 200 || st == 201)
        return (int)n;
    if (st == 422 && n > 1) {
        /* One bad event refuses the whole batch: send them one by one to find it. */
        for (size_t i = 0; i < n; i++) {
            rc = h_publish(b, &ev[i], 1, timeout_ms);
            if (rc < 0)
                return i > 0 ? (int)i : rc;
        }
        return (int)n;
    }
    gr_log_warn("event bus refused a publish", "status",
                st == 401   ? "401"
                : st == 403 ? "403"
                            : "other");
    return status_err(st);
}

/* Creates or binds the subscription described by h->sub_req; its id into h->sub_id. */
static int sub_bind(struct hb *h, int timeout_ms)
{
    json_t *r;
    long st = 0;
    int rc;

    rc = post(h, "/api/v1/event-subscriptions", "application/json", h->sub_req, strlen(h->sub_req),
              timeout_ms, &st);
    if (rc < 0)
        return rc;
    if (st != 200 && st != 201) {
        gr_log_error("event bus subscription refused", "durable", h->durable, "status",
                     st == 409 ? "409 (settings differ from the existing one)" : "other");
        /* 409: a subscription of this name with other settings exists (permanent until it
         * is changed or deleted on 14); 400/422: refused filters; the rest may pass. */
        return st == 409 ? GR_ECONFLICT : status_err(st);
    }
    r = json_loadb(gr_buf_cstr(&h->resp), h->resp.len, 0, NULL);
    if (!json_is_string(json_object_get(r, "id"))) {
        json_decref(r);
        return GR_EUNAVAIL;
    }
    snprintf(h->sub_id, sizeof(h->sub_id), "%s", json_string_value(json_object_get(r, "id")));
    json_decref(r);
    return 0;
}

static int h_subscribe(struct gr_bus_backend *b, const char *durable, const struct gr_sub *subs,
                       size_t nsubs, const struct gr_sub_opts *opts, int timeout_ms)
{
    struct hb *h = b->impl;
    json_t *o = json_object(), *filters = json_array();
    char *txt;

    for (size_t i = 0; i < nsubs; i++)
        json_array_append_new(filters, json_string(subs[i].type));
    json_object_set_new(o, "name", json_string(durable));
    json_object_set_new(o, "type_filters", filters);
    json_object_set_new(o, "mode", json_string("pull"));
    json_object_set_new(o, "ack_wait_s",
                        json_integer(opts && opts->ack_wait_s > 0 ? opts->ack_wait_s : 30));
    json_object_set_new(o, "max_deliver",
                        json_integer(opts && opts->max_deliver > 0 ? opts->max_deliver : 5));
    txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!txt)
        return GR_EINTERNAL;
    gr_free(h->sub_req);
    h->sub_req = gr_xstrdup(txt);
    snprintf(h->durable, sizeof(h->durable), "%s", durable);
    gr_free(txt);
    h->sub_id[0] = '\0';
    return sub_bind(h, timeout_ms);
}

static int h_pull(struct gr_bus_backend *b, struct gr_arena *a, size_t max, int wait_ms,
                  struct gr_bus_in **out)
{
    struct hb *h = b->impl;
    char path[128], body[96];
    json_t *r, *data;
    struct gr_bus_in *in;
    size_t n, k = 0;
    long st = 0;
    int rc;

    *out = NULL;
    if (!h->sub_id[0]) {
        if (!h->sub_req)
            return GR_EINTERNAL; /* pull before subscribe */
        rc = sub_bind(h, 5000);  /* it was deleted on 14: bind (create) it again */
        if (rc < 0)
            return rc;
    }
    /* 14 refuses a pull outside these bounds (422), which would fail every poll. */
    if (max == 0 || max > PULL_MAX)
        max = max == 0 ? 1 : PULL_MAX;
    if (wait_ms < 0 || wait_ms > WAIT_MAX)
        wait_ms = wait_ms < 0 ? 0 : WAIT_MAX;
    snprintf(path, sizeof(path), "/api/v1/event-subscriptions/%s/pull", h->sub_id);
    snprintf(body, sizeof(body), "{\"max\":%zu,\"wait_ms\":%d}", max, wait_ms);
    rc = post(h, path, "application/json", body, strlen(body), wait_ms + 5000, &st);
    if (rc < 0)
        return rc;
    if (st == 404)
        h->sub_id[0] = '\0'; /* deleted: bind again at the next pull */
    if (st != 200)
        return GR_EUNAVAIL;
    r = json_loadb(gr_buf_cstr(&h->resp), h->resp.len, 0, NULL);
    data = json_object_get(r, "data");
    n = json_array_size(data);
    in = gr_arena_calloc(a, (n ? n : 1) * sizeof(*in));
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(data, i);
        json_t *ev = json_object_get(d, "event");
        char *txt = ev ? json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_int_t seq = json_integer_value(json_object_get(d, "seq"));

        if (txt && gr_bus_parse_event(a, txt, strlen(txt), &in[k].ev) == 0 && seq > 0) {
            in[k].ev.seq = (uint64_t)seq;
            in[k].ev.attempt = (unsigned)json_integer_value(json_object_get(d, "attempt"));
            in[k].token = (void *)(uintptr_t)seq;
            k++;
        } else if (seq > 0) {
            gr_log_warn("event bus delivered a malformed event, dropped");
        }
        gr_free(txt);
    }
    json_decref(r);
    *out = in;
    return (int)k;
}

static int ack_or_nak(struct hb *h, const char *verb, uint64_t seq, int delay_ms)
{
    char path[160], body[96];
    long st = 0;
    int rc;

    if (!h->sub_id[0])
        return GR_EINTERNAL;
    snprintf(path, sizeof(path), "/api/v1/event-subscriptions/%s/%s", h->sub_id, verb);
    if (delay_ms >= 0)
        snprintf(body, sizeof(body), "{\"seqs\":[%llu],\"delay_ms\":%d}", (unsigned long long)seq,
                 delay_ms);
    else
        snprintf(body, sizeof(body), "{\"seqs\":[%llu]}", (unsigned long long)seq);
    rc = post(h, path, "application/json", body, strlen(body), 5000, &st);
    if (rc < 0)
        return rc;
    return st == 200 ? 0 : GR_EUNAVAIL;
}

static int h_ack(struct gr_bus_backend *b, struct gr_bus_in *in)
{
    return ack_or_nak(b->impl, "ack", (uint64_t)(uintptr_t)in->token, -1);
}

/* One POST …/ack for up to 1000 deliveries (14's limit per call). */
static int h_ack_many(struct gr_bus_backend *b, struct gr_bus_in **in, size_t n)
{
    struct hb *h = b->impl;
    struct gr_buf body = GR_BUF_INIT;
    char path[160];
    long st = 0;
    int rc = 0;

    if (!h->sub_id[0])
        return GR_EINTERNAL;
    snprintf(path, sizeof(path), "/api/v1/event-subscriptions/%s/ack", h->sub_id);
    for (size_t off = 0; off < n && rc == 0; off += 1000) {
        size_t end = n - off > 1000 ? off + 1000 : n;

        gr_buf_reset(&body);
        rc = gr_buf_puts(&body, "{\"seqs\":[");
        for (size_t i = off; i < end && rc == 0; i++)
            rc = gr_buf_printf(&body, "%s%llu", i > off ? "," : "",
                               (unsigned long long)(uintptr_t)in[i]->token);
        if (rc == 0)
            rc = gr_buf_puts(&body, "]}");
        if (rc == 0)
            rc = post(h, path, "application/json", gr_buf_cstr(&body), body.len, 5000, &st);
        if (rc == 0 && st != 200)
            rc = GR_EUNAVAIL;
    }
    gr_buf_release(&body);
    return rc < 0 ? rc : 0;
}

static int h_nak(struct gr_bus_backend *b, struct gr_bus_in *in, int delay_ms)
{
    return ack_or_nak(b->impl, "nak", (uint64_t)(uintptr_t)in->token, delay_ms < 0 ? 0 : delay_ms);
}

static int h_replay(struct gr_bus_backend *b, uint64_t after_seq, int timeout_ms)
{
    struct hb *h = b->impl;
    char path[160], body[64];
    long st = 0;
    int rc;

    if (!h->sub_id[0])
        return GR_EINTERNAL;
    snprintf(path, sizeof(path), "/api/v1/event-subscriptions/%s/replay", h->sub_id);
    snprintf(body, sizeof(body), "{\"after_seq\":%llu}", (unsigned long long)after_seq);
    rc = post(h, path, "application/json", body, strlen(body), timeout_ms, &st);
    if (rc < 0)
        return rc;
    return st == 200 ? 0 : status_err(st);
}

static int h_ping(struct gr_bus_backend *b, int timeout_ms)
{
    struct hb *h = b->impl;
    char url[URL_MAX + 16];
    long st = 0;

    snprintf(url, sizeof(url), "%s/ready", h->base);
    gr_buf_reset(&h->resp);
    curl_easy_setopt(h->curl, CURLOPT_URL, url);
    curl_easy_setopt(h->curl, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, h);
    if (curl_easy_perform(h->curl) != CURLE_OK)
        return GR_EUNAVAIL;
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &st);
    return st == 200 ? 0 : GR_EUNAVAIL;
}

static void h_close(struct gr_bus_backend *b)
{
    struct hb *h = b->impl;

    curl_easy_cleanup(h->curl);
    gr_buf_release(&h->resp);
    gr_free(h->sub_req);
    gr_free(h);
    gr_free(b);
}

static const struct gr_bus_backend_ops http_ops = {
    .name = "http",
    .publish = h_publish,
    .subscribe = h_subscribe,
    .pull = h_pull,
    .ack = h_ack,
    .ack_many = h_ack_many,
    .replay = h_replay,
    .nak = h_nak,
    .release = NULL,
    .ping = h_ping,
    .close = h_close,
};

int gr_bus_http_open(const char *url, const char *token, struct gr_bus_backend **out, char *err,
                     size_t errlen)
{
    struct gr_bus_backend *b;
    struct hb *h;
    size_t n;

    *out = NULL;
    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) ||
        strlen(url) >= URL_MAX) {
        snprintf(err, errlen, "EVENT_BUS_URL must be an http(s) URL");
        return GR_ECONFIG;
    }
    if (token && strlen(token) + 32 >= TOKEN_MAX) {
        snprintf(err, errlen, "SERVICE_TOKEN is too long");
        return GR_ECONFIG;
    }
    h = gr_xcalloc(1, sizeof(*h));
    h->curl = curl_easy_init();
    if (!h->curl) {
        gr_free(h);
        snprintf(err, errlen, "libcurl unusable");
        return GR_EINTERNAL;
    }
    snprintf(h->base, sizeof(h->base), "%s", url);
    n = strlen(h->base);
    while (n > 0 && h->base[n - 1] == '/')
        h->base[--n] = '\0';
    if (token && *token)
        snprintf(h->auth, sizeof(h->auth), BEARER "%s", token);
    else
        h->svctoken = gr_svctoken_default();
    gr_buf_init(&h->resp, RESP_MAX + 1);
    b = gr_xcalloc(1, sizeof(*b));
    b->ops = &http_ops;
    b->impl = h;
    *out = b;
    return 0;
}
