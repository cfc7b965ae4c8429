/*
 * upstream.c - order-service's calls to other services (SERVICES §16, decision 6: directly,
 * service to service, with the process's client-credentials token): prices from 17, tax rates
 * from 21 (cached, decision 15), and the saga's calls to 22, 18 and 15 (saga.c).
 *
 * The calls go through gr/client.h (gr_main's process client): peers product-service,
 * inventory-service, invoice-service (tax rates), discount-service and payment-service, each
 * overridden by PRODUCT_URL, INVENTORY_URL, TAX_URL (else INVOICE_URL), DISCOUNT_URL or
 * PAYMENT_URL when set, else found through 02 when the process has DISCOVERY_URL, else the seed
 * ports. Each call has the deadline ORDER_CALL_TIMEOUT_MS (the seed's 5 s), passes the request
 * id and traceparent on, caps the answer at ORDER_RESP_MAX bytes and reuses the calling
 * thread's keep-alive connections. Tokens and bodies are never logged.
 */
#include <stdio.h>
#include <string.h>

#include "gr/buf.h"
#include "gr/client.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/time.h"
#include "order.h"

int up_peers_make(struct order_app *app, const char *tax_env)
{
    struct gr_client *c = gr_client_default();
    char err[256];
    int rc = 0;

    if (c == NULL) { /* not under gr_main (it always has one): a client of our own */
        struct gr_client_opts o = { .user_agent = "gravity-order-service" };

        rc = gr_client_new(&o, &app->own_client);
        c = app->own_client;
        if (rc < 0) {
            fprintf(stderr, "16-order-service: no upstream client: %s\n", gr_err_name(rc));
            return rc;
        }
    }
    rc = gr_client_peer(c, "product-service", "PRODUCT_URL", app->product_url, &app->product, err,
                        sizeof(err));
    if (rc == 0)
        rc = gr_client_peer(c, "inventory-service", "INVENTORY_URL", app->inventory_url,
                            &app->inventory, err, sizeof(err));
    if (rc == 0)
        rc = gr_client_peer(c, "invoice-service", tax_env, app->tax_url, &app->tax_peer, err,
                            sizeof(err));
    if (rc == 0)
        rc = gr_client_peer(c, "discount-service", "DISCOUNT_URL", app->discount_url,
                            &app->discount, err, sizeof(err));
    if (rc == 0)
        rc = gr_client_peer(c, "payment-service", "PAYMENT_URL", app->payment_url, &app->payment,
                            err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "16-order-service: %s\n", rc == GR_ECONFIG ? err : gr_err_name(rc));
        return GR_ECONFIG;
    }
    return 0;
}

void up_peers_free(struct order_app *app)
{
    gr_client_free(app->own_client);
    app->own_client = NULL;
}

int up_call(struct saga_ctx *s, const char *what, const char *method, struct gr_peer *p,
            const char *path, const char *idem_key, json_t *body, struct upstream *u)
{
    struct gr_call_res res;
    int rc;

    u->status = 0;
    u->json = NULL;
    u->problem = NULL;
    if (p == NULL)
        return GR_EUNAVAIL;
    rc = gr_client_call(p, s->a,
                        &(struct gr_call){ .method = method,
                                           .path = path,
                                           .json = body,
                                           .idem_key = idem_key,
                                           .request_id = s->request_id,
                                           .traceparent = s->traceparent,
                                           .timeout_ms = (int)s->app->timeout_ms,
                                           .resp_max = ORDER_RESP_MAX,
                                           .what = what },
                        &res);
    if (rc < 0)
        return rc == GR_ETIMEOUT ? GR_ETIMEOUT : GR_EUNAVAIL;
    u->status = res.status;
    u->json = res.json;
    u->problem = res.problem;
    return 0;
}

int up_price(struct saga_ctx *s, const char *const *ids, size_t n, struct variant_price *out)
{
    struct gr_buf path = GR_BUF_INIT;
    struct upstream u;
    json_t *data, *v;
    size_t i;
    int rc;

    memset(out, 0, n * sizeof(*out));
    if (n == 0)
        return 0;
    gr_buf_init(&path, 8192);
    gr_buf_printf(&path, "/api/v1/products/variants?ids=");
    for (i = 0; i < n; i++)
        gr_buf_printf(&path, "%s%s", i ? "," : "", ids[i]);
    rc = up_call(s, "product prices", "GET", s->app->product, gr_buf_cstr(&path), NULL, NULL, &u);
    gr_buf_release(&path);
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
    rc = up_call(s, "tax rates", "GET", s->app->tax_peer,
                 gr_arena_printf(s->a, "/api/v1/tax-rates?country=%s&limit=100", country), NULL,
                 NULL, &u);
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
