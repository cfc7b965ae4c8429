/*
 * events.c - the events inventory-service consumes (SERVICES §18): order.confirmed confirms
 * the order's reservation (drops its TTL), order.shipped commits it, order.cancelled releases
 * it, and product.created makes the product's variant skus known. Each handler runs in the
 * consumer's transaction together with the inbox row, so a redelivery changes nothing; the
 * reservation transitions are conditional (reservations.c), so an event that arrives after the
 * same change was made over HTTP is a no-op too. A transition the reservation no longer allows
 * (order.shipped after it expired) is logged and acknowledged: redelivery would not help.
 */
#include <jansson.h>
#include <string.h>

#include "gr/log.h"
#include "inventory.h"

/* The order id of an order.* event: data.id, else the subject. */
static const char *order_id_of(struct gr_arena *a, const struct gr_event *ev)
{
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    const char *id = NULL;

    if (json_is_string(json_object_get(d, "id")))
        id = gr_arena_strdup(a, json_string_value(json_object_get(d, "id")));
    json_decref(d);
    if (id == NULL && ev->subject != NULL)
        id = ev->subject;
    return id && strlen(id) <= INV_ORDER_MAX ? id : NULL;
}

static int on_order(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev, void *app,
                    enum inv_op op)
{
    const char *order_id = order_id_of(a, ev), *rid = NULL, *slug = NULL;
    bool changed = false;
    int rc;

    if (order_id == NULL) {
        gr_log_warn("order event without an order id, ignored", "event_id", ev->id, "type",
                    ev->type);
        return 0;
    }
    rc = inv_res_by_order(db, a, order_id, &rid);
    if (rc < 0)
        return rc;
    if (rid == NULL) {
        gr_log_info("order event for an order without a reservation", "event_id", ev->id, "type",
                    ev->type);
        return 0;
    }
    rc = inv_res_apply(db, a, app, rid, op, ev->traceparent, &slug, &changed);
    if ((rc == GR_ECONFLICT && slug != NULL) || rc == GR_ENOTFOUND) {
        gr_log_warn("order event does not apply to the reservation", "event_id", ev->id, "type",
                    ev->type, "reservation_id", rid, "problem", slug);
        return 0;
    }
    return rc;
}

static int on_confirmed(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                        void *app)
{
    return on_order(db, a, ev, app, INV_CONFIRM);
}

static int on_shipped(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                      void *app)
{
    return on_order(db, a, ev, app, INV_COMMIT);
}

static int on_cancelled(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                        void *app)
{
    return on_order(db, a, ev, app, INV_RELEASE);
}

/* product.created: data is the product with its variants; every valid sku becomes known. */
static int on_product_created(struct gr_db_conn *db, struct gr_arena *a, const struct gr_event *ev,
                              void *app)
{
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    json_t *vs = json_object_get(d, "variants");
    const char *pid = NULL;
    char now[GR_TIME_STR_LEN];
    int rc = 0;

    (void)app;
    if (json_is_string(json_object_get(d, "id")))
        pid = gr_arena_strdup(a, json_string_value(json_object_get(d, "id")));
    inv_now(now);
    for (size_t i = 0; rc == 0 && i < json_array_size(vs); i++) {
        const char *sku = json_string_value(json_object_get(json_array_get(vs, i), "sku"));

        if (!inv_sku_valid(sku))
            continue;
        rc = gr_db_exec(db,
                        "INSERT INTO skus (sku, product_id, created_at) VALUES ($1, $2, $3)"
                        " ON CONFLICT (sku) DO UPDATE SET product_id = EXCLUDED.product_id",
                        (struct gr_db_val[]){ GR_DB_TEXT(sku), GR_DB_TEXT(pid), GR_DB_TEXT(now) },
                        3, NULL);
    }
    json_decref(d);
    return rc;
}

const struct gr_sub inv_subs[INV_NSUBS] = {
    { "order.confirmed", on_confirmed },
    { "order.shipped", on_shipped },
    { "order.cancelled", on_cancelled },
    { "product.created", on_product_created },
};
