/*
 * events.c - the events order-service consumes (SERVICES §16). Each handler runs in the
 * consumer's transaction, which also records the event in the inbox, so a redelivery changes
 * nothing; a transition that no longer applies (the order moved on, or was cancelled) is
 * logged and acknowledged.
 *
 *   shipment.created → PROCESSING, shipment.shipped → SHIPPED, shipment.delivered → DELIVERED
 *   payment.failed   → a CONFIRMED order whose payment it is: CANCELLED (payment_failed) and
 *                      compensated by the resumer (PENDING orders: the saga sees it itself)
 *   payment.refunded → logged only: refunds are started here or at 15 after order.cancelled
 */
#include <string.h>

#include "gr/id.h"
#include "gr/json.h"
#include "gr/log.h"
#include "order.h"

/* data.order_id of @ev (arena), or NULL. */
static const char *order_id_of(struct gr_arena *a, const struct gr_event *ev, const char **pid)
{
    json_t *d = NULL;
    const char *oid;

    if (gr_json_parse(a, ev->data, ev->data_len, &d, NULL) < 0)
        return NULL;
    oid = json_string_value(json_object_get(d, "order_id"));
    if (pid != NULL)
        *pid = json_string_value(json_object_get(d, "id"));
    return oid != NULL && gr_id_valid(oid, strlen(oid)) ? oid : NULL;
}

static int status_of(struct gr_db_conn *db, struct gr_arena *a, const char *id, const char **st,
                     const char **pid)
{
    struct gr_db_rows *r = NULL;
    int rc = gr_db_query(db, a, "SELECT status, payment_id FROM orders WHERE id = $1",
                         (struct gr_db_val[]){ GR_DB_TEXT(id) }, 1, &r);

    *st = rc == 0 && gr_db_nrows(r) == 1 ? gr_db_text(r, 0, 0) : NULL;
    if (pid != NULL)
        *pid = rc == 0 && gr_db_nrows(r) == 1 ? gr_db_text(r, 0, 1) : NULL;
    return rc;
}

static int shipment(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                    const char *to)
{
    const char *oid = order_id_of(a, ev, NULL), *st = NULL;
    int rc;

    if (oid == NULL) {
        gr_log_warn("shipment event without an order id, ignored", "event_id", ev->id);
        return 0;
    }
    rc = status_of(db, a, oid, &st, NULL);
    if (rc < 0)
        return rc;
    if (st == NULL || !order_transition_ok(st, to)) {
        gr_log_info("shipment event does not apply", "event_id", ev->id, "order_id", oid, "status",
                    st != NULL ? st : "unknown");
        return 0;
    }
    return order_transition(db, a, oid, st, to, ev->type, "shipping-service", ev->traceparent);
}

static int on_created(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                      void *app)
{
    (void)app;
    return shipment(db, a, ev, ST_PROCESSING);
}

static int on_shipped(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                      void *app)
{
    (void)app;
    return shipment(db, a, ev, ST_SHIPPED);
}

static int on_delivered(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                        void *app)
{
    (void)app;
    return shipment(db, a, ev, ST_DELIVERED);
}

static int on_payment_failed(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                             void *app)
{
    const char *pid = NULL, *oid = order_id_of(a, ev, &pid), *st = NULL, *have = NULL;
    char now[32];
    int rc;

    if (oid == NULL)
        return 0;
    rc = status_of(db, a, oid, &st, &have);
    if (rc < 0)
        return rc;
    if (st == NULL || strcmp(st, ST_CONFIRMED) != 0 || have == NULL || pid == NULL ||
        strcmp(have, pid) != 0)
        return 0; /* not ours to act on: the saga handles PENDING orders itself */
    rc = gr_db_exec(db, "UPDATE orders SET payment_status = 'failed' WHERE id = $1",
                    (struct gr_db_val[]){ GR_DB_TEXT(oid) }, 1, NULL);
    if (rc == 0)
        rc = order_transition(db, a, oid, ST_CONFIRMED, ST_CANCELLED, "payment_failed",
                              "payment-service", ev->traceparent);
    order_now(now);
    if (rc == 0)
        rc = gr_db_exec(db,
                        "UPDATE saga_state SET status = 'compensating', step = 'compensate',"
                        " refund = 0, attempts = 0, lease_until = 0, next_at = 0, updated_at = $2"
                        " WHERE order_id = $1",
                        (struct gr_db_val[]){ GR_DB_TEXT(oid), GR_DB_TEXT(now) }, 2, NULL);
    if (rc == 0 && app != NULL)
        saga_kick(app);
    return rc;
}

static int on_payment_refunded(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                               void *app)
{
    const char *oid = order_id_of(a, ev, NULL);

    (void)db;
    (void)app;
    gr_log_info("payment refunded", "event_id", ev->id, "order_id", oid != NULL ? oid : "");
    return 0;
}

const struct gr_sub order_subs[ORDER_NSUBS] = {
    { "shipment.created", on_created },          { "shipment.shipped", on_shipped },
    { "shipment.delivered", on_delivered },      { "payment.failed", on_payment_failed },
    { "payment.refunded", on_payment_refunded },
};
