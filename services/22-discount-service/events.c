/*
 * events.c - the events discount-service consumes (SERVICES §22): order.confirmed confirms the
 * order's reservations, order.cancelled releases its redemptions (reserved or confirmed). Each
 * handler runs in the consumer's transaction, which also records the event in the inbox, so a
 * redelivered event changes nothing (gr/bus.h); confirming a confirmed redemption or releasing
 * a released one is a no-op too, so an HTTP call and the event may both arrive.
 */
#include <jansson.h>
#include <string.h>

#include "discount.h"
#include "gr/id.h"
#include "gr/log.h"

/* The order id: the event's subject, else data.id / data.order_id; NULL unless a UUID. */
static const char *order_id_of(struct gr_arena *a, const struct gr_event *ev)
{
    static const char *const keys[] = { "id", "order_id" };
    json_t *d = NULL;

    if (ev->subject != NULL && gr_id_valid(ev->subject, strlen(ev->subject)))
        return ev->subject;
    if (ev->data == NULL || gr_json_parse(a, ev->data, ev->data_len, &d, NULL) < 0 ||
        !json_is_object(d))
        return NULL;
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(d, keys[i]);
        if (json_is_string(v) && gr_id_valid(json_string_value(v), json_string_length(v)))
            return json_string_value(v);
    }
    return NULL;
}

/* Moves every redemption of the event's order that is in @from to @to. */
static int move_order(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                      const char *to, const char *reason)
{
    const char *oid = order_id_of(a, ev);
    struct gr_db_rows *rows = NULL;
    int rc;

    if (oid == NULL) {
        gr_log_warn("order event without an order id, ignored", "event_id", ev->id, "type",
                    ev->type);
        return 0;
    }
    rc = gr_db_query(db, a,
                     "SELECT id FROM redemptions WHERE order_id = $1 AND status <> 'released'"
                     " ORDER BY created_at, id",
                     (struct gr_db_val[]){ GR_DB_TEXT(oid) }, 1, &rows);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < gr_db_nrows(rows); i++) {
        const char *slug = NULL;
        rc = redemption_move(db, a, gr_db_text(rows, i, 0), to, reason, ev->traceparent, NULL,
                             &slug);
        if (rc == GR_ECONFLICT && slug != NULL) {
            /* An expired reservation cannot be confirmed: its slot may be someone else's. */
            gr_log_warn("order.confirmed for a redemption that cannot be confirmed", "event_id",
                        ev->id, "redemption_id", gr_db_text(rows, i, 0), "reason", slug);
            continue;
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int on_order_confirmed(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                              void *app)
{
    (void)app;
    return move_order(db, a, ev, "confirmed", NULL);
}

static int on_order_cancelled(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                              void *app)
{
    (void)app;
    return move_order(db, a, ev, "released", "order_cancelled");
}

const struct gr_sub discount_subs[DISCOUNT_NSUBS] = {
    { "order.confirmed", on_order_confirmed },
    { "order.cancelled", on_order_cancelled },
};
