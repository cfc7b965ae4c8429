/*
 * sweeper.c - the payment service's background work, one thread with its own connection:
 *   - uncaptured authorisations older than PAYMENT_AUTH_TTL (7 days) are cancelled at the
 *     provider and here (payment.cancelled, reason "expired");
 *   - payments flagged by order.cancelled (events.c) are voided when not yet captured, or
 *     refunded for what is left when they succeeded: the refund is recorded (amount reserved,
 *     flag cleared) in one transaction, so it happens once, then sent to the provider;
 *   - such refunds still pending (the provider could not be reached) are sent again; the
 *     provider's idempotency key is the refund id, so a resend is one refund;
 *   - payments left in `processing` and API refunds left `pending` by a crash are reconciled
 *     with the provider (reconcile.c).
 * A pass runs at start-up, then every min(PAYMENT_SWEEP_MS, PAYMENT_RECONCILE_AFTER_MS).
 * Provider calls happen with no transaction open, between short transactions.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gr/id.h"
#include "gr/log.h"
#include "pay.h"

#define BATCH    50
#define ATTEMPTS 8

int pay_sw_tx(struct pay_sw *s, int (*fn)(struct pay_sw *s, void *arg), void *arg)
{
    int rc = GR_EBUSY;

    for (int attempt = 1; rc == GR_EBUSY && attempt <= ATTEMPTS; attempt++) {
        if (attempt > 1)
            usleep((useconds_t)(1000 << attempt));
        rc = gr_db_begin(s->db);
        if (rc == 0)
            rc = fn(s, arg);
        if (rc == 0)
            rc = gr_db_commit(s->db);
        if (gr_db_in_tx(s->db))
            (void)gr_db_rollback(s->db);
    }
    return rc;
}

struct cancel {
    const char *id, *reason, *source, *prev;
    bool started;
    struct pay_intent pi;
    int prc;
};

static int cancel_begin(struct pay_sw *s, void *arg)
{
    struct cancel *c = arg;
    struct pay_row p;
    char now[GR_TIME_STR_LEN];
    long long n = 0;
    const char *cur;
    int rc = pay_load(s->db, s->a, c->id, &p);

    c->started = false;
    if (rc < 0)
        return rc;
    cur = gr_db_text(p.rows, 0, PC_STATUS);
    if (strcmp(cur, "requires_capture") != 0 && strcmp(cur, "requires_action") != 0 &&
        strcmp(cur, "requires_payment_method") != 0)
        return 0;
    c->prev = gr_arena_strdup(s->a, cur);
    pay_now(now);
    rc = gr_db_exec(s->db,
                    "UPDATE payments SET status = 'processing', version = version + 1,"
                    " updated_at = $3, pending_op = 'cancel', pending_from = $2,"
                    " pending_reason = $4 WHERE id = $1 AND status = $2",
                    (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(cur), GR_DB_TEXT(now),
                                          GR_DB_TEXT(c->reason) },
                    4, &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_EBUSY;
    c->started = true;
    return pay_log(s->db, c->id, NULL, "cancel_requested", cur, "processing", 0,
                   gr_db_text(p.rows, 0, PC_CURRENCY), NULL, c->source, NULL);
}

static int cancel_end(struct pay_sw *s, void *arg)
{
    struct cancel *c = arg;
    char now[GR_TIME_STR_LEN];
    bool changed;
    int rc;

    if (c->prc < 0) {
        pay_now(now);
        return gr_db_exec(
            s->db,
            "UPDATE payments SET status = $2, version = version + 1,"
            " updated_at = $3 WHERE id = $1 AND status = 'processing'",
            (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(c->prev), GR_DB_TEXT(now) }, 3,
            NULL);
    }
    rc = gr_db_exec(s->db, "UPDATE payments SET cancel_requested = 0 WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(c->id) }, 1, NULL);
    if (rc < 0)
        return rc;
    return pay_apply(s->db, s->a, c->id, pay_status_of(&c->pi), c->pi.amount_received,
                     c->pi.id[0] ? c->pi.id : NULL, c->reason, c->source, NULL, NULL, &changed);
}

/* Voids payment @id at the provider and here. */
static void cancel_payment(struct pay_sw *s, const char *id, const char *reason, const char *source)
{
    struct pay_provider *pv = &s->app->provider;
    struct cancel c = { .id = id, .reason = reason, .source = source };
    struct pay_row p;
    const char *ref;
    int rc = pay_sw_tx(s, cancel_begin, &c);

    if (rc < 0 || !c.started) {
        if (rc < 0)
            gr_log_warn("sweeper: cancel not started", "payment_id", id, "code", gr_err_name(rc));
        return;
    }
    rc = pay_load(s->db, s->a, id, &p);
    ref = rc == 0 ? gr_db_text(p.rows, 0, PC_REF) : NULL;
    if (ref) {
        c.prc = pv->cancel(pv, ref, gr_arena_printf(s->a, "cancel-%s", id), &c.pi);
    } else {
        memset(&c.pi, 0, sizeof(c.pi));
        snprintf(c.pi.status, sizeof(c.pi.status), "canceled");
        c.prc = 0;
    }
    if (c.prc == 0 && strcmp(pay_status_of(&c.pi), "cancelled") != 0)
        c.prc = GR_ECONFLICT;
    rc = pay_sw_tx(s, cancel_end, &c);
    if (rc < 0 || c.prc < 0)
        gr_log_warn("sweeper: cancel failed", "payment_id", id, "code",
                    gr_err_name(rc < 0 ? rc : c.prc));
}

struct oc_refund {
    const char *pid;
    char rid[GR_ID_LEN];
    bool created, clear_only;
};

/* Records the refund of what is left of succeeded payment @pid, once (clears the flag). */
static int oc_refund_begin(struct pay_sw *s, void *arg)
{
    struct oc_refund *o = arg;
    struct pay_row p;
    char now[GR_TIME_STR_LEN];
    long long left, n = 0;
    int rc = pay_load(s->db, s->a, o->pid, &p);

    o->created = false;
    if (rc < 0)
        return rc;
    rc = gr_db_exec(
        s->db, "UPDATE payments SET cancel_requested = 0 WHERE id = $1 AND cancel_requested = 1",
        (struct gr_db_val[]){ GR_DB_TEXT(o->pid) }, 1, &n);
    if (rc < 0 || n != 1)
        return rc;
    left = gr_db_int(p.rows, 0, PC_CAPTURED) - gr_db_int(p.rows, 0, PC_REFUNDED);
    if (o->clear_only || left <= 0 || strcmp(gr_db_text(p.rows, 0, PC_STATUS), "succeeded") != 0)
        return 0;
    pay_now(now);
    gr_id_new(o->rid);
    rc = gr_db_exec(s->db,
                    "UPDATE payments SET amount_refunded = amount_refunded + $2,"
                    " version = version + 1, updated_at = $3 WHERE id = $1"
                    " AND amount_refunded + $2 <= amount_captured",
                    (struct gr_db_val[]){ GR_DB_TEXT(o->pid), GR_DB_INT(left), GR_DB_TEXT(now) }, 3,
                    &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_EBUSY;
    rc = gr_db_exec(s->db,
                    "INSERT INTO refunds (id, payment_id, amount, currency, reason, status, origin,"
                    " idem_caller, idem_key, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, 'order_cancelled', 'pending', 'order_cancelled',"
                    " 'order.cancelled', $5, $6, $6)",
                    (struct gr_db_val[]){ GR_DB_TEXT(o->rid), GR_DB_TEXT(o->pid), GR_DB_INT(left),
                                          GR_DB_TEXT(gr_db_text(p.rows, 0, PC_CURRENCY)),
                                          GR_DB_TEXT(o->rid), GR_DB_TEXT(now) },
                    6, NULL);
    if (rc < 0)
        return rc;
    o->created = true;
    return pay_log(s->db, o->pid, o->rid, "refund_requested", NULL, NULL, left,
                   gr_db_text(p.rows, 0, PC_CURRENCY), NULL, "event", NULL);
}

struct finish {
    const char *rid, *ref, *failure, *source;
    bool ok;
};

static int finish_tx(struct pay_sw *s, void *arg)
{
    struct finish *f = arg;

    return pay_refund_finish(s->db, s->a, f->rid, f->ok, f->ref, f->failure, f->source, NULL);
}

void pay_send_refund(struct pay_sw *s, const char *rid, const char *pid, long long amount,
                     const char *source)
{
    struct pay_provider *pv = &s->app->provider;
    struct pay_refund_res res;
    struct finish f = { .rid = rid, .source = source };
    struct pay_row p;
    int rc = pay_load(s->db, s->a, pid, &p);

    if (rc < 0)
        return;
    rc = pv->refund(pv, gr_db_text(p.rows, 0, PC_REF), amount, rid, &res);
    if (rc == GR_EUNAVAIL)
        return; /* stays pending: the next pass sends it again */
    f.ok = rc == 0 && strcmp(res.status, "failed") != 0;
    f.ref = rc == 0 ? res.id : NULL;
    f.failure = rc == 0 && res.failure_code[0] ? res.failure_code : "provider_refused";
    rc = pay_sw_tx(s, finish_tx, &f);
    if (rc < 0)
        gr_log_warn("sweeper: refund not finished", "refund_id", rid, "code", gr_err_name(rc));
}

static void order_cancels(struct pay_sw *s)
{
    struct gr_db_rows *r;
    int rc = gr_db_query(s->db, s->a,
                         "SELECT id, status FROM payments WHERE cancel_requested = 1"
                         " ORDER BY created_at LIMIT CAST($1 AS INTEGER)",
                         (struct gr_db_val[]){ GR_DB_INT(BATCH) }, 1, &r);

    if (rc < 0)
        return;
    for (size_t i = 0; i < gr_db_nrows(r); i++) {
        const char *id = gr_db_text(r, i, 0), *st = gr_db_text(r, i, 1);
        struct oc_refund o = { .pid = id };

        if (strcmp(st, "processing") == 0)
            continue; /* in flight: decided on a later pass */
        if (strcmp(st, "succeeded") != 0 && strcmp(st, "failed") != 0 &&
            strcmp(st, "cancelled") != 0) {
            cancel_payment(s, id, "order_cancelled", "event");
            continue;
        }
        o.clear_only = strcmp(st, "succeeded") != 0;
        rc = pay_sw_tx(s, oc_refund_begin, &o);
        if (rc < 0)
            gr_log_warn("sweeper: order cancel not applied", "payment_id", id, "code",
                        gr_err_name(rc));
    }
    rc = gr_db_query(s->db, s->a,
                     "SELECT id, payment_id, amount FROM refunds WHERE status = 'pending'"
                     " AND origin = 'order_cancelled' ORDER BY created_at"
                     " LIMIT CAST($1 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_INT(BATCH) }, 1, &r);
    if (rc < 0)
        return;
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        pay_send_refund(s, gr_db_text(r, i, 0), gr_db_text(r, i, 1), gr_db_int(r, i, 2), "event");
}

static void expiries(struct pay_sw *s)
{
    char cutoff[GR_TIME_STR_LEN];
    struct gr_db_rows *r;
    int rc;

    gr_time_format(gr_time_now_ms() - s->app->auth_ttl_ms, cutoff);
    rc = gr_db_query(s->db, s->a,
                     "SELECT id FROM payments WHERE status = 'requires_capture'"
                     " AND authorized_at < $1 ORDER BY authorized_at LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_TEXT(cutoff), GR_DB_INT(BATCH) }, 2, &r);
    if (rc < 0)
        return;
    for (size_t i = 0; i < gr_db_nrows(r); i++)
        cancel_payment(s, gr_db_text(r, i, 0), "expired", "sweeper");
}

void pay_sweep_once(struct pay_app *app)
{
    struct gr_arena a;
    struct pay_sw s = { .app = app, .a = &a };

    if (gr_db_conn(app->db, &s.db) < 0)
        return;
    gr_arena_init(&a);
    pay_reconcile(&s);
    expiries(&s);
    order_cancels(&s);
    gr_arena_release(&a);
}

static void *sweeper_main(void *arg)
{
    struct pay_app *app = arg;
    long long period = app->sweep_ms;

    if (app->reconcile_ms > 0 && app->reconcile_ms < period)
        period = app->reconcile_ms;
    pay_sweep_once(app); /* at start-up: what a crash left in flight */
    pthread_mutex_lock(&app->mu);
    while (!app->stop) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += period / 1000;
        ts.tv_nsec += (long)(period % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!app->stop && !app->kick) {
            if (pthread_cond_timedwait(&app->cv, &app->mu, &ts) == ETIMEDOUT)
                break;
        }
        app->kick = false;
        if (app->stop)
            break;
        pthread_mutex_unlock(&app->mu);
        pay_sweep_once(app);
        pthread_mutex_lock(&app->mu);
    }
    pthread_mutex_unlock(&app->mu);
    return NULL;
}

int pay_sweeper_start(struct pay_app *app)
{
    if (pthread_create(&app->sweeper, NULL, sweeper_main, app) != 0)
        return GR_EINTERNAL;
    app->sweeper_started = true;
    return 0;
}

void pay_sweeper_kick(struct pay_app *app)
{
    pthread_mutex_lock(&app->mu);
    app->kick = true;
    pthread_cond_broadcast(&app->cv);
    pthread_mutex_unlock(&app->mu);
}

void pay_sweeper_stop(struct pay_app *app)
{
    if (!app->sweeper_started)
        return;
    pthread_mutex_lock(&app->mu);
    app->stop = true;
    pthread_cond_broadcast(&app->cv);
    pthread_mutex_unlock(&app->mu);
    pthread_join(app->sweeper, NULL);
    app->sweeper_started = false;
}
