/*
 * provider_stripe.c - PAYMENT_PROVIDER=stripe: Stripe's REST API (form-encoded requests, JSON
 * answers) over libcurl. PaymentIntents are created and confirmed in one call
 * (confirm=true), then confirmed again after a 3-D Secure step, captured or cancelled; refunds
 * go to /v1/refunds; card tokens become PaymentMethods. Each mutating call sends an
 * Idempotency-Key derived from our ids, so a retry after a timeout is one operation at Stripe.
 * The secret key only ever appears in the Authorization header, never in a log.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "gr/buf.h"
#include "gr/log.h"
#include "gr/status.h"
#include "provider.h"

#define CALL_TIMEOUT_MS 10000
#define CONNECT_MS      3000
#define RESP_MAX        (256 * 1024)
#define FORM_MAX        4096

struct stripe {
    const char *base;
    const char *key;
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    if (gr_buf_append(ud, p, size * nmemb) < 0)
        return 0;
    return size * nmemb;
}

/* Appends "&name=value" (value URL-encoded) to @form. */
static void field(CURL *c, struct gr_buf *form, const char *name, const char *value)
{
    char *esc = curl_easy_escape(c, value, 0);

    if (form->len > 0)
        (void)gr_buf_putc(form, '&');
    (void)gr_buf_printf(form, "%s=%s", name, esc ? esc : "");
    curl_free(esc);
}

static void field_int(CURL *c, struct gr_buf *form, const char *name, long long v)
{
    char num[32];

    snprintf(num, sizeof(num), "%lld", v);
    field(c, form, name, num);
}

/*
 * POSTs the form built by the caller on @c to base + @path (a GET when @form is NULL); the
 * answer's JSON in *@out (caller decrefs) and its HTTP status in *@status. GR_EUNAVAIL when
 * Stripe cannot be reached or the answer is not JSON.
 */
static int post(const struct stripe *s, CURL *c, const char *path, struct gr_buf *form,
                const char *idem, json_t **out, long *status)
{
    struct curl_slist *hdrs = NULL;
    struct gr_buf body;
    char url[512], auth[300], ik[300];
    CURLcode res;
    int rc = GR_EUNAVAIL;

    *out = NULL;
    *status = 0;
    gr_buf_init(&body, RESP_MAX);
    snprintf(url, sizeof(url), "%s%s", s->base, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", s->key);
    hdrs = curl_slist_append(hdrs, auth);
    if (form)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/x-www-form-urlencoded");
    hdrs = curl_slist_append(hdrs, "Stripe-Version: 2024-06-20");
    if (idem) {
        snprintf(ik, sizeof(ik), "Idempotency-Key: %s", idem);
        hdrs = curl_slist_append(hdrs, ik);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)CALL_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gravity-payment-service");
    if (form) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form->len ? gr_buf_cstr(form) : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)form->len);
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    res = curl_easy_perform(c);
    if (res != CURLE_OK) {
        gr_log_warn("stripe call failed", "path", path, "error", curl_easy_strerror(res));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    *out = json_loadb(body.len ? gr_buf_cstr(&body) : "", body.len, 0, NULL);
    if (!*out || *status >= 500) {
        gr_log_warn("stripe answered with an error", "path", path);
        json_decref(*out);
        *out = NULL;
        goto out;
    }
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    gr_buf_release(&body);
    return rc;
}

static void copy(char *dst, size_t cap, json_t *v)
{
    snprintf(dst, cap, "%s", json_is_string(v) ? json_string_value(v) : "");
}

static void parse_intent(json_t *o, struct pay_intent *out)
{
    json_t *err = json_object_get(o, "last_payment_error");

    memset(out, 0, sizeof(*out));
    copy(out->id, sizeof(out->id), json_object_get(o, "id"));
    copy(out->status, sizeof(out->status), json_object_get(o, "status"));
    out->amount_received = json_integer_value(json_object_get(o, "amount_received"));
    out->amount_capturable = json_integer_value(json_object_get(o, "amount_capturable"));
    out->livemode = json_is_true(json_object_get(o, "livemode"));
    if (json_is_object(err)) {
        json_t *code = json_object_get(err, "decline_code");

        copy(out->failure_code, sizeof(out->failure_code),
             json_is_string(code) ? code : json_object_get(err, "code"));
    }
}

/* Maps an answer about a PaymentIntent: 200, or a 402 card error carrying the intent. */
static int intent_answer(json_t *j, long status, struct pay_intent *out)
{
    json_t *err = json_object_get(j, "error");

    if (status == 200) {
        parse_intent(j, out);
        return out->id[0] ? 0 : GR_EUNAVAIL;
    }
    if (status == 402 && json_is_object(json_object_get(err, "payment_intent"))) {
        parse_intent(json_object_get(err, "payment_intent"), out);
        if (!out->failure_code[0])
            copy(out->failure_code, sizeof(out->failure_code), json_object_get(err, "code"));
        return 0;
    }
    if (status == 400 && json_is_string(json_object_get(err, "code")) &&
        strcmp(json_string_value(json_object_get(err, "code")),
               "payment_intent_unexpected_state") == 0)
        return GR_ECONFLICT;
    if (status == 409)
        return GR_ECONFLICT;
    if (status == 400 || status == 402 || status == 404)
        return GR_EVALID;
    gr_log_warn("stripe refused the call", "status", status == 401 ? "401" : "other");
    return GR_EUNAVAIL;
}

static int call_intent(const struct pay_provider *p, const char *path, struct gr_buf *form, CURL *c,
                       const char *idem, struct pay_intent *out)
{
    json_t *j = NULL;
    long status = 0;
    int rc = post(p->state, c, path, form, idem, &j, &status);

    if (rc == 0)
        rc = intent_answer(j, status, out);
    json_decref(j);
    return rc;
}

static bool ref_ok(const char *ref)
{
    size_t n = strlen(ref);

    if (n == 0 || n >= 100)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = ref[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return false;
    }
    return true;
}

static int s_tokenize(const struct pay_provider *p, const char *token, struct pay_card *out)
{
    CURL *c = curl_easy_init();
    struct gr_buf form;
    json_t *j = NULL, *card;
    long status = 0;
    int rc = GR_EUNAVAIL;

    memset(out, 0, sizeof(*out));
    if (!c)
        return GR_EUNAVAIL;
    gr_buf_init(&form, FORM_MAX);
    field(c, &form, "type", "card");
    field(c, &form, "card[token]", token);
    rc = post(p->state, c, "/v1/payment_methods", &form, NULL, &j, &status);
    if (rc == 0 && status != 200)
        rc = status == 400 || status == 402 || status == 404 ? GR_EVALID : GR_EUNAVAIL;
    if (rc == 0) {
        card = json_object_get(j, "card");
        copy(out->ref, sizeof(out->ref), json_object_get(j, "id"));
        copy(out->brand, sizeof(out->brand), json_object_get(card, "brand"));
        copy(out->last4, sizeof(out->last4), json_object_get(card, "last4"));
        copy(out->fingerprint, sizeof(out->fingerprint), json_object_get(card, "fingerprint"));
        if (!ref_ok(out->ref) || !out->fingerprint[0])
            rc = GR_EUNAVAIL;
    }
    json_decref(j);
    gr_buf_release(&form);
    curl_easy_cleanup(c);
    return rc;
}

static int s_create(const struct pay_provider *p, const struct pay_create *in,
                    struct pay_intent *out)
{
    CURL *c = curl_easy_init();
    struct gr_buf form;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!c)
        return GR_EUNAVAIL;
    gr_buf_init(&form, FORM_MAX);
    field_int(c, &form, "amount", in->amount);
    field(c, &form, "currency", in->currency);
    if (strncmp(in->method, "tok_", 4) == 0) {
        field(c, &form, "payment_method_data[type]", "card");
        field(c, &form, "payment_method_data[card][token]", in->method);
    } else {
        field(c, &form, "payment_method", in->method);
    }
    field(c, &form, "confirm", "true");
    field(c, &form, "capture_method", in->manual_capture ? "manual" : "automatic");
    field(c, &form, "payment_method_types[]", "card");
    field(c, &form, "metadata[payment_id]", in->payment_id);
    rc = call_intent(p, "/v1/payment_intents", &form, c, in->payment_id, out);
    gr_buf_release(&form);
    curl_easy_cleanup(c);
    return rc;
}

/* POST /v1/payment_intents/{ref}/{verb} with an optional amount field. */
static int intent_verb(const struct pay_provider *p, const char *ref, const char *verb,
                       const char *amount_field, long long amount, const char *idem,
                       struct pay_intent *out)
{
    CURL *c;
    struct gr_buf form;
    char path[256];
    int rc;

    memset(out, 0, sizeof(*out));
    if (!ref_ok(ref))
        return GR_EVALID;
    c = curl_easy_init();
    if (!c)
        return GR_EUNAVAIL;
    gr_buf_init(&form, FORM_MAX);
    snprintf(path, sizeof(path), "/v1/payment_intents/%s/%s", ref, verb);
    if (amount_field)
        field_int(c, &form, amount_field, amount);
    rc = call_intent(p, path, &form, c, idem, out);
    gr_buf_release(&form);
    curl_easy_cleanup(c);
    return rc;
}

static int s_confirm(const struct pay_provider *p, const char *ref, const char *idem, bool manual,
                     long long amount, struct pay_intent *out)
{
    (void)manual;
    (void)amount;
    return intent_verb(p, ref, "confirm", NULL, 0, idem, out);
}

static int s_capture(const struct pay_provider *p, const char *ref, long long amount,
                     const char *idem, struct pay_intent *out)
{
    return intent_verb(p, ref, "capture", "amount_to_capture", amount, idem, out);
}

static int s_cancel(const struct pay_provider *p, const char *ref, const char *idem,
                    struct pay_intent *out)
{
    return intent_verb(p, ref, "cancel", NULL, 0, idem, out);
}

static int s_refund(const struct pay_provider *p, const char *ref, long long amount,
                    const char *refund_id, struct pay_refund_res *out)
{
    CURL *c;
    struct gr_buf form;
    json_t *j = NULL;
    long status = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!ref_ok(ref))
        return GR_EVALID;
    c = curl_easy_init();
    if (!c)
        return GR_EUNAVAIL;
    gr_buf_init(&form, FORM_MAX);
    field(c, &form, "payment_intent", ref);
    field_int(c, &form, "amount", amount);
    field(c, &form, "metadata[refund_id]", refund_id);
    rc = post(p->state, c, "/v1/refunds", &form, refund_id, &j, &status);
    if (rc == 0 && status != 200)
        rc = status == 400 || status == 402 || status == 404 ? GR_EVALID
             : status == 409                                 ? GR_ECONFLICT
                                                             : GR_EUNAVAIL;
    if (rc == 0) {
        copy(out->id, sizeof(out->id), json_object_get(j, "id"));
        copy(out->status, sizeof(out->status), json_object_get(j, "status"));
        copy(out->failure_code, sizeof(out->failure_code), json_object_get(j, "failure_reason"));
        if (!out->id[0])
            rc = GR_EUNAVAIL;
    }
    json_decref(j);
    gr_buf_release(&form);
    curl_easy_cleanup(c);
    return rc;
}

/* GET /v1/payment_intents/{ref}: the intent as Stripe has it now (no idempotency key: a read). */
static int s_retrieve(const struct pay_provider *p, const char *ref, struct pay_intent *out)
{
    CURL *c;
    char path[256];
    int rc;

    memset(out, 0, sizeof(*out));
    if (!ref_ok(ref))
        return GR_EVALID;
    c = curl_easy_init();
    if (!c)
        return GR_EUNAVAIL;
    snprintf(path, sizeof(path), "/v1/payment_intents/%s", ref);
    rc = call_intent(p, path, NULL, c, NULL, out);
    curl_easy_cleanup(c);
    return rc;
}

static struct stripe stripe_state;

void pay_provider_stripe(struct pay_provider *p, const char *base, const char *key)
{
    memset(p, 0, sizeof(*p));
    stripe_state.base = base;
    stripe_state.key = key;
    p->name = "stripe";
    p->livemode = strncmp(key, "sk_live_", 8) == 0;
    p->tokenize = s_tokenize;
    p->create = s_create;
    p->confirm = s_confirm;
    p->capture = s_capture;
    p->cancel = s_cancel;
    p->refund = s_refund;
    p->retrieve = s_retrieve;
    p->state = &stripe_state;
}
