/*
 * upstream.c - cart-service's calls to other services (SERVICES §19, decision 6: directly,
 * service to service, with client-credentials tokens): prices from 17-product-service, the
 * coupon preview from 22-discount-service and the order at 16-order-service.
 *
 * The calls go through gr/client.h: peers product-service, discount-service and order-service,
 * each overridden by PRODUCT_URL, DISCOUNT_URL or ORDER_URL when set, else found through 02
 * when the process has DISCOVERY_URL, else the seed ports (the defaults service.c read). Each
 * call has the configured deadline (CART_UPSTREAM_TIMEOUT_MS, the seed's 5 s), passes the
 * request id and traceparent on, caps the answer at CART_RESP_MAX bytes and reuses this
 * thread's keep-alive connections. The client is gr_main's process client
 * (gr_client_default). Tokens and bodies are never logged.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cart.h"
#include "gr/auth.h"
#include "gr/client.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/svctoken.h"

/* Made once, on the first call (the init hook has no client to give yet). */
static pthread_mutex_t peers_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gr_peer *product_peer, *discount_peer, *order_peer;
static bool peers_made; /* under peers_mu */

static int make_peers(struct gr_req *req)
{
    const struct cart_app *app = req->app;
    struct gr_client *c = gr_client_default();
    char err[256];
    int rc = 0;

    pthread_mutex_lock(&peers_mu);
    if (peers_made) {
        pthread_mutex_unlock(&peers_mu);
        return 0;
    }
    if (c == NULL) /* gr_main makes it before init: only a test harness without gr_main */
        rc = GR_EUNAVAIL;
    if (rc == 0)
        rc = gr_client_peer(c, "product-service", "PRODUCT_URL", app->product_url, &product_peer,
                            err, sizeof(err));
    if (rc == 0 && app->discount_url != NULL)
        rc = gr_client_peer(c, "discount-service", "DISCOUNT_URL", app->discount_url,
                            &discount_peer, err, sizeof(err));
    if (rc == 0)
        rc = gr_client_peer(c, "order-service", "ORDER_URL", app->order_url, &order_peer, err,
                            sizeof(err));
    if (rc == 0)
        peers_made = true;
    else
        gr_log_error("upstream client not made", "code", gr_err_name(rc));
    pthread_mutex_unlock(&peers_mu);
    return rc < 0 ? GR_EUNAVAIL : 0;
}

void cart_upstream_fini(void)
{
    pthread_mutex_lock(&peers_mu); /* the peers belong to gr_main's client, freed by gr */
    product_peer = discount_peer = order_peer = NULL;
    peers_made = false;
    pthread_mutex_unlock(&peers_mu);
}

/* Reads a peer made by make_peers (NULL: none). */
static struct gr_peer *peer(struct gr_peer *const *p)
{
    struct gr_peer *v;

    pthread_mutex_lock(&peers_mu);
    v = *p;
    pthread_mutex_unlock(&peers_mu);
    return v;
}

/*
 * One request to @p: @method @path with the JSON text @body (NULL: none), as @auth (@bearer
 * for GR_CALL_BEARER, NULL: none) and @idem_key (NULL: none). Fills @u (status, JSON body or
 * NULL). Errors: GR_ETIMEOUT, GR_EUNAVAIL (anything else on the way, an oversized answer
 * included), logged with @what by the client.
 */
static int call(struct gr_req *req, struct gr_peer *p, const char *what, const char *method,
                const char *path, enum gr_call_auth auth, const char *bearer, const char *idem_key,
                const char *body, struct cart_upstream *u)
{
    const struct cart_app *app = req->app;
    struct gr_call_res res;
    int rc;

    u->status = 0;
    u->json = NULL;
    if (p == NULL)
        return GR_EUNAVAIL;
    rc = gr_client_call(p, req->arena,
                        &(struct gr_call){ .method = method,
                                           .path = path,
                                           .body = body,
                                           .idem_key = idem_key,
                                           .auth = auth,
                                           .bearer = bearer,
                                           .req = req,
                                           .timeout_ms = (int)app->timeout_ms,
                                           .resp_max = CART_RESP_MAX,
                                           .what = what },
                        &res);
    if (rc < 0)
        return rc == GR_ETIMEOUT ? GR_ETIMEOUT : GR_EUNAVAIL;
    u->status = res.status;
    u->json = res.json;
    return 0;
}

/* The process's service token (arena copy), or NULL. */
static const char *service_token(struct gr_req *req)
{
    struct gr_svctoken *t = gr_svctoken_default();

    return t != NULL ? gr_svctoken_get(t, req->arena) : NULL;
}

/* The caller's own bearer token, or NULL (the core verified it already). */
static const char *caller_token(struct gr_req *req)
{
    const char *h = gr_req_header(req, "Authorization");

    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0 || req->principal == NULL)
        return NULL;
    return h + 7;
}

/* Tells the token provider that a callee refused @tok, so it renews early. */
static void refused(const char *tok, const struct cart_upstream *u)
{
    struct gr_svctoken *t = gr_svctoken_default();

    if (t != NULL && tok != NULL && u->status == 401)
        gr_svctoken_refused(t, tok);
}

int cart_price_variants(struct gr_req *req, const char *const *ids, size_t n,
                        struct cart_price *out)
{
    struct gr_buf path = GR_BUF_INIT;
    struct cart_upstream u;
    json_t *data, *v;
    size_t i;
    int rc;

    memset(out, 0, n * sizeof(*out));
    if (n == 0)
        return 0;
    rc = make_peers(req);
    if (rc < 0)
        return rc;
    gr_buf_init(&path, 8192);
    gr_buf_puts(&path, "/api/v1/products/variants?ids=");
    for (i = 0; i < n; i++)
        gr_buf_printf(&path, "%s%s", i ? "," : "", ids[i]);
    /* The service token when the process has one (the client renews it on a 401). */
    rc = call(req, peer(&product_peer), "product prices", "GET", gr_buf_cstr(&path),
              GR_CALL_SERVICE, NULL, NULL, NULL, &u);
    gr_buf_release(&path);
    if (rc < 0)
        return rc;
    data = json_object_get(u.json, "data");
    if (u.status != 200 || !json_is_array(data)) {
        gr_log_warn("upstream call failed", "call", "product prices", "error", "unexpected answer");
        return GR_EUNAVAIL;
    }
    json_array_foreach(data, i, v)
    {
        const char *vid = json_string_value(json_object_get(v, "id"));
        const char *ps = json_string_value(json_object_get(v, "product_status"));
        json_t *price = json_object_get(v, "price");
        const char *cur = json_string_value(json_object_get(price, "currency"));
        json_t *amount = json_object_get(price, "amount");

        if (vid == NULL || cur == NULL || !json_is_integer(amount) || !gr_money_currency_valid(cur))
            continue;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(ids[k], vid) != 0)
                continue;
            out[k].found = true;
            out[k].available = !json_is_true(json_object_get(v, "archived")) &&
                               (ps == NULL || strcmp(ps, "active") == 0);
            out[k].product_id = json_string_value(json_object_get(v, "product_id"));
            out[k].sku = json_string_value(json_object_get(v, "sku"));
            if (out[k].sku != NULL && strlen(out[k].sku) > CART_SKU_MAX)
                out[k].sku = NULL;
            out[k].version = json_is_integer(json_object_get(v, "version"))
                                 ? (long long)json_integer_value(json_object_get(v, "version"))
                                 : 0;
            out[k].price.amount = json_integer_value(amount);
            snprintf(out[k].price.currency, sizeof(out[k].price.currency), "%s", cur);
        }
    }
    return 0;
}

int cart_discount_preview(struct gr_req *req, json_t *body, struct cart_upstream *u)
{
    const struct cart_app *app = req->app;
    const char *tok = service_token(req);
    struct gr_str text;
    int rc;

    if (app->discount_url == NULL)
        return GR_EUNAVAIL;
    if (tok == NULL) {
        tok = caller_token(req);
        json_object_del(body, "user_id"); /* 22 takes the caller's own */
    }
    if (tok == NULL)
        return GR_EUNAVAIL;
    rc = make_peers(req);
    if (rc == 0)
        rc = gr_json_dump(req->arena, body, &text);
    if (rc < 0)
        return rc;
    rc = call(req, peer(&discount_peer), "coupon preview", "POST", "/api/v1/coupons/validate",
              GR_CALL_BEARER, tok, NULL, text.ptr, u);
    if (rc == 0)
        refused(tok, u);
    return rc;
}

int cart_order_create(struct gr_req *req, json_t *body, const char *key, struct cart_upstream *u)
{
    struct gr_str text;
    int rc;

    rc = make_peers(req);
    if (rc == 0)
        rc = gr_json_dump(req->arena, body, &text);
    if (rc < 0)
        return rc;
    /* The user's own token (the order is theirs); POST with the key: retried elsewhere once on a
     * broken connection, 16 answers the same order for the same key. */
    return call(req, peer(&order_peer), "create order", "POST", "/api/v1/orders", GR_CALL_BEARER,
                caller_token(req), key, text.ptr, u);
}
