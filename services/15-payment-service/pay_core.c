/*
 * pay_core.c - the payment state machine shared by every path that moves a payment: API
 * handlers, webhooks, the order.cancelled consumer and the sweeper. Each function works in
 * the caller's open transaction; none of them calls the provider.
 *
 *   requires_payment_method ─┐
 *   requires_action ─────────┼─→ requires_capture ─→ succeeded
 *   processing ──────────────┘         │   ↑ (capture in flight: processing)
 *          ↓            ↓              ↓
 *        failed     cancelled ←────────┘
 *
 * succeeded, failed and cancelled are final (refunds live in their own table and only move
 * amount_refunded, which a CHECK keeps within amount_captured).
 */
#include <string.h>

#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "pay.h"

void pay_now(char out[GR_TIME_STR_LEN])
{
    gr_time_format(gr_time_now_ms(), out);
}

int pay_load(struct gr_db_conn *db, struct gr_arena *a, const char *id, struct pay_row *out)
{
    int rc;

    if (!id || !gr_id_valid(id, strlen(id)))
        return GR_ENOTFOUND;
    rc = gr_db_query(db, a, "SELECT " PAYMENT_COLS " FROM payments WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &out->rows);
    if (rc < 0)
        return rc;
    out->i = 0;
    return gr_db_nrows(out->rows) == 1 ? 0 : GR_ENOTFOUND;
}

static json_t *text_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *pay_json(const struct pay_row *p, bool livemode)
{
    struct gr_db_rows *r = p->rows;
    size_t i = p->i;
    const char *status = gr_db_text(r, i, PC_STATUS);
    json_t *o = json_object();

    json_object_set_new(o, "id", json_string(gr_db_text(r, i, PC_ID)));
    json_object_set_new(o, "object", json_string("payment"));
    json_object_set_new(o, "order_id", text_or_null(gr_db_text(r, i, PC_ORDER)));
    json_object_set_new(o, "user_id", json_string(gr_db_text(r, i, PC_USER)));
    json_object_set_new(o, "amount", json_integer(gr_db_int(r, i, PC_AMOUNT)));
    json_object_set_new(o, "currency", json_string(gr_db_text(r, i, PC_CURRENCY)));
    json_object_set_new(o, "amount_captured", json_integer(gr_db_int(r, i, PC_CAPTURED)));
    json_object_set_new(o, "amount_refunded", json_integer(gr_db_int(r, i, PC_REFUNDED)));
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "capture_method", json_string(gr_db_text(r, i, PC_CAPMETHOD)));
    json_object_set_new(o, "payment_method_id", text_or_null(gr_db_text(r, i, PC_PM)));
    json_object_set_new(o, "card_last4", text_or_null(gr_db_text(r, i, PC_LAST4)));
    json_object_set_new(o, "provider", json_string(gr_db_text(r, i, PC_PROVIDER)));
    json_object_set_new(o, "provider_ref", text_or_null(gr_db_text(r, i, PC_REF)));
    json_object_set_new(o, "failure_code", text_or_null(gr_db_text(r, i, PC_FAILURE)));
    json_object_set_new(o, "cancellation_reason", text_or_null(gr_db_text(r, i, PC_CANCEL_REASON)));
    json_object_set_new(o, "next_action",
                        strcmp(status, "requires_action") == 0
                            ? json_pack("{s:s}", "type", "three_d_secure")
                            : json_null());
    json_object_set_new(o, "livemode", json_boolean(livemode));
    json_object_set_new(o, "version", json_integer(gr_db_int(r, i, PC_VERSION)));
    json_object_set_new(o, "authorized_at", text_or_null(gr_db_text(r, i, PC_AUTHORIZED)));
    json_object_set_new(o, "created_at", json_string(gr_db_text(r, i, PC_CREATED)));
    json_object_set_new(o, "updated_at", json_string(gr_db_text(r, i, PC_UPDATED)));
    return o;
}

json_t *pay_refund_json(struct gr_db_rows *r, size_t i)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:o, s:o, s:s, s:s}", "id",
                     gr_db_text(r, i, 0), "object", "refund", "payment_id", gr_db_text(r, i, 1),
                     "amount", (json_int_t)gr_db_int(r, i, 2), "currency", gr_db_text(r, i, 3),
                     "reason", gr_db_text(r, i, 4), "status", gr_db_text(r, i, 5), "origin",
                     gr_db_text(r, i, 6), "provider_ref", text_or_null(gr_db_text(r, i, 7)),
                     "failure_code", text_or_null(gr_db_text(r, i, 8)), "created_at",
                     gr_db_text(r, i, 9), "updated_at", gr_db_text(r, i, 10));
}

int pay_log(struct gr_db_conn *db, const char *payment_id, const char *refund_id, const char *kind,
            const char *from, const char *to, long long amount, const char *currency,
            const char *fingerprint, const char *source, const char *event_id)
{
    char id[GR_ID_LEN], now[GR_TIME_STR_LEN];

    gr_id_new(id);
    pay_now(now);
    return gr_db_exec(
        db,
        "INSERT INTO transactions (id, payment_id, refund_id, kind, status_from,"
        " status_to, amount, currency, fingerprint, source, provider_event_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(payment_id), GR_DB_TEXT(refund_id),
                              GR_DB_TEXT(kind), GR_DB_TEXT(from), GR_DB_TEXT(to), GR_DB_INT(amount),
                              GR_DB_TEXT(currency), GR_DB_TEXT(fingerprint), GR_DB_TEXT(source),
                              GR_DB_TEXT(event_id), GR_DB_TEXT(now) },
        12, NULL);
}

const char *pay_status_of(const struct pay_intent *pi)
{
    const char *s = pi->status;

    if (strcmp(s, "succeeded") == 0)
        return "succeeded";
    if (strcmp(s, "requires_capture") == 0)
        return "requires_capture";
    if (strcmp(s, "requires_action") == 0 || strcmp(s, "requires_confirmation") == 0)
        return "requires_action";
    if (strcmp(s, "canceled") == 0)
        return "cancelled";
    if (strcmp(s, "processing") == 0)
        return "processing";
    /* requires_payment_method after a confirmation attempt means the card was declined */
    return "failed";
}

static bool is(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

static bool final(const char *s)
{
    return is(s, "succeeded") || is(s, "failed") || is(s, "cancelled");
}

static bool allowed(const char *from, const char *to)
{
    if (final(from) || is(from, to))
        return false;
    if (is(from, "requires_capture"))
        return is(to, "succeeded") || is(to, "cancelled") || is(to, "processing");
    return true; /* requires_payment_method, requires_action, processing: anywhere else */
}

static const char *event_of(const char *to)
{
    if (is(to, "requires_capture"))
        return "payment.authorized";
    if (is(to, "succeeded"))
        return "payment.completed";
    if (is(to, "failed"))
        return "payment.failed";
    if (is(to, "cancelled"))
        return "payment.cancelled";
    return NULL;
}

/* Emits @type for payment @id as it is now: @row when the caller has it, else read. */
static int emit_payment(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *type,
                        json_t *extra, const char *traceparent, const struct pay_row *row)
{
    struct pay_row p;
    struct gr_str txt;
    json_t *o;
    int rc = row ? 0 : pay_load(db, a, id, &p);

    if (rc < 0) {
        json_decref(extra);
        return rc;
    }
    o = pay_json(row ? row : &p, false);
    json_object_del(o, "livemode");
    json_object_del(o, "next_action");
    if (extra)
        json_object_set_new(o, "refund", extra);
    rc = gr_json_dump(a, o, &txt);
    json_decref(o);
    if (rc < 0)
        return rc;
    return gr_bus_emit(db, PAY_SOURCE, type, id, txt.ptr, traceparent, NULL);
}

int pay_apply(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *status,
              long long captured, const char *provider_ref, const char *failure, const char *source,
              const char *event_id, const char *traceparent, bool *changed)
{
    struct pay_row p;

    return pay_apply_row(db, a, id, status, captured, provider_ref, failure, source, event_id,
                         traceparent, changed, &p);
}

int pay_apply_row(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char *status,
                  long long captured, const char *provider_ref, const char *failure,
                  const char *source, const char *event_id, const char *traceparent, bool *changed,
                  struct pay_row *out)
{
    struct pay_row p;
    const char *from, *type, *ref = NULL;
    char now[GR_TIME_STR_LEN];
    long long amount;
    int rc;

    *changed = false;
    out->rows = NULL;
    out->i = 0;
    rc = pay_load(db, a, id, &p);
    if (rc < 0)
        return rc;
    from = gr_db_text(p.rows, 0, PC_STATUS);
    amount = gr_db_int(p.rows, 0, PC_AMOUNT);
    pay_now(now);
    if (provider_ref && provider_ref[0] && gr_db_isnull(p.rows, 0, PC_REF))
        ref = provider_ref;
    if (!allowed(from, status)) {
        /* No move, but a provider reference learnt is kept. */
        if (ref)
            rc = gr_db_exec(db, "UPDATE payments SET provider_ref = $2 WHERE id = $1",
                            (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(ref) }, 2, NULL);
        return rc;
    }
    if (captured <= 0 || captured > amount)
        captured = amount;
    if (failure && !failure[0])
        failure = NULL;
    rc = gr_db_query(
        db, a,
        "UPDATE payments SET status = $2,"
        " amount_captured = CASE WHEN $2 = 'succeeded' THEN CAST($3 AS BIGINT)"
        " ELSE amount_captured END,"
        " failure_code = CASE WHEN $2 = 'failed' THEN COALESCE(CAST($4 AS TEXT), "
        "'processing_error')"
        " ELSE failure_code END,"
        " cancellation_reason = CASE WHEN $2 = 'cancelled' THEN COALESCE(CAST($4 AS TEXT),"
        " 'requested_by_customer') ELSE cancellation_reason END,"
        " authorized_at = CASE WHEN $2 = 'requires_capture' AND authorized_at IS NULL"
        " THEN CAST($5 AS TEXT) ELSE authorized_at END,"
        " provider_ref = COALESCE(provider_ref, CAST($7 AS TEXT)),"
        " version = version + 1, updated_at = $5 WHERE id = $1 AND status = $6"
        " RETURNING " PAYMENT_COLS,
        (struct gr_db_val[]){ GR_DB_TEXT(id), GR_DB_TEXT(status), GR_DB_INT(captured),
                              GR_DB_TEXT(failure), GR_DB_TEXT(now), GR_DB_TEXT(from),
                              GR_DB_TEXT(ref) },
        7, &out->rows);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(out->rows) != 1) {
        out->rows = NULL;
        return GR_EBUSY; /* moved under us: the caller's transaction runs again */
    }
    rc = pay_log(db, id, NULL, status, from, status, is(status, "succeeded") ? captured : amount,
                 gr_db_text(p.rows, 0, PC_CURRENCY), gr_db_text(p.rows, 0, PC_FINGERPRINT), source,
                 event_id);
    if (rc < 0)
        return rc;
    *changed = true;
    type = event_of(status);
    return type ? emit_payment(db, a, id, type, NULL, traceparent, out) : 0;
}

int pay_refund_finish(struct gr_db_conn *db, struct gr_arena *a, const char *refund_id, bool ok,
                      const char *provider_ref, const char *failure, const char *source,
                      const char *traceparent)
{
    struct gr_db_rows *r;
    char now[GR_TIME_STR_LEN];
    const char *pid, *cur;
    long long amount, n = 0;
    int rc;

    rc = gr_db_query(db, a, "SELECT " REFUND_COLS " FROM refunds WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(refund_id) }, 1, &r);
    if (rc < 0)
        return rc;
    if (gr_db_nrows(r) != 1 || strcmp(gr_db_text(r, 0, 5), "pending") != 0)
        return 0;
    pid = gr_db_text(r, 0, 1);
    amount = gr_db_int(r, 0, 2);
    cur = gr_db_text(r, 0, 3);
    pay_now(now);
    rc = gr_db_exec(
        db,
        "UPDATE refunds SET status = $2, provider_ref = $3, failure_code = $4,"
        " updated_at = $5 WHERE id = $1 AND status = 'pending'",
        (struct gr_db_val[]){ GR_DB_TEXT(refund_id), GR_DB_TEXT(ok ? "succeeded" : "failed"),
                              GR_DB_TEXT(provider_ref && provider_ref[0] ? provider_ref : NULL),
                              GR_DB_TEXT(ok        ? NULL
                                         : failure ? failure
                                                   : "failed"),
                              GR_DB_TEXT(now) },
        5, &n);
    if (rc < 0)
        return rc;
    if (n != 1)
        return GR_EBUSY;
    if (!ok) {
        rc = gr_db_exec(db,
                        "UPDATE payments SET amount_refunded = amount_refunded - $2,"
                        " version = version + 1, updated_at = $3 WHERE id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(pid), GR_DB_INT(amount), GR_DB_TEXT(now) },
                        3, NULL);
        if (rc == 0)
            rc = pay_log(db, pid, refund_id, "refund_failed", NULL, NULL, amount, cur, NULL, source,
                         NULL);
        return rc;
    }
    rc = pay_log(db, pid, refund_id, "refunded", NULL, NULL, amount, cur, NULL, source, NULL);
    if (rc < 0)
        return rc;
    rc = gr_db_query(db, a, "SELECT " REFUND_COLS " FROM refunds WHERE id = $1",
                     (struct gr_db_val[]){ GR_DB_TEXT(refund_id) }, 1, &r);
    if (rc < 0)
        return rc;
    return emit_payment(db, a, pid, "payment.refunded", pay_refund_json(r, 0), traceparent, NULL);
}

bool pay_has_card_number(json_t *j)
{
    const char *k;
    json_t *v;
    size_t i;

    if (json_is_object(j)) {
        json_object_foreach(j, k, v)
        {
            if (strcmp(k, "card_number") == 0 || pay_has_card_number(v))
                return true;
        }
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
        {
            if (pay_has_card_number(v))
                return true;
        }
    }
    return false;
}
