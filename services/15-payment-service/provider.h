/*
 * provider.h - the payment provider adapter (SERVICES §15 Integrations, decision 21).
 *
 * One small interface, two implementations: `test` (provider_test.c, a built-in simulator that
 * never moves money: livemode false everywhere) and `stripe` (provider_stripe.c, Stripe's
 * form-encoded REST API over libcurl; STRIPE_API_BASE points it at a double in tests). Calls
 * are made outside any DB transaction. Every mutating call carries an idempotency key derived
 * from our own ids (a payment's or refund's id), so a call repeated after a crash or a timeout
 * is one operation at the provider.
 *
 * Results: 0 with @out filled when the provider answered with a PaymentIntent (a declined card
 * is such an answer: status "requires_payment_method" and a failure code); GR_ECONFLICT when
 * the provider refuses the transition (the intent is in another state); GR_EVALID when it
 * rejects the request (unknown token); GR_EUNAVAIL when it cannot be reached or answers 5xx.
 *
 * retrieve (may be NULL) reads an intent's current state without changing it: the reconciler
 * (reconcile.c) asks it about a payment left in `processing` by a crash. Without it (the
 * stateless simulator) the reconciler repeats the call that was in flight, with the same
 * idempotency key, which for a deterministic provider is the same question.
 */
#ifndef PAY_PROVIDER_H
#define PAY_PROVIDER_H

#include <stdbool.h>

#define PAY_REF_MAX  128 /* bytes of a provider id (pi_…, re_…, pm_…) */
#define PAY_CODE_MAX 64  /* bytes of a failure code */

/* A PaymentIntent as the provider reports it. */
struct pay_intent {
    char id[PAY_REF_MAX];
    char status[32]; /* Stripe's: requires_payment_method, requires_action, requires_capture,
                      * processing, succeeded, canceled */
    long long amount_received;
    long long amount_capturable;
    char failure_code[PAY_CODE_MAX]; /* "card_declined" … ("" when none) */
    bool livemode;
};

struct pay_refund_res {
    char id[PAY_REF_MAX];
    char status[32]; /* succeeded, pending, failed */
    char failure_code[PAY_CODE_MAX];
};

/* What a card token resolves to. */
struct pay_card {
    char ref[PAY_REF_MAX]; /* what later calls are given: pm_… (stripe) or the token (test) */
    char brand[32];
    char last4[8];
    char fingerprint[64];
};

struct pay_create {
    const char *payment_id; /* ours: metadata[payment_id] and the idempotency key */
    long long amount;
    const char *currency;
    const char *method; /* pay_card.ref or a tok_… token */
    bool manual_capture;
};

struct pay_provider {
    const char *name; /* "test", "stripe" */
    bool livemode;
    int (*tokenize)(const struct pay_provider *p, const char *token, struct pay_card *out);
    int (*create)(const struct pay_provider *p, const struct pay_create *in,
                  struct pay_intent *out);
    int (*confirm)(const struct pay_provider *p, const char *ref, const char *idem,
                   bool manual_capture, long long amount, struct pay_intent *out);
    int (*capture)(const struct pay_provider *p, const char *ref, long long amount,
                   const char *idem, struct pay_intent *out);
    int (*cancel)(const struct pay_provider *p, const char *ref, const char *idem,
                  struct pay_intent *out);
    int (*refund)(const struct pay_provider *p, const char *ref, long long amount,
                  const char *refund_id, struct pay_refund_res *out);
    int (*retrieve)(const struct pay_provider *p, const char *ref, struct pay_intent *out);
    void *state;
};

/** The built-in simulator. */
void pay_provider_test(struct pay_provider *p);
/**
 * The Stripe adapter against @base ("https://api.stripe.com" or a double) with secret key
 * @key (borrowed: both must outlive the provider).
 */
void pay_provider_stripe(struct pay_provider *p, const char *base, const char *key);

#endif
