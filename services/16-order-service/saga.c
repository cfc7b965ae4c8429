/*
 * saga.c - the checkout saga of SERVICES §16 and its resumer.
 *
 * Forward: (the order exists as PENDING with its prices and tax rate) → reserve the coupon at
 * 22 (key order:{id}:coupon) → reserve the stock at 18 (key order:{id}:reserve) → pay at 15
 * (key order:{id}:pay) → confirm the reservation at 18 and the redemption at 22 → CONFIRMED. A
 * definite refusal (22: 409/422 → coupon_invalid; 18: 409 insufficient_stock / 422 → out_of_stock;
 * 15: failed payment or 422 → payment_failed) moves the order to CANCELLED with that reason and
 * runs the compensation: refund at 15 when the order had been paid, release the reservation at 18,
 * release the redemption at 22.
 *
 * Durability with few commits: a saga writes the database twice on the happy path — the
 * create transaction (orders.c: the order, its lines, order.created and the saga_state row
 * with this process's lease) and the final transaction (totals, the ids of the redemption,
 * reservation and payment, CONFIRMED, its history row and event, saga done). Steps in between
 * are not committed one by one: every remote call is idempotent by a key derived from the
 * order id, so a runner that resumes an unfinished saga (after kill -9, a restart, a peer
 * that was down) simply runs the forward steps again from the start and receives the same
 * redemption, reservation and payment back. The compensation is committed before it starts
 * (CANCELLED, the ids to undo and saga_state compensating, in one transaction), so a resumed
 * compensation never turns into a forward run; it ends with one more commit (saga done).
 *
 * Peers that cannot be reached: the saga stops where it is, counts an attempt and waits
 * (next_at, doubling from 1 s to 30 s); the resumer thread runs it again once the lease of its
 * runner has expired. Before the payment step, a saga that still cannot reach 22 or 18 after
 * ORDER_SAGA_GIVE_UP_S ends CANCELLED with reason service_unavailable; from the payment step on
 * it never gives up (the outcome at 15 must be known). order.cancelled also reaches 15, 18 and
 * 22 through the bus, which void/refund, release and release by order id: whatever a runner
 * could not name is undone there too.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gr/json.h"
#include "gr/log.h"
#include "gr/service.h"
#include "gr/time.h"
#include "order.h"

#define RESUME_BATCH 50

enum outcome { OK = 0, FAIL = 1, RETRY = 2 };

struct line {
    const char *variant_id, *product_id, *sku;
    long long unit, qty, total, discount, tax;
    long long db_discount, db_tax; /* as stored: only a line whose share changed is written */
};

struct ord {
    const char *id, *user_id, *status, *currency, *coupon_code, *pm, *created_at;
    long long subtotal, shipping, discount, tax, grand;
    int tax_bp;
    bool tax_incl, tax_ship, cancel_requested;
    const char *redemption_id, *reservation_id, *payment_id, *payment_status;
    size_t n;
    struct line *lines;
    const char *saga_status;
    long long attempts;
    bool refund;
    /* this run */
    const char *reason; /* why it fails */
    const char *error;  /* last transient error */
    bool paid;
    bool at_pay; /* the run reached the payment step */
};

#define LINE_COL 23 /* load: the first line column */

static int load(struct saga_ctx *s, const char *id, struct ord *o)
{
    struct gr_db_rows *r = NULL;
    int rc;

    memset(o, 0, sizeof(*o));
    rc = gr_db_query(
        s->db, s->a,
        "SELECT o.id, o.user_id, o.status, o.currency, o.coupon_code, o.payment_method_id,"
        " o.created_at, o.subtotal, o.shipping_total, o.tax_rate_bp, o.tax_inclusive,"
        " o.tax_shipping, o.cancel_requested, o.coupon_redemption_id, o.reservation_id,"
        " o.payment_id, o.payment_status, g.status, g.attempts, g.refund, o.discount_total,"
        " o.tax_total, o.grand_total, i.variant_id, i.product_id, i.sku, i.unit_price,"
        " i.quantity, i.line_total, i.discount, i.tax"
        " FROM orders o JOIN saga_state g ON g.order_id = o.id"
        " LEFT JOIN order_items i ON i.order_id = o.id WHERE o.id = $1 ORDER BY i.position",
        (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) == 0)
        return GR_ENOTFOUND;
    o->id = gr_db_text(r, 0, 0);
    o->user_id = gr_db_text(r, 0, 1);
    o->status = gr_db_text(r, 0, 2);
    o->currency = gr_db_text(r, 0, 3);
    o->coupon_code = gr_db_text(r, 0, 4);
    o->pm = gr_db_text(r, 0, 5);
    o->created_at = gr_db_text(r, 0, 6);
    o->subtotal = gr_db_int(r, 0, 7);
    o->shipping = gr_db_int(r, 0, 8);
    o->tax_bp = (int)gr_db_int(r, 0, 9);
    o->tax_incl = gr_db_int(r, 0, 10) != 0;
    o->tax_ship = gr_db_int(r, 0, 11) != 0;
    o->cancel_requested = gr_db_int(r, 0, 12) != 0;
    o->redemption_id = gr_db_text(r, 0, 13);
    o->reservation_id = gr_db_text(r, 0, 14);
    o->payment_id = gr_db_text(r, 0, 15);
    o->payment_status = gr_db_text(r, 0, 16);
    o->saga_status = gr_db_text(r, 0, 17);
    o->attempts = gr_db_int(r, 0, 18);
    o->refund = gr_db_int(r, 0, 19) != 0;
    o->discount = gr_db_int(r, 0, 20);
    o->tax = gr_db_int(r, 0, 21);
    o->grand = gr_db_int(r, 0, 22);
    /* The lines came with the order, a row each (LINE_COL on); none: one row of NULLs. */
    o->n = gr_db_isnull(r, 0, LINE_COL) ? 0 : gr_db_nrows(r);
    o->lines = gr_arena_calloc(s->a, (o->n + 1) * sizeof(*o->lines));
    for (size_t i = 0; i < o->n; i++) {
        struct line *l = &o->lines[i];

        l->variant_id = gr_db_text(r, i, LINE_COL);
        l->product_id = gr_db_text(r, i, LINE_COL + 1);
        l->sku = gr_db_text(r, i, LINE_COL + 2);
        l->unit = gr_db_int(r, i, LINE_COL + 3);
        l->qty = gr_db_int(r, i, LINE_COL + 4);
        l->total = gr_db_int(r, i, LINE_COL + 5);
        l->discount = l->db_discount = gr_db_int(r, i, LINE_COL + 6);
        l->tax = l->db_tax = gr_db_int(r, i, LINE_COL + 7);
    }
    return 0;
}

/*
 * ORDER_TEST_KILL_AT: the process kills itself (SIGKILL, like kill -9) when a saga reaches the
 * named point, so tests can crash it at each step and check that a restart finishes the saga.
 * Unset in every real deployment.
 */
static void test_kill(const struct saga_ctx *s, const char *point)
{
    if (s->app->kill_at != NULL && strcmp(s->app->kill_at, point) == 0) {
        gr_log_warn("ORDER_TEST_KILL_AT: killing the process", "point", point);
        (void)raise(SIGKILL);
    }
}

/* ---- totals ---------------------------------------------------------------------------- */

/* round_half_up(a * num / den) for non-negative values. */
static long long mul_div(long long a, long long num, long long den)
{
    return den > 0 ? (a * num + den / 2) / den : 0;
}

/*
 * Spreads @discount over the lines in proportion to their totals (each share half-up and
 * capped at its line; what rounding leaves goes to the lines in order), then the tax of each
 * line on what the discount left of it (decision 22), and the order's totals.
 */
static void totals(struct ord *o, long long discount)
{
    long long sum = 0, left;

    if (discount > o->subtotal)
        discount = o->subtotal;
    for (size_t i = 0; i < o->n; i++) {
        struct line *l = &o->lines[i];

        l->discount = mul_div(discount, l->total, o->subtotal);
        if (l->discount > l->total)
            l->discount = l->total;
        sum += l->discount;
    }
    left = discount - sum;
    for (size_t i = 0; i < o->n && left != 0; i++) {
        struct line *l = &o->lines[i];
        long long d = left > 0 ? (l->total - l->discount < left ? l->total - l->discount : left)
                               : (l->discount < -left ? -l->discount : left);

        l->discount += d;
        left -= d;
    }
    o->discount = discount;
    o->tax = 0;
    for (size_t i = 0; i < o->n; i++) {
        struct line *l = &o->lines[i];
        long long net = l->total - l->discount;

        l->tax = o->tax_incl ? net - mul_div(net, 10000, 10000 + o->tax_bp)
                             : mul_div(net, o->tax_bp, 10000);
        o->tax += l->tax;
    }
    if (o->tax_ship)
        o->tax += o->tax_incl ? o->shipping - mul_div(o->shipping, 10000, 10000 + o->tax_bp)
                              : mul_div(o->shipping, o->tax_bp, 10000);
    o->grand = o->subtotal - o->discount + o->shipping + (o->tax_incl ? 0 : o->tax);
}

/* ---- forward steps --------------------------------------------------------------------- */

static const char *problem_type(const struct upstream *u)
{
    return u->problem != NULL ? u->problem : "";
}

static enum outcome step_coupon(struct saga_ctx *s, struct ord *o)
{
    struct upstream u;
    json_t *body, *lines;
    long long d;
    int rc;

    if (o->coupon_code == NULL)
        return OK;
    lines = json_array();
    for (size_t i = 0; i < o->n; i++)
        json_array_append_new(
            lines, json_pack("{s:s*,s:I,s:{s:I,s:s}}", "product_id", o->lines[i].product_id,
                             "quantity", (json_int_t)o->lines[i].qty, "unit_price", "amount",
                             (json_int_t)o->lines[i].unit, "currency", o->currency));
    body = json_pack("{s:s,s:s,s:s,s:s,s:o}", "code", o->coupon_code, "order_id", o->id, "user_id",
                     o->user_id, "currency", o->currency, "lines", lines);
    rc = up_call(s, "coupon reservation", "POST", s->app->discount, "/api/v1/coupon-redemptions",
                 gr_arena_printf(s->a, "order:%s:coupon", o->id), body, &u);
    json_decref(body);
    if (rc == 0 && (u.status == 200 || u.status == 201)) {
        json_t *amt = json_object_get(json_object_get(u.json, "discount"), "amount");
        const char *rid = json_string_value(json_object_get(u.json, "id"));

        if (rid == NULL || !json_is_integer(amt)) {
            o->error = "coupon reservation: unexpected answer";
            return RETRY;
        }
        o->redemption_id = rid;
        d = json_integer_value(amt);
        totals(o, d < 0 ? 0 : d);
        return OK;
    }
    if (rc == 0 && (u.status == 422 ||
                    (u.status == 409 && strcmp(problem_type(&u), "idempotency_in_flight") != 0))) {
        o->reason = "coupon_invalid";
        o->error = gr_arena_printf(s->a, "coupon: %s", problem_type(&u));
        return FAIL;
    }
    o->error = gr_arena_printf(s->a, "coupon reservation: %ld", rc < 0 ? 0L : u.status);
    return RETRY; /* no answer, 5xx, 409 in flight, 401/403/404 (setup): later */
}

static enum outcome step_reserve(struct saga_ctx *s, struct ord *o)
{
    struct upstream u;
    json_t *body, *items = json_array();
    int rc;

    for (size_t i = 0; i < o->n; i++)
        json_array_append_new(items, json_pack("{s:s,s:I}", "sku", o->lines[i].sku, "quantity",
                                               (json_int_t)o->lines[i].qty));
    body = json_pack("{s:s,s:o,s:I}", "order_id", o->id, "items", items, "ttl_s",
                     (json_int_t)s->app->reserve_ttl_s);
    rc =
        up_call(s, "stock reservation", "POST", s->app->inventory, "/api/v1/inventory/reservations",
                gr_arena_printf(s->a, "order:%s:reserve", o->id), body, &u);
    json_decref(body);
    if (rc == 0 && (u.status == 200 || u.status == 201)) {
        const char *rid = json_string_value(json_object_get(u.json, "id"));
        const char *st = json_string_value(json_object_get(u.json, "status"));

        if (rid == NULL || st == NULL) {
            o->error = "stock reservation: unexpected answer";
            return RETRY;
        }
        o->reservation_id = rid;
        if (strcmp(st, "active") == 0 || strcmp(st, "confirmed") == 0)
            return OK;
        o->reason = "out_of_stock"; /* the order's reservation was released or expired */
        o->error = gr_arena_printf(s->a, "reservation %s", st);
        return FAIL;
    }
    if (rc == 0 && (u.status == 422 ||
                    (u.status == 409 && strcmp(problem_type(&u), "idempotency_in_flight") != 0))) {
        o->reason = "out_of_stock";
        o->error = gr_arena_printf(s->a, "stock: %s", problem_type(&u));
        return FAIL;
    }
    o->error = gr_arena_printf(s->a, "stock reservation: %ld", rc < 0 ? 0L : u.status);
    return RETRY;
}

static enum outcome step_pay(struct saga_ctx *s, struct ord *o)
{
    struct upstream u;
    json_t *body;
    int rc;

    o->at_pay = true;
    if (o->grand == 0) { /* nothing to charge (15 refuses an amount of 0) */
        o->paid = false;
        return OK;
    }
    body =
        json_pack("{s:I,s:s,s:s,s:s,s:s}", "amount", (json_int_t)o->grand, "currency", o->currency,
                  "order_id", o->id, "payment_method_id", o->pm, "user_id", o->user_id);
    rc = up_call(s, "payment", "POST", s->app->payment, "/api/v1/payments",
                 gr_arena_printf(s->a, "order:%s:pay", o->id), body, &u);
    json_decref(body);
    if (rc == 0 && (u.status == 200 || u.status == 201)) {
        const char *pid = json_string_value(json_object_get(u.json, "id"));
        const char *st = json_string_value(json_object_get(u.json, "status"));

        if (pid == NULL || st == NULL) {
            o->error = "payment: unexpected answer";
            return RETRY;
        }
        o->payment_id = pid;
        o->payment_status = st;
        if (strcmp(st, "succeeded") == 0) {
            o->paid = true;
            return OK;
        }
        if (strcmp(st, "processing") == 0) {
            o->error = "payment: processing";
            return RETRY;
        }
        /* failed, requires_action (3-D Secure has no place in a server-side checkout), … */
        o->reason = "payment_failed";
        o->error = gr_arena_printf(s->a, "payment %s", st);
        return FAIL;
    }
    if (rc == 0 && u.status == 422) {
        o->reason = "payment_failed";
        o->error = gr_arena_printf(s->a, "payment: %s", problem_type(&u));
        return FAIL;
    }
    o->error = gr_arena_printf(s->a, "payment: %ld", rc < 0 ? 0L : u.status);
    return RETRY;
}

/* ---- transactions ---------------------------------------------------------------------- */

struct fin {
    struct saga_ctx *s;
    struct ord *o;
    json_t *rendered;    /* the order as this attempt's transition left it */
    const char *to;      /* CONFIRMED or CANCELLED */
    bool lost_to_cancel; /* CONFIRMED refused: a cancel was requested meanwhile */
    bool gone;           /* the order is no longer PENDING (another runner finished it) */
};

/* Writes the run's totals and ids into the PENDING order; 0 rows → *gone / lost_to_cancel. */
static int write_run(struct gr_db_conn *db, struct fin *f, bool need_no_cancel)
{
    struct ord *o = f->o;
    struct gr_db_rows *r = NULL;
    char now[32];
    long long changes = 0;
    int rc;

    order_now(now);
    rc = gr_db_exec(
        db,
        "UPDATE orders SET discount_total = $2, tax_total = $3, grand_total = $4,"
        " coupon_redemption_id = $5, reservation_id = $6, payment_id = $7, payment_status = $8,"
        " updated_at = $9 WHERE id = $1 AND status = 'PENDING' AND cancel_requested <= $10",
        (struct gr_db_val[]){
            GR_DB_TEXT(o->id), GR_DB_INT(o->discount), GR_DB_INT(o->tax), GR_DB_INT(o->grand),
            GR_DB_TEXT(o->redemption_id), GR_DB_TEXT(o->reservation_id), GR_DB_TEXT(o->payment_id),
            GR_DB_TEXT(o->payment_status), GR_DB_TEXT(now), GR_DB_INT(need_no_cancel ? 0 : 1) },
        10, &changes);
    if (rc < 0)
        return rc;
    if (changes == 0) {
        rc = gr_db_query(db, f->s->a, "SELECT status, cancel_requested FROM orders WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(o->id) }, 1, &r);
        if (rc < 0)
            return rc;
        if (gr_db_nrows(r) == 1 && strcmp(gr_db_text(r, 0, 0), ST_PENDING) == 0)
            f->lost_to_cancel = true;
        else
            f->gone = true;
        return 1;
    }
    for (size_t i = 0; i < o->n && rc == 0; i++)
        if (o->lines[i].discount != o->lines[i].db_discount ||
            o->lines[i].tax != o->lines[i].db_tax)
            rc = gr_db_exec(db,
                            "UPDATE order_items SET discount = $3, tax = $4 WHERE order_id = $1"
                            " AND position = $2",
                            (struct gr_db_val[]){ GR_DB_TEXT(o->id), GR_DB_INT((long long)i),
                                                  GR_DB_INT(o->lines[i].discount),
                                                  GR_DB_INT(o->lines[i].tax) },
                            4, NULL);
    return rc;
}

/*
 * POST /orders whose saga ends here: its answer — the order as this transition leaves it —
 * is made now and stored as the request's Idempotency-Key answer in this transaction (no
 * commit of its own after the saga). A retry of the transaction makes it again.
 */
static int store_reply(struct fin *f)
{
    struct saga_ctx *s = f->s;

    s->replied = false;
    if (s->req == NULL || s->reply_id == NULL || strcmp(s->reply_id, f->o->id) != 0 ||
        f->rendered == NULL)
        return 0;
    order_reply(s->req, s->resp, 201, f->o->id, json_incref(f->rendered));
    s->replied = true;
    return gr_req_idem_store(s->req, s->resp);
}

static int finish_tx(struct gr_db_conn *db, void *arg)
{
    struct fin *f = arg;
    bool confirm = strcmp(f->to, ST_CONFIRMED) == 0;
    char now[32];
    int rc;

    f->lost_to_cancel = f->gone = false;
    json_decref(f->rendered); /* an earlier attempt's, rolled back */
    f->rendered = NULL;
    f->s->replied = false;
    rc = write_run(db, f, confirm);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    rc = order_transition_r(db, f->s->a, f->o->id, ST_PENDING, f->to, confirm ? NULL : f->o->reason,
                            "saga", f->s->traceparent, &f->rendered);
    if (rc == 0)
        rc = store_reply(f);
    if (rc < 0)
        return rc;
    order_now(now);
    return gr_db_exec(db,
                      "UPDATE saga_state SET status = $2, step = $3, refund = $4, last_error = $5,"
                      " updated_at = $6, next_at = 0 WHERE order_id = $1",
                      (struct gr_db_val[]){
                          GR_DB_TEXT(f->o->id), GR_DB_TEXT(confirm ? "done" : "compensating"),
                          GR_DB_TEXT(confirm ? "done" : "compensate"),
                          GR_DB_INT(f->o->paid ? 1 : 0), GR_DB_TEXT(f->o->error), GR_DB_TEXT(now) },
                      6, NULL);
}

/* finish_tx in a transaction; the order as it committed is kept in @s for the reply. */
static int finish(struct saga_ctx *s, struct fin *f)
{
    int rc = order_tx(s->db, finish_tx, f);

    if (rc != 0)
        s->replied = false; /* the answer made in it was not committed */
    if (rc == 0 && f->rendered != NULL) {
        json_decref(s->rendered);
        s->rendered = f->rendered;
        s->rendered_id = f->o->id;
    } else {
        json_decref(f->rendered);
    }
    f->rendered = NULL;
    return rc;
}

struct note {
    struct saga_ctx *s;
    const char *id, *status, *step, *error;
    long long attempts, next_at;
};

static int note_tx(struct gr_db_conn *db, void *arg)
{
    struct note *n = arg;
    char now[32];

    order_now(now);
    return gr_db_exec(db,
                      "UPDATE saga_state SET status = $2, step = $3, attempts = $4, next_at = $5,"
                      " last_error = $6, updated_at = $7, lease_until = 0"
                      " WHERE order_id = $1 AND status <> 'done'",
                      (struct gr_db_val[]){ GR_DB_TEXT(n->id), GR_DB_TEXT(n->status),
                                            GR_DB_TEXT(n->step), GR_DB_INT(n->attempts),
                                            GR_DB_INT(n->next_at), GR_DB_TEXT(n->error),
                                            GR_DB_TEXT(now) },
                      7, NULL);
}

/* Records a stop at @step for a retry later (attempts + 1, doubling pause). */
static int retry_later(struct saga_ctx *s, struct ord *o, const char *status, const char *step)
{
    long long pause = 1000;
    struct note n = { .s = s, .id = o->id, .status = status, .step = step, .error = o->error };

    for (long long i = 0; i < o->attempts && pause < 30000; i++)
        pause *= 2;
    n.attempts = o->attempts + 1;
    n.next_at = gr_time_now_ms() + (pause < 30000 ? pause : 30000);
    gr_log_info("saga paused", "order_id", o->id, "step", step, "error",
                o->error != NULL ? o->error : "");
    return order_tx(s->db, note_tx, &n);
}

/* ---- compensation ---------------------------------------------------------------------- */

/* One undo call: 2xx and definite 4xx are done; no answer, 5xx and 409 in flight → retry. */
static bool undone(int rc, const struct upstream *u)
{
    if (rc < 0 || u->status == 0 || u->status >= 500 || u->status == 401 || u->status == 403)
        return false;
    if (u->status == 409 && strcmp(problem_type(u), "idempotency_in_flight") == 0)
        return false;
    return true;
}

static int compensate(struct saga_ctx *s, struct ord *o)
{
    struct upstream u;
    struct note n = { .s = s, .id = o->id, .status = "done", .step = "done" };
    bool all = true;
    int rc;

    if (o->refund && o->payment_id != NULL) {
        json_t *body = json_pack("{s:s}", "reason", "order_cancelled");

        rc = up_call(s, "refund", "POST", s->app->payment,
                     gr_arena_printf(s->a, "/api/v1/payments/%s/refund", o->payment_id),
                     gr_arena_printf(s->a, "order:%s:refund", o->id), body, &u);
        json_decref(body);
        if (!undone(rc, &u)) {
            all = false;
            o->error = "refund: no answer";
        }
        test_kill(s, "refund");
    }
    if (o->reservation_id != NULL) {
        rc = up_call(
            s, "stock release", "POST", s->app->inventory,
            gr_arena_printf(s->a, "/api/v1/inventory/reservations/%s/release", o->reservation_id),
            NULL, NULL, &u);
        if (!undone(rc, &u)) {
            all = false;
            o->error = "stock release: no answer";
        }
    }
    if (o->redemption_id != NULL) {
        rc = up_call(
            s, "coupon release", "POST", s->app->discount,
            gr_arena_printf(s->a, "/api/v1/coupon-redemptions/%s/release", o->redemption_id), NULL,
            NULL, &u);
        if (!undone(rc, &u)) {
            all = false;
            o->error = "coupon release: no answer";
        }
    }
    if (!all)
        return retry_later(s, o, "compensating", "compensate");
    n.attempts = o->attempts;
    gr_log_info("order compensated", "order_id", o->id);
    return order_tx(s->db, note_tx, &n);
}

/*
 * After the payment, before CONFIRMED is committed: confirm the reservation at 18 (drops its
 * TTL) and the redemption at 22. Both are idempotent, so a resumed run confirms again
 * harmlessly; order.confirmed does the same through the bus. A reservation that expired or
 * was released meanwhile is out of stock (the order is cancelled and refunded); a redemption
 * that can no longer be confirmed is logged (the discount was granted and paid for).
 */
static enum outcome step_confirm(struct saga_ctx *s, struct ord *o)
{
    struct upstream u;
    int rc;

    if (o->reservation_id != NULL) {
        rc = up_call(
            s, "stock confirm", "POST", s->app->inventory,
            gr_arena_printf(s->a, "/api/v1/inventory/reservations/%s/confirm", o->reservation_id),
            NULL, NULL, &u);
        if (rc == 0 && u.status == 409) {
            o->reason = "out_of_stock";
            o->error = gr_arena_printf(s->a, "stock confirm: %s", problem_type(&u));
            return FAIL;
        }
        if (rc < 0 || u.status != 200) {
            o->error = gr_arena_printf(s->a, "stock confirm: %ld", rc < 0 ? 0L : u.status);
            return RETRY;
        }
    }
    if (o->redemption_id != NULL) {
        rc = up_call(
            s, "coupon confirm", "POST", s->app->discount,
            gr_arena_printf(s->a, "/api/v1/coupon-redemptions/%s/confirm", o->redemption_id), NULL,
            NULL, &u);
        if (rc < 0 || u.status == 0 || u.status >= 500 || u.status == 401 || u.status == 403) {
            o->error = gr_arena_printf(s->a, "coupon confirm: %ld", rc < 0 ? 0L : u.status);
            return RETRY;
        }
        if (u.status != 200)
            gr_log_warn("coupon confirm refused", "order_id", o->id, "problem", problem_type(&u));
    }
    return OK;
}

/* ---- the run --------------------------------------------------------------------------- */

struct claim {
    const char *id, *owner;
    long long now, until;
    bool got;
};

static int claim_tx(struct gr_db_conn *db, void *arg)
{
    struct claim *c = arg;
    long long changes = 0;
    int rc;

    rc = gr_db_exec(db,
                    "UPDATE saga_state SET owner = $2, lease_until = $3 WHERE order_id = $1"
                    " AND status <> 'done' AND lease_until < $4",
                    (struct gr_db_val[]){ GR_DB_TEXT(c->id), GR_DB_TEXT(c->owner),
                                          GR_DB_INT(c->until), GR_DB_INT(c->now) },
                    4, &changes);
    c->got = rc == 0 && changes == 1;
    return rc;
}

static bool too_old(struct saga_ctx *s, const struct ord *o)
{
    int64_t created;

    return gr_time_parse(o->created_at, &created) == 0 &&
           gr_time_now_ms() - created > s->app->give_up_s * 1000;
}

static int forward(struct saga_ctx *s, struct ord *o)
{
    struct fin f = { .s = s, .o = o, .to = ST_CONFIRMED };
    enum outcome out = OK;
    const char *step = "coupon";
    int rc;

    /* A cancel requested earlier still replays the coupon and stock steps (idempotent), so
     * that their ids are known to the compensation; it stops before the payment. */
    totals(o, 0);
    test_kill(s, "created");
    out = step_coupon(s, o);
    if (out == OK) {
        test_kill(s, "coupon");
        step = "reserve";
        out = step_reserve(s, o);
    }
    if (out == OK)
        test_kill(s, "reserve");
    if (out == OK) {
        struct gr_db_rows *r = NULL;

        /* A cancel requested while the saga ran stops it before the money moves. */
        rc = gr_db_query(s->db, s->a, "SELECT cancel_requested FROM orders WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(o->id) }, 1, &r);
        if (rc == 0 && gr_db_int(r, 0, 0) != 0) {
            out = FAIL;
            o->reason = "cancelled";
        }
    }
    if (out == OK) {
        step = "pay";
        out = step_pay(s, o);
    }
    if (out == OK) {
        test_kill(s, "pay");
        step = "confirm";
        out = step_confirm(s, o);
    }
    if (out == OK)
        test_kill(s, "confirm");
    if (out == RETRY) {
        if (!o->at_pay && too_old(s, o)) {
            out = FAIL;
            o->reason = "service_unavailable";
        } else {
            return retry_later(s, o, "running", step);
        }
    }
    if (out == OK) {
        rc = finish(s, &f);
        if (rc < 0)
            return rc;
        if (f.gone)
            return 0;
        if (!f.lost_to_cancel) {
            gr_log_info("order confirmed", "order_id", o->id);
            return 0;
        }
        o->reason = "cancelled";
    }
    /* FAIL: CANCELLED with the reason and the ids to undo, committed, then the undo. */
    f.to = ST_CANCELLED;
    rc = finish(s, &f);
    if (rc < 0)
        return rc;
    if (f.gone)
        return 0;
    o->refund = o->paid;
    gr_log_info("order cancelled", "order_id", o->id, "reason", o->reason);
    test_kill(s, "cancelled");
    return compensate(s, o);
}

int saga_run(struct saga_ctx *s, const char *id, bool claimed)
{
    struct ord o;
    int rc;

    if (!claimed) {
        struct claim c = { .id = id, .owner = s->app->instance, .now = gr_time_now_ms() };

        c.until = c.now + s->app->lease_ms;
        rc = order_tx(s->db, claim_tx, &c);
        if (rc < 0 || !c.got)
            return rc;
    }
    rc = load(s, id, &o);
    if (rc < 0)
        return rc;
    if (strcmp(o.saga_status, "compensating") == 0)
        return compensate(s, &o);
    if (strcmp(o.saga_status, "running") != 0 || strcmp(o.status, ST_PENDING) != 0)
        return 0;
    return forward(s, &o);
}

/* ---- the resumer ----------------------------------------------------------------------- */

/* Runs every saga that is due and not held by a live runner; the count, or an error. */
static int resume_once(struct order_app *app, struct gr_arena *a)
{
    struct gr_db_conn *c = NULL;
    struct gr_db_rows *rows = NULL;
    long long now = gr_time_now_ms();
    int rc, done = 0;

    rc = gr_db_conn(app->db, &c);
    if (rc < 0)
        return rc;
    rc = gr_db_query(c, a,
                     "SELECT order_id FROM saga_state WHERE status <> 'done' AND next_at <= $1"
                     " AND lease_until < $1 ORDER BY next_at LIMIT CAST($2 AS INTEGER)",
                     (struct gr_db_val[]){ GR_DB_INT(now), GR_DB_INT(RESUME_BATCH) }, 2, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        struct gr_arena ra;
        struct saga_ctx s = { .app = app, .db = c, .a = &ra };

        gr_arena_init(&ra);
        rc = saga_run(&s, gr_db_text(rows, i, 0), false);
        json_decref(s.rendered);
        gr_arena_release(&ra);
        if (rc < 0)
            gr_log_warn("saga resume failed", "order_id", gr_db_text(rows, i, 0), "code",
                        gr_err_name(rc));
        else
            done++;
    }
    return done;
}

static void *run(void *p)
{
    struct order_app *app = p;
    struct gr_arena a;

    gr_arena_init(&a);
    pthread_mutex_lock(&app->mu);
    while (!app->stop) {
        struct timespec ts;

        app->kicked = false;
        pthread_mutex_unlock(&app->mu);
        (void)resume_once(app, &a);
        gr_arena_release(&a);
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(app->resume_ms / 1000);
        ts.tv_nsec += (long)(app->resume_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&app->mu);
        while (!app->stop && !app->kicked &&
               pthread_cond_timedwait(&app->cv, &app->mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&app->mu);
    return NULL;
}

void saga_kick(struct order_app *app)
{
    pthread_mutex_lock(&app->mu);
    app->kicked = true;
    pthread_cond_signal(&app->cv);
    pthread_mutex_unlock(&app->mu);
}

int saga_resumer_start(struct order_app *app)
{
    if (app->db == NULL)
        return 0;
    if (pthread_create(&app->resumer, NULL, run, app) != 0)
        return GR_EINTERNAL;
    app->resumer_running = true;
    return 0;
}

void saga_resumer_stop(struct order_app *app)
{
    if (!app->resumer_running)
        return;
    pthread_mutex_lock(&app->mu);
    app->stop = true;
    pthread_cond_signal(&app->cv);
    pthread_mutex_unlock(&app->mu);
    pthread_join(app->resumer, NULL);
    app->resumer_running = false;
}
