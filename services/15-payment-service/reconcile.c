/*
 * reconcile.c - what a crash leaves in flight. A write parks the payment in `processing` (or
 * records a `pending` refund) in one transaction, calls the provider with no transaction
 * open, and applies the answer in a second one. A process killed between the two leaves the
 * payment in `processing`: nothing else would ever move it. The sweeper (sweeper.c) runs this
 * at start-up and on every pass:
 *
 *   - a payment in `processing` whose updated_at is older than PAYMENT_RECONCILE_AFTER_MS
 *     (longer than any live provider call takes) is asked about. pending_op names the call in
 *     flight (create, capture, cancel, confirm) and pending_from where the step started:
 *       - with a provider_ref and a provider that can read an intent (stripe:
 *         GET /v1/payment_intents/{id}), its current state is the answer;
 *       - a create with no provider_ref yet (the crash came before the answer) is sent again
 *         with the same provider Idempotency-Key (our payment id): the provider answers with
 *         the intent the first call made, or makes it now if the first call never arrived.
 *         Stripe keeps keys for 24 h, so an older one is left for a person (logged);
 *       - the stateless simulator (provider_test.c) has no read: the call in flight is
 *         repeated with its idempotency key, which gives the answer it gave.
 *     The answer is applied as the API would have applied it: through pay_apply (the same
 *     transitions, transactions rows and events), or, when the provider shows the step never
 *     happened (a capture still requires_capture), back to pending_from like a refused call
 *     (no event). It applies once: the transaction first checks that the payment is still in
 *     `processing` at the version that was read, so a webhook, a client's retry or another
 *     instance that settled it first wins and this pass does nothing.
 *   - an API refund `pending` for longer than the same grace is sent again: the provider's
 *     idempotency key is the refund id, so the resend is the same refund (pay_send_refund).
 * An unreachable provider leaves everything as it is for the next pass.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "gr/log.h"
#include "pay.h"

#define BATCH        50
#define IDEM_KEEP_MS (23LL * 3600 * 1000) /* Stripe keeps an idempotency key 24 h */

void pay_test_kill(const struct pay_app *app, const char *point)
{
    if (app->kill_at != NULL && strcmp(app->kill_at, point) == 0) {
        gr_log_warn("PAYMENT_TEST_KILL_AT: killing the process", "point", point);
        (void)raise(SIGKILL);
    }
}

static bool is(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* One stuck payment, as read before the provider is asked. */
struct stuck {
    const char *id, *op, *from, *reason, *ref, *currency;
    long long version;
    int prc; /* the provider's answer: 0 with pi, or a GR_E… code */
    struct pay_intent pi;
    bool applied; /* out: the payment moved */
};

/* The step did not happen at the provider: back to where it started, as the API does. */
static int revert(struct pay_sw *s, struct stuck *k)
{
    char now[GR_TIME_STR_LEN];
    long long n = 0;
    int rc;

    pay_now(now);
    rc = gr_db_exec(s->db,
                    "UPDATE payments SET status = $2, version = version + 1, updated_at = $3"
                    " WHERE id = $1 AND status = 'processing'",
                    (struct gr_db_val[]){ GR_DB_TEXT(k->id), GR_DB_TEXT(k->from), GR_DB_TEXT(now) },
                    3, &n);
    if (rc < 0 || n != 1)
        return rc < 0 ? rc : GR_EBUSY;
    k->applied = true;
    return pay_log(s->db, k->id, NULL, gr_arena_printf(s->a, "%s_failed", k->op), "processing",
                   k->from, 0, k->currency, NULL, "sweeper", NULL);
}

static int settle_tx(struct pay_sw *s, void *arg)
{
    struct stuck *k = arg;
    struct pay_row p;
    const char *to, *failure;
    int rc = pay_load(s->db, s->a, k->id, &p);

    k->applied = false;
    if (rc < 0)
        return rc;
    if (!is(gr_db_text(p.rows, 0, PC_STATUS), "processing") ||
        gr_db_int(p.rows, 0, PC_VERSION) != k->version)
        return 0; /* settled meanwhile (webhook, retry, another instance) */
    if (is(k->op, "create")) {
        if (k->prc < 0) /* the provider rejected the request: as drive_create */
            return pay_apply(s->db, s->a, k->id, "failed", 0, NULL, "invalid_request", "sweeper",
                             NULL, NULL, &k->applied);
        to = pay_status_of(&k->pi);
        failure = k->pi.failure_code[0] ? k->pi.failure_code : NULL;
        return pay_apply(s->db, s->a, k->id, to, k->pi.amount_received, k->pi.id, failure,
                         "sweeper", NULL, NULL, &k->applied);
    }
    if (k->prc < 0) /* the provider refused the step: as step_end */
        return k->from ? revert(s, k) : 0;
    to = pay_status_of(&k->pi);
    if (k->from && is(to, k->from))
        return revert(s, k);
    failure = is(to, "cancelled")     ? (k->reason ? k->reason : "requested_by_customer")
              : k->pi.failure_code[0] ? k->pi.failure_code
                                      : NULL;
    return pay_apply(s->db, s->a, k->id, to, k->pi.amount_received, k->pi.id[0] ? k->pi.id : NULL,
                     failure, "sweeper", NULL, NULL, &k->applied);
}

/* Asks the provider about payment @id and applies the answer. */
static void reconcile_payment(struct pay_sw *s, const char *id)
{
    struct pay_provider *pv = &s->app->provider;
    struct stuck k = { .id = id };
    struct gr_db_rows *r;
    const char *method, *capmethod;
    long long amount, cap_amount;
    int64_t created;
    int rc;

    rc = gr_db_query(s->db, s->a,
                     "SELECT status, version, pending_op, pending_from, pending_reason,"
                     " pending_amount, provider_ref, currency, method_ref, capture_method, amount,"
                     " created_at FROM payments WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0 || gr_db_nrows(r) != 1 || !is(gr_db_text(r, 0, 0), "processing"))
        return;
    k.version = gr_db_int(r, 0, 1);
    k.op = gr_db_text(r, 0, 2);
    k.from = gr_db_text(r, 0, 3);
    k.reason = gr_db_text(r, 0, 4);
    cap_amount = gr_db_int(r, 0, 5);
    k.ref = gr_db_text(r, 0, 6);
    k.currency = gr_db_text(r, 0, 7);
    method = gr_db_text(r, 0, 8);
    capmethod = gr_db_text(r, 0, 9);
    amount = gr_db_int(r, 0, 10);
    if (!k.op) /* a row parked before pending_op existed: only a create has no ref */
        k.op = k.ref ? "unknown" : "create";
    if (cap_amount <= 0)
        cap_amount = amount;

    if (k.ref && pv->retrieve) {
        k.prc = pv->retrieve(pv, k.ref, &k.pi);
        if (k.prc < 0) {
            gr_log_warn("reconcile: the provider could not tell", "payment_id", id, "code",
                        gr_err_name(k.prc));
            return;
        }
    } else if (is(k.op, "create")) {
        struct pay_create in = { .payment_id = id,
                                 .amount = amount,
                                 .currency = k.currency,
                                 .method = method,
                                 .manual_capture = is(capmethod, "manual") };

        if (pv->retrieve && gr_time_parse(gr_db_text(r, 0, 11), &created) == 0 &&
            gr_time_now_ms() - created > IDEM_KEEP_MS) {
            gr_log_error("reconcile: a create older than the provider's idempotency window",
                         "payment_id", id);
            return;
        }
        k.prc = pv->create(pv, &in, &k.pi);
    } else if (!k.ref && is(k.op, "cancel")) {
        /* nothing at the provider to void: the API cancels such a payment by itself */
        snprintf(k.pi.status, sizeof(k.pi.status), "canceled");
    } else if (k.ref && is(k.op, "capture")) {
        k.prc = pv->capture(pv, k.ref, cap_amount, gr_arena_printf(s->a, "capture-%s", id), &k.pi);
    } else if (k.ref && is(k.op, "cancel")) {
        k.prc = pv->cancel(pv, k.ref, gr_arena_printf(s->a, "cancel-%s", id), &k.pi);
    } else if (k.ref && is(k.op, "confirm")) {
        k.prc = pv->confirm(pv, k.ref, gr_arena_printf(s->a, "confirm-%s", id),
                            is(capmethod, "manual"), amount, &k.pi);
    } else {
        gr_log_error("reconcile: cannot tell what was in flight", "payment_id", id);
        return;
    }
    if (k.prc == GR_EUNAVAIL)
        return; /* asked again on the next pass */
    rc = pay_sw_tx(s, settle_tx, &k);
    if (rc < 0)
        gr_log_warn("reconcile: not applied", "payment_id", id, "code", gr_err_name(rc));
    else if (k.applied)
        gr_log_info("reconciled a payment left in flight", "payment_id", id, "op", k.op);
}

void pay_reconcile(struct pay_sw *s)
{
    char cutoff[GR_TIME_STR_LEN];
    struct gr_db_rows *r;
    int rc;

    gr_time_format(gr_time_now_ms() - s->app->reconcile_ms, cutoff);
    rc = gr_db_query(s->db, s->a,
                     "SELECT id FROM payments WHERE status = 'processing' AND updated_at < $1"
                     " ORDER BY updated_at LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(cutoff), GR_DB_INT(BATCH) }, 2, &r);
    if (rc == 0) {
        for (size_t i = 0; i < gr_db_nrows(r); i++)
            reconcile_payment(s, gr_db_text(r, i, 0));
    }
    rc = gr_db_query(s->db, s->a,
                     "SELECT id, payment_id, amount FROM refunds WHERE status = 'pending'"
                     " AND origin = 'api' AND updated_at < $1 ORDER BY updated_at"
                     " LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(cutoff), GR_DB_INT(BATCH) }, 2, &r);
    if (rc < 0)
        return;
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        pay_send_refund(s, gr_db_text(r, i, 0), gr_db_text(r, i, 1), gr_db_int(r, i, 2), "sweeper");
}
