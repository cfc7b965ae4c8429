/*
 * webhooks.c - POST /api/v1/payments/webhooks/{provider}: events from the payment provider,
 * authenticated by their signature instead of a JWT (SERVICES §15).
 *
 * Stripe's scheme: header `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=…]`, where v1 is
 * HMAC-SHA256(secret, "<t>.<raw body>"). A missing or wrong signature, or a timestamp more
 * than PAY_WEBHOOK_TOL seconds from the library clock, is a 400 (replays of old events are
 * refused). The secret is STRIPE_WEBHOOK_SECRET (PAYMENT_WEBHOOK_SECRET for the simulator).
 *
 * An event applies once: its id is the primary key of provider_events, inserted in the same
 * transaction as its effect; a duplicate answers 200 without doing anything. The payment is
 * found by metadata.payment_id (set at creation, so an event that arrives before the API's
 * own reply finds it) or by the intent's id. Effects go through pay_apply, which ignores a
 * transition already made, so the final state is the same whichever comes first.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "gr/service.h"
#include "pay.h"

#define SIG_MAX 2048
#define EVT_MAX 255

static int bad_sig(struct gr_req *req, struct gr_resp *resp, const char *why)
{
    return gr_resp_problem(req, resp, GR_EINVAL, "invalid_signature", "%s", why);
}

/* Checks the Stripe-Signature header against @secret and the raw body. */
static int verify(struct gr_req *req, struct gr_resp *resp, const char *secret)
{
    const char *h = gr_req_header(req, "Stripe-Signature");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1], *end;
    const char *p, *t = NULL;
    size_t tlen = 0;
    long long ts;
    bool match = false, any = false;
    char *signed_txt;
    size_t signed_len;

    if (!h || strlen(h) > SIG_MAX)
        return bad_sig(req, resp, "the Stripe-Signature header is missing");
    for (p = h; *p;) {
        const char *item = p, *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);

        if (n > 2 && strncmp(item, "t=", 2) == 0) {
            t = item + 2;
            tlen = n - 2;
        }
        p += n + (comma ? 1 : 0);
    }
    if (!t || tlen == 0 || tlen > 12)
        return bad_sig(req, resp, "the Stripe-Signature header has no timestamp");
    ts = strtoll(t, &end, 10);
    if (end != t + tlen || ts <= 0)
        return bad_sig(req, resp, "the Stripe-Signature timestamp is not a number");
    if (llabs((long long)gr_time_now_s() - ts) > PAY_WEBHOOK_TOL)
        return bad_sig(req, resp, "the Stripe-Signature timestamp is outside the tolerance");

    signed_len = tlen + 1 + req->body.len;
    signed_txt = gr_arena_alloc(req->arena, signed_len + 1);
    memcpy(signed_txt, t, tlen);
    signed_txt[tlen] = '.';
    if (req->body.len)
        memcpy(signed_txt + tlen + 1, req->body.ptr, req->body.len);
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)signed_txt,
              signed_len, mac, &maclen))
        return GR_EINTERNAL;
    for (unsigned i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    for (p = h; *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);

        if (n > 3 && strncmp(p, "v1=", 3) == 0) {
            any = true;
            if (n - 3 == 2 * maclen && CRYPTO_memcmp(p + 3, hex, 2 * maclen) == 0)
                match = true;
        }
        p += n + (comma ? 1 : 0);
    }
    if (!any || !match)
        return bad_sig(req, resp, "the signature does not match");
    return 0;
}

struct hook {
    const char *provider, *id, *type;
    json_t *obj;
    bool duplicate, applied;
};

static const char *str(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int hook_tx(struct gr_req *req, void *arg)
{
    struct hook *h = arg;
    struct gr_db_rows *r;
    const char *pid = str(json_object_get(h->obj, "metadata"), "payment_id");
    const char *ref = str(h->obj, "id"), *to = NULL, *failure = NULL;
    char now[GR_TIME_STR_LEN];
    long long captured = 0;
    int rc;

    h->duplicate = h->applied = false;
    rc = gr_db_query(req->db, req->arena, "SELECT 1 FROM provider_events WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(h->id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) > 0) {
        h->duplicate = true;
        return 0;
    }
    if (!pid || !gr_id_valid(pid, strlen(pid)))
        pid = NULL;
    if (!pid && ref) {
        rc = gr_db_query(req->db, req->arena, "SELECT id FROM payments WHERE provider_ref = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(ref) }, 1, &r);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(r) == 1)
            pid = gr_db_text(r, 0, 0);
    }
    if (pid) {
        rc = gr_db_query(req->db, req->arena, "SELECT id FROM payments WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(pid) }, 1, &r);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(r) != 1)
            pid = NULL;
    }
    pay_now(now);
    rc = gr_db_exec(req->db,
                    "INSERT INTO provider_events (id, provider, type, payment_id, received_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    (struct gr_db_val[]){ GR_DB_TEXT(h->id), GR_DB_TEXT(h->provider),
                                          GR_DB_TEXT(h->type), GR_DB_TEXT(pid), GR_DB_TEXT(now) },
                    5, NULL);
    if (rc < 0 || !pid)
        return rc;
    if (strcmp(h->type, "payment_intent.succeeded") == 0) {
        to = "succeeded";
        captured = json_integer_value(json_object_get(h->obj, "amount_received"));
    } else if (strcmp(h->type, "payment_intent.amount_capturable_updated") == 0) {
        to = "requires_capture";
    } else if (strcmp(h->type, "payment_intent.payment_failed") == 0) {
        json_t *e = json_object_get(h->obj, "last_payment_error");

        to = "failed";
        failure = str(e, "decline_code") ? str(e, "decline_code") : str(e, "code");
    } else if (strcmp(h->type, "payment_intent.requires_action") == 0) {
        to = "requires_action";
    } else if (strcmp(h->type, "payment_intent.canceled") == 0) {
        to = "cancelled";
        failure = str(h->obj, "cancellation_reason");
    }
    if (!to)
        return 0;
    return pay_apply(req->db, req->arena, pid, to, captured, ref, failure, "webhook", h->id,
                     gr_req_header(req, "traceparent"), &h->applied);
}

int webhooks_receive(struct gr_req *req, struct gr_resp *resp)
{
    struct pay_app *app = req->app;
    struct hook h = { .provider = gr_req_param(req, "provider") };
    json_t *doc;
    int rc;

    if (strcmp(h.provider, app->provider.name) != 0)
        return gr_resp_problem(req, resp, GR_ENOTFOUND, NULL, "no webhooks for provider '%s'",
                               strcmp(h.provider, "stripe") == 0 ? "stripe" : "other");
    if (!app->webhook_secret)
        return gr_resp_problem(req, resp, GR_EUNAVAIL, "webhooks_not_configured",
                               "no webhook signing secret is configured");
    rc = verify(req, resp, app->webhook_secret);
    if (rc < 0)
        return rc;
    rc = gr_json_parse(req->arena, req->body.ptr ? req->body.ptr : "", req->body.len, &doc,
                       &resp->errs);
    if (rc < 0)
        return gr_resp_problem(req, resp, GR_EINVAL, NULL, "the body is not valid JSON");
    h.id = str(doc, "id");
    h.type = str(doc, "type");
    h.obj = json_object_get(json_object_get(doc, "data"), "object");
    if (!h.id || !h.type || !json_is_object(h.obj) || strlen(h.id) > EVT_MAX ||
        strlen(h.type) > EVT_MAX)
        return gr_resp_problem(req, resp, GR_EINVAL, NULL,
                               "an event needs id, type and data.object");
    rc = gr_req_tx(req, hook_tx, &h);
    if (rc == GR_ECONFLICT) { /* the same event, delivered twice at once */
        h.duplicate = true;
        rc = 0;
    }
    if (rc < 0)
        return rc;
    gr_resp_json(resp, 200,
                 json_pack("{s:b, s:b, s:b}", "received", 1, "duplicate", h.duplicate, "applied",
                           h.applied));
    return 0;
}
