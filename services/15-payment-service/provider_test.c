/*
 * provider_test.c - PAYMENT_PROVIDER=test (decision 21): a built-in simulator that moves no
 * money. It knows three card tokens, like Stripe's test mode: tok_visa (approved),
 * tok_chargeDeclined (declined: card_declined) and tok_threeDSecureRequired (needs a 3-D Secure
 * step: requires_action until confirmed). Everything it reports has livemode false. It is
 * stateless: ids are derived from ours, so a repeated call gives the same answer.
 */
#include <stdio.h>
#include <string.h>

#include "gr/status.h"
#include "provider.h"

struct tok {
    const char *token, *last4, *fingerprint;
};

static const struct tok TOKENS[] = {
    { "tok_visa", "4242", "fp_test_visa_4242" },
    { "tok_chargeDeclined", "0002", "fp_test_visa_0002" },
    { "tok_threeDSecureRequired", "3220", "fp_test_visa_3220" },
};

static const struct tok *find(const char *token)
{
    for (size_t i = 0; i < sizeof(TOKENS) / sizeof(TOKENS[0]); i++) {
        if (strcmp(TOKENS[i].token, token) == 0)
            return &TOKENS[i];
    }
    return NULL;
}

/* "<prefix><our id without dashes>" into @out. */
static void derive(char out[PAY_REF_MAX], const char *prefix, const char *id)
{
    size_t n = (size_t)snprintf(out, PAY_REF_MAX, "%s", prefix);

    for (; *id && n + 1 < PAY_REF_MAX; id++) {
        if (*id != '-')
            out[n++] = *id;
    }
    out[n] = '\0';
}

static void set(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s);
}

static int t_tokenize(const struct pay_provider *p, const char *token, struct pay_card *out)
{
    const struct tok *t = find(token);

    (void)p;
    if (!t)
        return GR_EVALID;
    set(out->ref, sizeof(out->ref), t->token);
    set(out->brand, sizeof(out->brand), "visa");
    set(out->last4, sizeof(out->last4), t->last4);
    set(out->fingerprint, sizeof(out->fingerprint), t->fingerprint);
    return 0;
}

static void approved(struct pay_intent *out, bool manual, long long amount)
{
    set(out->status, sizeof(out->status), manual ? "requires_capture" : "succeeded");
    out->amount_capturable = manual ? amount : 0;
    out->amount_received = manual ? 0 : amount;
}

static int t_create(const struct pay_provider *p, const struct pay_create *in,
                    struct pay_intent *out)
{
    const struct tok *t = find(in->method);

    (void)p;
    memset(out, 0, sizeof(*out));
    if (!t)
        return GR_EVALID;
    derive(out->id, "pi_test_", in->payment_id);
    if (strcmp(t->token, "tok_chargeDeclined") == 0) {
        set(out->status, sizeof(out->status), "requires_payment_method");
        set(out->failure_code, sizeof(out->failure_code), "card_declined");
    } else if (strcmp(t->token, "tok_threeDSecureRequired") == 0) {
        set(out->status, sizeof(out->status), "requires_action");
    } else {
        approved(out, in->manual_capture, in->amount);
    }
    return 0;
}

static int t_confirm(const struct pay_provider *p, const char *ref, const char *idem, bool manual,
                     long long amount, struct pay_intent *out)
{
    (void)p;
    (void)idem;
    memset(out, 0, sizeof(*out));
    set(out->id, sizeof(out->id), ref);
    approved(out, manual, amount); /* the simulated customer passes the 3-D Secure step */
    return 0;
}

static int t_capture(const struct pay_provider *p, const char *ref, long long amount,
                     const char *idem, struct pay_intent *out)
{
    (void)p;
    (void)idem;
    memset(out, 0, sizeof(*out));
    set(out->id, sizeof(out->id), ref);
    approved(out, false, amount);
    return 0;
}

static int t_cancel(const struct pay_provider *p, const char *ref, const char *idem,
                    struct pay_intent *out)
{
    (void)p;
    (void)idem;
    memset(out, 0, sizeof(*out));
    set(out->id, sizeof(out->id), ref);
    set(out->status, sizeof(out->status), "canceled");
    return 0;
}

static int t_refund(const struct pay_provider *p, const char *ref, long long amount,
                    const char *refund_id, struct pay_refund_res *out)
{
    (void)p;
    (void)ref;
    (void)amount;
    memset(out, 0, sizeof(*out));
    derive(out->id, "re_test_", refund_id);
    set(out->status, sizeof(out->status), "succeeded");
    return 0;
}

void pay_provider_test(struct pay_provider *p)
{
    memset(p, 0, sizeof(*p));
    p->name = "test";
    p->livemode = false;
    p->tokenize = t_tokenize;
    p->create = t_create;
    p->confirm = t_confirm;
    p->capture = t_capture;
    p->cancel = t_cancel;
    p->refund = t_refund;
}
