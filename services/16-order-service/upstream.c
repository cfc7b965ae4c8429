/*
 * upstream.c - order-service's calls to other services (SERVICES §16, decision 6: directly,
 * service to service, with the process's client-credentials token from gr_svctoken_default):
 * prices from 17, tax rates from 21 (cached, decision 15), and the saga's calls to 22, 18
 * and 15 (saga.c).
 *
 * Each call is one libcurl request with the deadline ORDER_CALL_TIMEOUT_MS (the seed's 5 s),
 * the request id and traceparent passed on and the answer capped at ORDER_RESP_MAX bytes.
 * Base URLs come from PRODUCT_URL, INVENTORY_URL, TAX_URL (or INVOICE_URL), DISCOUNT_URL and
 * PAYMENT_URL with the seed ports as defaults: gr has no discovery lookup yet, so this file is
 * the one place to change when it has one. Tokens and bodies are never logged.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "gr/json.h"
#include "gr/log.h"
#include "gr/svctoken.h"
#include "gr/time.h"
#include "order.h"

struct sink {
    struct gr_buf b;
    bool toobig;
};

static size_t sink_write(char *p, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;

    if (gr_buf_append(&s->b, p, size * n) < 0) {
        s->toobig = true;
        return 0;
    }
    return size * n;
}

int up_call(struct saga_ctx *s, const char *what, const char *method, const char *url,
            const char *idem_key, json_t *body, struct upstream *u)
{
    struct gr_svctoken *tp = gr_svctoken_default();
    const char *tok = tp != NULL ? gr_svctoken_get(tp, s->a) : NULL;
    struct sink sk = { .toobig = false };
    struct curl_slist *h = NULL, *t;
    struct gr_str text = { 0 };
    const char *hdrs[6];
    size_t nh = 0;
    CURLcode cc = CURLE_FAILED_INIT;
    CURL *c;
    int rc = GR_EUNAVAIL;

    u->status = 0;
    u->json = NULL;
    if (body != NULL && gr_json_dump(s->a, body, &text) < 0)
        return GR_EINTERNAL;
    c = curl_easy_init();
    gr_buf_init(&sk.b, ORDER_RESP_MAX);
    hdrs[nh++] = "Accept: application/json";
    if (body != NULL)
        hdrs[nh++] = "Content-Type: application/json";
    if (s->request_id != NULL)
        hdrs[nh++] = gr_arena_printf(s->a, "X-Request-Id: %s", s->request_id);
    if (s->traceparent != NULL && strlen(s->traceparent) < 128)
        hdrs[nh++] = gr_arena_printf(s->a, "traceparent: %s", s->traceparent);
    if (tok != NULL)
        hdrs[nh++] = gr_arena_printf(s->a, "Authorization: Bearer %s", tok);
    if (idem_key != NULL)
        hdrs[nh++] = gr_arena_printf(s->a, "Idempotency-Key: %s", idem_key);
    if (c == NULL)
        goto out;
    for (size_t i = 0; i < nh; i++) {
        t = curl_slist_append(h, hdrs[i]);
        if (t == NULL)
            goto out;
        h = t;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gravity-order-service");
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->app->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(s->app->timeout_ms < 2000 ? s->app->timeout_ms : 2000));
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)ORDER_RESP_MAX);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sk);
    if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, text.ptr != NULL ? text.ptr : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(text.ptr != NULL ? text.len : 0));
    }
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &u->status);
        if (sk.b.len > 0 && gr_json_parse(s->a, gr_buf_cstr(&sk.b), sk.b.len, &u->json, NULL) < 0)
            u->json = NULL;
        rc = 0;
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = GR_ETIMEOUT;
    }
out:
    if (rc < 0)
        gr_log_warn("upstream call failed", "call", what, "error",
                    sk.toobig ? "response too large" : curl_easy_strerror(cc));
    else if (u->status == 401 && tp != NULL && tok != NULL)
        gr_svctoken_refused(tp, tok);
    curl_slist_free_all(h);
    if (c != NULL)
        curl_easy_cleanup(c);
    gr_buf_release(&sk.b);
    return rc;
}

int up_price(struct saga_ctx *s, const char *const *ids, size_t n, struct variant_price *out)
{
    struct gr_buf url = GR_BUF_INIT;
    struct upstream u;
    json_t *data, *v;
    size_t i;
    int rc;

    memset(out, 0, n * sizeof(*out));
    if (n == 0)
        return 0;
    gr_buf_init(&url, 8192);
    gr_buf_printf(&url, "%s/api/v1/products/variants?ids=", s->app->product_url);
    for (i = 0; i < n; i++)
        gr_buf_printf(&url, "%s%s", i ? "," : "", ids[i]);
    rc = up_call(s, "product prices", "GET", gr_buf_cstr(&url), NULL, NULL, &u);
    gr_buf_release(&url);
    if (rc < 0)
        return GR_EUNAVAIL;
    data = json_object_get(u.json, "data");
    if (u.status != 200 || !json_is_array(data)) {
        gr_log_warn("upstream call failed", "call", "product prices", "error", "unexpected answer");
        return GR_EUNAVAIL;
    }
    json_array_foreach(data, i, v)
    {
        const char *vid = json_string_value(json_object_get(v, "id"));
        const char *ps = json_string_value(json_object_get(v, "product_status"));
        const char *sku = json_string_value(json_object_get(v, "sku"));
        json_t *price = json_object_get(v, "price");
        const char *cur = json_string_value(json_object_get(price, "currency"));
        json_t *amount = json_object_get(price, "amount");

        if (vid == NULL || sku == NULL || cur == NULL || !json_is_integer(amount) ||
            !gr_money_currency_valid(cur))
            continue;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(ids[k], vid) != 0)
                continue;
            out[k].found = true;
            out[k].available = !json_is_true(json_object_get(v, "archived")) &&
                               (ps == NULL || strcmp(ps, "active") == 0);
            out[k].product_id = json_string_value(json_object_get(v, "product_id"));
            out[k].sku = sku;
            out[k].price.amount = json_integer_value(amount);
            snprintf(out[k].price.currency, sizeof(out[k].price.currency), "%s", cur);
        }
    }
    return 0;
}

/* ---- tax rates (decision 15: a cache of 21's rates, used for up to 24 h) ----------------- */

/* Fetches every rate of @country from 21 into @e (not yet in the cache). */
static int fetch_rates(struct saga_ctx *s, const char *country, struct tax_entry *e)
{
    struct upstream u;
    json_t *data, *v;
    size_t i;
    int rc;

    memset(e, 0, sizeof(*e));
    snprintf(e->country, sizeof(e->country), "%s", country);
    rc = up_call(
        s, "tax rates", "GET",
        gr_arena_printf(s->a, "%s/api/v1/tax-rates?country=%s&limit=100", s->app->tax_url, country),
        NULL, NULL, &u);
    if (rc < 0)
        return GR_EUNAVAIL;
    data = json_object_get(u.json, "data");
    if (u.status != 200 || !json_is_array(data)) {
        gr_log_warn("upstream call failed", "call", "tax rates", "error", "unexpected answer");
        return GR_EUNAVAIL;
    }
    json_array_foreach(data, i, v)
    {
        const char *region = json_string_value(json_object_get(v, "region"));
        json_t *bp = json_object_get(v, "rate_bp");
        struct tax_rate *r;

        if (e->n >= ORDER_TAX_RATES || !json_is_integer(bp) || json_integer_value(bp) < 0 ||
            json_integer_value(bp) > 10000)
            continue;
        r = &e->rates[e->n++];
        snprintf(r->region, sizeof(r->region), "%s", region != NULL ? region : "");
        r->rate_bp = (int)json_integer_value(bp);
        r->inclusive = json_is_true(json_object_get(v, "inclusive"));
        r->applies_to_shipping = json_is_true(json_object_get(v, "applies_to_shipping"));
    }
    e->fetched_ms = gr_time_mono_ms();
    if (e->fetched_ms == 0)
        e->fetched_ms = 1;
    return 0;
}

/* The rate of @e for @region: the region's own, else the country-wide one. */
static bool pick(const struct tax_entry *e, const char *region, struct tax_rate *out)
{
    const struct tax_rate *wide = NULL;

    for (size_t i = 0; i < e->n; i++) {
        if (region != NULL && region[0] != '\0' && strcmp(e->rates[i].region, region) == 0) {
            *out = e->rates[i];
            return true;
        }
        if (e->rates[i].region[0] == '\0')
            wide = &e->rates[i];
    }
    if (wide != NULL)
        *out = *wide;
    return wide != NULL;
}

int up_tax_rate(struct saga_ctx *s, const char *country, const char *region, struct tax_rate *out,
                bool *found)
{
    struct order_app *app = s->app;
    struct tax_entry *fresh = gr_xcalloc(1, sizeof(*fresh));
    int64_t now = gr_time_mono_ms();
    size_t slot = ORDER_TAX_MAX, oldest = 0;
    bool have = false;
    int rc;

    *found = false;
    /* A fresh enough cached entry is used without a call. */
    pthread_mutex_lock(&app->tax_mu);
    for (size_t i = 0; i < ORDER_TAX_MAX; i++) {
        if (app->tax[i].fetched_ms != 0 && strcmp(app->tax[i].country, country) == 0) {
            slot = i;
            break;
        }
    }
    if (slot < ORDER_TAX_MAX && now - app->tax[slot].fetched_ms < app->tax_fresh_s * 1000) {
        *found = pick(&app->tax[slot], region, out);
        have = true;
    }
    pthread_mutex_unlock(&app->tax_mu);
    if (have) {
        gr_free(fresh);
        return 0;
    }
    rc = fetch_rates(s, country, fresh);
    pthread_mutex_lock(&app->tax_mu);
    slot = ORDER_TAX_MAX;
    for (size_t i = 0; i < ORDER_TAX_MAX; i++) {
        if (app->tax[i].fetched_ms != 0 && strcmp(app->tax[i].country, country) == 0)
            slot = i;
        if (app->tax[i].fetched_ms < app->tax[oldest].fetched_ms)
            oldest = i;
    }
    if (rc == 0) {
        app->tax[slot < ORDER_TAX_MAX ? slot : oldest] = *fresh;
        *found = pick(fresh, region, out);
    } else if (slot < ORDER_TAX_MAX &&
               gr_time_mono_ms() - app->tax[slot].fetched_ms < app->tax_max_age_s * 1000) {
        /* 21 is down: rates fetched within the last 24 h are still used (decision 15). */
        *found = pick(&app->tax[slot], region, out);
        rc = 0;
    }
    pthread_mutex_unlock(&app->tax_mu);
    gr_free(fresh);
    return rc;
}
