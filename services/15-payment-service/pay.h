/*
 * pay.h - payment-service's own declarations (SERVICES §15): the route table and handlers,
 * the state machine shared by the API, webhooks, the order.cancelled consumer and the sweeper
 * (pay_core.c), and the service state.
 *
 * Provider calls never run inside a DB transaction: a write first records the intent (a
 * payment in `processing`, a pending refund with its amount reserved) in a short
 * transaction, then calls the provider, then applies the answer in another short transaction
 * through pay_apply, which is idempotent: a webhook that already moved the payment makes the
 * API's own application a no-op, and the other way round.
 */
#ifndef PAY_H
#define PAY_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>

#include "gr/bus.h"
#include "gr/db.h"
#include "gr/http.h"
#include "gr/router.h"
#include "gr/time.h"
#include "provider.h"

#define PAY_SOURCE      "/gravity/payment-service"
#define PAY_NROUTES     12
#define PAY_NSUBS       1
#define PAY_REASON_MAX  200
#define PAY_WEBHOOK_TOL 300 /* seconds a webhook signature stays valid */
#define PAY_FRAUD_MAX   3 /* failures per fingerprint per hour allowed; more → fraud_suspected */

#define PAYMENT_COLS                                                                               \
    "id, order_id, user_id, amount, currency, amount_captured, amount_refunded, status, "          \
    "capture_method, payment_method_id, method_ref, fingerprint, last4, provider, provider_ref, "  \
    "failure_code, cancellation_reason, version, authorized_at, created_at, updated_at, "          \
    "idem_caller, idem_key"
enum {
    PC_ID,
    PC_ORDER,
    PC_USER,
    PC_AMOUNT,
    PC_CURRENCY,
    PC_CAPTURED,
    PC_REFUNDED,
    PC_STATUS,
    PC_CAPMETHOD,
    PC_PM,
    PC_METHOD_REF,
    PC_FINGERPRINT,
    PC_LAST4,
    PC_PROVIDER,
    PC_REF,
    PC_FAILURE,
    PC_CANCEL_REASON,
    PC_VERSION,
    PC_AUTHORIZED,
    PC_CREATED,
    PC_UPDATED,
    PC_IDEM_CALLER,
    PC_IDEM_KEY,
};

#define REFUND_COLS                                                                                \
    "id, payment_id, amount, currency, reason, status, origin, provider_ref, failure_code, "       \
    "created_at, updated_at"

struct pay_app {
    struct pay_provider provider;
    const char *webhook_secret; /* NULL: webhooks answer 503 */
    long long auth_ttl_ms;      /* uncaptured authorisations are cancelled after this */
    long long sweep_ms;         /* sweeper period */
    long long reconcile_ms;     /* a payment in processing this long is asked about */
    const char *kill_at;        /* PAYMENT_TEST_KILL_AT: a point to SIGKILL at (tests only) */
    struct gr_db *db;
    pthread_t sweeper;
    bool sweeper_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool kick; /* run a pass now (order.cancelled arrived) */
};

/* A payment row as read with PAYMENT_COLS (the rows and their index). */
struct pay_row {
    struct gr_db_rows *rows;
    size_t i;
};

extern const struct gr_route pay_routes[PAY_NROUTES];
extern const struct gr_sub pay_subs[PAY_NSUBS];

/* ---- pay_core.c -------------------------------------------------------------------------- */
void pay_now(char out[GR_TIME_STR_LEN]);
/** The payment @id (FOR UPDATE semantics come from the engines' transactions); GR_ENOTFOUND. */
GR_MUST_CHECK int pay_load(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                           struct pay_row *out);
/** The payment as its API JSON (new reference). */
json_t *pay_json(const struct pay_row *p, bool livemode);
/** A refund row (REFUND_COLS, row @i) as its API JSON (new reference). */
json_t *pay_refund_json(struct gr_db_rows *r, size_t i);
/** Appends one `transactions` row. */
GR_MUST_CHECK int pay_log(struct gr_db_conn *db, const char *payment_id, const char *refund_id,
                          const char *kind, const char *from, const char *to, long long amount,
                          const char *currency, const char *fingerprint, const char *source,
                          const char *event_id);
/**
 * Our status for a provider intent status ("canceled" → cancelled, a declined
 * requires_payment_method → failed …).
 */
const char *pay_status_of(const struct pay_intent *pi);
/**
 * In the open transaction on @db: moves payment @id to @status (with @captured when it is
 * succeeded, and @provider_ref / @failure when given) if that is a transition the state machine
 * allows from where the payment is now, bumping version, logging a transaction row and
 * emitting the matching event. Same status, or a payment already final: nothing happens and
 * *@changed is false. @source is api|webhook|sweeper|event.
 */
GR_MUST_CHECK int pay_apply(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                            const char *status, long long captured, const char *provider_ref,
                            const char *failure, const char *source, const char *event_id,
                            const char *traceparent, bool *changed);
/** pay_apply that also gives the payment as it now is in *@out when *@changed (the row the
 * write returned: no second read), else out->rows NULL. */
GR_MUST_CHECK int pay_apply_row(struct gr_db_conn *db, struct gr_arena *a, const char *id,
                                const char *status, long long captured, const char *provider_ref,
                                const char *failure, const char *source, const char *event_id,
                                const char *traceparent, bool *changed, struct pay_row *out);
/**
 * Finishes a refund in the open transaction: succeeded (event payment.refunded) or failed
 * (the reserved amount goes back to the payment). No-op unless the refund is pending.
 */
GR_MUST_CHECK int pay_refund_finish(struct gr_db_conn *db, struct gr_arena *a,
                                    const char *refund_id, bool ok, const char *provider_ref,
                                    const char *failure, const char *source,
                                    const char *traceparent);

/* ---- handlers ---------------------------------------------------------------------------- */
int payments_create(struct gr_req *req, struct gr_resp *resp);
int payments_get(struct gr_req *req, struct gr_resp *resp);
int payments_history(struct gr_req *req, struct gr_resp *resp);
int payments_capture(struct gr_req *req, struct gr_resp *resp);
int payments_cancel(struct gr_req *req, struct gr_resp *resp);
int payments_confirm(struct gr_req *req, struct gr_resp *resp);
int payments_refund(struct gr_req *req, struct gr_resp *resp);
int refunds_get(struct gr_req *req, struct gr_resp *resp);
int methods_list(struct gr_req *req, struct gr_resp *resp);
int methods_create(struct gr_req *req, struct gr_resp *resp);
int methods_delete(struct gr_req *req, struct gr_resp *resp);
int webhooks_receive(struct gr_req *req, struct gr_resp *resp);

/* True when @j (any depth) has an object member named card_number. */
bool pay_has_card_number(json_t *j);

/* ---- sweeper.c --------------------------------------------------------------------------- */
/* The sweeper's working set: its connection and a per-pass arena. */
struct pay_sw {
    struct pay_app *app;
    struct gr_db_conn *db;
    struct gr_arena *a;
};

/** Runs @fn in a transaction on @s's connection, again when the engine reports contention. */
GR_MUST_CHECK int pay_sw_tx(struct pay_sw *s, int (*fn)(struct pay_sw *s, void *arg), void *arg);
/**
 * Sends pending refund @rid (of payment @pid) to the provider (its idempotency key is @rid, so
 * a resend is one refund) and applies the answer, logged with @source. Stays pending when the
 * provider cannot be reached.
 */
void pay_send_refund(struct pay_sw *s, const char *rid, const char *pid, long long amount,
                     const char *source);
GR_MUST_CHECK int pay_sweeper_start(struct pay_app *app);
void pay_sweeper_stop(struct pay_app *app);
/** Asks for a pass now. */
void pay_sweeper_kick(struct pay_app *app);
/**
 * One pass (run at start-up, then every min(PAYMENT_SWEEP_MS, PAYMENT_RECONCILE_AFTER_MS)):
 * reconciliation, expiries and order cancels.
 */
void pay_sweep_once(struct pay_app *app);

/* ---- reconcile.c ------------------------------------------------------------------------- */
/**
 * Payments left in `processing`, and API refunds left `pending`, for longer than
 * app->reconcile_ms (a crash while the provider was being called): the provider is asked (or
 * the call repeated with its idempotency key) and the answer applied as the API would have.
 */
void pay_reconcile(struct pay_sw *s);
/**
 * PAYMENT_TEST_KILL_AT: SIGKILLs the process (like kill -9) when @point is the configured one,
 * so tests can crash it around a provider call. Unset in every real deployment.
 */
void pay_test_kill(const struct pay_app *app, const char *point);

#endif
