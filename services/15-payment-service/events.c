/*
 * events.c - the events payment-service consumes (SERVICES §15: sub order.cancelled). The
 * handler runs in the consumer's transaction, which also records the event in the inbox, so
 * a redelivery changes nothing. It only flags the order's open payments; the sweeper then
 * voids or refunds each of them with the provider outside any transaction (sweeper.c), once.
 */
#include <string.h>

#include "gr/id.h"
#include "gr/log.h"
#include "pay.h"

static const char *order_id_of(struct gr_arena *a, const struct gr_event *ev)
{
    json_t *d;
    const char *id = NULL;

    if (ev->subject && gr_id_valid(ev->subject, strlen(ev->subject)))
        return ev->subject;
    d = json_loadb(ev->data, ev->data_len, 0, NULL);
    if (json_is_string(json_object_get(d, "id")))
        id = gr_arena_strdup(a, json_string_value(json_object_get(d, "id")));
    json_decref(d);
    return id && gr_id_valid(id, strlen(id)) ? id : NULL;
}

static int on_order_cancelled(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                              void *app)
{
    const char *oid = order_id_of(a, ev);
    long long n = 0;
    int rc;

    if (!oid) {
        gr_log_warn("order.cancelled without an order id, ignored", "event_id", ev->id);
        return 0;
    }
    rc = gr_db_exec(db,
                    "UPDATE payments SET cancel_requested = 1 WHERE order_id = $1"
                    " AND status NOT IN ('failed', 'cancelled')",
                    (struct gr_db_val[]){ GR_DB_TEXT(oid) }, 1, &n);
    if (rc == 0 && n > 0 && app)
        pay_sweeper_kick(app);
    return rc;
}

const struct gr_sub pay_subs[PAY_NSUBS] = {
    { "order.cancelled", on_order_cancelled },
};
